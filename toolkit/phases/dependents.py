"""What binds to a column by its number, captured before a rename and re-created after it.

Views, materialized views, SQL-standard function bodies, policies, triggers, CHECK constraints,
extended statistics, publication column lists and row filters, column grants, the column
comment, its default and its statistics target all follow a column's *number*: rename
`embedding` away and they keep pointing at the old vectors. The swap captures each one's
definition while it still reads `embedding`, renames, then replays the definitions so they bind
to whatever column now carries that name. All definitions come from PostgreSQL's own deparsers
(pg_get_viewdef, pg_get_functiondef, ...), so nothing is pieced together from user text.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from toolkit.phases.ddl import options_clause, template

PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "REFERENCES"}  # the privileges a column can carry


@dataclass
class ViewDef:
    schema: str
    name: str
    kind: str  # view | materialized_view
    definition: str
    options: dict[str, str]
    # materialized views are dropped and re-created, so what hangs on them is kept too
    indexes: list[str] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    comment: str | None = None


@dataclass
class PolicyDef:
    name: str
    schema: str
    table: str
    using: str | None
    with_check: str | None


@dataclass
class TriggerDef:
    name: str
    definition: str
    enabled: str  # pg_trigger.tgenabled: O, D, R, A


@dataclass
class CheckDef:
    name: str
    definition: str  # "CHECK (...)", without NOT VALID
    validated: bool


@dataclass
class PublicationDef:
    publication: str
    columns: list[str] | None  # None: all columns
    row_filter: str | None


@dataclass
class Captured:
    """Everything bound to `column` (by number) on one table, as replayable definitions."""

    column: str
    not_null: bool
    comment: str | None
    stats_target: int | None
    default: str | None
    views: list[ViewDef] = field(default_factory=list)
    functions: list[dict[str, str]] = field(default_factory=list)  # {"name", "definition"}
    policies: list[PolicyDef] = field(default_factory=list)
    triggers: list[TriggerDef] = field(default_factory=list)
    checks: list[CheckDef] = field(default_factory=list)
    statistics: list[dict[str, str]] = field(default_factory=list)  # {"name", "definition"}
    publications: list[PublicationDef] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)  # {"grantee", "privilege", "grantable"}
    indexes: list[str] = field(default_factory=list)  # vector/other indexes on the column, by name
    unsupported: list[str] = field(default_factory=list)  # what cannot be re-pointed, in words

    @property
    def materialized_views(self) -> list[ViewDef]:
        return [v for v in self.views if v.kind == "materialized_view"]

    def summary(self) -> dict[str, list[str]]:
        """kind -> names of what is re-created, for reports."""
        out: dict[str, list[str]] = {}

        def add(kind: str, names: list[str]) -> None:
            if names:
                out[kind] = names
        add("view", [f"{v.schema}.{v.name}" for v in self.views if v.kind == "view"])
        add("materialized_view", [f"{v.schema}.{v.name}" for v in self.materialized_views])
        add("function", [f["name"] for f in self.functions])
        add("policy", [p.name for p in self.policies])
        add("trigger", [t.name for t in self.triggers])
        add("check_constraint", [c.name for c in self.checks])
        add("statistics", [s["name"] for s in self.statistics])
        add("publication", [p.publication for p in self.publications])
        add("grant", sorted({f"{g['privilege']} to {g['grantee']}" for g in self.grants}))
        add("comment", [self.column] if self.comment is not None else [])
        add("statistics_target", [str(self.stats_target)] if self.stats_target is not None else [])
        add("default", [self.default] if self.default is not None else [])
        return out

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def _attnum(conn: psycopg.Connection, table_oid: int, column: str) -> int:
    row = conn.execute("SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
                       (table_oid, column)).fetchone()
    if row is None:
        raise LookupError(f"column {column} does not exist")
    return int(row[0])


def table_oid(conn: psycopg.Connection, table: sql.Identifier) -> int:
    row = conn.execute("SELECT to_regclass(%s)::oid", (table.as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        raise LookupError(f"table {table.as_string(conn)} does not exist")
    return int(row[0])


def token(conn: psycopg.Connection, oid: int, column: str) -> str:
    """A fingerprint of the catalog rows `capture` reads: unchanged token, unchanged capture."""
    num = _attnum(conn, oid, column)
    row = conn.execute(template("cutover_dependents_token", table_oid=sql.Literal(oid),
                                attnum=sql.Literal(num))).fetchone()
    assert row is not None
    return str(row[0])


def capture(conn: psycopg.Connection, oid: int, column: str) -> Captured:
    """Read, from the catalog, every object bound to `column` of table `oid` and how to re-create it."""
    num = _attnum(conn, oid, column)
    attr = conn.execute(
        """SELECT a.attnotnull, a.attstattarget, col_description(a.attrelid, a.attnum),
                  pg_get_expr(d.adbin, d.adrelid)
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = %s AND a.attnum = %s""", (oid, num)).fetchone()
    assert attr is not None
    stats_target = attr[1] if attr[1] is not None and attr[1] >= 0 else None
    captured = Captured(column=column, not_null=attr[0], comment=attr[2], stats_target=stats_target, default=attr[3])
    deps = conn.execute(
        """SELECT DISTINCT d.classid::regclass::text, d.objid
           FROM pg_depend d
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s
             AND d.deptype IN ('n', 'a')""", (oid, num)).fetchall()
    by_class: dict[str, list[int]] = {}
    for classname, objid in deps:
        by_class.setdefault(classname, []).append(objid)
    captured.views = capture_views(conn, oid, by_class.pop("pg_rewrite", []))
    captured.functions = [{"name": r[0], "definition": r[1]} for r in conn.execute(
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.oid = ANY (%s) ORDER BY p.oid",
        (by_class.pop("pg_proc", []),))]
    captured.policies = [PolicyDef(*r) for r in conn.execute(
        """SELECT p.polname, n.nspname, c.relname, pg_get_expr(p.polqual, p.polrelid),
                  pg_get_expr(p.polwithcheck, p.polrelid)
           FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE p.oid = ANY (%s) ORDER BY p.oid""", (by_class.pop("pg_policy", []),))]
    captured.triggers = [TriggerDef(*r) for r in conn.execute(
        """SELECT tgname, pg_get_triggerdef(oid), tgenabled::text FROM pg_trigger
           WHERE oid = ANY (%s) AND NOT tgisinternal ORDER BY oid""", (by_class.pop("pg_trigger", []),))]
    for name, contype, definition, validated, other_table in conn.execute(
            """SELECT conname, contype::text, pg_get_constraintdef(oid), convalidated, conrelid <> %s
               FROM pg_constraint WHERE oid = ANY (%s) ORDER BY oid""", (oid, by_class.pop("pg_constraint", []))):
        if contype == "n":
            continue  # NOT NULL (a constraint row since PostgreSQL 18) is carried over on its own
        if contype == "c" and not other_table:
            captured.checks.append(CheckDef(name=name, definition=re.sub(r"\s+NOT VALID$", "", definition),
                                            validated=validated))
        else:
            captured.unsupported.append(f"constraint {name} ({definition})")
    captured.statistics = [{"name": r[0], "definition": r[1]} for r in conn.execute(
        """SELECT format('%%I.%%I', n.nspname, s.stxname), pg_get_statisticsobjdef(s.oid)
           FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
           WHERE s.oid = ANY (%s) ORDER BY s.oid""", (by_class.pop("pg_statistic_ext", []),))]
    for index_name, is_index in conn.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname), c.relkind IN ('i', 'I') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY (%s) ORDER BY c.oid",
            (by_class.pop("pg_class", []),)):
        if is_index:
            captured.indexes.append(index_name)
        else:
            captured.unsupported.append(f"relation {index_name}")
    by_class.pop("pg_publication_rel", None)  # read below from pg_publication_rel itself
    captured.publications = _publications(conn, oid, num)
    for objid in by_class.pop("pg_attrdef", []):
        other = conn.execute("SELECT a.attname FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid "
                             "AND a.attnum = d.adnum WHERE d.oid = %s", (objid,)).fetchone()
        if other and other[0] != column:
            captured.unsupported.append(f"generated column {other[0]} (its expression reads {column})")
    for classname, objids in by_class.items():
        captured.unsupported.append(f"{len(objids)} object(s) of {classname}")
    captured.grants = [{"grantee": r[0], "privilege": r[1], "grantable": r[2]} for r in conn.execute(
        """SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END, x.privilege_type,
                  x.is_grantable
           FROM pg_attribute a, aclexplode(a.attacl) x
           WHERE a.attrelid = %s AND a.attnum = %s ORDER BY 1, 2""", (oid, num))]
    return captured


def capture_views(conn: psycopg.Connection, table: int, rewrite_oids: list[int]) -> list[ViewDef]:
    views = []
    for view_oid, schema, name, relkind, definition, reloptions, comment in conn.execute(
            """SELECT DISTINCT c.oid, n.nspname, c.relname, c.relkind::text, pg_get_viewdef(c.oid), c.reloptions,
                      obj_description(c.oid, 'pg_class')
               FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE r.oid = ANY (%s) AND c.oid <> %s ORDER BY c.oid""", (rewrite_oids, table)):
        options = dict(o.split("=", 1) for o in reloptions or [])
        view = ViewDef(schema=schema, name=name, kind="materialized_view" if relkind == "m" else "view",
                       definition=definition.rstrip().rstrip(";"), options=options, comment=comment)
        if relkind == "m":
            view.indexes = [r[0] for r in conn.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s ORDER BY indexrelid",
                (view_oid,))]
            view.grants = [{"grantee": r[0], "privilege": r[1], "grantable": r[2]} for r in conn.execute(
                """SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
                          x.privilege_type, x.is_grantable
                   FROM pg_class c, aclexplode(c.relacl) x WHERE c.oid = %s AND x.grantee <> c.relowner""",
                (view_oid,))]
        views.append(view)
    return views


def _publications(conn: psycopg.Connection, table: int, num: int) -> list[PublicationDef]:
    """Publications whose column list or row filter names the column (both are stored by number)."""
    out = []
    for pubname, columns, row_filter in conn.execute(
            """SELECT p.pubname,
                      (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                       WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[])),
                      pg_get_expr(pr.prqual, pr.prrelid)
               FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
               WHERE pr.prrelid = %s
                 AND (%s = ANY (pr.prattrs::int2[])
                      OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_publication_rel'::regclass
                                 AND d.objid = pr.oid AND d.refobjsubid = %s))
               ORDER BY p.pubname""", (table, num, num)):
        out.append(PublicationDef(publication=pubname, columns=list(columns) if columns else None,
                                  row_filter=row_filter))
    return out


# -- replay ------------------------------------------------------------------------------------

def recreate_readers(conn: psycopg.Connection, views: list[ViewDef], functions: list[dict[str, str]],
                     policies: list[PolicyDef]) -> None:
    """Replay views (materialized ones dropped and filled again), SQL-body functions and policies
    from their captured definitions, so they bind to whatever now carries the names they use."""
    for view in views:
        ident = sql.Identifier(view.schema, view.name)
        if view.kind == "view":
            # OR REPLACE keeps the view's grants, owner and dependents; its options are restated.
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} {} AS {}").format(
                ident, options_clause(view.options), sql.SQL(view.definition)))
        else:
            conn.execute(sql.SQL("DROP MATERIALIZED VIEW {}").format(ident))
            conn.execute(sql.SQL("CREATE MATERIALIZED VIEW {} {} AS {} WITH DATA").format(
                ident, options_clause(view.options), sql.SQL(view.definition)))
            for index_def in view.indexes:
                conn.execute(sql.SQL(index_def))
            for grant in view.grants:
                conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                    privilege_sql(grant["privilege"]), ident, grantee_sql(grant["grantee"]),
                    sql.SQL(" WITH GRANT OPTION" if grant["grantable"] else "")))
            if view.comment is not None:
                conn.execute(sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(ident, sql.Literal(view.comment)))
    for function in functions:
        conn.execute(sql.SQL(function["definition"]))
    for policy in policies:
        parts = []
        if policy.using is not None:
            parts.append(sql.SQL("USING ({})").format(sql.SQL(policy.using)))
        if policy.with_check is not None:
            parts.append(sql.SQL("WITH CHECK ({})").format(sql.SQL(policy.with_check)))
        conn.execute(sql.SQL("ALTER POLICY {} ON {} {}").format(
            sql.Identifier(policy.name), sql.Identifier(policy.schema, policy.table), sql.SQL(" ").join(parts)))


def recreate(conn: psycopg.Connection, schema: str, table_name: str, captured: Captured) -> list[str]:
    """Replay the captured definitions; run inside the swap, after the renames. Returns the
    names of CHECK constraints re-added NOT VALID that were valid before (validate them after
    the lock is released: VALIDATE scans the table)."""
    table = sql.Identifier(schema, table_name)
    column = sql.Identifier(captured.column)
    recreate_readers(conn, captured.views, captured.functions, captured.policies)
    for trigger in captured.triggers:
        conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger.name), table))
        conn.execute(sql.SQL(trigger.definition))
        state = {"D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}.get(trigger.enabled)
        if state:
            conn.execute(sql.SQL("ALTER TABLE {} {} {}").format(table, sql.SQL(state), sql.Identifier(trigger.name)))
    to_validate = []
    for check in captured.checks:
        # NOT VALID: checking every row here would hold the lock for a table scan.
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} {} NOT VALID").format(
            table, sql.Identifier(check.name), sql.Identifier(check.name), sql.SQL(check.definition)))
        if check.validated:
            to_validate.append(check.name)
    for stat in captured.statistics:
        conn.execute(sql.SQL("DROP STATISTICS {}").format(sql.SQL(stat["name"])))
        conn.execute(sql.SQL(stat["definition"]))
    for pub in captured.publications:
        ident = sql.Identifier(pub.publication)
        conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(ident, table))
        columns = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, pub.columns))) if pub.columns \
            else sql.SQL("")
        where = sql.SQL(" WHERE ({})").format(sql.SQL(pub.row_filter)) if pub.row_filter else sql.SQL("")
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}{}{}").format(ident, table, columns, where))
    for grant in captured.grants:
        conn.execute(sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
            privilege_sql(grant["privilege"]), column, table, grantee_sql(grant["grantee"]),
            sql.SQL(" WITH GRANT OPTION" if grant["grantable"] else "")))
    conn.execute(sql.SQL("COMMENT ON COLUMN {} IS {}").format(
        sql.Identifier(schema, table_name, captured.column), sql.Literal(captured.comment)))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
        table, column, sql.Literal(captured.stats_target if captured.stats_target is not None else -1)))
    if captured.default is not None:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
            table, column, sql.SQL(captured.default)))
    return to_validate


def privilege_sql(name: str) -> sql.SQL:
    if name not in PRIVILEGES | {"DELETE", "TRUNCATE", "TRIGGER", "MAINTAIN"}:
        raise ValueError(f"unexpected privilege {name!r}")
    return sql.SQL(name)


def grantee_sql(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def still_bound(conn: psycopg.Connection, oid: int, column: str, captured: Captured) -> list[str]:
    """Captured objects that still depend on `column` (the one moved aside): must be none."""
    num = _attnum(conn, oid, column)
    rows = conn.execute(
        """SELECT d.classid::regclass::text, d.objid FROM pg_depend d
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s
             AND d.deptype IN ('n', 'a')
             AND d.classid IN ('pg_rewrite'::regclass, 'pg_proc'::regclass, 'pg_policy'::regclass,
                               'pg_trigger'::regclass, 'pg_statistic_ext'::regclass)""", (oid, num)).fetchall()
    left = [f"{c} {o}" for c, o in rows]
    left += [f"check constraint {r[0]}" for r in conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'c' AND %s = ANY (conkey)", (oid, num))]
    left += [f"publication {p.publication}" for p in _publications(conn, oid, num)]
    return left


def naming_dimension(captured: Captured, dims: int) -> list[str]:
    """What is re-created on the column but names its dimension (a view casting to vector(768), a
    CHECK of vector_dims(...) = 768): re-created as it is, it would break on vectors of another
    dimension. Conservative: any definition with the number as a whole token."""
    token = re.compile(rf"(?<![\w.]){dims}(?![\w.])")
    found = [f"{v.kind.replace('_', ' ')} {v.schema}.{v.name}" for v in captured.views if token.search(v.definition)]
    found += [f"function {f['name']}" for f in captured.functions if token.search(f["definition"])]
    found += [f"policy {p.name}" for p in captured.policies
              if token.search(p.using or "") or token.search(p.with_check or "")]
    found += [f"trigger {t.name}" for t in captured.triggers if token.search(t.definition)]
    found += [f"check constraint {c.name}" for c in captured.checks if token.search(c.definition)]
    found += [f"statistics {s['name']}" for s in captured.statistics if token.search(s["definition"])]
    found += [f"publication {p.publication}" for p in captured.publications if token.search(p.row_filter or "")]
    if captured.default and token.search(captured.default):
        found.append(f"the default of {captured.column}")
    return found
