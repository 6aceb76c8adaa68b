"""One process's share of a run: claim a leased batch, read the rows' current text, embed it in a
thread (all threads share one rate limiter), write each finished batch in one short guarded
transaction that also marks it done; until nothing is pending (with --follow: until the plan is
cleaned up, abandoned or rolled back, or a signal stops it).

Where the batch is written (which table, which column, by which statement) is the plan's
strategy's answer (`BatchWriter` asks it); everything here is the same for every strategy.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, TypeVar

import numpy as np
import psycopg

from toolkit.db import Database
from toolkit.errors import MalformedResponse, PlanMoved
from toolkit.phases import ledger
from toolkit.phases.backfill.options import Counters, RunOptions, Throttle
from toolkit.phases.backfill.replicas import ReplicaGate
from toolkit.phases.writer import EMPTY_TEXT, BatchWriter, Claim, Claimed, SourceRow, check_vectors
from toolkit.plan import Plan
from toolkit.providers.base import EmbedBatch, Embedder
from toolkit.state import FINAL_PHASES, PlanRecord, current_phase

log = logging.getLogger(__name__)

MAX_MALFORMED_STREAK = 3
T = TypeVar("T")
# Catch-up sweeps over rows the application changed during the run, after the first pass.
MAX_SWEEPS = 5


@dataclass
class Batch:
    keys: list[ledger.Key]
    rows: list[SourceRow]
    send: list[int]  # positions in rows to embed
    skipped: dict[int, str] = field(default_factory=dict)


def make_target_embedder(plan: Plan, options: RunOptions, *, start: bool = False) -> Embedder:
    """The plan's embedder for a run. `start`: there is work for it, so a child process begins
    starting now, its imports overlapping the caller's setup (an in-process client is built here)."""
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    settings = ProviderSettings.from_env(rpm=options.rpm, tpm=options.tpm, rpd=options.rpd,
                                         concurrency=options.concurrency)
    # A daemonic process (a `--workers` child, a task runner's pool worker) may not start one.
    if options.embed_process and not multiprocessing.current_process().daemon:
        from toolkit.providers.process import ProcessEmbedder

        embedder = ProcessEmbedder(plan.target_ref, plan.dimensions, settings)
        if start:
            embedder.start()
        return embedder
    return make_embedder(plan.target_ref, plan.dimensions, settings)


