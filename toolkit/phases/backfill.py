"""Run: fill the new-model column from the ledger, in leased, guarded, checkpointed batches.

One process (a `Worker`) keeps `concurrency` batches in flight: it claims a batch (a lease in
reembed.ledger), reads the rows' current text, hands the batch to a thread that calls the
provider (all threads share one rate limiter), and writes each finished batch in one short
transaction that also marks it done. `--workers N` starts N such processes; several machines
running `reembed run` share the ledger the same way. The run ends when no row is pending:
rows inserted or changed meanwhile (the tracking trigger put them back) are embedded first.

Works in every phase from planned (it prepares first) to cut_over (then the new vectors live
under the original column name, `layout()` says where). `rollback_fill` is the other direction:
old-model vectors for rows that have none, so a rollback leaves no row without a vector.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from toolkit.db import Database
from toolkit.errors import GateFailed, MalformedResponse, ReembedError
from toolkit.phases import ledger
from toolkit.phases.ddl import template
from toolkit.phases.prepare import key_json, prepare, vector_type
from toolkit.phases.writer import (EMPTY_TEXT, BatchWriter, Outcome, SourceRow, check_vectors, key_columns, match,
                                   read_rows)
from toolkit.plan import Plan, layout, load
from toolkit.providers.base import EmbedBatch, Embedder
from toolkit.state import FINAL_PHASES, PlanRecord, log_event, set_phase

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100  # Gemini's per-request limit
DEFAULT_LEASE_SECONDS = 300.0
MAX_MALFORMED_STREAK = 3
# Catch-up sweeps over rows the application changed during the run, after the first pass.
MAX_SWEEPS = 5
# Phases in which run moves the phase forward; later phases (indexed ... rolled_back) keep theirs.
_BACKFILL_PHASES = ("planned", "prepared", "backfilling", "backfilled")


@dataclass
class RunOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    concurrency: int = 4
    workers: int = 1
    rpm: int | None = None
    tpm: int | None = None
    max_rows_per_second: float | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    poll_seconds: float = 1.0
    progress: bool = True

    def validate(self) -> None:
        from toolkit.errors import BadInput

        if not 1 <= self.batch_size <= 10_000:
            raise BadInput(f"--batch-size must be between 1 and 10000, not {self.batch_size}")
        if self.concurrency < 1:
            raise BadInput(f"--concurrency must be at least 1, not {self.concurrency}")
        if not 1 <= self.workers <= 64:
            raise BadInput(f"--workers must be between 1 and 64, not {self.workers}")
        if self.max_rows_per_second is not None and self.max_rows_per_second <= 0:
            raise BadInput(f"--max-rows-per-second must be positive, not {self.max_rows_per_second}")
        if self.lease_seconds < 1:
            raise BadInput(f"--lease-seconds must be at least 1, not {self.lease_seconds}")

    def per_worker(self) -> "RunOptions":
        """Each of N processes gets 1/N of the quotas and of the write throttle."""
        n = self.workers

        def share(v: float | int | None, kind: type) -> Any:
            return None if v is None else max(kind(1), kind(v / n))

        return RunOptions(batch_size=self.batch_size, concurrency=self.concurrency, workers=1,
                          rpm=share(self.rpm, int), tpm=share(self.tpm, int),
                          max_rows_per_second=share(self.max_rows_per_second, float),
                          lease_seconds=self.lease_seconds, poll_seconds=self.poll_seconds, progress=False)


@dataclass
class Counters:
    rows_written: int = 0
    rows_skipped: int = 0
    rows_rejected: int = 0  # changed while embedding (or lease lost): left pending, embedded again
    rows_reembedded: int = 0  # written rows that had a vector from an earlier embed of this plan
    rows_gone: int = 0  # claimed rows deleted meanwhile
    provider_retries: int = 0
    truncated: int = 0
    batches: int = 0
    malformed: int = 0  # provider answers refused (never written), their rows asked for again
    write_seconds: float = 0.0  # time inside write transactions (the database's share)
    loop_seconds: float = 0.0  # claim-embed-write loop, without start-up (imports, prepare)

    def add(self, other: "Counters") -> None:
        for name, value in asdict(other).items():
            # Workers run side by side: their loops overlap in time, everything else adds up.
            merged = max(getattr(self, name), value) if name == "loop_seconds" else getattr(self, name) + value
            setattr(self, name, merged)


@dataclass
class RunSummary:
    name: str
    phase: str
    column: str
    seconds: float
    counters: Counters
    progress: ledger.Progress
    workers: int
    rows_per_second: float = 0.0
    rollback_fill: bool = False
    peak_rss_mb: float = field(default_factory=lambda: peak_rss_mb())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "phase": self.phase, "column": self.column, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows_per_second, 1), "workers": self.workers,
                "peak_rss_mb": self.peak_rss_mb,
                "rollback_fill": self.rollback_fill, **asdict(self.counters), **self.progress.to_json()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM on Linux: unlike ru_maxrss it does not count
    what the parent had before exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Throttle:
    """At most `rate` rows per second written, smoothed over batches (--max-rows-per-second)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = time.monotonic()

    def wait(self, rows: int) -> None:
        if not self.rate or rows <= 0:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + rows / self.rate


