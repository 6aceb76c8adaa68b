"""`reembed cleanup` (after cutover) and `reembed abandon` (a plan never cut over, or rolled back).

Cleanup drops the old vectors (their column or table, with their indexes) and the change
tracking; abandon drops the new vectors and the change tracking. Both are final: only the
registry (reembed.plans, ledger, events, swaps) remains. What exactly is dropped is the plan's
strategy's (toolkit.strategies); it drops WITHOUT CASCADE, so an object still bound to what it
drops stops it with its name rather than disappearing silently, and it refuses before anything
is dropped. The report says how much disk that returns, and when.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, log_event
from toolkit.strategies import DropResult, strategy_for

ABANDONABLE = ("planned", "prepared", "backfilling", "backfilled", "indexed", "verified", "rolled_back")

__all__ = ["ABANDONABLE", "DropResult", "abandon", "check_abandon", "check_cleanup", "cleanup", "planned_sql"]


def planned_sql(plan: Plan) -> list[sql.Composable]:
    return strategy_for(plan).cleanup_sql(plan)


def check_cleanup(record: PlanRecord, plan: Plan) -> None:
    if record.phase != "cut_over":
        hint = {"rolled_back": f"it was rolled back: `reembed abandon {plan.name}` drops the new vectors instead"}.get(
            record.phase, "cleanup follows a cutover" if record.phase not in FINAL_PHASES else "nothing is left to drop")
        raise GateFailed(f"cannot clean up plan {plan.name!r} in phase {record.phase}: {hint}")


def cleanup(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES) -> DropResult:
    """Drop the old vectors, their indexes and the change tracking. Final: rollback is impossible after."""
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
    """Drop the new vectors, their indexes and the change tracking of a plan that is not cut over."""
    check_abandon(record, plan)
    strategy = strategy_for(plan)
    notes = strategy.finish_swap(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries) \
        if record.phase == "rolled_back" else []
    result = strategy.abandon(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    result.notes = notes + result.notes
    log_event(conn, record.id, "abandon", f"plan {plan.name} abandoned", phase="abandoned")
    return result
