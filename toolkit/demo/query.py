"""Query vectors for a plan's models, and the application's retrieval query run as it is.

Used by `reembed embed-query` (a vector to paste into psql) and by the demo's example query,
which runs the same SQL text before and after cutover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from toolkit.errors import BadInput, GateFailed
from toolkit.plan import Plan, load
from toolkit.providers.base import ModelRef
from toolkit.state import FINAL_PHASES


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form: `[0.1,-0.2,...]`, float32 precision (9 significant digits round-trip)."""
    return "[" + ",".join(f"{float(x):.9g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


def single_live_plan(conn: psycopg.Connection) -> str:
    """The name of the one plan that is not cleaned up or abandoned; BadInput when none or several."""
    names = [r[0] for r in conn.execute(
        "SELECT name FROM reembed.plans WHERE phase <> ALL (%s) ORDER BY id", (list(FINAL_PHASES),)).fetchall()]
    if not names:
        raise BadInput("no live plan in this database: name one with --plan (see `reembed plans`)")
    if len(names) > 1:
        raise BadInput(f"{len(names)} live plans ({', '.join(names)}): choose one with --plan")
    return names[0]


def embed_query_for_plan(conn: psycopg.Connection, text: str, *, plan_ref: str | None, source: bool) -> np.ndarray:
    """TEXT embedded as a query by the plan's target model (or its source model with `source`)."""
    plan, _ = load(conn, plan_ref or single_live_plan(conn))
    return embed_query(plan.source_ref if source else plan.target_ref, plan.dimensions, text)


def embed_query(model: ModelRef, dimensions: int, text: str) -> np.ndarray:
    """One query vector from `model` at `dimensions`, with provider settings from the environment."""
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    if not text.strip():
        raise BadInput("the query text is empty: providers refuse to embed empty text")
    embedder = make_embedder(model, dimensions, ProviderSettings.from_env())
    try:
        batch = embedder.embed_queries([text])
    finally:
        embedder.close()
    if not len(batch.index):
        reason = batch.skipped.get(0, "skipped")
        raise GateFailed(f"{model} did not embed the query: {reason}")
    return batch.vectors[0]


@dataclass
class QueryResult:
    sql_text: str  # exactly what was sent, with the $1 placeholder
    rows: list[tuple[object, str, float]]  # (id, title, cosine distance)
    index_used: str | None  # the index the planner chose, None for a scan


def retrieval_sql(plan_or_table: Plan | sql.Identifier, column: str, k: int) -> sql.Composed:
    """The application's retrieval query: it names the column, never a model."""
    table = plan_or_table.table if isinstance(plan_or_table, Plan) else plan_or_table
    return sql.SQL("SELECT id, title, {col} <=> %(q)s AS distance FROM {table} ORDER BY {col} <=> %(q)s LIMIT {k}").format(
        col=sql.Identifier(column), table=table, k=sql.Literal(k))


def run_retrieval(conn: psycopg.Connection, query: sql.Composed, vector: np.ndarray) -> QueryResult:
    """Run the retrieval query with the vector as a parameter; report the index the planner used."""
    params = {"q": np.asarray(vector, dtype=np.float32)}
    rows = conn.execute(query, params).fetchall()
    plan_rows = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
    return QueryResult(sql_text=query.as_string(conn).replace("%(q)s", "$1"),
                       rows=[(r[0], r[1], float(r[2])) for r in rows],
                       index_used=_index_name(plan_rows[0][0]["Plan"]) if plan_rows else None)


def _index_name(node: dict) -> str | None:
    if node.get("Index Name"):
        return str(node["Index Name"])
    for child in node.get("Plans", []):
        found = _index_name(child)
        if found:
            return found
    return None
