"""reembed run under trouble: kill -9 and resume, the application writing throughout, two runs at
once, a hung holder whose lease expires, and a provider answering garbage."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import psycopg
import pytest

from backfill_support import (gemini, make_plan, mismatches, reembed_subprocess, shadow_column,  # noqa: F401
                              status_json)
from reliability_support import backend_pids
from tables import create_docs, passage


def _ledger(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(done, pending, max embed_count)."""
    return conn.execute("SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'pending'), "
                        "coalesce(max(embed_count), 0) FROM reembed.ledger").fetchone()


def _wait_for(predicate, timeout: float = 600.0, step: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


@pytest.mark.parametrize("rows", [3000, pytest.param(20000, marks=pytest.mark.soak)])
def test_kill_9_in_the_middle_then_resume(conn, run_cli, gemini, tmp_path, rows: int) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, rows, index="hnsw")
    name = make_plan(run_cli)
    gemini.configure(latency=0.05)
    proc = reembed_subprocess("run", name, "--batch-size", "50", "--concurrency", "4", "--no-progress", cwd=tmp_path)
    try:
        _wait_for(lambda: _ledger(conn)[0] >= rows // 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Its backend outlives it by as long as it takes to run what it was sent (a write that
    # releases a batch's leases, say) and see the socket closed: count once it is gone.
    _wait_for(lambda: not backend_pids(conn))
    done_at_kill = _ledger(conn)[0]
    assert 0 < done_at_kill < rows
    held = conn.execute("SELECT count(*) FROM reembed.ledger WHERE lease_owner IS NOT NULL").fetchone()[0]
    # At most the batches in flight (4) and the one being written, whose write also claims the next.
    assert held <= (4 + 1) * 50
    texts_before = gemini.stats.texts
    gemini.configure(latency=0.0)
    # The dead process's leases are on this machine: the resume takes them back at once (they would
    # otherwise run for the default 300 s lease) instead of waiting them out.
    result = run_cli("run", name, "--json", "--no-progress", "--batch-size", "50")
    assert result.exit_code == 0, result.output
    taken_back = [r[0] for r in conn.execute("SELECT message FROM reembed.events WHERE kind = 'lease'")]
    assert taken_back == ([f"took back {held} leases of dead local processes"] if held else []), (held, taken_back)
    summary = json.loads(result.stdout)
    assert summary["phase"] == "backfilled" and summary["rows_pending"] == 0
    assert summary["rows_written"] == rows - done_at_kill
    assert mismatches(conn, shadow_column(conn, name)) == []
    assert _ledger(conn)[2] == 1  # no row written twice
    # Provider calls repeated: at most the batches that were in flight when it died.
    assert texts_before - done_at_kill <= 4 * 50 + 4 * 50


@pytest.mark.parametrize("rows", [2000, pytest.param(20000, marks=pytest.mark.soak)])
def test_application_writes_throughout_the_run(conn, database, run_cli, gemini, rows: int) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, rows, index="hnsw")
    name = make_plan(run_cli)
    stop = threading.Event()
    ops = {"insert": 0, "update": 0, "delete": 0, "title": 0}
    errors: list[BaseException] = []

    def application() -> None:
        rng = random.Random(7)
        next_id = 100_000
        try:
            with database.connect() as app:
                while not stop.is_set():
                    # Until the run is well under way and every kind of write has happened a few
                    # times (a loaded machine may give this thread little time).
                    if _ledger(app)[0] >= rows * 0.6 and min(ops.values()) > 5:
                        break
                    op = rng.choice(list(ops))
                    target = rng.randrange(rows)
                    if op == "insert":
                        app.execute("INSERT INTO docs (id, title, content) VALUES (%s, %s, %s)",
                                    (next_id, "inserted", passage(next_id)))
                        next_id += 1
                    elif op == "update":
                        app.execute("UPDATE docs SET content = %s WHERE id = %s", (passage(target + 50_000), target))
                    elif op == "title":
                        app.execute("UPDATE docs SET title = %s WHERE id = %s", (f"t{rng.random()}", target))
                    else:
                        app.execute("DELETE FROM docs WHERE id = %s", (target,))
                    ops[op] += 1
                    time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=application)
    thread.start()
    try:
        # Paced writes, so the application keeps writing through most of the run.
        result = run_cli("run", name, "--json", "--no-progress", "--batch-size", "50",
                         "--max-rows-per-second", "1500")
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert result.exit_code == 0, result.output
    assert min(ops.values()) > 5, ops  # the application really did all of it during the run
    summary = json.loads(result.stdout)
    assert summary["rows_pending"] == 0 and summary["phase"] == "backfilled"
    # No second run: everything the application did before stopping is embedded, nothing stale.
    assert mismatches(conn, shadow_column(conn, name)) == []
    assert status_json(run_cli, name)["rows_total"] == conn.execute("SELECT count(*) FROM docs").fetchone()[0]