@dataclass
class Batch:
    keys: list[ledger.Key]
    rows: list[SourceRow]
    send: list[int]  # positions in rows to embed
    skipped: dict[int, str] = field(default_factory=dict)


def make_target_embedder(plan: Plan, options: RunOptions) -> Embedder:
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    settings = ProviderSettings.from_env(rpm=options.rpm, tpm=options.tpm, concurrency=options.concurrency)
    return make_embedder(plan.target_ref, plan.dimensions, settings)


class Worker:
    """One process's share of a run: claim, read, embed (threads), write, until nothing is pending."""

    def __init__(self, db: Database, plan: Plan, record: PlanRecord, options: RunOptions, embedder: Embedder,
                 owner: str, *, target_column: str | None = None,
                 on_rows: Callable[[Counters], None] | None = None, stop: threading.Event | None = None) -> None:
        self.db, self.plan, self.record, self.options = db, plan, record, options
        self.embedder, self.owner = embedder, owner
        self.target_column = target_column or layout(plan, record.phase).new
        self.on_rows = on_rows
        self.stop = stop or threading.Event()
        self.counters = Counters()
        self.throttle = Throttle(options.max_rows_per_second)
        self.sweep_began: datetime | None = None  # rows changed after this wait for the next sweep
        self.sweeps = 0
        self._parent = os.getppid()

    def run(self) -> Counters:
        conn = self.db.connect()
        tune_session(conn)
        loop_started = time.monotonic()
        inflight: dict[Future[EmbedBatch], Batch] = {}
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="reembed-embed")
        try:
            writer = BatchWriter(conn, self.plan, self.record.id, self.owner, self.target_column)
            self.sweep_began = ledger.database_now(conn)
            last_renew = time.monotonic()
            malformed_streak = 0
            while True:
                while not self.stop.is_set() and len(inflight) < self.options.concurrency:
                    batch = self._next_batch(conn, writer)
                    if batch is None:
                        break
                    if not batch.send:
                        self._write(writer, batch, None)
                        continue
                    inflight[pool.submit(self._embed, batch)] = batch
                if not inflight:
                    if self.stop.is_set():
                        break
                    pending, claimable = ledger.pending_counts(conn, self.record.id)
                    if pending == 0:
                        break
                    if claimable:
                        # What is left changed after this sweep began: the application is writing.
                        # Sweep again for it, a bounded number of times, so the run ends even
                        # under steady writes; the tail stays pending for the next run or cutover.
                        if self.sweeps >= MAX_SWEEPS:
                            break
                        self.sweeps += 1
                        self.sweep_began = ledger.database_now(conn)
                        continue
                    # Pending rows are leased by other processes: wait for them to finish or expire.
                    time.sleep(self.options.poll_seconds)
                    continue
                done, _ = wait(inflight, timeout=min(5.0, self.options.lease_seconds / 3),
                               return_when=FIRST_COMPLETED)
                for future in done:
                    batch = inflight.pop(future)
                    try:
                        result = future.result()
                    except MalformedResponse as exc:
                        # Never written; the rows go back to pending and are asked for again. A provider
                        # that keeps answering garbage stops the run.
                        ledger.release(conn, self.record.id, self.owner, batch.keys)
                        self.counters.malformed += 1
                        malformed_streak += 1
                        log.warning("batch of %d rows not written: %s", len(batch.keys), exc)
                        if malformed_streak >= MAX_MALFORMED_STREAK:
                            raise MalformedResponse(f"{exc} ({malformed_streak} answers in a row were malformed; "
                                                    "nothing malformed was written)") from None
                        continue
                    except BaseException:
                        ledger.release(conn, self.record.id, self.owner, batch.keys)
                        raise
                    malformed_streak = 0
                    try:
                        self._write(writer, batch, result)
                    except BaseException:
                        if not conn.closed:
                            ledger.release(conn, self.record.id, self.owner, batch.keys)
                        raise
                if time.monotonic() - last_renew > self.options.lease_seconds / 3:
                    held = [k for b in inflight.values() for k in b.keys]
                    ledger.renew(conn, self.record.id, self.owner, held, self.options.lease_seconds)
                    last_renew = time.monotonic()
                if os.getppid() != self._parent:  # our parent `reembed run --workers` died: stop cleanly
                    self.stop.set()
        finally:
            self.stop.set()
            for future in inflight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                held = [k for b in inflight.values() for k in b.keys]
                if held and not conn.closed:
                    ledger.release(conn, self.record.id, self.owner, held)
            except psycopg.Error:
                pass  # the leases expire on their own
            conn.close()
            self.counters.loop_seconds = time.monotonic() - loop_started
        return self.counters

    def _next_batch(self, conn: psycopg.Connection, writer: BatchWriter) -> Batch | None:
        while True:
            keys = ledger.claim(conn, self.record.id, self.owner, self.options.batch_size, self.options.lease_seconds,
                                changed_before=self.sweep_began)
            if not keys:
                return None
            rows = read_rows(conn, self.plan, keys)
            if len(rows) < len(keys):
                found = {_k(r.key) for r in rows}
                gone = [k for k in keys if _k(k) not in found]
                self.counters.rows_gone += writer.forget_missing(gone)
                ledger.release(conn, self.record.id, self.owner, gone)  # kept if it reappeared meanwhile
                keys = [k for k in keys if _k(k) in found]
            if not rows:
                continue
            send = [i for i, r in enumerate(rows) if not r.empty]
            skipped = {i: EMPTY_TEXT for i, r in enumerate(rows) if r.empty}
            return Batch(keys=keys, rows=rows, send=send, skipped=skipped)

    def _embed(self, batch: Batch) -> EmbedBatch:
        texts = [batch.rows[i].text or "" for i in batch.send]
        titles = [batch.rows[i].title for i in batch.send]
        result = self.embedder.embed_documents(texts, titles)
        check_vectors(result.vectors, len(result.index), self.plan.dimensions)
        return result

    def _write(self, writer: BatchWriter, batch: Batch, result: EmbedBatch | None) -> None:
        vectors: dict[int, np.ndarray] = {}
        skipped = dict(batch.skipped)
        if result is not None:
            for j, position in enumerate(result.index):
                vectors[batch.send[position]] = result.vectors[j]
            for position, reason in result.skipped.items():
                skipped[batch.send[position]] = reason
            self.counters.provider_retries += result.retries
            self.counters.truncated += result.truncated
        self.throttle.wait(len(vectors))
        began = time.monotonic()
        outcome = _with_retry(lambda: writer.write(batch.rows, vectors, skipped))
        step = Counters(rows_written=outcome.written, rows_skipped=outcome.skipped, rows_rejected=outcome.rejected,
                        rows_reembedded=outcome.reembedded, batches=1, write_seconds=time.monotonic() - began)
        self.counters.add(step)
        if self.on_rows:
            self.on_rows(step)


