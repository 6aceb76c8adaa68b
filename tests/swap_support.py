"""Helpers of the index / cutover / rollback / cleanup tests: a docs table taken through the real
`reembed plan` and `reembed run` (Gemini emulator), and catalog probes."""

from __future__ import annotations

import numpy as np
import psycopg
from psycopg import sql

from tables import create_docs

PLAN = "p1"


def backfilled(conn: psycopg.Connection, run_cli, rows: int = 300, *, index: str | None = "hnsw",  # type: ignore[no-untyped-def]
               plan_args: tuple[str, ...] = (), before_run=None, build_index: bool = True) -> None:
    """docs(rows) with an HNSW cosine index (m=24), planned and filled by `reembed run`, then indexed."""
    create_docs(conn, rows, index=index)
    if before_run:
        before_run(conn)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title",
                     "--name", PLAN, "--offline", *plan_args)
    assert result.exit_code == 0, result.output
    result = run_cli("run", PLAN, "--no-progress")
    assert result.exit_code == 0, result.output
    if build_index:
        result = run_cli("index", PLAN, "--no-progress")
        assert result.exit_code == 0, result.output


def plan_row(conn: psycopg.Connection) -> tuple[str, str, str]:
    """(phase, shadow column, old column) of the test plan."""
    return conn.execute("SELECT phase, shadow_column, old_column FROM reembed.plans WHERE name = %s",
                        (PLAN,)).fetchone()  # type: ignore[return-value]


def columns(conn: psycopg.Connection, table: str = "docs") -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (table,))]


def vector_of(conn: psycopg.Connection, column: str, row_id: int) -> np.ndarray:
    v = conn.execute(sql.SQL("SELECT {} FROM docs WHERE id = %s").format(sql.Identifier(column)), (row_id,)).fetchone()[0]
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def indexes(conn: psycopg.Connection) -> dict[str, str]:
    """index name -> definition, for the docs table."""
    return dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'docs'").fetchall())


def swap_record(conn: psycopg.Connection, direction: str) -> tuple[float, int]:
    """(lock_ms, attempts) of the plan's one swap in `direction`, after checking what they stand for:
    the swap held the table's lock (a measured, positive time), took it at its first try (nothing
    else held the table), and let it go (no ACCESS EXCLUSIVE left on it). How long it held the lock
    is a figure for `reembed bench`, not a threshold here: a loaded machine stretches it."""
    rows = conn.execute("SELECT lock_ms, attempts FROM reembed.swaps WHERE direction = %s", (direction,)).fetchall()
    assert len(rows) == 1, rows
    lock_ms, attempts = rows[0]
    assert lock_ms > 0 and attempts == 1, (lock_ms, attempts)
    left = conn.execute("SELECT count(*) FROM pg_locks WHERE relation = 'docs'::regclass "
                        "AND mode = 'AccessExclusiveLock'").fetchone()[0]
    assert left == 0, f"{left} ACCESS EXCLUSIVE locks still on docs after the {direction}"
    return lock_ms, attempts
