"""`reembed cleanup` (after cutover) and `reembed abandon` (a plan never cut over, or rolled back).

Cleanup drops the old vectors (their column or table, with their indexes) and the change
tracking; abandon drops the new vectors and the change tracking. Both are final: only the
registry (reembed.plans, ledger, events, swaps) remains. What exactly is dropped is the plan's
strategy's (toolkit.strategies); it drops WITHOUT CASCADE, so an object still bound to what it
drops stops it with its name rather than disappearing silently, and it refuses before anything
is dropped. The report says how much disk that returns, and when.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, log_event
from toolkit.strategies import DropResult, strategy_for

ABANDONABLE = ("planned", "prepared", "backfilling", "backfilled", "indexed", "verified", "rolled_back")

__all__ = ["ABANDONABLE", "DropPreview", "DropResult", "abandon", "check_abandon", "check_cleanup", "cleanup",
           "planned_sql", "preview"]


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


def cleanup(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES) -> DropResult:
    """Drop the old vectors, their indexes and the change tracking. Final: rollback is impossible after.
    A rerun on a cleaned-up plan does nothing and says so (already_done)."""
    if record.phase == "cleaned_up":
        return _already(plan, record, strategy_for(plan).places(plan, "cut_over").old.column)
    check_cleanup(record, plan)
    strategy = strategy_for(plan)
    notes = strategy.finish_swap(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    result = strategy.cleanup(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    result.notes = notes + result.notes
    return result


def check_abandon(record: PlanRecord, plan: Plan) -> None:
    if record.phase not in ABANDONABLE:
        hint = (f"roll it back first (`reembed rollback {plan.name}`)" if record.phase == "cut_over"
                else "it is final already")
        raise GateFailed(f"cannot abandon plan {plan.name!r} in phase {record.phase}: {hint}")


def abandon(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES) -> DropResult:
    """Drop the new vectors, their indexes and the change tracking of a plan that is not cut over,
    and its ledger rows; the plan's name is free for a new plan afterwards. A rerun does nothing and
    says so (already_done); a plan never prepared has nothing to drop, and the result says that."""
    if record.phase == "abandoned":
        return _already(plan, record, plan.shadow_column)
    check_abandon(record, plan)
    strategy = strategy_for(plan)
    notes = strategy.finish_swap(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries) \
        if record.phase == "rolled_back" else []
    result = strategy.abandon(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
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
