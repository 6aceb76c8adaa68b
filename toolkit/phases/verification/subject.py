"""What verify looks at, resolved once from the plan, the phase and the live catalog.

Which table and column holds the new (and old) vectors depends on the phase and the plan's
strategy (`places`); the
distance the application's retrieval query uses is the one the ORIGINAL index serves, so the
operator is read from that index's operator class in the catalog, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from toolkit import catalog
from toolkit.errors import GateFailed
from toolkit.phases.prepare import key_json
from toolkit.plan import Plan
from toolkit.resources import sql_dir
from toolkit.state import PlanRecord
from toolkit.strategies import places

# pgvector's ordering operators; anything else found in the catalog is refused rather than pasted into SQL.
DISTANCE_OPERATORS = {"<->": "l2", "<=>": "cosine", "<#>": "negative inner product", "<+>": "l1",
                      "<~>": "hamming", "<%>": "jaccard"}
DEFAULT_OPERATOR = "<=>"
VECTOR_TYPES = ("vector", "halfvec")


@lru_cache(maxsize=None)
def _template_text(name: str) -> str:
    lines = (sql_dir() / f"{name}.sql").read_text().splitlines()
    # Leading `--` lines document the file for reviewers; a `{` in that prose would be a placeholder.
    return "\n".join(line for line in lines if not line.lstrip().startswith("--")).strip().rstrip(";")


def template(name: str, **parts: sql.Composable) -> sql.Composed:
    """sql/<name>.sql with its placeholders filled by identifiers and literals only."""
    return sql.SQL(_template_text(name)).format(**parts)


@dataclass(frozen=True)
class IndexState:
    name: str
    oid: int
    column: str | None
    method: str
    opclass: str
    operator: str | None  # the ordering operator the opclass serves
    options: dict[str, Any]
    valid: bool
    ready: bool
    predicate: str | None  # deparsed by PostgreSQL from the live index
    key: str = ""  # its first key as PostgreSQL deparses it: the column, or an expression of it
    key_type: str = ""  # that key's type in the index, e.g. vector(768), halfvec(768)
    reads: tuple[str, ...] = ()  # the columns it reads
    partitions: tuple[str, ...] = ()  # a partitioned index's indexes on the partitions (what EXPLAIN names)

    @property
    def names(self) -> set[str]:
        """The names a plan using this index shows: its own, or its partitions' indexes'."""
        return {self.name, *self.partitions}

    @property
    def key_base_type(self) -> str:
        return self.key_type.split("(")[0]

    @property
    def key_dimensions(self) -> int | None:
        inside = self.key_type.partition("(")[2].rstrip(")")
        return int(inside) if inside.isdigit() else None


@dataclass(frozen=True)
class Subject:
    plan: Plan
    record: PlanRecord
    table_oid: int  # of the table holding the new vectors
    new_table: sql.Identifier
    old_table: sql.Identifier
    new_column: str
    new_type: str  # vector or halfvec
    old_column: str | None  # None when the old vectors are gone
    old_type: str
    old_dimensions: int | None
    new_index: IndexState | None  # the main (first planned) index on the new vectors
    old_index: IndexState | None
    operator: str  # the distance the retrieval query orders by
    operator_origin: str  # in words: where `operator` came from
    new_indexes: tuple[IndexState | None, ...] = ()  # every planned index on the new vectors, as plan.indexes

    @property
    def table(self) -> sql.Identifier:
        """The table holding the new vectors: the checks read it."""
        return self.new_table

    def key(self, alias: str | None = None) -> sql.Composable:
        """The row's primary key as text: the value for a one-column key, a JSON array otherwise."""
        cols = [sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in self.plan.primary_key]
        if len(cols) == 1:
            return sql.SQL("{}::text").format(cols[0])
        return sql.SQL("jsonb_build_array({})::text").format(sql.SQL(", ").join(cols))

    def has_text(self, alias: str | None = None) -> sql.Composable:
        """True when the row has something to embed: the backfill skips empty or blank text."""
        return sql.SQL("coalesce({} ~ '[^[:space:]]', false)").format(self.plan.text_expression(alias))


