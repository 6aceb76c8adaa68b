"""Prepare: the place for the new vectors and its change tracking (the plan's strategy makes
both), then the seeded work ledger.

Shaped like a pgroll operation: `check` refuses (with the reason) before anything is touched,
`prepare` acts and is idempotent (a crash at any step is finished by running it again); the
inverse is the strategy's `abandon` (or, after cutover, `cleanup`).

Order matters: tracking is installed *before* the ledger is seeded, so a row inserted or
changed at any moment is either seen by the seed or put in the ledger by the trigger.
Every DDL step runs under `SET LOCAL lock_timeout` and is retried with jitter: an ALTER
waiting for its lock blocks every reader queued after it, so it must never wait long.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, TypeVar

import psycopg
from psycopg import sql

from toolkit.catalog import row_shape
from toolkit.errors import BadInput, GateFailed
from toolkit.phases.ddl import template
from toolkit.phases.locking import PREPARE_LOCK
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, current_phase, set_phase
from toolkit.strategies import strategy_for

log = logging.getLogger(__name__)

T = TypeVar("T")

DDL_LOCK_TIMEOUT_MS = 200
DDL_RETRIES = 10
_BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class TrackingNames:
    """The objects change tracking installs for one plan (cleanup drops them by these names)."""

    function: sql.Identifier  # reembed.track_<plan id>()
    trigger: str  # on the user's table
    function_name: str


def tracking_names(plan_id: int) -> TrackingNames:
    return TrackingNames(function=sql.Identifier("reembed", f"track_{plan_id}"), trigger=f"reembed_track_{plan_id}",
                         function_name=f"reembed.track_{plan_id}")


# -- SQL pieces shared with backfill ---------------------------------------------------------------

def key_json(plan: Plan, row: str) -> sql.Composable:
    """The ledger key of a row: jsonb_build_object('<pk col>', row.<pk col>, ...).

    `row` is a table alias or OLD/NEW (plpgsql). The same expression everywhere (seed, trigger,
    backfill) so that ledger keys always compare equal."""
    pairs = [sql.SQL("{}, {}.{}").format(sql.Literal(c), sql.SQL(row), sql.Identifier(c)) for c in plan.primary_key]
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(pairs))


def key_columns(plan: Plan, alias: str) -> sql.Composable:
    """`alias.k1, alias.k2, ...`: the primary key's columns."""
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in plan.primary_key)


def key_record(conn: psycopg.Connection, plan: Plan) -> sql.Composable:
    """`k1 type1, k2 type2, ...`: the column definitions that type a ledger key back into the table's
    key columns (`jsonb_to_record(pk) AS k(...)`). Not `jsonb_populate_record(NULL::table, pk)`:
    that builds a whole row, and a column of a NOT NULL domain refuses the NULLs of the others."""
    types = {name: type_ for name, type_, _ in row_shape(conn, plan.table)}
    missing = [c for c in plan.primary_key if c not in types]
    if missing:
        raise GateFailed(f"{plan.table_display} has no column {missing[0]!r} of the planned primary key any more")
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in plan.primary_key)


def key_match(plan: Plan, left: str, right: str) -> sql.Composable:
    """`left.k1 = right.k1 AND ...` over the primary key."""
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(c), sql.Identifier(right),
                                        sql.Identifier(c)) for c in plan.primary_key)


def vector_type(plan: Plan) -> sql.Composable:
    """`vector(N)` or `halfvec(N)`, the new column's element type at the planned dimensions: what
    every new vector is."""
    return sql.SQL("{}({})").format(sql.Identifier(plan.new_vector_base), sql.Literal(plan.dimensions))


def new_column_type(plan: Plan) -> sql.Composable:
    """The declared type of the shadow column: `vector_type`, or unsized like an unsized original."""
    if "(" in plan.new_column_type:
        return vector_type(plan)
    return sql.Identifier(plan.new_vector_base)


