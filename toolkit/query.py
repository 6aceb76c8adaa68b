"""Query vectors for a plan's models: what `reembed embed-query` prints and what an application
embeds its queries with (the target model as `RETRIEVAL_QUERY` after cutover, the source model
before it and after a rollback).
"""

from __future__ import annotations

import numpy as np
import psycopg

from toolkit.errors import BadInput, GateFailed
from toolkit.plan import load
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
    return embed_query(plan.source_ref if source else plan.target_ref,
                       plan.source_dimensions if source else plan.dimensions, text)


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
