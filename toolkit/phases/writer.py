"""Claiming, reading and writing batches: one short transaction per batch, one round trip.

A batch is staged into a per-connection temp table from binary array parameters, then written by
one guarded statement from stage that also marks the ledger. Which statement is the plan's
strategy's (the column strategy's `UPDATE ... FROM stage`: DESIGN.md; the page-striped ledger
order keeps most updates HOT with an index on the original column). All of it goes down one
psycopg pipeline with the claim of the next batch. The first statement of each write checks, under
the plan's registry row lock, that the target's vectors are still where the write statement was
built for (write_guard: a swap or a drop may have moved them); when not, nothing is written and the
writer builds its statement for where they are now. Nothing here holds a snapshot between batches:
the connection is in autocommit mode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql
from psycopg.adapt import PyFormat
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.types.json import Jsonb

from toolkit.errors import MalformedResponse, PlanMoved
from toolkit.phases.ddl import template
from toolkit.phases import ledger
from toolkit.phases.ledger import Key
from toolkit.phases.prepare import key_columns, key_json, key_match, key_record
from toolkit.phases.write_guard import OWN_WRITE, PlaceGuard
from toolkit.plan import Plan
from toolkit.strategies.base import Write

log = logging.getLogger(__name__)

EMPTY_TEXT = "empty text"
# reembed.guard_write() raises this SQLSTATE when the plan is no longer in the phase a write was built for.
PLACE_MOVED = "RM001"
GUARD_WRITE = f"SELECT reembed.guard_write(%s, %s), {OWN_WRITE}"
# A write follows each phase change it meets; more than this many in one write is a plan being churned.
MAX_PLACE_MOVES = 10


@dataclass
class SourceRow:
    """A claimed row as it is now: its key, what will be embedded, and the hash the write is guarded by."""

    key: Key
    key_values: tuple[Any, ...]
    text: str | None
    title: str | None
    hash: str

    @property
    def empty(self) -> bool:
        return self.text is None or not self.text.strip()


@dataclass
class Outcome:
    written: int = 0
    skipped: int = 0
    rejected: int = 0  # changed since read, or lease lost: stays pending
    reembedded: int = 0  # written rows that had been embedded before (embed_count > 1)
    written_keys: list[Key] = field(default_factory=list)


# Bytes of one element type's vector (its varlena header included), for whether it fits inline.
_BYTES_PER_DIMENSION = {"vector": 4, "halfvec": 2}
_INLINE_LIMIT = 6000  # of a heap page's 8160, leaving room for the key, hash and skip reason


def create_stage(conn: psycopg.Connection, plan: Plan, name: str, base: str, dimensions: int) -> sql.Identifier:
    """The connection's staging table `name` for one batch of `base(dimensions)` vectors (kept if it exists)."""
    stage = sql.Identifier(name)
    conn.execute(template("backfill_stage", stage=stage, key_columns=key_columns(plan, "t"), table=plan.table,
                          vtype=sql.SQL("{}({})").format(sql.Identifier(base), sql.Literal(dimensions))))
    size = _BYTES_PER_DIMENSION.get(base, 0) * dimensions + 8
    inline = base in _BYTES_PER_DIMENSION and size <= _INLINE_LIMIT
    varlena = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attstorage IN ('x', 'e') AND attname <> 'v' ORDER BY attnum", (f"pg_temp.{name}",))]
    others = sql.SQL("").join(sql.SQL(", ALTER COLUMN {} SET STORAGE MAIN").format(sql.Identifier(c)) for c in varlena)
    conn.execute(template("backfill_stage_storage", stage=stage, others=others,
                          vector_storage=sql.SQL("PLAIN" if inline else "EXTERNAL")))
    return stage


def read_rows(conn: psycopg.Connection, plan: Plan, keys: Sequence[Key]) -> list[SourceRow]:
    """The claimed rows that still exist, with their current text, title and hash."""
    if not keys:
        return []
    query = template("backfill_read", key=key_json(plan, "t"), key_columns=key_columns(plan, "t"),
                     text=plan.text_expression("t"), title=plan.title_expression("t"),
                     hash=plan.text_hash_expression("t"), table=plan.table, keys=sql.Placeholder(),
                     match=key_match(plan, "t", "k"), key_record=key_record(conn, plan))
    n = len(plan.primary_key)
    rows = conn.execute(query, (Jsonb(list(keys)),)).fetchall()
    return [SourceRow(key=r[0], key_values=tuple(r[1:1 + n]), text=r[1 + n], title=r[2 + n], hash=r[3 + n])
            for r in rows]