def resolve(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> Subject:
    """Read the live catalog for the plan's tables in the plan's current phase."""
    where = places(plan, record.phase)
    new_info = _load(conn, plan, where.new.schema, where.new.table)
    old_info = new_info if (where.old.schema, where.old.table) == (where.new.schema, where.new.table) else \
        _load(conn, plan, where.old.schema, where.old.table, missing_ok=True)
    new_col = new_info.column(where.new.column)
    if new_col is None or not new_col.is_vector:
        raise GateFailed(f"plan {plan.name!r} is {record.phase}: column {where.new.display} holding {plan.target} "
                         f"vectors does not exist yet; run `reembed run {plan.name}` first")
    old_col = old_info.column(where.old.column) if old_info is not None else None
    new_indexes = tuple(_index_state(conn, new_info, name) for name in where.new.indexes)
    old_index = _index_state(conn, old_info, where.old.indexes[0]) if old_info is not None and where.old.indexes \
        else None
    operator, origin = _retrieval_operator(conn, plan, old_index)
    return Subject(plan=plan, record=record, table_oid=new_info.oid, new_table=where.new.ident,
                   old_table=where.old.ident, new_column=new_col.name, new_type=new_col.base_type,
                   old_column=old_col.name if old_col is not None and old_col.is_vector else None,
                   old_type=old_col.base_type if old_col is not None and old_col.is_vector else "vector",
                   old_dimensions=old_col.dimensions if old_col is not None else None,
                   new_index=new_indexes[0] if new_indexes else None, old_index=old_index, operator=operator,
                   operator_origin=origin, new_indexes=new_indexes)


def _load(conn: psycopg.Connection, plan: Plan, schema: str, table: str,
          missing_ok: bool = False) -> catalog.TableInfo | None:
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    if row is None:
        if missing_ok:
            return None
        raise GateFailed(f"table {schema}.{table} of plan {plan.name!r} does not exist")
    return catalog.load_table(conn, row[0], schema, table)


def _index_state(conn: psycopg.Connection, info: catalog.TableInfo | None, name: str | None) -> IndexState | None:
    if name is None or info is None:
        return None
    found = next((i for i in info.indexes if i.name == name), None)
    if found is None:
        return None
    oid = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relname = %s", (found.schema, found.name)).fetchone()[0]  # type: ignore[index]
    partitions = tuple(r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_partition_tree(%s::regclass) t JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0",
        (oid,)))
    return IndexState(name=found.name, oid=oid, column=found.column, method=found.method, opclass=found.opclass,
                      operator=opclass_operator(conn, found.method, found.opclass), options=dict(found.options),
                      valid=found.valid, ready=found.ready, predicate=found.predicate, key=found.key,
                      key_type=found.key_type, reads=tuple(found.reads), partitions=partitions)


def opclass_operator(conn: psycopg.Connection, method: str, opclass: str) -> str | None:
    """The ordering (ORDER BY) operator an index operator class serves, from pg_amop."""
    row = conn.execute(
        """SELECT o.oprname FROM pg_opclass c
           JOIN pg_am am ON am.oid = c.opcmethod
           JOIN pg_amop a ON a.amopfamily = c.opcfamily AND a.amoppurpose = 'o'
           JOIN pg_operator o ON o.oid = a.amopopr
           WHERE am.amname = %s AND c.opcname = %s
           ORDER BY a.amopstrategy LIMIT 1""", (method, opclass)).fetchone()
    return row[0] if row else None


def _retrieval_operator(conn: psycopg.Connection, plan: Plan, old_index: IndexState | None) -> tuple[str, str]:
    """The distance the application orders by: the one its (original) index serves."""
    if old_index is not None and old_index.operator in DISTANCE_OPERATORS:
        return old_index.operator, f"original index {old_index.name} ({old_index.opclass})"
    if plan.indexes:
        main = plan.indexes[0]
        operator = opclass_operator(conn, main.method, main.opclass)
        if operator in DISTANCE_OPERATORS:
            assert operator is not None
            where = f"original index {main.original_name}" if main.original_name else "the plan's --index"
            return operator, f"{where} as planned ({main.opclass})"
    return DEFAULT_OPERATOR, "no index on the original column: cosine distance (<=>) assumed"


# -- the sample every model-side check shares ---------------------------------------------------

