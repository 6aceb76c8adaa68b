"""The demo's retrieval query, run as the application runs it: the same SQL text before and
after cutover. Query vectors come from toolkit.query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from toolkit.plan import Plan


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
