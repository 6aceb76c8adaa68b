"""Item 1, crashes: `kill -9` of `reembed run` at random instants of one migration (resumed each
time), of `reembed index` mid-build, and of `reembed cutover` while it waits for the table's lock
and while its swap transaction is open. Each ends with nothing lost.

test_backfill_resilience.py already covers one kill at a fixed point; here the instants are
random (seed printed and recorded), repeated, and the texts sent twice to the provider counted.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import psycopg
import pytest

from backfill_support import gemini, make_plan  # noqa: F401 (fixture)
from reliability_support import (assert_nothing_lost, kill_9, ledger, record, reembed_process, wait_for)
from swap_support import PLAN, backfilled, columns, indexes, plan_row
from tables import create_docs

SHADOW_INDEX = "gemini_embedding_001__docs_embedding_idx"


def _kill_run_repeatedly(conn, run_cli, gemini, tmp_path, *, rows: int, kills: int) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("REEMBED_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    create_docs(conn, rows, index="hnsw")
    name = make_plan(run_cli)
    gemini.configure(latency=0.04)
    instants: list[str] = []
    for k in range(kills):
        done = ledger(conn, name)["done"] if conn.execute("SELECT count(*) FROM reembed.ledger").fetchone()[0] else 0
        remaining = rows - done
        # A random instant in this run's share of what is left: early kills can land in start-up or
        # prepare (the first run prepares), later ones mid-batch.
        target = done + rng.randint(0, max(1, 2 * remaining // (kills - k + 1)))
        proc = reembed_process("run", name, "--batch-size", "25", "--concurrency", "3", "--no-progress",
                               cwd=tmp_path)
        try:
            if target == done:
                time.sleep(rng.uniform(0.0, 2.0))  # somewhere in start-up, prepare or the first batches
            else:
                wait_for(lambda: proc.poll() is not None or ledger(conn, name)["done"] >= target, timeout=600,
                         what=f"{target} rows done")
                time.sleep(rng.uniform(0.0, 0.05))
            assert proc.poll() is None, f"run ended before kill {k + 1}: {proc.communicate()}"
        finally:
            kill_9(proc)
        at = ledger(conn, name)["done"] if conn.execute("SELECT count(*) FROM reembed.ledger").fetchone()[0] else 0
        instants.append(f"{at}/{rows}")
    sent_before_resume = gemini.stats.texts
    gemini.configure(latency=0.0)
    result = run_cli("run", name, "--json", "--no-progress", "--batch-size", "50")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["phase"] == "backfilled" and summary["rows_pending"] == 0
    assert_nothing_lost(conn, name)
    figures = ledger(conn, name)
    assert figures["rows_embedded_twice"] == 0  # a row is written once, whatever was killed
    texts_twice = gemini.stats.texts - rows
    # At most what was in flight at each kill was sent again: kills x concurrency x batch size.
    assert 0 <= texts_twice <= kills * 3 * 25, texts_twice
    record("1 crashes", f"kill -9 of `reembed run` at {kills} random instants ({rows} rows)",
           "resumed each time; nothing lost; no row written twice",
           kills=kills, seed=seed, killed_at_rows_done=instants, texts_embedded_twice=texts_twice,
           rows_written_twice=figures["rows_embedded_twice"], texts_sent_before_final_run=sent_before_resume)


def test_kill_9_run_at_3_random_instants_then_resume(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _kill_run_repeatedly(conn, run_cli, gemini, tmp_path, rows=1500, kills=3)


@pytest.mark.soak
def test_kill_9_run_at_10_random_instants_then_resume(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _kill_run_repeatedly(conn, run_cli, gemini, tmp_path, rows=10000, kills=10)


def _index_state(conn: psycopg.Connection) -> tuple[bool, bool] | None:
    return conn.execute("SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = to_regclass(%s)",
                        (f'"{SHADOW_INDEX}"',)).fetchone()


def test_kill_9_during_index_leaves_an_invalid_index_that_the_next_index_rebuilds(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, rows=2500, build_index=False)
    # With client_connection_check_interval the server notices the dead client and aborts the
    # build (without it the orphaned backend would finish the build on its own: no leftover).
    proc = reembed_process("index", PLAN, "--no-progress", "--workers", "0", cwd=tmp_path,
                           env_extra={"PGOPTIONS": "-c client_connection_check_interval=50ms"})
    try:
        wait_for(lambda: proc.poll() is not None or conn.execute(
            "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'reembed' AND p.phase LIKE 'building index%'").fetchone()[0],
            timeout=600, what="the index build")
        assert proc.poll() is None, proc.communicate()
    finally:
        kill_9(proc)
    wait_for(lambda: not conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reembed' AND datname = current_database() "
        "AND pid <> pg_backend_pid()").fetchone()[0], timeout=600, what="the orphaned backend to end")
    assert _index_state(conn) == (False, True) or _index_state(conn) == (False, False), _index_state(conn)
    assert plan_row(conn)[0] == "backfilled"
    result = run_cli("index", PLAN, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["action"] == "built" and out["dropped_invalid"] is True
    assert _index_state(conn) == (True, True) and plan_row(conn)[0] == "indexed"
    assert_nothing_lost(conn, PLAN)
    record("1 crashes", "kill -9 of `reembed index` mid-build (2500 rows, HNSW)",
           "INVALID leftover dropped and rebuilt by the next `reembed index`", kills=1,
           rebuild_seconds=round(out["seconds"], 2))


def _before(conn: psycopg.Connection, shadow: str, old: str) -> None:
    """Fully before the swap: original names, the shadow column and its index, no swap recorded."""
    cols = columns(conn)
    assert "embedding" in cols and shadow in cols and old not in cols, cols
    assert SHADOW_INDEX in indexes(conn) and "docs_embedding_idx" in indexes(conn)
    assert plan_row(conn)[0] in ("indexed", "verified")
    assert conn.execute("SELECT count(*) FROM reembed.swaps").fetchone()[0] == 0


def _blocked_read_ms(database) -> tuple[threading.Thread, list[float]]:  # type: ignore[no-untyped-def]
    """A reader that starts now and records how long the application's query waited."""
    out: list[float] = []

    def read() -> None:
        with database.connect() as reader:
            started = time.monotonic()
            reader.execute("SELECT id FROM docs ORDER BY id LIMIT 1").fetchall()
            out.append((time.monotonic() - started) * 1000)

    thread = threading.Thread(target=read)
    thread.start()
    return thread, out


