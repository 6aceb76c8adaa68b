"""`reembed run`: prepare when needed, then fill the new vectors until no row is pending.

Works in every phase from planned (it prepares first) to cut_over (then the strategy's `places`
say the new vectors carry the application's names). The work is done by `Worker`s: one in this
process, or `--workers N` processes (toolkit.phases.backfill.processes); several machines
running `reembed run` share the ledger the same way. The run ends when no row is pending: rows
inserted or changed meanwhile (the tracking put them back) are embedded first. With --follow it
keeps embedding the application's changes as they come until the plan is cleaned up, abandoned
or rolled back, or SIGINT/SIGTERM stops it (cleanly: batches in flight written, leases released).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg

from toolkit.db import Database
from toolkit.errors import GateFailed
from toolkit.phases import batch_jobs, ledger
from toolkit.phases.backfill.options import Counters, RunOptions, RunSummary, progress_bar
from toolkit.phases.backfill.processes import run_workers
from toolkit.phases.backfill.replicas import check_can_watch
from toolkit.phases.backfill.worker import Worker, make_target_embedder
from toolkit.phases.prepare import prepare
from toolkit.plan import Plan, load
from toolkit.state import FINAL_PHASES, PlanRecord, current_phase, log_event, set_phase
from toolkit.strategies import places

log = logging.getLogger(__name__)

# Phases in which run moves the phase forward; later phases (indexed ... rolled_back) keep theirs.
_BACKFILL_PHASES = ("planned", "prepared", "backfilling", "backfilled")


def check(record: PlanRecord) -> None:
    if record.phase in FINAL_PHASES:
        raise GateFailed(f"plan {record.name!r} is {record.phase}: its change tracking is gone; "
                         "plan the migration again to re-embed")


def refuse_open_batch_jobs(conn: psycopg.Connection, record: PlanRecord) -> None:
    """Rows in open Batch API jobs are leased to them for days: an online run would wait for them."""
    counts = batch_jobs.summary(conn, record.id)
    if counts["rows_in_open_jobs"]:
        open_jobs = counts["pending"] + counts["running"]
        raise GateFailed(f"{counts['rows_in_open_jobs']} rows of plan {record.name!r} are in {open_jobs} open batch "
                         f"jobs: collect them first with `reembed run {record.name} --batch-api`")


def run(db: Database, plan_ref: str, options: RunOptions) -> RunSummary:
    """Prepare when needed, then fill until no row is pending. Safe to run again at any time."""
    options.validate()
    stop = threading.Event()
    with _stopped_by_signals(stop, options.follow):
        return _run(db, plan_ref, options, stop)


def _run(db: Database, plan_ref: str, options: RunOptions, stop: threading.Event) -> RunSummary:
    conn = db.connect()
    try:
        if options.max_replica_lag:
            check_can_watch(conn)
        plan, record = load(conn, plan_ref)
        check(record)
        refuse_open_batch_jobs(conn, record)
        if record.phase == "planned":
            prepare(conn, plan, record)
        released = ledger.release_dead_local(conn, record.id)
        if released:
            log_event(conn, record.id, "lease", f"took back {released} leases of dead local processes")
        _warn_if_shadow_indexed(conn, plan, record)
        if record.phase not in ("planned", "prepared", "backfilling"):
            # Run again after the backfill: verify or cutover found rows changed behind change
            # tracking's back. Queue them, so this run does what they advised.
            queued = ledger.requeue_untracked_changes(conn, plan, record.id, record.phase)
            if queued:
                log_event(conn, record.id, "run", f"{queued} rows changed without change tracking seeing it: "
                          "queued again", {"rows": queued}, phase=record.phase)
        if record.phase in ("prepared", "backfilled"):
            set_phase(conn, record.id, "backfilling", "backfill started", expect=(record.phase,))
            record.phase = current_phase(conn, record.id)  # another command may have moved it first
        target = places(plan, record.phase).new.column
        run_began = ledger.database_now(conn)
        started = time.monotonic()
        before = ledger.progress(conn, record.id)
        log_event(conn, record.id, "run", f"run started: {before.rows_pending} rows pending",
                  {"workers": options.workers, "concurrency": options.concurrency,
                   "batch_size": options.batch_size, "column": target}, phase=record.phase)
        followed_until = None
        if options.workers == 1:
            counters, followed_until = _run_here(db, plan, record, options, before, stop)
        else:
            counters = run_workers(db, plan, record, options, before)
        seconds = time.monotonic() - started
        after = ledger.progress(conn, record.id)
        # Complete: every row embedded, but for a small tail the live application changed during
        # the run's last sweep (tracked; the next run or cutover's catch-up takes it). A run stopped
        # early leaves rows that were pending when it began, and stays backfilling.
        live_tail = (after.rows_pending <= ledger.live_tail_tolerance(after.rows_total)
                     and ledger.pending_changed_before(conn, record.id, run_began) == 0)
        if record.phase == "backfilling" and (after.rows_pending == 0 or live_tail):
            set_phase(conn, record.id, "backfilled", f"backfill complete: {after.rows_embedded} rows embedded"
                      + (f", {after.rows_pending} changed meanwhile pending" if after.rows_pending else ""),
                      after.to_json(), expect=("backfilling",))
        record.phase = current_phase(conn, record.id)
        loop = counters.loop_seconds or seconds
        summary = RunSummary(name=plan.name, phase=record.phase, column=target, seconds=seconds, counters=counters,
                             progress=after, workers=options.workers,
                             rows_per_second=counters.rows_written / loop if loop > 0 else 0.0,
                             followed_until=followed_until)
        log_event(conn, record.id, "run", f"run finished: {counters.rows_written} rows written in {seconds:.1f}s",
                  summary.to_json(), phase=record.phase)
        return summary
    finally:
        conn.close()


def _warn_if_shadow_indexed(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
    if record.phase not in _BACKFILL_PHASES:
        return
    new = places(plan, record.phase).new
    row = conn.execute(
        """SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
           WHERE i.indrelid = to_regclass(%s) AND a.attname = %s""",
        (new.ident.as_string(conn), new.column)).fetchone()
    if row and row[0]:
        log.warning("column %s is indexed before the backfill ended: every write also inserts into that index",
                    new.display)


def _run_here(db: Database, plan: Plan, record: PlanRecord, options: RunOptions, before: ledger.Progress,
              stop: threading.Event) -> tuple[Counters, str | None]:
    embedder = make_target_embedder(plan, options, start=before.rows_pending > 0)
    bar = progress_bar(before.rows_pending, options.progress)
    totals = Counters()
    lock = threading.Lock()

    def on_rows(step: Counters) -> None:
        with lock:
            totals.add(step)
            done = totals.rows_written + totals.rows_skipped
            if done > bar.total:
                bar.total = done
            bar.update(step.rows_written + step.rows_skipped)
            bar.set_postfix(skipped=totals.rows_skipped, retried=totals.rows_rejected + totals.provider_retries,
                            refresh=False)

    def on_pause(why: str | None) -> None:
        with lock:
            bar.set_description_str(why or "re-embedding")

    worker = Worker(db, plan, record, options, embedder, ledger.owner_id(), on_rows=on_rows, on_pause=on_pause,
                    stop=stop)
    try:
        counters = worker.run()
    finally:
        bar.close()
        embedder.close()
    counters.embedder_peak_rss_mb = getattr(embedder, "child_peak_rss_mb", 0.0)
    counters.provider_retries = max(counters.provider_retries, totals.provider_retries)
    followed_until = (worker.ended_by or "signal") if options.follow else None
    return counters, followed_until


@contextmanager
def _stopped_by_signals(stop: threading.Event, enabled: bool) -> Iterator[None]:
    """--follow ends on Ctrl-C or SIGTERM like it ends at cleanup: the batches in flight are written,
    the leases given back, the summary printed, exit 0."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
