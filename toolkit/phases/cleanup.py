"""`reembed cleanup` (after cutover) and `reembed abandon` (a plan never cut over, or rolled back).

Cleanup drops the old vectors (their column or table, with their indexes) and the change
tracking; abandon drops the new vectors and the change tracking. Both are final: only the
registry (reembed.plans, ledger, events, swaps) remains. What exactly is dropped is the plan's
strategy's (toolkit.strategies); it drops WITHOUT CASCADE, so an object still bound to what it
drops stops it with its name rather than disappearing silently, and it refuses before anything
is dropped. The report says how much disk that returns, and when.

Dropping the tracking ends reembed's ownership of the vectors that stay: after it, nothing
re-embeds a row the application writes. So neither leaves a row behind that the tracking still
holds: cleanup embeds the rows pending for the target model first (like cutover's catch-up, up
to --catch-up-rows; more is refused with their count), abandon after a rollback gives the rows
changed since cutover their source-model vector first (the rollback fill, same limit). The
strategy's last step re-checks that under its locks, so no change slips in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import psycopg
from psycopg import sql

from toolkit.db import Database
from toolkit.errors import GateFailed, PlanMoved
from toolkit.phases import ledger
from toolkit.phases.cutover import CATCH_UP_TRIES, DEFAULT_CATCH_UP_ROWS, catch_up
from toolkit.phases.ddl import template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES, PREPARE_LOCK
from toolkit.phases.rollback import source_stale
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, current_phase, log_event
from toolkit.strategies import DropResult, strategy_for

ABANDONABLE = ("planned", "prepared", "backfilling", "backfilled", "indexed", "verified", "rolled_back")

__all__ = ["ABANDONABLE", "DropPreview", "DropResult", "RowsOwed", "abandon", "check_abandon", "check_cleanup",
           "cleanup", "planned_sql", "preview"]


class RowsOwed(GateFailed):
    """Rows the tracking still holds (pending for the target, or stale for the source): dropping the
    tracking now would leave them so for good."""


@dataclass
class DropPreview:
    """What cleanup or abandon is about to do, for the question asked before it (read-only)."""

    action: str  # cleanup | abandon
    plan: str
    drops: list[str] = field(default_factory=list)  # in words: "column public.docs.embedding__old_..."
    already_done: bool = False  # a rerun: nothing to drop, nothing to ask
    ends_rollback: bool = False  # after it, `reembed rollback` is impossible

    @property
    def needs_confirmation(self) -> bool:
        return bool(self.drops) and not self.already_done


def preview(conn: psycopg.Connection, plan: Plan, record: PlanRecord, action: str) -> DropPreview:
    """Check as the action will, then name what it drops. Refuses (GateFailed) when it would."""
    final = "cleaned_up" if action == "cleanup" else "abandoned"
    out = DropPreview(action=action, plan=plan.name, ends_rollback=action == "cleanup" or record.phase == "rolled_back")
    if record.phase == final:
        out.already_done = True
        return out
    (check_cleanup if action == "cleanup" else check_abandon)(record, plan)
    places = strategy_for(plan).places(plan, record.phase)
    place = places.old if action == "cleanup" else places.new
    model = plan.source if action == "cleanup" else plan.target
    if place.table != plan.table_name:  # the vectors have a table of their own (copy strategy): it goes whole
        table = sql.Identifier(place.schema, place.table).as_string(conn)
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:  # type: ignore[index]
            out.drops.append(f"table {place.schema}.{place.table} (the {model} vectors, with every index on it)")
        existing = _existing(conn, plan, record, "", [])
    else:
        existing = _existing(conn, plan, record, place.column, place.index_names)
        if existing["column"]:
            out.drops.append(f"column {place.display} (the {model} vectors)")
        out.drops += [f"index {plan.table_schema}.{name}" for name in existing["indexes"]]
    if existing["tracking"]:
        out.drops.append(f"the change tracking (trigger {existing['tracking']} and its function)")
    return out


def _existing(conn: psycopg.Connection, plan: Plan, record: PlanRecord, column: str,
              indexes: list[str]) -> dict:
    from toolkit.phases.prepare import tracking_names

    table = plan.table.as_string(conn)
    has_column = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                              "AND NOT attisdropped", (table, column)).fetchone() is not None
    present = [name for name in indexes if conn.execute(
        "SELECT to_regclass(%s)", (sql.Identifier(plan.table_schema, name).as_string(conn),)).fetchone()[0]]
    # The tracking trigger, or the copy strategy's propagation (named after it, `_back` once swapped).
    trigger = tracking_names(record.id).trigger
    tracked = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname IN (%s, %s || '_back') "
        "ORDER BY 1 LIMIT 1", (table, trigger, trigger)).fetchone()
    return {"column": has_column, "indexes": present, "tracking": tracked[0] if tracked else None}


def planned_sql(plan: Plan, plan_id: int | None = None) -> list[sql.Composable]:
    return strategy_for(plan).cleanup_sql(plan, plan_id or 0)


def check_cleanup(record: PlanRecord, plan: Plan) -> None:
    if record.phase != "cut_over":
        hint = {"rolled_back": f"it was rolled back: `reembed abandon {plan.name}` drops the new vectors instead"}.get(
            record.phase, "cleanup follows a cutover" if record.phase not in FINAL_PHASES else "nothing is left to drop")
        raise GateFailed(f"cannot clean up plan {plan.name!r} in phase {record.phase}: {hint}")


def _pending_refusal(plan: Plan, pending: int) -> RowsOwed:
    return RowsOwed(
        f"{pending} rows the application inserted or changed are not embedded with {plan.target} yet (whatever "
        f"vector it wrote): cleanup would drop the change tracking and leave them so for good. Run `reembed run "
        f"{plan.name}` (or keep `reembed run {plan.name} --follow` running) and clean up again; nothing was dropped")


def _stale_refusal(plan: Plan, stale: int) -> RowsOwed:
    return RowsOwed(
        f"{stale} rows changed since cutover have no {plan.source} vector of their current text: abandoning "
        f"would leave them so for good. Run `reembed run {plan.name} --rollback-fill` and abandon again; "
        "nothing was dropped")


def _under_lock(record: PlanRecord, plan: Plan, phases: tuple[str, ...],
                owed: Callable[[psycopg.Connection], RowsOwed | None]) -> Callable[[psycopg.Connection], None]:
    """The strategy's last step calls this holding the plan's row and the table: still in `phases`,
    nothing owed (index-backed counts, no scan)."""
    def run(conn: psycopg.Connection) -> None:
        phase = current_phase(conn, record.id)
        if phase not in phases:
            raise PlanMoved(f"plan {plan.name!r} moved to phase {phase} (another command): nothing was dropped",
                            phase)
        refusal = owed(conn)
        if refusal is not None:
            raise refusal
    return run


def _with_catch_up(catch_up: Callable[[], int], count: Callable[[], int], refusal: Callable[[int], RowsOwed],
                   drop: Callable[[], DropResult], limit: int) -> tuple[DropResult, int]:
    """Catch up with what the tracking holds (at most `limit` rows; more, or any with `limit` 0, is
    refused), then drop at once: the drop re-checks under its locks, and a change that slipped in
    since makes it refuse that try; the next catches up again. A live application rarely leaves
    nothing owed at a moment outside the lock, so the check that counts is the one under it."""
    caught = 0
    for attempt in range(1, CATCH_UP_TRIES + 1):
        owed = count()
        if owed and (not limit or owed > limit):
            raise refusal(owed)
        if owed:
            caught += catch_up()
        try:
            return drop(), caught
        except RowsOwed:
            if not limit or attempt == CATCH_UP_TRIES:
                raise
    raise AssertionError("unreachable")


def cleanup(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
            db: Database | None = None, catch_up_rows: int = DEFAULT_CATCH_UP_ROWS) -> DropResult:
    """Drop the old vectors, their indexes and the change tracking, once no row is pending. Final:
    rollback is impossible after. With `db`, up to `catch_up_rows` pending rows are embedded first.
    A rerun on a cleaned-up plan does nothing and says so (already_done)."""
    if record.phase == "cleaned_up":
        return _already(plan, record, strategy_for(plan).places(plan, "cut_over").old.column)
    check_cleanup(record, plan)
    strategy = strategy_for(plan)
    notes = strategy.finish_swap(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)

    def pending(c: psycopg.Connection) -> RowsOwed | None:
        count = int(c.execute(template("cutover_recheck", plan_id=sql.Literal(record.id))).fetchone()[0])  # type: ignore[index]
        return _pending_refusal(plan, count) if count else None

    result, caught = _with_catch_up(
        lambda: catch_up(db, conn, plan, record, catch_up_rows) if db is not None else 0,
        lambda: ledger.pending_counts(conn, record.id)[0], lambda n: _pending_refusal(plan, n),
        lambda: strategy.cleanup(conn, plan, record, recheck=_under_lock(record, plan, ("cut_over",), pending),
                                 lock_timeout_ms=lock_timeout_ms, retries=retries),
        catch_up_rows if db is not None else 0)
    if caught:
        notes.append(f"embedded {caught} rows the application changed since the last run, before dropping the tracking")
    result.notes = notes + result.notes
    return result


def check_abandon(record: PlanRecord, plan: Plan) -> None:
    if record.phase not in ABANDONABLE:
        hint = (f"roll it back first (`reembed rollback {plan.name}`)" if record.phase == "cut_over"
                else "it is final already")
        raise GateFailed(f"cannot abandon plan {plan.name!r} in phase {record.phase}: {hint}")


def abandon(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
            db: Database | None = None, catch_up_rows: int = DEFAULT_CATCH_UP_ROWS) -> DropResult:
    """Drop the new vectors, their indexes and the change tracking of a plan that is not cut over,
    and its ledger rows; the plan's name is free for a new plan afterwards. After a rollback, rows
    changed since cutover get their source-model vector first (with `db`). A rerun does nothing and
    says so (already_done); a plan never prepared has nothing to drop, and the result says that."""
    from toolkit.phases.backfill import RunOptions, rollback_fill

    if record.phase == "abandoned":
        return _already(plan, record, plan.shadow_column)
    check_abandon(record, plan)
    strategy = strategy_for(plan)
    notes = strategy.finish_swap(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries) \
        if record.phase == "rolled_back" else []

    def stale(c: psycopg.Connection) -> RowsOwed | None:
        count = source_stale(c, record.id)
        return _stale_refusal(plan, count) if count else None

    def fill() -> int:
        return rollback_fill(db, plan.name, RunOptions(progress=False)).counters.rows_written  # type: ignore[arg-type]

    # A `reembed run` preparing this plan right now would add its tracking after the drop: wait for it.
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (PREPARE_LOCK, record.id))
    try:
        result, caught = _with_catch_up(
            fill, lambda: source_stale(conn, record.id), lambda n: _stale_refusal(plan, n),
            lambda: strategy.abandon(conn, plan, record, recheck=_under_lock(record, plan, ABANDONABLE, stale),
                                     lock_timeout_ms=lock_timeout_ms, retries=retries),
            catch_up_rows if db is not None else 0)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (PREPARE_LOCK, record.id))
    if caught:
        notes.append(f"gave {caught} rows changed since cutover their {plan.source} vector before dropping the tracking")
    result.notes = notes + result.notes
    if not result.dropped_anything:
        result.notes.insert(0, "nothing to drop: the plan was never prepared")
    conn.execute("DELETE FROM reembed.ledger WHERE plan_id = %s", (record.id,))
    log_event(conn, record.id, "abandon", f"plan {plan.name} abandoned; its ledger rows are removed and its name "
                                          "is free for a new plan", phase="abandoned")
    return result


def _already(plan: Plan, record: PlanRecord, column: str) -> DropResult:
    done = "cleaned up" if record.phase == "cleaned_up" else "abandoned"
    return DropResult(phase=record.phase, column=column, column_existed=False, index=None, already_done=True,
                      notes=[f"plan {plan.name} is {done} already: nothing to drop"])
