"""The bench's tables and scratch databases.

A table is loaded once into a template database (rows, vectors, the HNSW index on the original
column, VACUUM ANALYZE); every case that writes to it migrates its own clone (`CREATE DATABASE
... TEMPLATE`, a file copy): the floors and the end-to-end run of each strategy start from the
same bytes, and the HNSW graph is built once, not once per case.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import psycopg
from psycopg import sql

from toolkit.db import Database

if TYPE_CHECKING:
    from toolkit.phases.planning import PlanRequest

WORDS = ("postgres vector index graph query latency embedding model search document retrieval cosine distance "
         "table column row page tuple cluster replica backup lock transaction snapshot vacuum analyze planner "
         "network memory disk cache token batch quota request response error retry timeout window worker lease "
         "river mountain forest ocean desert city village garden kitchen library museum theatre market harbor").split()
TABLE = "docs"
DIMS = 768


def passage(i: int) -> str:
    rng = random.Random(i)
    return f"passage {i}: " + " ".join(rng.choice(WORDS) for _ in range(40))


def title(i: int) -> str:
    return f"title {i % 50}"


def answers(rows: int, dims: int) -> Iterable[tuple[str, str, str, int]]:
    """What the Gemini emulator is asked for the rows of a bench table: (text, task, title, dims)."""
    return ((passage(i), "RETRIEVAL_DOCUMENT", title(i), dims) for i in range(rows))


def dsn_for(admin_dsn: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def exists(admin: psycopg.Connection, name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def clone(admin: psycopg.Connection, template: str, name: str) -> None:
    drop(admin, name)
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))


def graph_memory(rows: int, dims: int) -> str:
    """maintenance_work_mem for an HNSW build of `rows` vectors: the graph with headroom, at most 8GB."""
    wanted = int(rows * (4 * dims + 8) * 1.4) + (64 << 20)
    return f"{min(wanted, 8 << 30) // (1 << 20)}MB"


def load_table(conn: psycopg.Connection, table: str, rows: int, dims: int, hnsw_m: int | None) -> None:
    """`table (id bigint primary key, title, content, embedding vector(dims))`, random unit vectors,
    with an HNSW index (cosine, m = hnsw_m) on embedding unless hnsw_m is None."""
    ident = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, title text, content text NOT NULL, "
                         "embedding vector({}))").format(ident, sql.Literal(dims)))
    rng = np.random.default_rng(0)
    with conn.cursor().copy(sql.SQL("COPY {} (id, title, content, embedding) FROM STDIN (FORMAT BINARY)")
                            .format(ident)) as copy:
        copy.set_types(["int8", "text", "text", "vector"])
        for start in range(0, rows, 1000):  # vectors made in chunks: the bench's memory stays flat too
            chunk = rng.standard_normal((min(1000, rows - start), dims)).astype(np.float32)
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            for j, v in enumerate(chunk):
                i = start + j
                copy.write_row((i, title(i), passage(i), v))
    if hnsw_m:
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(graph_memory(rows, dims))))
        conn.execute("SET max_parallel_maintenance_workers = 2")
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {})").format(
            sql.Identifier(f"{table}_embedding_idx"), ident, sql.Literal(hnsw_m)))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))


def make_template(admin: psycopg.Connection, admin_dsn: str, name: str, rows: int, dims: int,
                  hnsw_m: int | None) -> None:
    """A database with reembed's schema and the loaded table. Built under a temporary name and
    renamed when complete, so an interrupted build is never taken for a template."""
    from toolkit.migrations import upgrade

    building = f"{name}_building"
    drop(admin, building)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
    dsn = dsn_for(admin_dsn, building)
    upgrade(dsn)
    conn = Database(dsn).connect()
    try:
        load_table(conn, TABLE, rows, dims, hnsw_m)
    finally:
        conn.close()
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))


def plan_request(name: str, strategy: str, output: Path) -> "PlanRequest":
    """The plan of a bench table: `content` (titled) re-embedded by the default target, offline."""
    from toolkit.phases.planning import PlanRequest

    return PlanRequest(table=TABLE, column="embedding", text_columns=["content"], title_column="title", name=name,
                       offline=True, output=output, strategy=strategy)
