"""Item 4, the application keeps working: while `run`, `index`, `verify` and `cutover` proceed,
another process inserts rows, updates text, titles and another column, deletes rows, and runs
its unchanged retrieval query, each at a steady rate. Its error count must be 0; its p99 query
latency during cutover and the swap's lock time are reported. Ends with nothing lost: after the
application stops and a last `reembed run`, every row's vector under the application's column
name is the target model's vector of its final text and title.
"""

from __future__ import annotations

import json
import time

import pytest

from backfill_support import gemini  # noqa: F401 (fixture)
from reliability_support import AppLoad, assert_nothing_lost, cutover_under_writes, kill_9, record, reembed_process
from swap_support import PLAN, plan_row
from tables import create_docs


def _lifecycle_under_load(conn, run_cli, gemini, database, tmp_path, *, rows: int, write_rate: float,  # type: ignore[no-untyped-def]
                          query_rate: float, label: str, run_limit: float) -> None:
    create_docs(conn, rows, index="hnsw")
    conn.execute("ALTER TABLE docs ADD COLUMN views integer NOT NULL DEFAULT 0")
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title",
                     "--name", PLAN, "--offline")
    assert result.exit_code == 0, result.output
    gemini.configure(latency=0.02)
    app = AppLoad(database.dsn, tmp_path / "app.json", write_rate=write_rate, query_rate=query_rate,
                  max_id=rows).start()
    windows: dict[str, tuple[float, float]] = {}
    attempts: list[str] = []
    verify_verdict = "not run"
    try:
        def phase(label_: str, *args: str):  # type: ignore[no-untyped-def]
            started = time.time()
            res = run_cli(*args)
            windows[label_] = (started, time.time())
            return res

        def run_bounded(label_: str) -> None:
            """`reembed run` must end (nothing pending) while the application keeps changing rows;
            bounded, so a run that keeps chasing new pending rows fails here instead of hanging."""
            started = time.time()
            proc = reembed_process("run", PLAN, "--no-progress", "--batch-size", "50", cwd=tmp_path)
            try:
                _, err = proc.communicate(timeout=run_limit)
            except Exception:
                kill_9(proc)
                pending = conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending'").fetchone()[0]
                raise AssertionError(f"`reembed run` ({label_}) did not finish within {run_limit}s under "
                                     f"{write_rate} application writes/s; {pending} rows pending") from None
            assert proc.returncode == 0, err
            windows[label_] = (started, time.time())

        run_bounded("run")
        res = phase("index", "index", PLAN, "--no-progress")
        assert res.exit_code == 0, res.output
        res = phase("verify", "verify", PLAN, "--no-source", "--json")
        verify_verdict = "passed" if res.exit_code == 0 else "failed: " + ", ".join(
            c["name"] for c in json.loads(res.stdout)["checks"] if not c["passed"]) if res.stdout.strip() else res.stderr
        # The application changes rows all the time: cutover embeds what it changed since `run`
        # before the lock, and the verification stays valid for the changes its measured write
        # rate explains, so cutover goes through without --force (run again only if a row changed
        # in the instant before its lock; see reliability_support.cutover_under_writes).
        started = time.time()
        res, runs = cutover_under_writes(run_cli, PLAN, "--json")
        windows["cutover"] = (started, time.time())
        attempts.extend(["refused"] * (runs - 1) + ["ok"])
        assert res.exit_code == 0, (verify_verdict, res.output)
        assert plan_row(conn)[0] == "cut_over", attempts
        time.sleep(1.0)  # the application keeps going on the swapped-in column
    finally:
        report = app.stop(after_every=("insert", "text", "title", "other", "delete"))
    result = run_cli("run", PLAN, "--no-progress", "--json")  # what the application changed meanwhile
    assert result.exit_code == 0, result.output
    assert report.error_count == 0, report.errors
    assert min(report.ops.get(op, 0) for op in ("insert", "text", "title", "other", "delete")) > 0, report.ops
    checked = assert_nothing_lost(conn, PLAN)
    lock_ms = conn.execute("SELECT lock_ms FROM reembed.swaps WHERE direction = 'cutover'").fetchone()[0]
    cut = windows["cutover"]
    during_cutover = report.latencies(*cut)
    figures = {
        "rows": rows, "rows_at_end": checked, "app_ops": report.ops, "app_errors": report.error_count,
        "p99_query_ms_during_cutover": round(report.p99(*cut), 1),
        "max_query_ms_during_cutover": round(float(during_cutover.max()), 1) if len(during_cutover) else None,
        "queries_during_cutover": len(during_cutover),
        "p99_query_ms_overall": round(report.p99(), 1),
        "p99_write_ms_during_cutover": round(report.p99(*cut, of="writes"), 1),
        "lock_ms": round(lock_ms, 1), "cutover_attempts": len(attempts),
        "cutover_refusals": len(attempts) - 1, "verify_under_load": verify_verdict,
        **{f"{k}_seconds": round(v[1] - v[0], 1) for k, v in windows.items()},
    }
    assert len(during_cutover) > 0
    record("4 app load", label, "0 application errors; nothing lost", **figures)


def test_application_load_through_run_index_verify_cutover(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _lifecycle_under_load(conn, run_cli, gemini, database, tmp_path, rows=1000, write_rate=8, query_rate=25,
                          label="1000 rows; app writes 8/s (insert, text, title, other column, delete), queries 25/s",
                          run_limit=600)


@pytest.mark.soak
def test_application_load_soak(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _lifecycle_under_load(conn, run_cli, gemini, database, tmp_path, rows=20000, write_rate=30, query_rate=50,
                          label="20000 rows; app writes 30/s, queries 50/s", run_limit=1800)
