"""Issue 12, point 10: `reembed index` waiting behind an idle-in-transaction session says so while
it waits, naming the session's pid (as cutover names the lock holders), and finishes once that
transaction ends."""

from __future__ import annotations

import selectors
import time

import psycopg

from backfill_support import gemini, reembed_subprocess  # noqa: F401 (fixture)
from shapes_support import ok
from tables import create_docs

WAIT_S = 120


def test_index_behind_an_idle_transaction_names_its_pid_and_goes_on_when_it_ends(conn, database, run_cli,  # type: ignore[no-untyped-def]
                                                                                 gemini) -> None:
    create_docs(conn, 60)
    ok(run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--name", "iw", "--offline"))
    ok(run_cli("run", "iw", "--no-progress"))
    idle = psycopg.connect(database.dsn)  # the application: wrote a row, then went idle in its transaction
    idle.execute("UPDATE docs SET title = 'edited' WHERE id = 1")
    blocker = idle.info.backend_pid
    proc = reembed_subprocess("index", "iw", "--no-progress", "--dsn", database.dsn)
    try:
        assert proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        said, deadline = "", time.monotonic() + WAIT_S
        while f"pid {blocker}" not in said and time.monotonic() < deadline and proc.poll() is None:
            if selector.select(timeout=1):
                said += proc.stderr.readline()
        assert f"pid {blocker} (" in said and "idle in transaction" in said, said
        assert "waiting for writers before build" in said and proc.poll() is None  # still waiting, not failed
        idle.commit()
        out, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, err
        assert "index gemini_embedding_001__docs_embedding_idx built" in out
        assert f"note: waited (waiting for writers before build) behind pid {blocker}" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        idle.close()