def tune_session(conn: psycopg.Connection) -> None:
    """Settings of the backfill's own connection only (the application's sessions are untouched).

    synchronous_commit off: a batch's vectors and its ledger marks commit together, so a commit
    lost in a server crash loses both and the rows are simply still pending: consistency does not
    depend on the flush, and not waiting for it per batch matters at thousands of rows/s.
    No hash or merge joins: every join here is a batch of at most a few thousand keys against a
    primary key; a nested loop over the index is always right, while a misestimate (a fresh temp
    table, a just-seeded ledger) could otherwise scan the whole table or ledger once per batch.
    """
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET enable_hashjoin = off")
    conn.execute("SET enable_mergejoin = off")


def _with_retry(write: Callable[[], Outcome], attempts: int = 5) -> Outcome:
    """A deadlock or serialization failure (two writers on one row after a lease takeover) is
    rolled back whole by PostgreSQL; trying again is safe."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _k(key: ledger.Key) -> str:
    return json.dumps(key, sort_keys=True, default=str)


# -- the command ---------------------------------------------------------------------------------

def check(record: PlanRecord) -> None:
    if record.phase in FINAL_PHASES:
        raise GateFailed(f"plan {record.name!r} is {record.phase}: its change tracking is gone; "
                         "plan the migration again to re-embed")


def run(db: Database, plan_ref: str, options: RunOptions) -> RunSummary:
    """Prepare when needed, then fill until no row is pending. Safe to run again at any time."""
    options.validate()
    conn = db.connect()
    try:
        plan, record = load(conn, plan_ref)
        check(record)
        if record.phase == "planned":
            prepare(conn, plan, record)
        released = ledger.release_dead_local(conn, record.id)
        if released:
            log_event(conn, record.id, "lease", f"took back {released} leases of dead local processes")
        _warn_if_shadow_indexed(conn, plan, record)
        if record.phase in ("prepared", "backfilled"):
            set_phase(conn, record.id, "backfilling", "backfill started")
            record.phase = "backfilling"
        target = layout(plan, record.phase).new
        run_began = ledger.database_now(conn)
        started = time.monotonic()
        before = ledger.progress(conn, record.id)
        log_event(conn, record.id, "run", f"run started: {before.rows_pending} rows pending",
                  {"workers": options.workers, "concurrency": options.concurrency,
                   "batch_size": options.batch_size, "column": target}, phase=record.phase)
        if options.workers == 1:
            counters = _run_here(db, plan, record, options, before, target)
        else:
            counters = _run_workers(db, plan, record, options, before)
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
                      after.to_json())
            record.phase = "backfilled"
        loop = counters.loop_seconds or seconds
        summary = RunSummary(name=plan.name, phase=record.phase, column=target, seconds=seconds, counters=counters,
                             progress=after, workers=options.workers,
                             rows_per_second=counters.rows_written / loop if loop > 0 else 0.0)
        log_event(conn, record.id, "run", f"run finished: {counters.rows_written} rows written in {seconds:.1f}s",
                  summary.to_json(), phase=record.phase)
        return summary
    finally:
        conn.close()


def _warn_if_shadow_indexed(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
    if record.phase not in _BACKFILL_PHASES:
        return
    row = conn.execute(
        """SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
           WHERE i.indrelid = to_regclass(%s) AND a.attname = %s""",
        (plan.table.as_string(conn), plan.shadow_column)).fetchone()
    if row and row[0]:
        log.warning("column %s is indexed before the backfill ended: every write also inserts into that index",
                    plan.shadow_column)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", desc="re-embedding", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def _run_here(db: Database, plan: Plan, record: PlanRecord, options: RunOptions, before: ledger.Progress,
              target: str) -> Counters:
    embedder = make_target_embedder(plan, options)
    bar = _progress_bar(before.rows_pending, options.progress)
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

    worker = Worker(db, plan, record, options, embedder, ledger.owner_id(), target_column=target, on_rows=on_rows)
    try:
        counters = worker.run()
    finally:
        bar.close()
        embedder.close()
    counters.provider_retries = max(counters.provider_retries, totals.provider_retries)
    return counters


# -- several local processes -----------------------------------------------------------------------

def _worker_main(dsn: str | None, plan_name: str, options: dict[str, Any], owner: str, results: Any) -> None:
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


def _run_workers(db: Database, plan: Plan, record: PlanRecord, options: RunOptions,
                 before: ledger.Progress) -> Counters:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child_options = asdict(options.per_worker())
    owners = [ledger.owner_id(f"/w{i}") for i in range(options.workers)]
    processes = [context.Process(target=_worker_main, args=(db.dsn, plan.name, child_options, owner, results),
                                 name=f"reembed-worker-{i}", daemon=True) for i, owner in enumerate(owners)]
    for p in processes:
        p.start()
    bar = _progress_bar(before.rows_pending, options.progress)
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


# -- rollback fill ---------------------------------------------------------------------------------

def rollback_fill(db: Database, plan_ref: str, options: RunOptions) -> RunSummary:
    """Embed, with the SOURCE model, every row whose old-model column is NULL and whose text is not
    empty, into layout().old: after a rollback no row is left without a vector. No ledger: the
    NULL column is the work list, walked once in key order."""
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    options.validate()
    conn = db.connect()
    try:
        plan, record = load(conn, plan_ref)
        check(record)
        column = layout(plan, record.phase).old
        if record.phase == "planned":
            raise GateFailed(f"plan {plan.name!r} is not prepared: nothing to roll back to")
        settings = ProviderSettings.from_env(rpm=options.rpm, tpm=options.tpm, concurrency=options.concurrency)
        embedder = make_embedder(plan.source_ref, plan.dimensions, settings)
        started = time.monotonic()
        counters = Counters()
        writer = _OldColumnWriter(conn, plan, column)
        throttle = Throttle(options.max_rows_per_second)
        bar = _progress_bar(writer.count_missing(), options.progress)
        pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="reembed-rollback")
        inflight: dict[Future[EmbedBatch], list[SourceRow]] = {}
        after: tuple[Any, ...] | None = None
        exhausted = False
        try:
            while True:
                while not exhausted and len(inflight) < options.concurrency:
                    rows = writer.next_rows(after, options.batch_size)
                    if not rows:
                        exhausted = True
                        break
                    after = rows[-1].key_values
                    inflight[pool.submit(_embed_source, embedder, plan, rows)] = rows
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    rows = inflight.pop(future)
                    result = future.result()
                    throttle.wait(len(result.index))
                    written = writer.write(rows, result)
                    counters.rows_written += written
                    counters.rows_rejected += len(result.index) - written
                    counters.rows_skipped += len(result.skipped)
                    counters.provider_retries += result.retries
                    counters.batches += 1
                    bar.update(len(rows))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            embedder.close()
        seconds = time.monotonic() - started
        log_event(conn, record.id, "rollback_fill",
                  f"{counters.rows_written} rows given {plan.source} vectors in {column}", asdict(counters))
        return RunSummary(name=plan.name, phase=record.phase, column=column, seconds=seconds, counters=counters,
                          progress=ledger.progress(conn, record.id), workers=1,
                          rows_per_second=counters.rows_written / seconds if seconds > 0 else 0.0, rollback_fill=True)
    finally:
        conn.close()


def _embed_source(embedder: Embedder, plan: Plan, rows: list[SourceRow]) -> EmbedBatch:
    result = embedder.embed_documents([r.text or "" for r in rows], [r.title for r in rows])
    check_vectors(result.vectors, len(result.index), plan.dimensions)
    return result


class _OldColumnWriter:
    """Keyset walk over rows lacking an old-model vector, and the guarded write of that column."""

    def __init__(self, conn: psycopg.Connection, plan: Plan, column: str) -> None:
        self.conn, self.plan = conn, plan
        self.column = sql.Identifier(column)
        keys = key_columns(plan, "t")
        nonempty = sql.SQL("btrim(coalesce({}, '')) <> ''").format(plan.text_expression("t"))
        self._missing = sql.SQL("{} IS NULL AND {}").format(sql.Identifier("t", column), nonempty)
        self._next = sql.SQL(
            "SELECT {key}, {keys}, {text}, {title}, {hash} FROM {table} AS t WHERE {missing} AND ({keys}) > ({after}) "
            "ORDER BY {keys} LIMIT {limit}")
        self._first = sql.SQL(
            "SELECT {key}, {keys}, {text}, {title}, {hash} FROM {table} AS t WHERE {missing} ORDER BY {keys} LIMIT {limit}")
        self._parts = dict(key=key_json(plan, "t"), keys=keys, text=plan.text_expression("t"),
                           title=plan.title_expression("t"), hash=plan.text_hash_expression("t"), table=plan.table,
                           missing=self._missing)
        self._stage = sql.Identifier("reembed_rollback_stage")
        conn.execute(template("backfill_stage", stage=self._stage, key_columns=keys,
                              vtype=vector_type(plan),
                              table=plan.table))
        self._update = sql.SQL(
            "UPDATE {table} AS t SET {column} = s.v FROM {stage} AS s WHERE {match} AND {hash} = s.hash "
            "AND t.{column} IS NULL").format(table=plan.table, column=self.column, stage=self._stage,
                                              match=match(plan, "t", "s"), hash=plan.text_hash_expression("t"))

    def count_missing(self) -> int:
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
            self.plan.table, self._missing)).fetchone()
        return int(row[0]) if row else 0

    def next_rows(self, after: tuple[Any, ...] | None, limit: int) -> list[SourceRow]:
        n = len(self.plan.primary_key)
        if after is None:
            query = self._first.format(**self._parts, limit=sql.Literal(limit))
            params: tuple[Any, ...] = ()
        else:
            query = self._next.format(**self._parts, limit=sql.Literal(limit),
                                      after=sql.SQL(", ").join(sql.Placeholder() * n))
            params = tuple(after)
        rows = self.conn.execute(query, params).fetchall()
        return [SourceRow(key=r[0], key_values=tuple(r[1:1 + n]), text=r[1 + n], title=r[2 + n], hash=r[3 + n])
                for r in rows]

    def write(self, rows: list[SourceRow], result: EmbedBatch) -> int:
        if not result.index:
            return 0
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in [*self.plan.primary_key, "pk", "hash", "v"])
        with self.conn.transaction():
            with self.conn.cursor() as cur:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(self._stage, columns)) as copy:
                    for j, position in enumerate(result.index):
                        row = rows[position]
                        copy.write_row((*row.key_values, Jsonb(row.key), row.hash, result.vectors[j]))
                return cur.execute(self._update).rowcount
