"""`reembed run --rollback-fill`: source-model vectors for rows that have none where the old
vectors are (`places(...).old`), so after a rollback no row is left without a vector. No ledger:
the NULL column is the work list, walked once in key order; the write is guarded by the hash of
the text embedded, like the backfill's, and its statement is the strategy's.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from typing import Any

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
from toolkit.phases.prepare import key_json, source_vector_type
from toolkit.phases.writer import SourceRow, check_vectors, key_columns, run_write
from toolkit.plan import Plan, load
from toolkit.providers.base import EmbedBatch, Embedder
from toolkit.state import log_event
from toolkit.strategies import Place, Write, places, strategy_for


def rollback_fill(db: Database, plan_ref: str, options: RunOptions) -> RunSummary:
    """Embed, with the SOURCE model, every row whose old-model vector is NULL and whose text is not
    empty: after a rollback no row is left without a vector."""
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    options.validate()
    conn = db.connect()
    try:
        plan, record = load(conn, plan_ref)
        check(record)
        old = places(plan, record.phase).old
        if record.phase == "planned":
            raise GateFailed(f"plan {plan.name!r} is not prepared: nothing to roll back to")
        settings = ProviderSettings.from_env(rpm=options.rpm, tpm=options.tpm, concurrency=options.concurrency)
        embedder = make_embedder(plan.source_ref, plan.source_dimensions, settings)
        started = time.monotonic()
        counters = Counters()
        writer = FillWriter(conn, plan, old, strategy_for(plan).fill_statement(conn, plan, record.phase, FILL_STAGE))
        throttle = Throttle(options.max_rows_per_second)
        replicas = ReplicaGate(options.max_replica_lag, record.id, record.phase) if options.max_replica_lag else None
        if replicas is not None:
            check_can_watch(conn)
        bar = progress_bar(writer.count_missing(), options.progress)
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
                    if replicas is not None:
                        replicas.hold(conn)
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
        if replicas is not None:
            counters.replica_pauses, counters.replica_paused_seconds = replicas.pauses, replicas.paused_seconds
        log_event(conn, record.id, "rollback_fill",
                  f"{counters.rows_written} rows given {plan.source} vectors in {old.display}", asdict(counters))
        return RunSummary(name=plan.name, phase=record.phase, column=old.column, seconds=seconds, counters=counters,
                          progress=ledger.progress(conn, record.id), workers=1,
                          rows_per_second=counters.rows_written / seconds if seconds > 0 else 0.0, rollback_fill=True)
    finally:
        conn.close()


def _embed_source(embedder: Embedder, plan: Plan, rows: list[SourceRow]) -> EmbedBatch:
    result = embedder.embed_documents([r.text or "" for r in rows], [r.title for r in rows])
    check_vectors(result.vectors, len(result.index), plan.source_dimensions)
    return result


FILL_STAGE = sql.Identifier("reembed_rollback_stage")


class FillWriter:
    """Keyset walk over rows lacking an old-model vector in `place`, and the guarded write there."""

    def __init__(self, conn: psycopg.Connection, plan: Plan, place: Place, statement: Write) -> None:
        self.conn, self.plan = conn, plan
        self.table = place.ident
        keys = key_columns(plan, "t")
        nonempty = sql.SQL("btrim(coalesce({}, '')) <> ''").format(plan.text_expression("t"))
        self._missing = sql.SQL("{} IS NULL AND {}").format(sql.Identifier("t", place.column), nonempty)
        self._next = sql.SQL(
            "SELECT {key}, {keys}, {text}, {title}, {hash} FROM {table} AS t WHERE {missing} AND ({keys}) > ({after}) "
            "ORDER BY {keys} LIMIT {limit}")
        self._first = sql.SQL(
            "SELECT {key}, {keys}, {text}, {title}, {hash} FROM {table} AS t WHERE {missing} ORDER BY {keys} LIMIT {limit}")
        self._parts = dict(key=key_json(plan, "t"), keys=keys, text=plan.text_expression("t"),
                           title=plan.title_expression("t"), hash=plan.text_hash_expression("t"), table=self.table,
                           missing=self._missing)
        self._stage = FILL_STAGE
        conn.execute(template("backfill_stage", stage=self._stage, key_columns=keys, vtype=source_vector_type(plan),
                              table=self.table))
        self._update = statement

    def count_missing(self) -> int:
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
            self.table, self._missing)).fetchone()
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
                return run_write(cur, self._update)[1]
