"""Read-only introspection of a table: keys, vector and text columns, vector indexes, sizes, and
the objects that bind to a vector column by its number (and so would follow it on a rename)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from toolkit.errors import BadInput

VECTOR_TYPES = ("vector", "halfvec")
INDEX_DEFAULTS = {"hnsw": {"m": 16, "ef_construction": 64}, "ivfflat": {"lists": 100}}
VECTOR_METHODS = ("hnsw", "ivfflat")


@dataclass
class Column:
    name: str
    attnum: int
    type: str  # format_type(), e.g. "vector(768)", "bigint", "character varying(20)"
    base_type: str  # pg_type.typname, e.g. "vector", "int8", "text"
    not_null: bool
    dimensions: int | None = None  # vector-like columns only; None when unsized
    storage: str = ""  # attstorage: p, e, m, x
    stats_target: int | None = None
    underlying_type: str = ""  # typname with domains resolved to the type they are over, e.g. "text"
    generated: str = ""  # attgenerated: '' (no), 's' (stored), 'v' (virtual, PostgreSQL 18)
    inputs: list[str] = field(default_factory=list)  # the columns a generated column is computed from

    @property
    def is_vector(self) -> bool:
        return self.base_type in VECTOR_TYPES

    @property
    def is_text(self) -> bool:
        """text, varchar(n), char(n), citext, or a domain over one of them."""
        return (self.underlying_type or self.base_type) in TEXT_TYPES


@dataclass
class VectorIndex:
    """An index that reads a vector column: a vector index (hnsw, ivfflat), or any other whose
    keys, expressions, INCLUDE columns or predicate read one (a btree `WHERE embedding IS NULL`)."""

    name: str
    schema: str
    column: str | None  # the first key when it is a plain column; None for an expression
    method: str
    opclass: str  # of the first key
    options: dict[str, int]
    valid: bool
    ready: bool
    predicate: str | None
    definition: str
    size_bytes: int
    body: str | None = None  # the definition from USING on (see index_body)
    reads: list[str] = field(default_factory=list)  # every column it reads, from pg_depend
    key: str = ""  # the first key as PostgreSQL deparses it: a column, or an expression
    key_type: str = ""  # the type of the first key as stored in the index, e.g. halfvec(768)
    unique: bool = False


@dataclass
class Dependent:
    kind: str  # view, materialized_view, function, policy, trigger, publication, grant, check_constraint, comment
    name: str
    column: str
    detail: str | None = None


@dataclass
class TableInfo:
    oid: int
    schema: str
    name: str
    primary_key: list[Column]
    columns: list[Column]
    indexes: list[VectorIndex]
    dependents: list[Dependent]
    rows_estimate: int
    heap_bytes: int
    toast_bytes: int
    index_bytes: int
    triggers: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        """schema.table as a human reads it (quoted where SQL would need quotes)."""
        return f"{_quote_if_needed(self.schema)}.{_quote_if_needed(self.name)}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def vector_columns(self) -> list[Column]:
        return [c for c in self.columns if c.is_vector]

    @property
    def text_columns(self) -> list[Column]:
        return [c for c in self.columns if c.is_text]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def indexes_on(self, column: str) -> list[VectorIndex]:
        """Every index that reads `column`: as a key, in an expression, INCLUDE or its predicate."""
        return [i for i in self.indexes if column in i.reads]

    def dependents_on(self, column: str) -> list[Dependent]:
        return [d for d in self.dependents if d.column == column]

    def fingerprint(self, columns: list[str], as_planned: dict[str, str] | None = None) -> str:
        """A hash of what a plan relies on: the named columns' types and the primary key.
        `as_planned` maps a column to the type to hash in place of its current one (a type that
        reembed itself gave it)."""
        types = {n: (c.type if (c := self.column(n)) else None) for n in sorted(columns)}
        types.update({n: t for n, t in (as_planned or {}).items() if n in types})
        shape = {"pk": [(c.name, c.type) for c in self.primary_key], "columns": types}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def shape(self, columns: list[str]) -> dict[str, Any]:
        return {
            "primary_key": [f"{c.name} {c.type}" for c in self.primary_key],
            "columns": {n: (c.type if (c := self.column(n)) else "missing") for n in sorted(columns)},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "table": f"{self.schema}.{self.name}",
            "schema": self.schema,
            "name": self.name,
            "primary_key": [c.name for c in self.primary_key],
            "primary_key_types": {c.name: c.type for c in self.primary_key},
            "rows_estimate": self.rows_estimate,
            "vector_columns": [
                {"name": c.name, "type": c.base_type, "dimensions": c.dimensions, "not_null": c.not_null}
                for c in self.vector_columns
            ],
            "text_columns": [{"name": c.name, "type": c.type, "not_null": c.not_null} for c in self.text_columns],
            "indexes": [
                {"name": i.name, "column": i.column, "method": i.method, "opclass": i.opclass, "options": i.options,
                 "valid": i.valid, "ready": i.ready, "predicate": i.predicate, "size_bytes": i.size_bytes}
                for i in self.indexes
            ],
            "sizes": {"heap_bytes": self.heap_bytes, "toast_bytes": self.toast_bytes, "index_bytes": self.index_bytes},
            "dependents": [asdict(d) for d in self.dependents],
            "triggers": self.triggers,
        }


TEXT_TYPES = ("text", "varchar", "bpchar", "citext")


def _quote_if_needed(name: str) -> str:
    simple = name.islower() and name.replace("_", "a").isalnum() and not name[0].isdigit()
    return name if simple else '"' + name.replace('"', '""') + '"'


def resolve_table(conn: psycopg.Connection, name: str) -> tuple[int, str, str]:
    """(oid, schema, table) for `table`, `schema.table`, or either with SQL quoting.

    Tries PostgreSQL's own parsing first (quoted names, search_path); then the name as typed,
    so `My Docs` finds the table "My Docs" without the user having to quote it in the shell.
    """
    candidates: list[tuple[str | None, str]] = []
    try:
        row = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()
    except psycopg.errors.DataError:  # not a valid name for the parser: fall through to the literal
        row = None
        _rollback_if_needed(conn)
    except psycopg.errors.InvalidName:
        row = None
        _rollback_if_needed(conn)
    if row and row[0]:
        oid = row[0]
        found = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s", (oid,)).fetchone()
        assert found is not None
        if found[2] not in ("r", "p"):
            raise BadInput(f"{name} is not a table (it is a {_RELKINDS.get(found[2], found[2])})")
        return oid, found[0], found[1]
    if "." in name:
        schema, _, table = name.partition(".")
        candidates.append((schema.strip('"'), table.strip('"')))
    candidates.append((None, name.strip('"')))
    for schema, table in candidates:
        row = conn.execute(
            """SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname = %s AND c.relkind IN ('r', 'p')
                 AND (n.nspname = %s OR (%s::text IS NULL AND n.nspname = ANY (current_schemas(false))))
               ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1""",
            (table, schema, schema)).fetchone()
        if row:
            return row[0], row[1], row[2]
    raise BadInput(f"table {name} does not exist")


_RELKINDS = {"v": "view", "m": "materialized view", "f": "foreign table", "i": "index", "S": "sequence"}


def _rollback_if_needed(conn: psycopg.Connection) -> None:
    if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()


def inspect_table(conn: psycopg.Connection, name: str) -> TableInfo:
    oid, schema, table = resolve_table(conn, name)
    return load_table(conn, oid, schema, table)


def _columns_and_key(conn: psycopg.Connection, oid: int) -> tuple[list[Column], list[Column]]:
    cur = conn.cursor(row_factory=dict_row)
    columns = [
        Column(
            name=r["attname"], attnum=r["attnum"], type=r["type"], base_type=r["typname"], not_null=r["attnotnull"],
            dimensions=(r["atttypmod"] if r["typname"] in VECTOR_TYPES and r["atttypmod"] > 0 else None),
            storage=r["attstorage"], stats_target=r["attstattarget"], underlying_type=r["underlying"],
        )
        for r in cur.execute(
            """SELECT a.attname, a.attnum, format_type(a.atttypid, a.atttypmod) AS type, t.typname, a.atttypmod,
                      a.attnotnull, a.attstorage, a.attstattarget,
                      (WITH RECURSIVE chain AS (
                           SELECT t.typname, t.typtype, t.typbasetype
                           UNION ALL
                           SELECT b.typname, b.typtype, b.typbasetype
                           FROM pg_type b JOIN chain ON b.oid = chain.typbasetype WHERE chain.typtype = 'd')
                       SELECT typname FROM chain WHERE typtype <> 'd') AS underlying
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""", (oid,))
    ]
    by_num = {c.attnum: c for c in columns}
    for r in cur.execute(
            """SELECT a.attnum, a.attgenerated::text AS generated,
                      ARRAY(SELECT DISTINCT dep.refobjsubid::int FROM pg_depend dep
                            WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
                              AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid = d.adrelid
                              AND dep.refobjsubid > 0 AND dep.refobjsubid <> d.adnum ORDER BY 1) AS inputs
               FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               WHERE a.attrelid = %s AND a.attgenerated <> ''""", (oid,)):
        column = by_num[r["attnum"]]
        column.generated, column.inputs = r["generated"], [by_num[n].name for n in r["inputs"] if n in by_num]
    pk_row = cur.execute(
        "SELECT conkey FROM pg_constraint WHERE conrelid = %s AND contype = 'p'", (oid,)).fetchone()
    return columns, [by_num[n] for n in pk_row["conkey"]] if pk_row else []


def row_shape(conn: psycopg.Connection, table: sql.Composable) -> list[tuple[str, str, bool]]:
    """(name, format_type, generated) of every column of `table` in order, as `SELECT *` returns
    them; empty when there is no such table."""
    return [(name, type_, generated) for name, type_, generated in conn.execute(
        """SELECT attname, format_type(atttypid, atttypmod), attgenerated <> '' FROM pg_attribute
           WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        (table.as_string(conn),)).fetchall()]


