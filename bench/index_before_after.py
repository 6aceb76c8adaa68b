"""The copy strategy's index choice (issue 14, point 4): an HNSW index built before the load (every
batch insert then pays the graph) against `CREATE INDEX CONCURRENTLY` after it, and the vector
column's storage (EXTERNAL, pgvector's default, which a copy keeps; MAIN, inline) for the build
after the load. One run, the same random rows, the same server, printed.

Run: python bench/index_before_after.py DSN [--rows 20000] [--batch 200]
(a scratch database `reembed_idx_bench` is created on the server and dropped at the end).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

SCRATCH = "reembed_idx_bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((args.rows, 768)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(SCRATCH)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
        try:
            with psycopg.connect(psycopg.conninfo.make_conninfo(args.dsn, dbname=SCRATCH), autocommit=True) as conn:
                measure(conn, vectors, args.batch)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(SCRATCH)))


def measure(conn: psycopg.Connection, vectors: np.ndarray, batch: int) -> None:
    conn.execute("CREATE EXTENSION vector")
    register_vector(conn)
    conn.execute("SET maintenance_work_mem = '256MB'")
    conn.execute("CREATE TABLE src (id bigint PRIMARY KEY, content text, v vector(768))")
    with conn.cursor().copy("COPY src (id, content, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "text", "vector"])
        for i, vector in enumerate(vectors):
            copy.write_row((i, f"text {i}", vector))
    conn.execute("VACUUM ANALYZE src")
    rows = len(vectors)

    def table(name: str, storage: str) -> str:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE src INCLUDING ALL)").format(ident))
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN v SET STORAGE {}").format(ident, sql.SQL(storage)))
        return name

    def load(name: str) -> float:
        ident = sql.Identifier(name)
        started = time.perf_counter()
        for low in range(0, rows, batch):
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM src WHERE id >= %s AND id < %s").format(ident),
                         (low, low + batch))
        return time.perf_counter() - started

    def build(name: str, concurrently: bool) -> float:
        started = time.perf_counter()
        conn.execute(sql.SQL("CREATE INDEX {} {} ON {} USING hnsw (v vector_cosine_ops) WITH (m = 16)").format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""), sql.Identifier(f"{name}_hnsw"),
            sql.Identifier(name)))
        return time.perf_counter() - started

    for storage in ("EXTERNAL", "MAIN"):
        name = table(f"after_{storage.lower()}", storage)
        loaded = load(name)
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
        built = build(name, concurrently=True)
        print(f"after the load, storage {storage}: load {loaded:.1f} s + CONCURRENTLY build {built:.1f} s "
              f"= {loaded + built:.1f} s", flush=True)
    name = table("before_external", "EXTERNAL")
    built = build(name, concurrently=False)
    loaded = load(name)
    print(f"before the load, storage EXTERNAL: build on the empty table {built:.1f} s + load {loaded:.1f} s "
          f"= {loaded + built:.1f} s", flush=True)


if __name__ == "__main__":
    main()
