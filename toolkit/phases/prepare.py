"""Prepare: the shadow column, its tag, change tracking, and the seeded work ledger.

Shaped like a pgroll operation: `check` refuses (with the reason) before anything is touched,
`prepare` acts and is idempotent (a crash at any step is finished by running it again), and
`drop_tracking` is the inverse of the tracking part (cleanup/abandon call it; dropping the
shadow column is theirs).

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

from toolkit.errors import BadInput, GateFailed
from toolkit.phases.ddl import template
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, log_event, set_phase

log = logging.getLogger(__name__)

T = TypeVar("T")

DDL_LOCK_TIMEOUT_MS = 200
DDL_RETRIES = 10
_BACKOFF_CAP_S = 5.0
_PREPARE_LOCK = 0x7265_656D  # advisory lock class of prepare ("reem"); the second key is the plan id
_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}


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


def vector_type(plan: Plan) -> sql.Composable:
    """`vector(N)`, or `halfvec(N)` when the original column is a halfvec."""
    base = "halfvec" if plan.column_type.startswith("halfvec") else "vector"
    return sql.SQL("{}({})").format(sql.Identifier(base), sql.Literal(plan.dimensions))


def column_comment(plan: Plan, created_at: str | None = None) -> str:
    ref = plan.target_ref
    return json.dumps({
        "reembed": True, "provider": ref.provider, "model": ref.model, "task_type": plan.document_task,
        "dimensions": plan.dimensions, "plan": plan.name,
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


# -- the statements ------------------------------------------------------------------------------

def _add_column(plan: Plan) -> sql.Composable:
    return template("prepare_add_column", table=plan.table, shadow=sql.Identifier(plan.shadow_column),
                    type=vector_type(plan))


def _comment(plan: Plan, created_at: str | None = None) -> sql.Composable:
    return template("prepare_comment", column=sql.Identifier(plan.table_schema, plan.table_name, plan.shadow_column),
                    comment=sql.Literal(column_comment(plan, created_at)))


def _set_storage(plan: Plan, storage: str) -> sql.Composable:
    return template("prepare_set_storage", table=plan.table, shadow=sql.Identifier(plan.shadow_column),
                    storage=sql.SQL(_STORAGE[storage]))


def _track_function(plan: Plan, plan_id: int) -> sql.Composable:
    watched = plan.tracked_columns + [c for c in plan.primary_key if c not in plan.tracked_columns]
    unchanged = sql.SQL(" AND ").join(
        sql.SQL("OLD.{c} IS NOT DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c)) for c in watched)
    return template("prepare_track_function", function=tracking_names(plan_id).function, unchanged=unchanged,
                    old_key=key_json(plan, "OLD"), new_key=key_json(plan, "NEW"), plan_id=sql.Literal(plan_id))


def _track_trigger(plan: Plan, plan_id: int) -> sql.Composable:
    names = tracking_names(plan_id)
    watched = plan.tracked_columns + [c for c in plan.primary_key if c not in plan.tracked_columns]
    return template("prepare_track_trigger", trigger=sql.Identifier(names.trigger), table=plan.table,
                    columns=sql.SQL(", ").join(sql.Identifier(c) for c in watched), function=names.function)


def _seed(plan: Plan, plan_id: int) -> sql.Composable:
    return template("prepare_seed_ledger", plan_id=sql.Literal(plan_id), key=key_json(plan, "t"), table=plan.table)


def planned_sql(plan: Plan, plan_id: int | None = None) -> list[sql.Composable]:
    """The statements prepare runs, in order. Without `plan_id` (not known before registration)
    the plan's id shows as 0; prepare itself always renders with the registered id."""
    pid = plan_id if plan_id is not None else 0
    return [_add_column(plan), _comment(plan), _track_function(plan, pid), _track_trigger(plan, pid),
            _seed(plan, pid)]


# -- check, action, inverse ----------------------------------------------------------------------

@dataclass
class ShadowState:
    exists: bool
    type: str | None = None
    comment: dict | None = None


def shadow_state(conn: psycopg.Connection, plan: Plan) -> ShadowState:
    row = conn.execute(
        """SELECT format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum)
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped""",
        (plan.table.as_string(conn), plan.shadow_column)).fetchone()
    if row is None:
        return ShadowState(exists=False)
    try:
        comment = json.loads(row[1]) if row[1] else None
    except ValueError:
        comment = None
    return ShadowState(exists=True, type=row[0], comment=comment if isinstance(comment, dict) else None)


def tracking_installed(conn: psycopg.Connection, plan: Plan, plan_id: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
        (plan.table.as_string(conn), tracking_names(plan_id).trigger)).fetchone()
    return row is not None


