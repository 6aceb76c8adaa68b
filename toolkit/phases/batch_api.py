"""`reembed run PLAN --batch-api`: the backfill through Gemini's Batch API, at half the list price.

The pending rows go out as asynchronous embedding jobs of up to `job_rows` rows. Before anything
is sent, each job's rows and the hashes of their texts are recorded (batch_jobs.py), and the
job's name right after the provider created it: a crash, even `kill -9`, never submits or pays
for a job twice; the next run picks up where this one stopped (recorded jobs are submitted,
submitted ones polled). Results go through the same validation and the same guarded writer as
the online path: a row whose text changed since its job was submitted stays pending, and so
does every row of a failed or expired job and every request the job answered with an error;
the next round of jobs (or an online run) embeds them. Rounds are bounded like the online
run's sweeps, so the run ends while the application keeps writing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import psycopg

from toolkit.db import Database
from toolkit.errors import BadInput, GateFailed, MalformedResponse
from toolkit.phases import batch_jobs, ledger
from toolkit.phases.backfill import MAX_SWEEPS, Counters, RunOptions, RunSummary, Throttle, check, tune_session
from toolkit.phases.backfill.replicas import ReplicaGate, check_can_watch
from toolkit.phases.backfill.worker import write_with_retry
from toolkit.phases.batch_jobs import JobRecord
from toolkit.phases.prepare import prepare
from toolkit.phases.writer import EMPTY_TEXT, BatchWriter, SourceRow, check_vectors, read_rows
from toolkit.plan import Plan, load
from toolkit.providers.models import BATCH_JOB_ROWS
from toolkit.state import PlanRecord, current_phase, log_event, set_phase
from toolkit.strategies import places

log = logging.getLogger(__name__)

MAX_FAILED_JOBS = 3  # jobs in a row that end failed or expired before the run gives up


@dataclass
class BatchOptions:
    job_rows: int = BATCH_JOB_ROWS
    poll_seconds: float = 30.0
    inline_limit_bytes: int | None = None  # None: the API's request size limit

    def validate(self) -> None:
        if not 1 <= self.job_rows <= 50_000:
            raise BadInput(f"--batch-job-rows must be between 1 and 50000, not {self.job_rows}")
        if self.poll_seconds <= 0:
            raise BadInput(f"--batch-poll-seconds must be positive, not {self.poll_seconds}")


def make_client(plan: Plan, options: RunOptions, batch: BatchOptions) -> Any:
    from toolkit.providers.gemini_batch import GeminiBatchClient
    from toolkit.providers.settings import ProviderSettings

    if plan.target_ref.provider != "gemini":
        raise BadInput(f"--batch-api is Gemini's Batch API; the plan's target {plan.target} is not a Gemini model")
    settings = ProviderSettings.from_env(concurrency=options.concurrency)
    extra = {"inline_limit_bytes": batch.inline_limit_bytes} if batch.inline_limit_bytes else {}
    return GeminiBatchClient(plan.target_ref, plan.dimensions, settings, **extra)


def run_batch(db: Database, plan_ref: str, options: RunOptions, batch: BatchOptions,
              say: Callable[[str], None] | None = None) -> RunSummary:
    """Prepare when needed, then embed every pending row through batch jobs. Safe to run again."""
    options.validate()
    batch.validate()
    if options.workers != 1:
        raise BadInput("--workers does not apply to --batch-api: the provider does the work, one run collects it")
    conn = db.connect()
    try:
        plan, record = load(conn, plan_ref)
        check(record)
        client = make_client(plan, options, batch)
        if record.phase == "planned":
            prepare(conn, plan, record)
        released = ledger.release_dead_local(conn, record.id)
        if released:
            log_event(conn, record.id, "lease", f"took back {released} leases of dead local processes")
        if record.phase in ("prepared", "backfilled"):
            set_phase(conn, record.id, "backfilling", "backfill started (batch API)", expect=(record.phase,))
            record.phase = current_phase(conn, record.id)  # another command may have moved it first
        tune_session(conn)
        run_began = ledger.database_now(conn)
        started = time.monotonic()
        before = ledger.progress(conn, record.id)
        log_event(conn, record.id, "run", f"batch run started: {before.rows_pending} rows pending",
                  {"batch_api": True, "job_rows": batch.job_rows}, phase=record.phase)
        collector = _Collector(conn, plan, record, client, options, batch)
        try:
            collector.run()
        finally:
            collector.close()
        after = ledger.progress(conn, record.id)
        live_tail = (after.rows_pending <= ledger.live_tail_tolerance(after.rows_total)
                     and ledger.pending_changed_before(conn, record.id, run_began) == 0
                     and not batch_jobs.jobs(conn, record.id, open_only=True))
        if record.phase == "backfilling" and (after.rows_pending == 0 or live_tail):
            set_phase(conn, record.id, "backfilled", f"backfill complete: {after.rows_embedded} rows embedded",
                      after.to_json(), expect=("backfilling",))
        record.phase = current_phase(conn, record.id)
        seconds = time.monotonic() - started
        counters = collector.counters
        counters.loop_seconds = seconds
        summary = RunSummary(name=plan.name, phase=record.phase, column=places(plan, record.phase).new.column,
                             seconds=seconds, counters=counters, progress=after, workers=1,
                             rows_per_second=counters.rows_written / seconds if seconds > 0 else 0.0)
        log_event(conn, record.id, "run", f"batch run finished: {counters.rows_written} rows written in "
                  f"{seconds:.1f}s, {collector.submitted} jobs submitted",
                  {**summary.to_json(), "batch_jobs": batch_jobs.summary(conn, record.id)}, phase=record.phase)
        return summary
    finally:
        conn.close()


class _Collector:
    """Records, submits, polls and collects the jobs of one plan until nothing is left to do."""

    def __init__(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, client: Any, options: RunOptions,
                 batch: BatchOptions) -> None:
        self.conn, self.plan, self.record, self.client = conn, plan, record, client
        self.options, self.batch = options, batch
        self.counters = Counters()
        self.submitted = 0
        self.failed_in_a_row = 0
        self.throttle = Throttle(options.max_rows_per_second)
        self.replicas = (ReplicaGate(options.max_replica_lag, record.id, record.phase)
                         if options.max_replica_lag else None)
        if self.replicas is not None:
            check_can_watch(conn)
        self.bar = _bar(options.progress)

    def run(self) -> None:
        rounds = 0
        while True:
            open_jobs = batch_jobs.jobs(self.conn, self.record.id, open_only=True)
            if not open_jobs:
                if rounds > MAX_SWEEPS:
                    break
                rounds += 1
                open_jobs = self._record_jobs()
                if not open_jobs:
                    break
            for job in open_jobs:
                if job.state in ("recorded", "submitting"):
                    self._submit(job)
            self._show(open_jobs)
            finished = 0
            for job in [j for j in open_jobs if j.state == "submitted"]:
                status, provider_job = self.client.status(job.job_name)
                batch_jobs.mark_polled(self.conn, job, status.state)
                if status.done:
                    self._collect(job, status, provider_job)
                    finished += 1
            self._show(batch_jobs.jobs(self.conn, self.record.id, open_only=True))
            if not finished and batch_jobs.jobs(self.conn, self.record.id, open_only=True):
                time.sleep(self.batch.poll_seconds)

    def close(self) -> None:
        self.bar.close()

    # -- record and submit ----------------------------------------------------------------------------

    def _record_jobs(self) -> list[JobRecord]:
        """Every claimable pending row, in jobs of job_rows (the rows leased to their job)."""
        recorded = []
        while True:
            def claim(conn: psycopg.Connection, owner: str) -> list[tuple[ledger.Key, str]]:
                keys = ledger.claim(conn, self.record.id, owner, self.batch.job_rows, batch_jobs.LEASE_SECONDS)
                rows = read_rows(conn, self.plan, keys)
                # Rows deleted meanwhile stay listed (no hash): submitting the job forgets them.
                return [(r.key, r.hash) for r in rows] + [(k, "") for k in _missing(keys, rows)]

            job = batch_jobs.record(self.conn, self.record.id, claim)
            if job is None:
                return recorded
            recorded.append(job)

    def _submit(self, job: JobRecord) -> None:
        if job.state == "submitting":
            # The provider may have created it before we could record its name: look before creating.
            name = self.client.find(job.display_name)
            if name:
                batch_jobs.mark_submitted(self.conn, job, name, job.input_file)
                log.info("found job %s (%s) created before a crash", name, job.display_name)
                return
        keys = [key for key, _ in batch_jobs.rows_of(self.conn, job.id)]
        rows = read_rows(self.conn, self.plan, keys)
        writer = self._writer(job)
        gone = _missing(keys, rows)
        if gone:
            self.counters.rows_gone += writer.forget_missing(gone)
        empty = [r for r in rows if r.empty]
        if empty:  # skipped and listed, never sent (the API refuses empty text)
            outcome = write_with_retry(lambda: writer.write(empty, {}, {i: EMPTY_TEXT for i in range(len(empty))}))
            self._count(Counters(rows_skipped=outcome.skipped, rows_rejected=outcome.rejected))
        send = [r for r in rows if not r.empty]
        if not send:
            batch_jobs.drop_empty(self.conn, job)
            return
        requests, truncated = self.client.requests([r.text or "" for r in send], [r.title for r in send])
        self.counters.truncated += truncated
        batch_jobs.mark_submitting(self.conn, job, [(r.key, r.hash) for r in send])
        submitted = self.client.submit(job.display_name, requests)
        batch_jobs.mark_submitted(self.conn, job, submitted.name, submitted.input_file)
        self.submitted += 1
        log_event(self.conn, self.record.id, "batch", f"submitted {submitted.name}: {len(send)} rows",
                  {"job": job.id, "name": submitted.name, "rows": len(send), "file": submitted.input_file})

    # -- collect ----------------------------------------------------------------------------------------

    def _collect(self, job: JobRecord, status: Any, provider_job: Any) -> None:
        recorded = batch_jobs.rows_of(self.conn, job.id)
        if status.state != "succeeded":
            self.failed_in_a_row += 1
            batch_jobs.mark_collected(self.conn, job, status.state, written=0, failed=len(recorded), changed=0,
                                      error=status.error)
            self.client.delete_input(job.input_file)
            log_event(self.conn, self.record.id, "batch", f"{job.job_name} ended {status.state}: its "
                      f"{len(recorded)} rows are pending again", {"job": job.id, "error": status.error})
            log.warning("batch job %s ended %s; its %d rows go to the next job", job.job_name, status.state,
                        len(recorded))
            if self.failed_in_a_row >= MAX_FAILED_JOBS:
                raise GateFailed(f"{self.failed_in_a_row} batch jobs in a row ended failed or expired (the last: "
                                 f"{job.job_name}, {status.error or status.state}); their rows are pending: run "
                                 "again later, or without --batch-api")
            return
        self.failed_in_a_row = 0
        try:
            results = self.client.results(provider_job, len(recorded))
        except MalformedResponse as exc:
            batch_jobs.mark_collected(self.conn, job, "malformed", written=0, failed=len(recorded), changed=0,
                                      error=str(exc))
            self.counters.malformed += 1
            log.warning("results of %s not written: %s", job.job_name, exc)
            return
        keys = [key for key, _ in recorded]
        current = {_k(r.key): r for r in read_rows(self.conn, self.plan, keys)}
        writer = self._writer(job)
        gone = _missing(keys, list(current.values()))
        if gone:
            self.counters.rows_gone += writer.forget_missing(gone)
        step = Counters()
        size = max(1, self.options.batch_size)
        for start in range(0, len(recorded), size):
            rows: list[SourceRow] = []
            vectors: dict[int, np.ndarray] = {}
            for position in range(start, min(start + size, len(recorded))):
                key, sent_hash = recorded[position]
                now = current.get(_k(key))
                if now is None:
                    continue
                # The guard compares the row's text now with the hash of what the job embedded.
                rows.append(SourceRow(key=now.key, key_values=now.key_values, text=now.text, title=now.title,
                                      hash=sent_hash))
                vector = results.vectors[position]
                if vector is not None:
                    vectors[len(rows) - 1] = vector
            if not rows:
                continue
            if vectors:
                order = sorted(vectors)
                checked = check_vectors(np.stack([vectors[i] for i in order]), len(order), self.plan.dimensions)
                vectors = dict(zip(order, checked))
            self.throttle.wait(len(vectors))
            if self.replicas is not None and self.replicas.hold(self.conn):
                self.counters.replica_pauses = self.replicas.pauses
                self.counters.replica_paused_seconds = self.replicas.paused_seconds
            began = time.monotonic()
            outcome = write_with_retry(lambda: writer.write(rows, vectors, {}))
            step.add(Counters(rows_written=outcome.written, rows_rejected=outcome.rejected,
                              rows_reembedded=outcome.reembedded, batches=1, write_seconds=time.monotonic() - began))
        failed = len(results.errors)
        batch_jobs.mark_collected(self.conn, job, "succeeded", written=step.rows_written, failed=failed,
                                  changed=step.rows_rejected)
        self._count(step)
        self.client.delete_input(job.input_file)
        log_event(self.conn, self.record.id, "batch", f"collected {job.job_name}: {step.rows_written} rows written, "
                  f"{failed} answered with an error, {step.rows_rejected} changed meanwhile (pending again)",
                  {"job": job.id, "written": step.rows_written, "failed": failed, "changed": step.rows_rejected,
                   "errors": dict(list(results.errors.items())[:5])})

    # -- helpers ----------------------------------------------------------------------------------------

    def _writer(self, job: JobRecord) -> BatchWriter:
        # The strategy's write target and guard, as for the online path (toolkit.strategies).
        return BatchWriter(self.conn, self.plan, self.record.id, job.owner, self.record.phase)

    def _count(self, step: Counters) -> None:
        self.counters.add(step)
        self.bar.update(step.rows_written + step.rows_skipped)

    def _show(self, open_jobs: list[JobRecord]) -> None:
        counts = batch_jobs.summary(self.conn, self.record.id)
        total = self.counters.rows_written + self.counters.rows_skipped + counts["rows_in_open_jobs"]
        if total > self.bar.total:
            self.bar.total = total
        self.bar.set_postfix(pending=counts["pending"], running=counts["running"], succeeded=counts["succeeded"],
                             failed=counts["failed"], refresh=False)
        self.bar.refresh()


def _bar(enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=0, unit="rows", desc="batch jobs", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _missing(keys: list[ledger.Key], rows: list[SourceRow]) -> list[ledger.Key]:
    found = {_k(r.key) for r in rows}
    return [k for k in keys if _k(k) not in found]


def _k(key: ledger.Key) -> str:
    return json.dumps(key, sort_keys=True, default=str)
