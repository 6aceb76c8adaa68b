"""`reembed run --rollback-fill`: source-model vectors for rows that lack one of their current text
where the old vectors are (`places(...).old`), so that after a rollback every row is found by its
own text. The work list is the rows with no vector there and the rows the ledger marks
source-stale (changed since the first cutover: the change tracking sets it); it is walked in key
order, again while a live application adds to it (a few passes). The write is guarded by the hash
of the text embedded, like the backfill's, and checks where the old vectors are in its own
transaction (write_guard); its statement is the strategy's.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from toolkit.db import Database
from toolkit.errors import GateFailed
from toolkit.phases import ledger
from toolkit.phases.backfill.options import Counters, RunOptions, RunSummary, Throttle, progress_bar
from toolkit.phases.backfill.replicas import ReplicaGate, check_can_watch
from toolkit.phases.backfill.run import check
from toolkit.phases.ddl import template
from toolkit.phases.prepare import key_columns, key_json
from toolkit.phases.write_guard import PlaceGuard
from toolkit.phases.writer import SourceRow, check_vectors, create_stage, run_write
from toolkit.plan import Plan, load
from toolkit.providers.base import EmbedBatch, Embedder
from toolkit.state import PlanRecord, log_event
from toolkit.strategies import Place, Write, places, strategy_for

T = TypeVar("T")


# A live application can change rows behind the walk: walk again for those, a bounded number of times.
MAX_PASSES = 5


def rollback_fill(db: Database, plan_ref: str, options: RunOptions) -> RunSummary:
    """Embed, with the SOURCE model, every row whose place for the old vectors lacks that model's
    vector of its current text (none there, or the row changed since the first cutover), so that
    after a rollback every row is found by its own text. Rows gone blank lose their old vector."""
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    options.validate()
    conn = db.connect()
    try:
        plan, record = load(conn, plan_ref)
        check(record)
        if record.phase == "planned":
            raise GateFailed(f"plan {plan.name!r} is not prepared: nothing to roll back to")
        settings = ProviderSettings.from_env(rpm=options.rpm, tpm=options.tpm, concurrency=options.concurrency)
        embedder = make_embedder(plan.source_ref, plan.source_dimensions, settings)
        started = time.monotonic()
        counters = Counters()
        writer = FillWriter(conn, plan, record)
        throttle = Throttle(options.max_rows_per_second)
        replicas = ReplicaGate(options.max_replica_lag, record.id, record.phase) if options.max_replica_lag else None
        if replicas is not None:
            check_can_watch(conn)
        bar = progress_bar(writer.count_missing(), options.progress)
        pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="reembed-rollback")
        try:
            for _ in range(MAX_PASSES):
                if not _one_pass(writer, embedder, plan, pool, options, throttle, replicas, counters, bar):
                    break
                if not writer.count_missing():
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            embedder.close()
        seconds = time.monotonic() - started
        if replicas is not None:
            counters.replica_pauses, counters.replica_paused_seconds = replicas.pauses, replicas.paused_seconds
        old = writer.guard.place
        log_event(conn, record.id, "rollback_fill",
                  f"{counters.rows_written} rows given {plan.source} vectors in {old.display}", asdict(counters))
        return RunSummary(name=plan.name, phase=writer.guard.phase, column=old.column, seconds=seconds,
                          counters=counters, progress=ledger.progress(conn, record.id), workers=1,
                          rows_per_second=counters.rows_written / seconds if seconds > 0 else 0.0, rollback_fill=True)
    finally:
        conn.close()


def _one_pass(writer: "FillWriter", embedder: Embedder, plan: Plan, pool: ThreadPoolExecutor, options: RunOptions,
              throttle: Throttle, replicas: ReplicaGate | None, counters: Counters, bar: Any) -> bool:
    """One keyset walk over the rows to fill; True when it found any."""
    inflight: dict[Future[EmbedBatch], list[SourceRow]] = {}
    after: tuple[Any, ...] | None = None
    exhausted = found = False
    while True:
        while not exhausted and len(inflight) < options.concurrency:
            rows = writer.next_rows(after, options.batch_size)
            if not rows:
                exhausted = True
                break
            found = True
            after = rows[-1].key_values
            inflight[pool.submit(_embed_source, embedder, plan, rows)] = rows
        if not inflight:
            return found
        done, _ = wait(inflight, return_when=FIRST_COMPLETED)
        for future in done:
            rows = inflight.pop(future)
            result = future.result()
            throttle.wait(len(result.index))
            if replicas is not None:
                replicas.hold(writer.conn)
            written = writer.write(rows, result)
            counters.rows_written += written
            counters.rows_rejected += len(result.index) - written
            counters.rows_skipped += len(result.skipped)
            counters.provider_retries += result.retries
            counters.batches += 1
            bar.update(len(rows))


def _embed_source(embedder: Embedder, plan: Plan, rows: list[SourceRow]) -> EmbedBatch:
    """The source model's vectors of the rows with text (blank rows are never sent: their old vector
    is cleared instead). `index` of the result points into `rows`."""
    send = [i for i, r in enumerate(rows) if not r.empty]
    if not send:
        return EmbedBatch(vectors=np.zeros((0, plan.source_dimensions), dtype=np.float32), index=[])
    result = embedder.embed_documents([rows[i].text or "" for i in send], [rows[i].title for i in send])
    check_vectors(result.vectors, len(result.index), plan.source_dimensions)
    result.index = [send[j] for j in result.index]
    result.skipped = {send[j]: reason for j, reason in result.skipped.items()}
    return result


FILL_STAGE = "reembed_rollback_stage"


@dataclass(frozen=True)
class FillTarget:
    """Where the source model's vectors are in one phase, and the strategy's guarded write there."""

    place: Place
    statement: Write


class FillWriter:
    """Keyset walk over rows lacking the source model's vector of their text where the old vectors are
    (which place that is, the guard re-reads in every write), and the guarded write there."""

    def __init__(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
        self.conn, self.plan, self.plan_id = conn, plan, record.id
        strategy = strategy_for(plan)
        self._stage = create_stage(conn, plan, FILL_STAGE, plan.vector_base, plan.source_dimensions)
        self.guard = PlaceGuard(plan, record.id, record.phase, "old", lambda phase: FillTarget(
            places(plan, phase).old, strategy.fill_statement(conn, plan, phase, self._stage)))

    def count_missing(self) -> int:
        from toolkit.phases.rollback import missing_old_vectors

        return self._read(lambda place: missing_old_vectors(self.conn, self.plan, place, self.plan_id, limit=1)[0])

    def next_rows(self, after: tuple[Any, ...] | None, limit: int) -> list[SourceRow]:
        from toolkit.phases.rollback import has_text

        n = len(self.plan.primary_key)
        keys = key_columns(self.plan, "t")
        bound = sql.SQL("TRUE") if after is None else sql.SQL("({}) > ({})").format(
            keys, sql.SQL(", ").join(sql.Placeholder() * n))

        def read(place: Place) -> list[SourceRow]:
            query = template("rollback_fill_next", key=key_json(self.plan, "t"), key_columns=keys,
                             text=self.plan.text_expression("t"), title=self.plan.title_expression("t"),
                             hash=self.plan.text_hash_expression("t"), table=place.ident,
                             plan_id=sql.Literal(self.plan_id), old=sql.Identifier("t", place.column),
                             has_text=has_text(self.plan), after=bound, limit=sql.Literal(limit))
            rows = self.conn.execute(query, tuple(after) if after is not None else ()).fetchall()
            return [SourceRow(key=r[0], key_values=tuple(r[1:1 + n]), text=r[1 + n], title=r[2 + n], hash=r[3 + n])
                    for r in rows]

        return self._read(read)

    def _read(self, read: Callable[[Place], T]) -> T:
        """Reads go by the names of the last write's phase, without the registry lock (a walk must not
        hold back a swap); when those names are gone, the guard says where the vectors are now."""
        try:
            return read(self.guard.place)
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
            with self.conn.transaction():
                self.guard.current(self.conn)  # re-resolves, or raises PlanMoved when nothing is left
            return read(self.guard.place)

    def write(self, rows: list[SourceRow], result: EmbedBatch) -> int:
        """Write the vectors of `result` and clear the old vector of stale blank rows, in one transaction
        that first checks where the old vectors are now. Returns the rows given a vector."""
        vectors = dict(zip(result.index, result.vectors))
        blank = [i for i, r in enumerate(rows) if r.empty]
        if not vectors and not blank:
            return 0
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in [*self.plan.primary_key, "pk", "hash", "v"])
        with self.conn.transaction():
            target = self.guard.current(self.conn)
            with self.conn.cursor() as cur:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(self._stage, columns)) as copy:
                    for i in sorted([*vectors, *blank]):
                        row = rows[i]
                        copy.write_row((*row.key_values, Jsonb(row.key), row.hash, vectors.get(i)))
                written = [r[0] for r in run_write(cur, target.statement)[0]]
                if written:
                    cur.execute(template("rollback_fill_done", plan_id=sql.Literal(self.plan_id),
                                         keys=sql.Placeholder()), ([Jsonb(k) for k in written],))
        keys_with_vector = {json.dumps(rows[i].key, sort_keys=True, default=str) for i in vectors}
        return sum(1 for k in written if json.dumps(k, sort_keys=True, default=str) in keys_with_vector)