def check_vectors(vectors: np.ndarray, count: int, dimensions: int) -> np.ndarray:
    """The last line of defence before the database: never write a vector we cannot trust."""
    if not isinstance(vectors, np.ndarray) or vectors.shape != (count, dimensions):
        shape = getattr(vectors, "shape", None)
        raise MalformedResponse(f"provider answered vectors of shape {shape}, expected ({count}, {dimensions})")
    vectors = vectors.astype(np.float32, copy=False)
    if not np.all(np.isfinite(vectors)):
        raise MalformedResponse("provider answered a vector with NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    if count and (np.any(norms == 0) or np.any(np.abs(norms - 1.0) > 1e-3)):
        raise MalformedResponse("provider answered a vector that is zero or not unit length after normalization")
    return vectors


@dataclass(frozen=True)
class Claim:
    """A request for the next batch: up to `limit` pending rows leased for `lease_seconds`; with
    `changed_before`, only rows that changed before then (a catch-up sweep's bound)."""

    limit: int
    lease_seconds: float
    changed_before: datetime | None = None


@dataclass
class Claimed:
    """A claimed batch as it is now: the rows to embed, and the claimed keys whose row is gone."""

    rows: list[SourceRow]
    gone: list[Key]

    def __bool__(self) -> bool:
        return bool(self.rows or self.gone)


class BatchWriter:
    """Claims, reads and writes batches of one plan through one connection (autocommit).

    Every batch costs one round trip in the steady state: the write goes down one pipeline
    (BEGIN, staging from binary array parameters, the strategy's guarded write statement, the
    release of what it did not write, COMMIT) together with the claim-and-read of the next batch.
    Waiting for the server once per batch instead of eight times matters when embedding threads
    hold the GIL: every wait ends by queueing for it."""

    def __init__(self, conn: psycopg.Connection, plan: Plan, plan_id: int, owner: str, phase: str) -> None:
        from toolkit.strategies import strategy_for

        self.conn, self.plan, self.plan_id, self.owner = conn, plan, plan_id, owner
        self._key_record = key_record(conn, plan)
        self.stage = create_stage(conn, plan, f"reembed_stage_{plan_id}", plan.new_vector_base, plan.dimensions)
        columns = [*plan.primary_key, "pk", "hash", "v", "reason"]
        self._stage_rows = template(
            "backfill_stage_rows", stage=self.stage, columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            key_columns=key_columns(plan, "k"), key_record=self._key_record, pks=sql.Placeholder("pks", PyFormat.BINARY),
            hashes=sql.Placeholder("hashes", PyFormat.BINARY), vectors=sql.Placeholder("vectors", PyFormat.BINARY),
            reasons=sql.Placeholder("reasons", PyFormat.BINARY), vector_array=sql.SQL(f"{plan.new_vector_base}[]"))
        self._half = plan.new_vector_base == "halfvec"
        self._claim_read = template(
            "backfill_claim_read", claim=ledger.claim_statement(plan_id), key_columns=key_columns(plan, "t"),
            text=plan.text_expression("t"), title=plan.title_expression("t"), hash=plan.text_hash_expression("t"),
            table=plan.table, match=key_match(plan, "t", "k"), key_record=self._key_record)
        self._release = template("backfill_release", plan_id=sql.Literal(plan_id), owner=sql.Literal(owner),
                                 keys=sql.Placeholder("keys"))
        strategy = strategy_for(plan)
        # Where the target's vectors are is checked under the plan's row lock in every write.
        self.guard: PlaceGuard[Write] = PlaceGuard(
            plan, plan_id, phase, "new",
            lambda now: strategy.write_statement(conn, plan, now, self.stage, plan_id, owner))

    def claim(self, claim: Claim) -> Claimed:
        """Lease the next batch and read it: one statement."""
        with self.conn.cursor() as cur:
            cur.execute(self._claim_read, self._claim_params(claim))
            return self._claimed(cur)

    def write(self, rows: Sequence[SourceRow], vectors: dict[int, np.ndarray], skipped: dict[int, str]) -> Outcome:
        """Write `vectors` (by position in `rows`) and mark `skipped` rows, in one transaction.

        Rows neither written nor skipped here, and rows the guard rejects, have their lease released.
        Raises PlanMoved (nothing written) when the plan was cleaned up or abandoned meanwhile."""
        return self.write_then_claim(rows, vectors, skipped, None)[0]

    def write_then_claim(self, rows: Sequence[SourceRow], vectors: dict[int, np.ndarray], skipped: dict[int, str],
                         then: Claim | None) -> tuple[Outcome, Claimed | None]:
        """`write`, and with `then`, the claim of the next batch in the same round trip.

        One pipeline, one sync: BEGIN, stage, the strategy's write, the release of every lease of
        the batch it did not mark (rows not sent, rows the guard rejected), COMMIT; then the claim
        of the next batch in its own implicit transaction, after the commit, so it never holds
        ledger locks while the write waits for a row (the tracking trigger locks a row, then its
        ledger row). A failed write runs nothing after it: no claim. A failed claim after a
        committed write loses nothing: the write counts, the claim is simply made again.

        The pipeline's first statement after BEGIN is the place check (reembed.guard_write): when
        the plan's phase is no longer the one the write statement was built for, it fails, so the
        pipeline writes nothing; the statement is built again for the phase the plan is in now and
        the whole round trip made again. Raises PlanMoved when no place is left for the target's
        vectors (the plan was cleaned up or abandoned): nothing written, no lease released here."""
        for _ in range(MAX_PLACE_MOVES):
            try:
                return self._write_then_claim(rows, vectors, skipped, then)
            except psycopg.Error as exc:
                if exc.sqlstate != PLACE_MOVED:
                    raise
                self.guard.refresh(self.conn)  # raises PlanMoved when nothing is left to write to
        raise PlanMoved(f"plan {self.plan.name!r} changed phase {MAX_PLACE_MOVES} times during one write: "
                        "stopped, nothing more written", self.guard.phase)

    def _write_then_claim(self, rows: Sequence[SourceRow], vectors: dict[int, np.ndarray], skipped: dict[int, str],
                          then: Claim | None) -> tuple[Outcome, Claimed | None]:
        staged = [(i, vectors.get(i), skipped.get(i)) for i in range(len(rows)) if i in vectors or i in skipped]
        keys = [Jsonb(row.key) for row in rows]
        write_cur, commit_cur = self.conn.cursor(), self.conn.cursor()
        next_cur = self.conn.cursor() if then is not None else None
        claim_error: psycopg.Error | None = None
        try:
            with self.conn.pipeline():
                write_cur.execute("BEGIN")
                write_cur.execute(GUARD_WRITE, (self.plan_id, self.guard.phase))
                write_cur.execute(self.guard.role_lock, (self.plan_id,))
                if staged:
                    write_cur.execute(self._stage_rows, {
                        "pks": [keys[i] for i, _, _ in staged], "hashes": [rows[i].hash for i, _, _ in staged],
                        "vectors": [self._dumpable(v) for _, v, _ in staged], "reasons": [r for _, _, r in staged]})
                    write = self.guard.built
                    for statement in write.before:  # their own cursors: write_cur keeps the write's rows
                        self.conn.execute(statement)
                    write_cur.execute(write.statement)
                    for statement in write.after:
                        self.conn.execute(statement)
                self.conn.execute(self._release, {"keys": keys})
                commit_cur.execute("COMMIT")
                if next_cur is not None and then is not None:
                    next_cur.execute(self._claim_read, self._claim_params(then))
        except psycopg.Error as exc:
            if not _succeeded(commit_cur) or self.conn.closed:
                self._end_failed_transaction()
                raise
            claim_error = exc  # the write committed; only the claim after it failed
            log.warning("claiming the next batch failed after a committed write: %s", exc)
        except BaseException:
            self._end_failed_transaction()
            raise
        outcome = Outcome()
        done_keys = set()
        for key, was_skipped, embed_count in (write_cur.fetchall() if staged else []):
            done_keys.add(_key_str(key))
            if was_skipped:
                outcome.skipped += 1
            else:
                outcome.written += 1
                outcome.written_keys.append(key)
                if embed_count > 1:
                    outcome.reembedded += 1
        outcome.rejected = sum(1 for i, _, _ in staged if _key_str(rows[i].key) not in done_keys)
        claimed = self._claimed(next_cur) if next_cur is not None and claim_error is None else None
        return outcome, claimed

    def _dumpable(self, vector: np.ndarray | None) -> np.ndarray | HalfVector | None:
        # halfvec's binary dumper takes HalfVector objects only
        return HalfVector(vector) if self._half and vector is not None else vector

    def _end_failed_transaction(self) -> None:
        """After an error inside the explicit BEGIN the session stays in a failed transaction."""
        if not self.conn.closed and self.conn.info.transaction_status != TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")

    def forget_missing(self, keys: Sequence[Key]) -> int:
        """Drop ledger rows of claimed keys whose row no longer exists."""
        if not keys:
            return 0
        return self.conn.execute(template(
            "backfill_forget", plan_id=sql.Literal(self.plan_id), owner=sql.Literal(self.owner),
            keys=sql.Placeholder(), table=self.plan.table, match=key_match(self.plan, "t", "k"),
            key_record=self._key_record),
            ([Jsonb(k) for k in keys],)).rowcount

    def _claim_params(self, claim: Claim) -> dict[str, Any]:
        return ledger.claim_params(self.owner, claim.limit, claim.lease_seconds, claim.changed_before)

    def _claimed(self, cur: psycopg.Cursor[Any]) -> Claimed:
        n = len(self.plan.primary_key)
        rows, gone = [], []
        for r in cur.fetchall():
            if r[1] is None:  # a primary key column is never NULL: the row is gone
                gone.append(r[0])
            else:
                rows.append(SourceRow(key=r[0], key_values=tuple(r[1:1 + n]), text=r[1 + n], title=r[2 + n],
                                      hash=r[3 + n]))
        return Claimed(rows=rows, gone=gone)


def _succeeded(cur: psycopg.Cursor[Any]) -> bool:
    result = cur.pgresult
    return result is not None and result.status == ExecStatus.COMMAND_OK


def run_write(cur: psycopg.Cursor, write: Write) -> tuple[list[tuple[Any, ...]], int]:
    """The strategy's write inside the caller's transaction: what goes before, the statement,
    what goes after. Returns the statement's rows and row count."""
    for statement in write.before:
        cur.execute(statement)
    cur.execute(write.statement)
    rows, count = (cur.fetchall() if cur.description else []), cur.rowcount
    for statement in write.after:
        cur.execute(statement)
    return rows, count


def _key_str(key: Key) -> str:
    return json.dumps(key, sort_keys=True, default=str)