def load_shape(conn: psycopg.Connection, oid: int, schema: str, table: str) -> TableInfo:
    """Columns and primary key only (no indexes, dependents, sizes or counts): what a plan's
    fingerprint is made of, cheap enough for every command to check."""
    columns, primary_key = _columns_and_key(conn, oid)
    return TableInfo(oid=oid, schema=schema, name=table, primary_key=primary_key, columns=columns, indexes=[],
                     dependents=[], rows_estimate=0, heap_bytes=0, toast_bytes=0, index_bytes=0)


def load_table(conn: psycopg.Connection, oid: int, schema: str, table: str) -> TableInfo:
    columns, primary_key = _columns_and_key(conn, oid)
    by_num = {c.attnum: c for c in columns}
    cur = conn.cursor(row_factory=dict_row)
    sizes = cur.execute(
        """SELECT c.reltuples::bigint AS reltuples, pg_relation_size(c.oid) AS heap,
                  COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0) AS toast,
                  pg_indexes_size(c.oid) AS indexes
           FROM pg_class c WHERE c.oid = %s""", (oid,)).fetchone()
    assert sizes is not None
    rows_estimate = sizes["reltuples"]
    if rows_estimate < 0:  # never analyzed: count, the table is new and probably small
        rows_estimate = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]  # type: ignore[index]
    vector_nums = {c.attnum for c in columns if c.is_vector}
    return TableInfo(
        oid=oid, schema=schema, name=table, primary_key=primary_key, columns=columns,
        indexes=_vector_indexes(conn, oid, by_num, vector_nums),
        dependents=_dependents(conn, oid, by_num, vector_nums),
        rows_estimate=int(rows_estimate), heap_bytes=sizes["heap"], toast_bytes=sizes["toast"],
        index_bytes=sizes["indexes"],
        triggers=[r[0] for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal ORDER BY tgname", (oid,))],
    )


def _vector_indexes(conn: psycopg.Connection, oid: int, by_num: dict[int, Column],
                    vector_nums: set[int]) -> list[VectorIndex]:
    rows = conn.cursor(row_factory=dict_row).execute(
        """SELECT ic.relname AS name, n.nspname AS schema, am.amname AS method, i.indkey::int2[] AS indkey,
                  opc.opcname AS opclass, i.indisvalid AS valid, i.indisready AS ready, i.indisunique AS unique,
                  pg_get_expr(i.indpred, i.indrelid) AS predicate, pg_get_indexdef(i.indexrelid) AS definition,
                  pg_get_indexdef(i.indexrelid, 1, true) AS key,
                  (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                   WHERE a.attrelid = i.indexrelid AND a.attnum = 1) AS key_type,
                  ARRAY(SELECT DISTINCT d.refobjsubid::int FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                          AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid > 0
                        ORDER BY 1) AS reads,
                  ic.reloptions, pg_relation_size(ic.oid) AS size,
                  format('CREATE %%sINDEX %%I ON ', CASE WHEN i.indisunique THEN 'UNIQUE ' END, ic.relname) AS head,
                  format('%%I.%%I ', tn.nspname, tc.relname) AS relation
           FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = ic.relnamespace
           JOIN pg_class tc ON tc.oid = i.indrelid
           JOIN pg_namespace tn ON tn.oid = tc.relnamespace
           JOIN pg_am am ON am.oid = ic.relam
           JOIN pg_opclass opc ON opc.oid = i.indclass[0]
           WHERE i.indrelid = %s
           ORDER BY ic.relname""", (oid,)).fetchall()
    indexes = []
    for r in rows:
        reads = [by_num[n].name for n in r["reads"] if n in by_num]
        if r["method"] not in VECTOR_METHODS and not set(r["reads"]) & vector_nums:
            continue
        options = dict(INDEX_DEFAULTS.get(r["method"], {}))
        for opt in r["reloptions"] or []:
            key, _, value = opt.partition("=")
            options[key] = int(value) if value.lstrip("-").isdigit() else value  # type: ignore[assignment]
        first = r["indkey"][0] if r["indkey"] else 0
        indexes.append(VectorIndex(
            name=r["name"], schema=r["schema"], column=by_num[first].name if first in by_num else None,
            method=r["method"], opclass=r["opclass"], options=options, valid=r["valid"], ready=r["ready"],
            predicate=r["predicate"], definition=r["definition"], size_bytes=r["size"],
            body=index_body(r["definition"], r["head"], r["relation"]), reads=reads, key=r["key"] or "",
            key_type=r["key_type"] or "", unique=r["unique"]))
    return indexes


def index_body(definition: str, head: str, relation: str) -> str | None:
    """`USING method (...) [INCLUDE ...] [WITH ...] [WHERE ...]` of a `pg_get_indexdef`, which names
    only columns, so it can be replayed on another table with the same columns. `head` and
    `relation` are the quoted prefix PostgreSQL itself printed; None when it does not match."""
    if not definition.startswith(head):
        return None
    rest = definition[len(head):]
    rest = rest[len("ONLY "):] if rest.startswith("ONLY ") else rest
    if not rest.startswith(relation) or not rest[len(relation):].startswith("USING "):
        return None
    return rest[len(relation):]


def _dependents(conn: psycopg.Connection, oid: int, by_num: dict[int, Column], nums: set[int]) -> list[Dependent]:
    """Everything that refers to the given columns by attnum, so would follow them on a rename."""
    if not nums:
        return []
    found: list[Dependent] = []
    rows = conn.execute(
        """SELECT DISTINCT d.refobjsubid::int AS attnum,
                  CASE d.classid
                    WHEN 'pg_rewrite'::regclass THEN
                      (SELECT CASE c.relkind WHEN 'm' THEN 'materialized_view' ELSE 'view' END
                       FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
                    WHEN 'pg_proc'::regclass THEN 'function'
                    WHEN 'pg_policy'::regclass THEN 'policy'
                    WHEN 'pg_trigger'::regclass THEN 'trigger'
                    WHEN 'pg_constraint'::regclass THEN
                      (SELECT CASE contype WHEN 'c' THEN 'check_constraint' ELSE 'constraint' END
                       FROM pg_constraint WHERE oid = d.objid)
                    WHEN 'pg_statistic_ext'::regclass THEN 'statistics'
                    ELSE d.classid::regclass::text END AS kind,
                  CASE d.classid
                    WHEN 'pg_rewrite'::regclass THEN
                      (SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.oid = d.objid)
                    WHEN 'pg_proc'::regclass THEN d.objid::regprocedure::text
                    WHEN 'pg_policy'::regclass THEN (SELECT polname FROM pg_policy WHERE oid = d.objid)
                    WHEN 'pg_trigger'::regclass THEN (SELECT tgname FROM pg_trigger WHERE oid = d.objid)
                    WHEN 'pg_constraint'::regclass THEN (SELECT conname FROM pg_constraint WHERE oid = d.objid)
                    WHEN 'pg_statistic_ext'::regclass THEN (SELECT stxname FROM pg_statistic_ext WHERE oid = d.objid)
                    ELSE d.objid::text END AS name
           FROM pg_depend d
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = ANY (%s)
             AND d.classid <> 'pg_class'::regclass
             AND NOT (d.classid = 'pg_rewrite'::regclass
                      AND (SELECT r.ev_class FROM pg_rewrite r WHERE r.oid = d.objid) = %s)
           ORDER BY 2, 3""", (oid, list(nums), oid)).fetchall()
    for attnum, kind, name in rows:
        if kind == "constraint":
            continue  # primary/unique/foreign keys cannot involve a vector column meaningfully
        found.append(Dependent(kind=kind, name=name, column=by_num[attnum].name))
    for attnum, pubname in conn.execute(
            """SELECT a, p.pubname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid,
                      unnest(pr.prattrs::int2[]) AS a
               WHERE pr.prrelid = %s AND a = ANY (%s)""", (oid, list(nums))).fetchall():
        found.append(Dependent(kind="publication", name=pubname, column=by_num[attnum].name))
    for attnum, acl in conn.execute(
            "SELECT attnum, attacl::text FROM pg_attribute WHERE attrelid = %s AND attnum = ANY (%s) "
            "AND attacl IS NOT NULL", (oid, list(nums))).fetchall():
        found.append(Dependent(kind="grant", name=acl, column=by_num[attnum].name))
    for attnum, description in conn.execute(
            "SELECT objsubid, description FROM pg_description WHERE objoid = %s "
            "AND classoid = 'pg_class'::regclass AND objsubid = ANY (%s)", (oid, list(nums))).fetchall():
        found.append(Dependent(kind="comment", name=by_num[attnum].name, column=by_num[attnum].name,
                               detail=description))
    return found


@dataclass
class Lineage:
    """Where the table sits in an inheritance or partition tree."""

    partitioned: bool  # a declaratively partitioned parent (relkind 'p')
    children: list[str]  # inheritance children or partitions, schema.table
    parents: list[str]  # tables this one inherits from (or is a partition of)
    inherited_columns: list[str]  # columns that come from a parent (cannot be renamed here)


def lineage(conn: psycopg.Connection, oid: int) -> Lineage:
    row = conn.execute(
        """SELECT c.relkind = 'p',
                  ARRAY(SELECT i.inhrelid::regclass::text FROM pg_inherits i WHERE i.inhparent = c.oid ORDER BY 1),
                  ARRAY(SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid ORDER BY 1),
                  ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                        AND NOT a.attisdropped AND a.attinhcount > 0 ORDER BY a.attnum)
           FROM pg_class c WHERE c.oid = %s""", (oid,)).fetchone()
    assert row is not None
    return Lineage(partitioned=row[0], children=list(row[1]), parents=list(row[2]), inherited_columns=list(row[3]))