def test_kill_9_during_cutover_leaves_the_table_fully_before(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, rows=300)
    _, shadow, old = plan_row(conn)
    verified = run_cli("verify", PLAN, "--no-source")
    assert verified.exit_code == 0, verified.output
    reader_waits: dict[str, float] = {}

    # (a) Killed while waiting for the table's lock behind a long transaction.
    holder = database.connect(autocommit=False)
    holder.execute("SELECT count(*) FROM docs")  # ACCESS SHARE until commit
    proc = reembed_process("cutover", PLAN, "--lock-timeout", "3000", "--retries", "0", cwd=tmp_path)
    try:
        wait_for(lambda: proc.poll() is not None or conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
            "AND l.relation = 'docs'::regclass AND a.application_name = 'reembed'").fetchone()[0],
            timeout=600, what="cutover to wait for the lock")
        assert proc.poll() is None, proc.communicate()
    finally:
        kill_9(proc)
    holder.rollback()
    holder.close()
    thread, waited = _blocked_read_ms(database)
    thread.join(timeout=600)
    assert waited, "an application read after the kill got no answer"
    reader_waits["after kill while waiting"] = waited[0]
    _before(conn, shadow, old)

    # (b) Killed with its swap transaction open: the columns are renamed inside it, and the insert
    # of the swap record waits for a lock we hold on reembed.swaps.
    blocker = database.connect(autocommit=False)
    blocker.execute("LOCK TABLE reembed.swaps IN SHARE MODE")
    proc = reembed_process("cutover", PLAN, "--lock-timeout", "1500", "--retries", "0", cwd=tmp_path)
    try:
        wait_for(lambda: proc.poll() is not None or conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
            "AND l.relation = 'reembed.swaps'::regclass AND a.application_name = 'reembed'").fetchone()[0],
            timeout=600, what="the swap to be mid-transaction")
        assert proc.poll() is None, proc.communicate()
        # Mid-swap, inside the transaction: the renames are done but invisible to everyone else.
        assert "embedding" in columns(conn) and shadow in columns(conn)
    finally:
        kill_9(proc)
    # The orphaned backend still holds ACCESS EXCLUSIVE until its statement ends: its lock_timeout,
    # not our blocker, ends it. An application query arriving now gets its answer while the
    # blocker still holds reembed.swaps; then everything is as before.
    thread, waited = _blocked_read_ms(database)
    thread.join(timeout=600)
    assert waited, "an application read queued behind the killed swap got no answer"
    assert blocker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    blocker.rollback()
    blocker.close()
    reader_waits["during the killed swap"] = waited[0]
    wait_for(lambda: not conn.execute(
        "SELECT count(*) FROM pg_locks l WHERE l.relation = 'docs'::regclass AND l.mode = 'AccessExclusiveLock'"
    ).fetchone()[0], timeout=600, what="the killed swap's lock to go")
    _before(conn, shadow, old)

    # Nothing half-done and the verification still describes the state: cutover goes through.
    result = run_cli("cutover", PLAN)
    assert result.exit_code == 0, result.output
    assert plan_row(conn)[0] == "cut_over"
    cols = columns(conn)
    assert "embedding" in cols and old in cols and shadow not in cols
    assert_nothing_lost(conn, PLAN)
    lock_ms = conn.execute("SELECT lock_ms FROM reembed.swaps").fetchone()[0]
    record("1 crashes", "kill -9 of `reembed cutover` (a) waiting for the lock, (b) inside the swap transaction",
           "table fully before after each kill; the next cutover completes", kills=2,
           reader_wait_ms_after_a=round(reader_waits["after kill while waiting"], 1),
           reader_wait_ms_during_b=round(reader_waits["during the killed swap"], 1), lock_ms=round(lock_ms, 1))