def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> ShadowState:
    """Refuse, before touching anything, what prepare cannot do; returns what is there already."""
    if record.phase in FINAL_PHASES:
        raise GateFailed(f"plan {plan.name!r} is {record.phase}: start a new plan to re-embed again")
    state = shadow_state(conn, plan)
    if state.exists:
        owner = (state.comment or {}).get("plan")
        if owner != plan.name:
            raise GateFailed(f"column {plan.shadow_column!r} already exists in {plan.table_display} and was not "
                             f"created by plan {plan.name!r}: drop or rename it, or plan another target")
        wanted = vector_type(plan).as_string(conn).replace('"', "")
        if state.type != wanted:
            raise GateFailed(f"column {plan.shadow_column!r} is {state.type}, plan {plan.name!r} needs {wanted}")
    return state


def prepare(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS, retries: int = DDL_RETRIES) -> bool:
    """Add and tag the shadow column, install tracking, seed the ledger; phase -> prepared.

    Returns False when the plan was prepared already (nothing done). Only the plan's phase
    says "prepared": every step before it is safe to repeat."""
    # Two `reembed run` started at once would both prepare: one does it, the other waits here and
    # then finds it done. A session lock, so no transaction stays open while the ledger is seeded.
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (_PREPARE_LOCK, record.id))
    try:
        record.phase = conn.execute("SELECT phase FROM reembed.plans WHERE id = %s", (record.id,)).fetchone()[0]
        return _prepare_locked(conn, plan, record, lock_timeout_ms, retries)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_PREPARE_LOCK, record.id))


def _prepare_locked(conn: psycopg.Connection, plan: Plan, record: PlanRecord, lock_timeout_ms: int,
                    retries: int) -> bool:
    state = check(conn, plan, record)
    if record.phase != "planned" and tracking_installed(conn, plan, record.id):
        return False
    storage = _original_storage(conn, plan)

    def add_column(c: psycopg.Connection) -> None:
        c.execute(_add_column(plan))
        if storage and storage != _default_storage(c, plan):
            c.execute(_set_storage(plan, storage))
        c.execute(_comment(plan))

    if not state.exists:
        with_lock_timeout(conn, add_column, what=f"adding column {plan.shadow_column}",
                          lock_timeout_ms=lock_timeout_ms, retries=retries)

    def install_tracking(c: psycopg.Connection) -> None:
        c.execute(_track_function(plan, record.id))
        c.execute(_track_trigger(plan, record.id))

    with_lock_timeout(conn, install_tracking, what="installing change tracking",
                      lock_timeout_ms=lock_timeout_ms, retries=retries)
    started = time.monotonic()
    with conn.transaction():
        seeded = conn.execute(_seed(plan, record.id)).rowcount
        set_phase(conn, record.id, "prepared",
                  f"shadow column {plan.shadow_column} added, tracking installed, {seeded} rows in the ledger",
                  {"rows_seeded": seeded, "seed_seconds": round(time.monotonic() - started, 3),
                   "trigger": tracking_names(record.id).trigger, "function": tracking_names(record.id).function_name})
    record.phase = "prepared"
    # Fresh statistics, so the claim query's plan knows how many rows are pending.
    conn.execute("ANALYZE reembed.ledger")
    return True


def drop_tracking(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
                  lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS, retries: int = DDL_RETRIES) -> None:
    """Remove the plan's trigger and tracking function (idempotent). Leaves the ledger and the
    shadow column alone. `conn` must be in autocommit mode."""
    names = tracking_names(record.id)

    def drop(c: psycopg.Connection) -> None:
        if c.execute("SELECT to_regclass(%s)", (plan.table.as_string(c),)).fetchone()[0] is not None:
            c.execute(template("prepare_drop_trigger", trigger=sql.Identifier(names.trigger), table=plan.table))
        c.execute(template("prepare_drop_function", function=names.function))

    with_lock_timeout(conn, drop, what="dropping change tracking", lock_timeout_ms=lock_timeout_ms, retries=retries)
    log_event(conn, record.id, "tracking", f"change tracking dropped ({names.trigger}, {names.function_name})")


def _original_storage(conn: psycopg.Connection, plan: Plan) -> str | None:
    row = conn.execute(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
        (plan.table.as_string(conn), plan.column)).fetchone()
    return row[0] if row else None


def _default_storage(conn: psycopg.Connection, plan: Plan) -> str:
    row = conn.execute("SELECT typstorage FROM pg_type WHERE typname = %s",
                       ("halfvec" if plan.column_type.startswith("halfvec") else "vector",)).fetchone()
    return row[0] if row else ""


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