def test_two_runs_at_once_share_the_work_and_embed_no_row_twice(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = 2500
    create_docs(conn, rows, index="hnsw")
    name = make_plan(run_cli)
    gemini.configure(latency=0.03)
    # Each paced to 300 rows/s: alone one would need 8 s for the table, so the other, however late a
    # loaded machine starts it, still finds work (both must have written).
    procs = [reembed_subprocess("run", name, "--batch-size", "50", "--concurrency", "2", "--json", "--no-progress",
                                "--max-rows-per-second", "300", cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outputs]
    written = [s["rows_written"] for s in summaries]
    assert sum(written) == rows and min(written) > 0, written  # both worked, together exactly once
    assert _ledger(conn) == (rows, 0, 1)
    assert gemini.stats.texts == rows  # not one text sent twice to the provider
    assert mismatches(conn, shadow_column(conn, name)) == []


def test_a_hung_holder_loses_its_lease_and_writes_nothing(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = 1200
    create_docs(conn, rows, index=None)
    name = make_plan(run_cli)
    gemini.configure(latency=0.05)
    hung = reembed_subprocess("run", name, "--batch-size", "50", "--concurrency", "2", "--lease-seconds", "2",
                              "--json", "--no-progress", cwd=tmp_path)
    try:
        _wait_for(lambda: _ledger(conn)[0] >= 100)
        os.kill(hung.pid, signal.SIGSTOP)  # alive but frozen, holding leases (possibly mid-request)
        held = conn.execute("SELECT count(*) FROM reembed.ledger WHERE lease_owner IS NOT NULL").fetchone()[0]
        gemini.configure(latency=0.0)
        other = run_cli("run", name, "--json", "--no-progress", "--batch-size", "50", "--lease-seconds", "2")
        assert other.exit_code == 0, other.output
        assert held > 0
        taken_over = json.loads(other.stdout)["rows_written"]
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    out, err = hung.communicate(timeout=600)
    assert hung.returncode == 0, err
    # The frozen process woke up with embedded batches whose leases were taken over: not written.
    assert json.loads(out)["rows_written"] + taken_over == rows
    assert _ledger(conn) == (rows, 0, 1)
    assert mismatches(conn, shadow_column(conn, name)) == []


def test_malformed_provider_answers_are_never_written(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 300, index=None)
    name = make_plan(run_cli)
    shadow = "embedding__gemini_embedding_001"
    gemini.configure(malformed_rate=1.0, malformed_kind="nan")
    result = run_cli("run", name, "--no-progress", "--batch-size", "100", "--concurrency", "1")
    assert result.exit_code == 1
    assert "malformed" in result.stderr.lower() or "non-finite" in result.stderr.lower()
    assert conn.execute(f'SELECT count(*) FROM docs WHERE "{shadow}" IS NOT NULL').fetchone()[0] == 0
    assert _ledger(conn)[:2] == (0, 300)
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE lease_owner IS NOT NULL").fetchone()[0] == 0
    # A provider that garbles an answer now and then: those batches are asked for again.
    gemini.configure(malformed_rate=0.0, script=["dimension", "ok", "count", "zero"])
    result = run_cli("run", name, "--json", "--no-progress", "--batch-size", "100", "--concurrency", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["malformed"] == 3
    assert mismatches(conn, shadow) == []


def test_workers_processes_finish_the_plan(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = 2000
    create_docs(conn, rows, index="hnsw")
    name = make_plan(run_cli)
    gemini.configure(latency=0.02)
    proc = reembed_subprocess("run", name, "--workers", "2", "--batch-size", "50", "--json", "--no-progress",
                              cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["workers"] == 2 and summary["rows_written"] == rows and summary["phase"] == "backfilled"
    assert _ledger(conn) == (rows, 0, 1)
    assert mismatches(conn, shadow_column(conn, name)) == []
