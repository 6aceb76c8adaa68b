"""`reembed run --workers N`: N local processes, each a `Worker` with its own connection,
embedder and limiter (1/N of the quotas each), watched by the parent, which shows progress from
the ledger and turns a child's failure into one error."""

from __future__ import annotations

import multiprocessing
import signal
import time
from dataclasses import asdict
from typing import Any

import psycopg

from toolkit.db import Database
from toolkit.errors import ReembedError
from toolkit.phases import ledger
from toolkit.phases.backfill.options import Counters, RunOptions, progress_bar
from toolkit.phases.backfill.worker import Worker, make_target_embedder
from toolkit.plan import Plan, load
from toolkit.state import PlanRecord


def worker_main(dsn: str | None, plan_name: str, options: dict[str, Any], owner: str, results: Any) -> None:
    """Entry point of a `--workers` child process: its own connection, embedder and limiter."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    try:
        db = Database(dsn)
        opts = RunOptions(**options)
        conn = db.connect()
        try:
            plan, record = load(conn, plan_name)
        finally:
            conn.close()
        embedder = make_target_embedder(plan, opts)
        try:
            counters = Worker(db, plan, record, opts, embedder, owner).run()
        finally:
            embedder.close()
        results.put(("ok", owner, asdict(counters)))
    except ReembedError as exc:
        results.put(("error", owner, (type(exc).__name__, str(exc), exc.exit_code)))
    except psycopg.Error as exc:
        results.put(("error", owner, ("DatabaseError", str(exc).strip().splitlines()[0] if str(exc) else "", 1)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which turns it into one line
        results.put(("error", owner, (type(exc).__name__, str(exc), 1)))


def _replica_state(conn: psycopg.Connection, plan_id: int) -> str | None:
    """"paused: ..." while the workers' latest replica event is a pause (they log pause and resume)."""
    row = conn.execute("SELECT message FROM reembed.events WHERE plan_id = %s AND kind = 'replica' "
                       "ORDER BY id DESC LIMIT 1", (plan_id,)).fetchone()
    return f"paused: {row[0][len('writing paused: '):]}" if row and row[0].startswith("writing paused: ") else None


def run_workers(db: Database, plan: Plan, record: PlanRecord, options: RunOptions,
                 before: ledger.Progress) -> Counters:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child_options = asdict(options.per_worker())
    owners = [ledger.owner_id(f"/w{i}") for i in range(options.workers)]
    processes = [context.Process(target=worker_main, args=(db.dsn, plan.name, child_options, owner, results),
                                 name=f"reembed-worker-{i}", daemon=True) for i, owner in enumerate(owners)]
    for p in processes:
        p.start()
    bar = progress_bar(before.rows_pending, options.progress)
    conn = db.connect()
    totals = Counters()
    errors: list[tuple[str, str, int]] = []
    reported: set[str] = set()
    start_done = before.rows_embedded + before.rows_skipped
    try:
        while len(reported) < len(processes):
            while not results.empty():
                status, owner, payload = results.get()
                reported.add(owner)
                if status == "ok":
                    totals.add(Counters(**payload))
                else:
                    errors.append(tuple(payload))  # type: ignore[arg-type]
            if errors:
                break
            if all(not p.is_alive() for p in processes) and results.empty():
                if len(reported) < len(processes):
                    time.sleep(0.2)
                    if results.empty():
                        errors.append(("WorkerDied", "a worker process ended without a report", 1))
                        break
                continue
            asked = time.monotonic()
            now = ledger.progress(conn, record.id)
            took = time.monotonic() - asked
            done = now.rows_embedded + now.rows_skipped - start_done
            bar.total = max(bar.total, done + now.rows_pending)
            bar.n = max(0, done)
            bar.set_postfix(skipped=now.rows_skipped, workers=sum(p.is_alive() for p in processes), refresh=False)
            if options.max_replica_lag:
                bar.set_description_str(_replica_state(conn, record.id) or "re-embedding", refresh=False)
            bar.refresh()
            # Counting a large ledger is not free: never spend more than ~5% of the time on it.
            time.sleep(max(0.5, 20 * took))
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=10)
        try:
            ledger.release_all(conn, record.id, owners)
        except psycopg.Error:
            pass
        conn.close()
        bar.close()
    if errors:
        kind, message, code = errors[0]
        error = ReembedError(f"a worker stopped: {message}")
        error.exit_code = code
        raise error
    return totals