def column_comment(plan: Plan, created_at: str | None = None) -> str:
    ref = plan.target_ref
    return json.dumps({
        "reembed": True, "provider": ref.provider, "model": ref.model, "task_type": plan.document_task,
        "dimensions": plan.dimensions, "plan": plan.name,
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _seed(plan: Plan, plan_id: int) -> sql.Composable:
    return template("prepare_seed_ledger", plan_id=sql.Literal(plan_id), key=key_json(plan, "t"), table=plan.table,
                    order=strategy_for(plan).seed_order)


def planned_sql(plan: Plan, plan_id: int | None = None, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
    """The statements prepare runs, in order. Without `plan_id` (not known before registration)
    the plan's id shows as 0; prepare itself always renders with the registered id. Some are
    read from the live catalog (`conn`); without it they are summarized."""
    pid = plan_id if plan_id is not None else 0
    return strategy_for(plan).prepare_sql(plan, pid, conn) + [_seed(plan, pid)]


# -- check, action -------------------------------------------------------------------------------

def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
    """Refuse, before touching anything, what prepare cannot do."""
    if record.phase in FINAL_PHASES:
        raise GateFailed(f"plan {plan.name!r} is {record.phase}: start a new plan to re-embed again")
    strategy_for(plan).check_prepare(conn, plan, record)


def prepare(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS, retries: int = DDL_RETRIES) -> bool:
    """Make the place for the new vectors, install tracking, seed the ledger; phase -> prepared.

    Returns False when the plan was prepared already (nothing done). Only the plan's phase
    says "prepared": every step before it is safe to repeat."""
    # Two `reembed run` started at once would both prepare: one does it, the other waits here and
    # then finds it done. A session lock, so no transaction stays open while the ledger is seeded.
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (PREPARE_LOCK, record.id))
    try:
        record.phase = conn.execute("SELECT phase FROM reembed.plans WHERE id = %s", (record.id,)).fetchone()[0]
        return _prepare_locked(conn, plan, record, lock_timeout_ms, retries)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (PREPARE_LOCK, record.id))


def _prepare_locked(conn: psycopg.Connection, plan: Plan, record: PlanRecord, lock_timeout_ms: int,
                    retries: int) -> bool:
    check(conn, plan, record)
    strategy = strategy_for(plan)
    if record.phase != "planned" and strategy.is_prepared(conn, plan, record):
        return False
    made = strategy.prepare(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    started = time.monotonic()
    with conn.transaction():
        # The plan's row before any ledger row: the order of every transaction that moves a phase
        # and writes rows (write_guard), so none waits for the other in a circle.
        current_phase(conn, record.id, lock="NO KEY UPDATE")
        seeded = conn.execute(_seed(plan, record.id)).rowcount
        if not set_phase(conn, record.id, "prepared", f"{made}, {seeded} rows in the ledger",
                         {"rows_seeded": seeded, "seed_seconds": round(time.monotonic() - started, 3),
                          "strategy": strategy.name, "trigger": tracking_names(record.id).trigger,
                          "function": tracking_names(record.id).function_name}, expect=(record.phase,)):
            raise GateFailed(f"plan {plan.name!r} moved to another phase while it was being prepared: run again")
    record.phase = "prepared"
    # Fresh statistics, so the claim query's plan knows how many rows are pending.
    conn.execute("ANALYZE reembed.ledger")
    return True


def with_lock_timeout(conn: psycopg.Connection, work: Callable[[psycopg.Connection], T], *, what: str,
                      lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS, retries: int = DDL_RETRIES,
                      rng: random.Random | None = None) -> T:
    """Run `work` in one transaction whose statements wait at most `lock_timeout_ms` for a lock;
    on timeout roll back, pause (doubling, full jitter) and try again."""
    rng = rng or random.Random()
    for attempt in range(1, retries + 2):
        try:
            with conn.transaction():
                conn.execute(template("prepare_lock_timeout", timeout=sql.Literal(f"{lock_timeout_ms}ms")))
                return work(conn)
        except psycopg.errors.LockNotAvailable:
            if attempt > retries:
                break
            ceiling = min(_BACKOFF_CAP_S, 2 * lock_timeout_ms / 1000 * 2 ** (attempt - 1))
            pause = rng.uniform(ceiling / 2, ceiling)
            log.info("%s: lock not granted within %d ms (try %d), retrying in %.2f s", what, lock_timeout_ms,
                     attempt, pause)
            time.sleep(pause)
    raise GateFailed(f"{what}: could not take the lock on the table within {lock_timeout_ms} ms in {retries + 1} "
                     "tries (a long transaction holds it); nothing was changed, run again later")


def require_prepared(record: PlanRecord) -> None:
    if record.phase == "planned":
        raise BadInput(f"plan {record.name!r} is not prepared yet: run `reembed run {record.name}`")
