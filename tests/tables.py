"""Builders of tables shaped like real ones, for tests across the suite."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np
import psycopg
from psycopg import sql

WORDS = (
    "postgres vector index graph query latency embedding model search document retrieval cosine distance "
    "table column row page tuple cluster replica backup lock transaction snapshot vacuum analyze planner "
    "network memory disk cache token batch quota request response error retry timeout window worker lease "
    "river mountain forest ocean desert city village garden kitchen library museum theatre market harbor "
    "apple orange banana cherry grape lemon mango peach pear plum tomato potato carrot onion pepper garlic"
).split()


def passage(i: int, words: int = 24) -> str:
    rng = random.Random(i)
    return f"passage {i}: " + " ".join(rng.choice(WORDS) for _ in range(words))


def random_unit_vectors(n: int, dims: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def create_docs(conn: psycopg.Connection, rows: int, *, table: str = "docs", schema: str = "public",
                dims: int = 768, index: str | None = "hnsw", m: int = 24, title: bool = True,
                vectors: Callable[[Sequence[str]], np.ndarray] | None = None, pk: str = "bigint",
                text: Callable[[int], str] = passage) -> sql.Identifier:
    """A RAG store: id, title, content (`text(i)`), embedding vector(dims) filled by `vectors`
    (default random), with an HNSW cosine index (m) or an IVFFlat index or none. Loaded with COPY."""
    ident = sql.Identifier(schema, table)
    pk_type = {"bigint": "bigint", "uuid": "uuid", "text": "text"}[pk]
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id {} PRIMARY KEY, title text, content text, embedding vector({}))").format(
        ident, sql.SQL(pk_type), sql.Literal(dims)))
    texts = [text(i) for i in range(rows)]
    vecs = vectors(texts) if vectors else random_unit_vectors(rows, dims)
    import uuid as _uuid

    def key(i: int) -> object:
        return i if pk == "bigint" else (str(_uuid.UUID(int=i + 1)) if pk == "uuid" else f"doc-{i:06d}")

    with conn.cursor().copy(sql.SQL("COPY {} (id, title, content, embedding) FROM STDIN").format(ident)) as copy:
        for i in range(rows):
            copy.write_row((key(i), f"title {i % 50}" if title else None, texts[i], vecs[i]))
    if index == "hnsw":
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {})").format(
            sql.Identifier(f"{table}_embedding_idx"), ident, sql.Literal(m)))
    elif index == "ivfflat":
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING ivfflat (embedding vector_l2_ops) WITH (lists = 10)").format(
            sql.Identifier(f"{table}_embedding_idx"), ident))
    conn.execute(sql.SQL("ANALYZE {}").format(ident))
    return ident
