"""`reembed rollback`: until cleanup, the exact reverse of the cutover swap, in one transaction.

Check: the plan is cut over and the old vectors (and their indexes) are still there.
Action: the strategy's swap, the other way (column strategy: toolkit.phases.swap): the old
vectors take the application's names back, the new ones return to theirs, and everything bound
to the column is re-created on the old vectors. Rows the application inserted or changed since
cutover have no old-model vector of their current text (the change tracking marks them in the
ledger): they are listed, and `reembed run PLAN --rollback-fill` embeds them with the source
model. No provider is called here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed, PlanMoved
from toolkit.phases import swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.plan import Plan
from toolkit.state import PlanRecord, checked_in_phase, current_phase
from toolkit.strategies import Place, places, strategy_for

MISSING_SHOWN = 20


@dataclass
class RollbackResult:
    swap: swap.SwapOutcome | None
    missing_total: int
    missing_keys: list[str]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"swap": self.swap.to_json() if self.swap else None, "missing_old_vectors": self.missing_total,
                "missing_keys": self.missing_keys, "notes": self.notes}


def planned_sql(plan: Plan, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
    return strategy_for(plan).swap_sql(plan, "rollback", conn)


def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
    if record.phase != "cut_over":
        raise GateFailed(f"cannot roll back plan {plan.name!r} in phase {record.phase}: only a cut-over plan can be "
                         "rolled back" + (" (cleanup dropped the old vectors)" if record.phase == "cleaned_up" else ""))
    # What the application wrote after cutover where the strategy's tracking could not see it,
    # repaired in the table swapped back (rows whose text changed lose their source vector there:
    # the rollback then lists them for `run --rollback-fill`).
    strategy_for(plan).reconcile(conn, plan, record)
    strategy_for(plan).check_swap(conn, plan, record, "rollback", refresh_matviews=False)


def has_text(plan: Plan, alias: str = "t") -> sql.Composable:
    """True when the row has text a model can embed (blank text is skipped, never sent)."""
    return sql.SQL("coalesce({} ~ '[^[:space:]]', false)").format(plan.text_expression(alias))


def missing_old_vectors(conn: psycopg.Connection, plan: Plan, place: Place, plan_id: int,
                        limit: int = MISSING_SHOWN) -> tuple[int, list[str]]:
    """Rows whose `place` (holding old-model vectors) lacks the source model's vector of their current
    text: none there, or the row changed since the first cutover. (How many, first keys.)"""
    from toolkit.phases.prepare import key_json

    cols = [sql.Identifier("t", c) for c in plan.primary_key]
    key = cols[0] if len(cols) == 1 else sql.SQL("jsonb_build_array({})").format(sql.SQL(", ").join(cols))
    rows = conn.execute(template(
        "rollback_missing", key=key, table=place.ident, old=sql.Identifier("t", place.column),
        has_text=has_text(plan), plan_id=sql.Literal(plan_id), ledger_key=key_json(plan, "t"),
        order=sql.SQL(", ").join(cols), limit=sql.Literal(limit))).fetchall()
    return (int(rows[0][0]) if rows else 0), [r[1] for r in rows]


def source_stale(conn: psycopg.Connection, plan_id: int) -> int:
    """Rows changed since the first cutover whose source-model vector is not of their text yet
    (index-backed: safe under a lock)."""
    row = conn.execute("SELECT count(*) FROM reembed.ledger WHERE plan_id = %s AND source_stale",
                       (plan_id,)).fetchone()
    return int(row[0]) if row else 0


def recheck(plan: Plan, record: PlanRecord) -> Callable[[psycopg.Connection], None]:
    """Under the swap's locks (the plan's registry row first): still cut over."""
    def run(conn: psycopg.Connection) -> None:
        phase = current_phase(conn, record.id)
        if phase != "cut_over":
            raise PlanMoved(f"plan {plan.name!r} moved to phase {phase} (another command) before the swap back: "
                            "nothing was changed", phase)
    return run


def rollback(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
             lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
             refresh_matviews: bool = False,
             on_retry: Callable[[int, float, float], None] | None = None) -> RollbackResult:
    outcome = None
    strategy = strategy_for(plan)
    if record.phase == "rolled_back":  # re-run: finish NOT NULL / VALIDATE once the missing rows are filled
        notes = ["already rolled back"] + strategy.finish_swap(conn, plan, record, lock_timeout_ms=lock_timeout_ms,
                                                               retries=retries)
    else:
        checked_in_phase(conn, plan.name, record.id, record.phase, lambda: check(conn, plan, record))
        outcome = strategy.swap(conn, plan, record, "rollback", recheck=recheck(plan, record),
                                lock_timeout_ms=lock_timeout_ms, retries=retries, refresh_matviews=refresh_matviews,
                                on_retry=on_retry)
        notes = list(outcome.notes)
    total, keys = missing_old_vectors(conn, plan, places(plan, record.phase).old, record.id)
    if total:
        notes.append(f"{total} rows written or changed since cutover have no {plan.source} vector of their "
                     f"current text (queries miss them or match their old text until filled): run "
                     f"`reembed run {plan.name} --rollback-fill`")
    return RollbackResult(swap=outcome, missing_total=total, missing_keys=keys, notes=notes)
