"""A run ends even while the application keeps changing rows: it sweeps again for rows changed
during the run a bounded number of times, leaves only a small tail pending, and the next run
(once the writes pause) finishes with every vector right."""

from __future__ import annotations

import json
import threading
import time

import psycopg

from backfill_support import gemini, make_plan, mismatches, shadow_column  # noqa: F401  (fixture)
from reliability_support import wait_for
from tables import create_docs
from toolkit.db import Database


def _steady_writer(database: Database, stop: threading.Event, counter: list[int]) -> None:
    with database.connect() as conn:
        i = 0
        while not stop.is_set():
            conn.execute("UPDATE docs SET content = %s WHERE id = %s", (f"rewritten {i} river mountain", i % 400))
            counter[0] += 1
            i += 1
            time.sleep(0.01)


def test_run_ends_under_steady_writes_and_the_tail_is_caught_up(
        database: Database, conn: psycopg.Connection, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 400)
    name = make_plan(run_cli)
    # Every request takes 0.2 s, so rows keep changing while each batch is in flight: a run that
    # waited for a moment with nothing pending would never end.
    gemini.configure(latency=0.2)
    stop, writes = threading.Event(), [0]
    writer = threading.Thread(target=_steady_writer, args=(database, stop, writes), daemon=True)
    writer.start()
    try:
        wait_for(lambda: writes[0] > 0, timeout=600, what="the application's first write")
        written_before = writes[0]
        # The run returning at all is the point: a run that waited for a moment with nothing pending
        # would chase the writer for ever.
        result = run_cli("run", name, "--no-progress", "--json")
        written_during = writes[0] - written_before
        assert result.exit_code == 0, result.stderr
    finally:
        stop.set()
        writer.join(timeout=600)
    summary = json.loads(result.stdout)
    assert written_during > 0, "the application did not write during the run"
    # Whatever is still pending changed while the run ran (a tail of its last sweep), never a row
    # that was already waiting when it began (after preparing): no backlog left behind.
    began = conn.execute("SELECT at FROM reembed.events WHERE kind = 'run' AND message LIKE 'run started%%'"
                         ).fetchone()[0]
    backlog = conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending' AND changed_at <= %s",
                           (began,)).fetchone()[0]
    assert backlog == 0, summary
    final = run_cli("run", name, "--no-progress", "--json")
    assert final.exit_code == 0, final.stderr
    assert json.loads(final.stdout)["rows_pending"] == 0
    assert json.loads(final.stdout)["phase"] == "backfilled"
    assert mismatches(conn, shadow_column(conn, name)) == []