@dataclass
class SampleRow:
    key: str
    text: str
    title: str | None
    vector: np.ndarray  # the stored new vector
    old_vector: np.ndarray | None = None  # the row's vector in the original column, when it is there


def sample_rows(conn: psycopg.Connection, subject: Subject, n: int, seed: str) -> list[SampleRow]:
    """n rows with text and a new vector embedded from that text, chosen by a keyed hash of the key.

    Rows a live application changed since they were embedded (pending) are left out: they are
    re-embedded by the guarded path before cutover swaps, so their old vector is no evidence.

    Deterministic (the same table and seed give the same rows, so a verdict repeats) and
    independent of physical order (a backfill in page order would otherwise bias the sample).
    """
    plan = subject.plan
    query = template(
        "verify_sample", key=subject.key("t"), text=plan.text_expression("t"), title=plan.title_expression("t"),
        new=sql.Identifier("t", subject.new_column), table=subject.table, has_text=subject.has_text("t"),
        old=_old_vector(subject), old_join=_old_join(subject),
        plan_id=sql.Literal(subject.record.id), ledger_key=key_json(plan, "t"), hash=plan.text_hash_expression("t"),
        seed=sql.Literal(seed), limit=sql.Literal(n))
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        rows = conn.execute(query).fetchall()
    return [SampleRow(key=r[0], text=r[1], title=r[2], vector=_as_array(r[3]),
                      old_vector=_as_array(r[4]) if r[4] is not None else None) for r in rows]


def _copied(subject: Subject) -> bool:
    """The old vectors live in another table (a strategy that copies the table)."""
    return subject.old_column is not None and subject.old_table != subject.new_table


def _old_vector(subject: Subject) -> sql.Composable:
    if subject.old_column is None:
        return sql.SQL("NULL")
    return sql.Identifier("o" if _copied(subject) else "t", subject.old_column)


def _old_join(subject: Subject) -> sql.Composable:
    """The original table joined by key, when the old vectors are not in the new vectors' table."""
    if not _copied(subject):
        return sql.SQL("")
    same_key = sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("o", c), sql.Identifier("t", c))
                                     for c in subject.plan.primary_key)
    return sql.SQL("LEFT JOIN {} AS o ON {}").format(subject.old_table, same_key)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "to_numpy"):  # pgvector HalfVector / SparseVector
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def search_sql(subject: Subject, column: str, column_type: str, *, limit: int, exact: bool = False,
               predicate: str | None = None, table: sql.Identifier | None = None, key: str | None = None,
               operator: str | None = None) -> sql.Composed:
    """The application's retrieval query on `column` (ORDER BY distance LIMIT k), returning keys.

    `key` orders by an index's key expression instead (`(embedding)::halfvec(768)`, as PostgreSQL
    deparses the live index), with `operator` the distance its opclass serves: the query shape
    that index serves. `exact` adds the key as a second sort key: no vector index can serve that
    ORDER BY, so the planner has to compute every distance (belt and braces beside prepare=False
    and enable_indexscan=off: a prepared generic plan could otherwise pick the index).
    """
    operator = operator or subject.operator
    if operator not in DISTANCE_OPERATORS or column_type not in VECTOR_TYPES:
        raise GateFailed(f"refusing to build a query with operator {operator!r} on type {column_type!r}")
    target = sql.SQL(key) if key else sql.Identifier(column)
    order = sql.SQL("{} {} %s::{}").format(target, sql.SQL(operator), sql.SQL(column_type))
    if exact:
        order = sql.SQL("{}, {}").format(order, subject.key())
    # The predicate of a partial index is PostgreSQL's own deparse of the live index, not user input.
    where = sql.SQL("WHERE {}").format(sql.SQL(predicate)) if predicate else sql.SQL("")
    return sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT {}").format(
        subject.key(), table or subject.table, where, order, sql.Literal(limit))


def search(conn: psycopg.Connection, subject: Subject, column: str, column_type: str, vector: np.ndarray,
           k: int, table: sql.Identifier | None = None) -> list[str]:
    """Top-k keys as the application would get them (index allowed), read-only and unprepared;
    `table` is the table holding `column` (default: the new vectors' table)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        rows = conn.execute(search_sql(subject, column, column_type, limit=k, table=table), (vector,),
                            prepare=False).fetchall()
    return [r[0] for r in rows]
