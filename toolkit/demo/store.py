"""The demo's own RAG store: schema `reembed_demo`, table `passages`, filled by the source model.

The demo owns exactly this schema (marked by its COMMENT) and the plans registered on it.
Every run drops and recreates both, so running it again is harmless; a schema of that name
that the demo did not create is refused, never dropped.
"""

from __future__ import annotations

import logging
from typing import Sequence

import psycopg
from psycopg import sql
from tqdm import tqdm

from toolkit.demo.corpus import Passage
from toolkit.errors import BadInput, GateFailed
from toolkit.plan import DEFAULT_SOURCE, Plan
from toolkit.providers.base import Embedder
from toolkit.state import FINAL_PHASES, PlanRecord, list_plans

log = logging.getLogger(__name__)

SCHEMA = "reembed_demo"
TABLE = "passages"
COLUMN = "embedding"
INDEX = "passages_embedding_idx"
DIMENSIONS = 768
SCHEMA_MARK = "created by `reembed demo`: dropped and recreated by every run of it"
LOAD_BATCH = 128


def table_ident() -> sql.Identifier:
    return sql.Identifier(SCHEMA, TABLE)


def demo_plans(conn: psycopg.Connection) -> list[PlanRecord]:
    return [r for r in list_plans(conn) if r.table_schema == SCHEMA]


def check_owned(conn: psycopg.Connection) -> bool:
    """True when the demo schema exists (and is ours); BadInput when someone else's schema has the name."""
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
    if row is None:
        return False
    if row[0] != SCHEMA_MARK:
        raise BadInput(f"schema {SCHEMA} exists but was not created by `reembed demo`; the demo will not drop it. "
                       "Run the demo against another database (--dsn)")
    return True


def reset(conn: psycopg.Connection) -> list[str]:
    """Remove what an earlier demo run left: its plans (tracking functions, ledger, events) and its schema.

    Returns the names of the plans removed. Touches nothing outside schema `reembed_demo` and
    the registry rows of plans on it."""
    check_owned(conn)
    removed = []
    for record in demo_plans(conn):
        if record.phase not in FINAL_PHASES:
            _drop_tracking(conn, record)
        removed.append(record.name)
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        # ON DELETE CASCADE takes the ledger, events, verifications and swaps of these plans with them.
        conn.execute("DELETE FROM reembed.plans WHERE table_schema = %s", (SCHEMA,))
    return removed


def _drop_tracking(conn: psycopg.Connection, record: PlanRecord) -> None:
    """The change-tracking function lives in schema reembed: dropping the demo schema would orphan it."""
    from toolkit.phases.prepare import DDL_LOCK_TIMEOUT_MS, DDL_RETRIES
    from toolkit.strategies import strategy_for

    plan = Plan.from_spec(record.spec)
    strategy_for(plan).drop_tracking(conn, plan, record, lock_timeout_ms=DDL_LOCK_TIMEOUT_MS, retries=DDL_RETRIES)


def create_table(conn: psycopg.Connection) -> None:
    """A table shaped like a real RAG store, with no rows yet and no vector index."""
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(SCHEMA), sql.Literal(SCHEMA_MARK)))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, title text NOT NULL, content text NOT NULL, {} vector({}))"
        ).format(table_ident(), sql.Identifier(COLUMN), sql.Literal(DIMENSIONS)))


def load(conn: psycopg.Connection, passages: Sequence[Passage], embedder: Embedder) -> int:
    """Embed the passages as documents with the source model and COPY them in. Returns rows loaded."""
    loaded = 0
    columns = sql.SQL(", ").join(map(sql.Identifier, ("id", "title", "content", COLUMN)))
    with tqdm(total=len(passages), unit="row", desc="embedding with the source model", leave=False,
              disable=None) as bar:
        for start in range(0, len(passages), LOAD_BATCH):
            chunk = passages[start:start + LOAD_BATCH]
            batch = embedder.embed_documents([p.content for p in chunk], [p.title for p in chunk])
            if len(batch.index) != len(chunk):
                raise GateFailed(f"the source model skipped {len(chunk) - len(batch.index)} demo passages: "
                                 f"{sorted(set(batch.skipped.values()))}")
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(table_ident(), columns)) as copy:
                    for position, vector in zip(batch.index, batch.vectors):
                        p = chunk[position]
                        copy.write_row((start + position + 1, p.title, p.content, vector))
            loaded += len(chunk)
            bar.update(len(chunk))
    return loaded


def build_index(conn: psycopg.Connection) -> None:
    """The HNSW cosine index a RAG store queries through, then statistics for the planner."""
    conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
                 .format(sql.Identifier(INDEX), table_ident(), sql.Identifier(COLUMN)))
    conn.execute(sql.SQL("ANALYZE {}").format(table_ident()))


def column_model(conn: psycopg.Connection, plan_name: str) -> str:
    """Which model's vectors the column the application queries holds now, by the plan's phase."""
    from toolkit.state import get_plan
    from toolkit.strategies import places

    try:
        record = get_plan(conn, plan_name)
    except BadInput:
        return f"{DEFAULT_SOURCE} (the original column; no plan yet)"
    plan = Plan.from_spec(record.spec)
    if places(plan, record.phase).reads_new:
        return f"{plan.target} (task {plan.document_task}; swapped in by cutover)"
    return f"{plan.source} (the original column; plan {plan_name} is {record.phase})"
