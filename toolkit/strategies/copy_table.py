"""The copy of the application's table, read from the original's catalog entries.

The copy has exactly the original's columns, in the same order, with the same types (the vector
column keeps its declared type, sized or not), defaults, generated expressions, identity, storage,
compression, column comments and extended statistics (`CREATE TABLE ... (LIKE ...)`), plus its
persistence, access method, storage parameters, tablespace and per-column statistics targets.
It starts with only its primary key (the propagation and the backfill upsert on it); every other
index is built by the index phase, CHECK and foreign-key constraints are added at the swap (NOT
VALID under the lock, validated after), because until then nothing but reembed writes the copy.

Until the swap the copy's vector column has no NOT NULL: the propagation inserts rows before
their vector exists. The swap carries NOT NULL over without a scan, as the column strategy does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from toolkit.catalog import row_shape
from toolkit.indexes import CarriedIndex, prefixed_identifier
from toolkit.plan import Plan

_LIKE = ("INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMPRESSION "
         "INCLUDING COMMENTS INCLUDING STATISTICS")


@dataclass(frozen=True)
class Column:
    name: str
    generated: bool  # stored or virtual: never written, computed in the copy too
    identity: str  # "", "a" (ALWAYS) or "d" (BY DEFAULT)
    not_null: bool
    stats_target: int | None


def columns(conn: psycopg.Connection, table: sql.Identifier) -> list[Column]:
    rows = conn.execute(
        """SELECT attname, attgenerated <> '', attidentity::text, attnotnull,
                  CASE WHEN attstattarget >= 0 THEN attstattarget END
           FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped
           ORDER BY attnum""", (table.as_string(conn),)).fetchall()
    return [Column(*r) for r in rows]


def shape(conn: psycopg.Connection, table: sql.Identifier,
          vector_column: str | None = None) -> list[tuple[str, str, bool]]:
    """(name, type, generated) of every column in order: what `SELECT *` returns, for comparing
    the original with the copy (`vector_column`'s type left out: a plan may change its dimensions)."""
    return [(name, "vector" if name == vector_column else type_, generated)
            for name, type_, generated in row_shape(conn, table)]


def writable(cols: list[Column], vector_column: str) -> list[str]:
    """The columns the propagation copies: all but generated ones and the vector column, which
    only reembed writes in the copy."""
    return [c.name for c in cols if not c.generated and c.name != vector_column]


def carried_indexes(conn: psycopg.Connection, oid: int, tag: str, source_tag: str) -> list[CarriedIndex]:
    """Every valid index of the table, as the copy will rebuild it (primary key first)."""
    from toolkit.catalog import index_body

    out = []
    for name, definition, head, relation, unique, contype, deferrable, deferred in conn.execute(
            """SELECT ic.relname, pg_get_indexdef(i.indexrelid),
                      format('CREATE %%sINDEX %%I ON ', CASE WHEN i.indisunique THEN 'UNIQUE ' END, ic.relname),
                      format('%%I.%%I ', tn.nspname, tc.relname), i.indisunique, con.contype::text,
                      coalesce(con.condeferrable, false), coalesce(con.condeferred, false)
               FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_class tc ON tc.oid = i.indrelid
               JOIN pg_namespace tn ON tn.oid = tc.relnamespace
               LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                          AND con.contype IN ('p', 'u', 'x')
               WHERE i.indrelid = %s AND i.indisvalid
               ORDER BY i.indisprimary DESC, ic.relname""", (oid,)).fetchall():
        body = index_body(definition, head, relation)
        if body is None or contype == "x":
            continue  # refused at plan (refusals): never silently dropped
        # The vector indexes' rule (toolkit.indexes) for every index: `<tag>__<original>`, so the
        # names match the plan's and none begins with the original's.
        out.append(CarriedIndex(original_name=name, shadow_name=prefixed_identifier(tag, name),
                                old_name=prefixed_identifier("old_" + source_tag, name), body=body, unique=unique,
                                constraint=contype,
                                deferrable=("DEFERRABLE INITIALLY DEFERRED" if deferred else
                                            "DEFERRABLE" if deferrable else "")))
    return out


def refusals(conn: psycopg.Connection, oid: int, copy_table: str, old_table: str, schema: str) -> list[str]:
    """What the copy strategy cannot carry through to cutover, in words (empty: nothing)."""
    row = conn.execute(
        """SELECT c.relkind::text, c.relispartition, c.reloftype <> 0, c.relhasrules,
                  EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid),
                  pg_has_role(current_user, c.relowner, 'USAGE'), has_schema_privilege(c.relnamespace, 'CREATE'),
                  c.reltype
           FROM pg_class c WHERE c.oid = %s""", (oid,)).fetchone()
    assert row is not None
    relkind, partition, typed, rules, inherits, owner, create, rowtype = row
    out = []
    if relkind == "p" or partition:
        out.append("it is partitioned (or a partition): the copy strategy does not rebuild partitions")
    if inherits:
        out.append("it takes part in table inheritance: a copy would not")
    if typed:
        out.append("it is a typed table (CREATE TABLE ... OF type)")
    if rules:
        out.append("it has rules (CREATE RULE), which reembed cannot carry to the copy")
    if not owner:
        out.append("the current role is not the table's owner (nor a member of its role): it could not hand the "
                   "copy to that owner or move the triggers, policies and grants")
    if not create:
        out.append(f"the current role has no CREATE on schema {schema}, where the copy is made")
    for name in (copy_table, old_table):
        if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]:
            out.append(f"a relation named {schema}.{name} exists already (the copy strategy needs that name)")
    out += [f"exclusion constraint {name}: it cannot be built on the copy and attached at the swap"
            for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'x'",
                                        (oid,))]
    out += [f"NOT NULL constraint {name} is NOT VALID: rows breaking it could not be copied"
            for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'n' "
                                        "AND NOT convalidated", (oid,))]
    out += [f"{what} uses the table's row type ({schema}.{name}): it would keep the old table's"
            for what, name in conn.execute(
                """SELECT CASE d.classid WHEN 'pg_class'::regclass THEN 'a column of ' || d.objid::regclass::text
                                         WHEN 'pg_proc'::regclass THEN 'function ' || d.objid::regprocedure::text
                                         ELSE d.classid::regclass::text END,
                          t.typname
                   FROM pg_depend d JOIN pg_type t ON t.oid = d.refobjid
                   WHERE d.refclassid = 'pg_type'::regclass AND d.refobjid = %s AND d.deptype = 'n'
                     AND NOT (d.classid = 'pg_type'::regclass)""", (rowtype,))]
    out += [f"it is the target of subscription {name}: its apply worker writes the table by OID and would go on "
            "writing the table moved aside, past reembed's propagation" for (name,) in conn.execute(
                "SELECT s.subname FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid "
                "WHERE r.srrelid = %s ORDER BY 1", (oid,))]
    out += [f"it has a security label of provider {provider}: reembed cannot carry labels to the copy"
            for (provider,) in conn.execute(
                "SELECT DISTINCT provider FROM pg_seclabel WHERE classoid = 'pg_class'::regclass AND objoid = %s "
                "ORDER BY 1", (oid,))]
    out += [f"publication {name} publishes {what}: the copy would be published too and its subscribers would "
            "stop on a table they do not have" for name, what in conn.execute(
                """SELECT p.pubname, 'every table' FROM pg_publication p WHERE p.puballtables
                   UNION ALL
                   SELECT p.pubname, 'every table of schema ' || n.nspname FROM pg_publication_namespace pn
                   JOIN pg_publication p ON p.oid = pn.pnpubid JOIN pg_namespace n ON n.oid = pn.pnnspid
                   WHERE pn.pnnspid = (SELECT relnamespace FROM pg_class WHERE oid = %s)""", (oid,))]
    return out