class Worker:
    """One process's share of a run: claim, read, embed (threads), write, until nothing is pending."""

    def __init__(self, db: Database, plan: Plan, record: PlanRecord, options: RunOptions, embedder: Embedder,
                 owner: str, *, on_rows: Callable[[Counters], None] | None = None,
                 on_pause: Callable[[str | None], None] | None = None,
                 stop: threading.Event | None = None) -> None:
        self.db, self.plan, self.record, self.options = db, plan, record, options
        self.embedder, self.owner = embedder, owner
        self.on_rows = on_rows
        self.stop = stop or threading.Event()
        self.counters = Counters()
        self.throttle = Throttle(options.max_rows_per_second)
        self.sweep_began: datetime | None = None  # rows changed after this wait for the next sweep
        self.sweeps = 0
        self.ended_by: str | None = None  # the phase that ended a --follow (or stopped a run)
        self._parent = os.getppid()
        self._claimed: list[Claimed] = []  # batches claimed along with a write, not yet embedded
        self._inflight: dict[Future[EmbedBatch], Batch] = {}
        self.replicas = (ReplicaGate(options.max_replica_lag, record.id, record.phase, on_pause)
                         if options.max_replica_lag else None)

    def run(self) -> Counters:
        # Start-up, as the in-process client's is: the loop's clock measures claim, embed and write.
        self.counters.embedder_start_seconds = self.embedder.ready()
        conn = self.db.connect()
        tune_session(conn)
        loop_started = time.monotonic()
        inflight = self._inflight
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="reembed-embed")
        try:
            writer = BatchWriter(conn, self.plan, self.record.id, self.owner, self.record.phase)
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
                    if pending == 0 or (claimable and self.sweeps >= MAX_SWEEPS):
                        if not self.options.follow or not self._follow(conn):
                            break
                        continue
                    if claimable:
                        # What is left changed after this sweep began: the application is writing.
                        # Sweep again for it, a bounded number of times, so the run ends even
                        # under steady writes; the tail stays pending for the next run or cutover.
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
                        room = len(inflight) + len(self._claimed) < self.options.concurrency
                        self._write(writer, batch, result, claim_next=room and not self.stop.is_set())
                    except BaseException:
                        if not conn.closed:
                            ledger.release(conn, self.record.id, self.owner, batch.keys)
                        raise
                if time.monotonic() - last_renew > self.options.lease_seconds / 3:
                    held = [k for b in inflight.values() for k in b.keys] + self._claimed_keys()
                    ledger.renew(conn, self.record.id, self.owner, held, self.options.lease_seconds)
                    last_renew = time.monotonic()
                if os.getppid() != self._parent:  # our parent `reembed run --workers` died: stop cleanly
                    self.stop.set()
        except PlanMoved as exc:
            # Cleaned up or abandoned under our feet: the guard wrote nothing. For --follow that is
            # the end it waits for; for a plain run it is an interruption the user must hear about.
            self.ended_by = exc.phase
            if not self.options.follow:
                raise
        finally:
            self.stop.set()
            for future in inflight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                held = [k for b in inflight.values() for k in b.keys] + self._claimed_keys()
                if held and not conn.closed:
                    ledger.release(conn, self.record.id, self.owner, held)
            except psycopg.Error:
                pass  # the leases expire on their own
            conn.close()
            self.counters.loop_seconds = time.monotonic() - loop_started
        return self.counters

    def _follow(self, conn: psycopg.Connection) -> bool:
        """--follow: nothing to do now. Wait for the application's next change, and start a new sweep;
        False when following ends (a signal, or the plan was cleaned up, abandoned or rolled back)."""
        while not self.stop.wait(self.options.poll_seconds):
            phase = current_phase(conn, self.record.id)
            if phase in FINAL_PHASES or (phase == "rolled_back" and self.record.phase != "rolled_back"):
                self.ended_by = phase
                return False
            if ledger.pending_counts(conn, self.record.id)[1]:
                self.sweeps = 0
                self.sweep_began = ledger.database_now(conn)
                return True
        return False

    def _next_batch(self, conn: psycopg.Connection, writer: BatchWriter) -> Batch | None:
        while True:
            claimed = self._claimed.pop(0) if self._claimed else writer.claim(self._claim())
            if not claimed:
                return None
            if claimed.gone:
                self.counters.rows_gone += writer.forget_missing(claimed.gone)
                ledger.release(conn, self.record.id, self.owner, claimed.gone)  # kept if it reappeared meanwhile
            rows = claimed.rows
            if not rows:
                continue
            send = [i for i, r in enumerate(rows) if not r.empty]
            skipped = {i: EMPTY_TEXT for i, r in enumerate(rows) if r.empty}
            return Batch(keys=[r.key for r in rows], rows=rows, send=send, skipped=skipped)

    def _claimed_keys(self) -> list[ledger.Key]:
        """The keys of the batches claimed ahead (by a write's round trip), not embedding yet."""
        return [r.key for c in self._claimed for r in c.rows] + [k for c in self._claimed for k in c.gone]

    def _claim(self) -> Claim:
        return Claim(self.options.batch_size, self.options.lease_seconds, self.sweep_began)

    def _embed(self, batch: Batch) -> EmbedBatch:
        texts = [batch.rows[i].text or "" for i in batch.send]
        titles = [batch.rows[i].title for i in batch.send]
        result = self.embedder.embed_documents(texts, titles)
        check_vectors(result.vectors, len(result.index), self.plan.dimensions)
        return result

    def _write(self, writer: BatchWriter, batch: Batch, result: EmbedBatch | None, claim_next: bool = False) -> None:
        """Write a finished batch; with `claim_next`, the next batch is claimed in the same round trip."""
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
        self._hold_for_replicas(writer.conn, batch)
        began = time.monotonic()
        then = self._claim() if claim_next else None
        outcome, claimed = write_with_retry(lambda: writer.write_then_claim(batch.rows, vectors, skipped, then))
        if claimed is not None:
            self._claimed.append(claimed)
        step = Counters(rows_written=outcome.written, rows_skipped=outcome.skipped, rows_rejected=outcome.rejected,
                        rows_reembedded=outcome.reembedded, batches=1, write_seconds=time.monotonic() - began)
        self.counters.add(step)
        if self.on_rows:
            self.on_rows(step)


    def _hold_for_replicas(self, conn: psycopg.Connection, batch: Batch) -> None:
        """With --max-replica-lag: write nothing while a standby is too far behind. The leases of
        every batch held meanwhile (embedding, embedded, claimed, this one) are renewed."""
        if self.replicas is None:
            return

        def renew() -> None:
            held = batch.keys + [k for b in self._inflight.values() for k in b.keys] + self._claimed_keys()
            ledger.renew(conn, self.record.id, self.owner, held, self.options.lease_seconds)

        if self.replicas.hold(conn, renew=renew, renew_every=self.options.lease_seconds / 3, stop=self.stop):
            self.counters.replica_pauses = self.replicas.pauses
            self.counters.replica_paused_seconds = self.replicas.paused_seconds


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


def write_with_retry(write: Callable[[], T], attempts: int = 5) -> T:
    """A deadlock or serialization failure (two writers on one row after a lease takeover), or a
    lock not granted in time (a write that keeps the application's triggers quiet takes a short
    table lock), is rolled back whole by PostgreSQL; trying again is safe."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                psycopg.errors.LockNotAvailable):
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")

