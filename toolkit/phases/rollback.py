"""`reembed rollback`: until cleanup, the exact reverse of the cutover swap, in one transaction.

Check: the plan is cut over and the old column (and its index) are still there.
Action: the same exchange as cutover, the other way (toolkit.phases.swap): the old vectors take
the application's column name and index name back, the new ones return to the shadow name, and
everything bound to the column is re-created on the old vectors. Rows written after cutover
have no old-model vector: they are listed, and `reembed run PLAN --rollback-fill` embeds them
with the source model. No provider is called here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed
from toolkit.phases import swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.plan import Plan
from toolkit.state import PlanRecord

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


def exchange(plan: Plan, shadow_comment: str | None) -> swap.Exchange:
    index = plan.index
    renames = []
    if index is not None and index.original_name and index.old_name:
        renames = [(index.original_name, index.shadow_name), (index.old_name, index.original_name)]
    return swap.Exchange(direction="rollback", column=plan.column, incoming=plan.old_column, aside=plan.shadow_column,
                         index_renames=renames, aside_comment=shadow_comment, phase_after="rolled_back")


def planned_sql(plan: Plan) -> list[sql.Composable]:
    return swap.statements(plan, exchange(plan, None))


def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
    if record.phase != "cut_over":
        raise GateFailed(f"cannot roll back plan {plan.name!r} in phase {record.phase}: only a cut-over plan can be "
                         "rolled back" + (" (cleanup dropped the old vectors)" if record.phase == "cleaned_up" else ""))
    oid = conn.execute("SELECT to_regclass(%s)::oid", (plan.table.as_string(conn),)).fetchone()[0]  # type: ignore[index]
    if swap.column_state(conn, oid, plan.old_column) is None:
        raise GateFailed(f"column {plan.old_column} with the old vectors is gone from {plan.table_display}")
    if plan.index is not None and plan.index.old_name:
        row = conn.execute("SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON "
                           "c.oid = i.indexrelid WHERE i.indrelid = %s AND c.relname = %s",
                           (oid, plan.index.old_name)).fetchone()
        if row is None or not row[0]:
            raise GateFailed(f"index {plan.index.old_name} on the old vectors is missing or INVALID")


def missing_old_vectors(conn: psycopg.Connection, plan: Plan, column: str,
                        limit: int = MISSING_SHOWN) -> tuple[int, list[str]]:
    """Rows with text whose `column` (holding old-model vectors) is NULL: (how many, first keys)."""
    cols = [sql.Identifier("t", c) for c in plan.primary_key]
    key = cols[0] if len(cols) == 1 else sql.SQL("jsonb_build_array({})").format(sql.SQL(", ").join(cols))
    rows = conn.execute(template(
        "rollback_missing", key=key, table=plan.table, old=sql.Identifier("t", column),
        has_text=sql.SQL("coalesce({} ~ '[^[:space:]]', false)").format(plan.text_expression("t")),
        order=sql.SQL(", ").join(cols), limit=sql.Literal(limit))).fetchall()
    return (int(rows[0][0]) if rows else 0), [r[1] for r in rows]


def rollback(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
             lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
             refresh_matviews: bool = False,
             on_retry: Callable[[int, float, float], None] | None = None) -> RollbackResult:
    outcome = None
    if record.phase == "rolled_back":  # re-run: finish NOT NULL / VALIDATE once the missing rows are filled
        notes = ["already rolled back"] + swap.finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms,
                                                      retries=retries)
    else:
        check(conn, plan, record)
        cut = swap.last_swap(conn, record.id, "cutover")
        shadow_comment = cut["captured"].get("incoming_comment") if cut else None
        outcome = swap.perform(conn, plan, record, exchange(plan, shadow_comment), recheck=lambda c: None,
                               lock_timeout_ms=lock_timeout_ms, retries=retries, refresh_matviews=refresh_matviews,
                               on_retry=on_retry)
        notes = list(outcome.notes)
    total, keys = missing_old_vectors(conn, plan, plan.column)
    if total:
        notes.append(f"{total} rows written after cutover have no {plan.source} vector and are not found by "
                     f"queries until filled: run `reembed run {plan.name} --rollback-fill`")
    return RollbackResult(swap=outcome, missing_total=total, missing_keys=keys, notes=notes)