def tag_comment(plan: Plan) -> str:
    """The copy's table comment until the swap: what it is, for whom, and how to drop it."""
    ref = plan.target_ref
    return json.dumps({"reembed": True, "plan": plan.name, "role": "copy", "of": plan.table_display,
                       "provider": ref.provider, "model": ref.model, "task_type": plan.document_task,
                       "dimensions": plan.dimensions,
                       "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "drop_with": f"reembed abandon {plan.name}"})


def copy_tag(conn: psycopg.Connection, plan: Plan) -> dict[str, Any] | None:
    """The copy's tag when the copy exists ({} when it has none or a foreign one); None when absent."""
    assert plan.copy is not None
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL",
                       (sql.Identifier(plan.table_schema, plan.copy.table).as_string(conn),) * 2).fetchone()
    if row is None or not row[1]:
        return None
    try:
        tag = json.loads(row[0]) if row[0] else {}
    except ValueError:
        tag = {}
    return tag if isinstance(tag, dict) else {}


def create_statements(conn: psycopg.Connection, plan: Plan) -> list[sql.Composable]:
    """The DDL that makes the copy (read from the live catalog; `reembed plan --sql` shows it)."""
    assert plan.copy is not None
    copy = sql.Identifier(plan.table_schema, plan.copy.table)
    row = conn.execute(
        """SELECT c.relpersistence::text, am.amname, c.reloptions,
                  (SELECT t.reloptions FROM pg_class t WHERE t.oid = c.reltoastrelid), ts.spcname
           FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam
           LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace
           WHERE c.oid = to_regclass(%s)""", (plan.table.as_string(conn),)).fetchone()
    persistence, access_method, reloptions, toast_options, tablespace = row if row else ("p", "heap", None, None, None)
    options = dict(o.split("=", 1) for o in reloptions or [])
    options.update({f"toast.{k}": v for k, v in (o.split("=", 1) for o in toast_options or [])})
    create = sql.SQL("CREATE {}TABLE {} (LIKE {} {}){}{}{}").format(
        sql.SQL("UNLOGGED " if persistence == "u" else ""), copy, plan.table, sql.SQL(_LIKE),
        sql.SQL(" USING {}").format(sql.Identifier(access_method)) if access_method not in (None, "heap")
        else sql.SQL(""),
        sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.SQL(".").join(map(sql.Identifier, k.split("."))), sql.Literal(v))
            for k, v in sorted(options.items()))) if options else sql.SQL(""),
        sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace)) if tablespace else sql.SQL(""))
    out: list[sql.Composable] = [create]
    cols = columns(conn, plan.table)
    vector = next((c for c in cols if c.name == plan.column), None)
    if vector is not None and vector.not_null:
        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(copy, sql.Identifier(plan.column)))
    if plan.new_column_type != plan.column_type:  # new dimensions: the copy is empty, no rewrite
        from toolkit.phases.prepare import new_column_type

        out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
            copy, sql.Identifier(plan.column), new_column_type(plan)))
    for c in cols:
        if c.stats_target is not None:
            out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                copy, sql.Identifier(c.name), sql.Literal(c.stats_target)))
    key = next((i for i in plan.copy.indexes if i.constraint == "p"), None)
    if key is not None:
        out.append(key.create(copy, key.shadow_name, concurrently=False))
        out.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}{}").format(
            copy, sql.Identifier(key.shadow_name), sql.Identifier(key.shadow_name),
            sql.SQL(" " + key.deferrable) if key.deferrable else sql.SQL("")))
    out.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(copy, sql.Literal(tag_comment(plan))))
    return out
