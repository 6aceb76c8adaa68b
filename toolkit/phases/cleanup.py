"""`reembed cleanup` (after cutover) and `reembed abandon` (a plan never cut over, or rolled back).

Cleanup drops the old column, its index and the change tracking; abandon drops the shadow
column, its index and the change tracking. Both are final: only the registry (reembed.plans,
ledger, events, swaps) remains. Columns are dropped WITHOUT CASCADE: an object still bound to
the column stops the drop with its name rather than disappearing silently, and each check
refuses before anything is dropped. DROP COLUMN frees no space until the table is rewritten;
the report says how much and how.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed
from toolkit.phases import dependents, swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES, run_locked
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, log_event, set_phase

ABANDONABLE = ("planned", "prepared", "backfilling", "backfilled", "indexed", "verified", "rolled_back")


@dataclass
class DropResult:
    phase: str
    column: str
    column_existed: bool
    index: str | None
    index_bytes: int = 0
    column_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def planned_sql(plan: Plan) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    if plan.index is not None and plan.index.old_name:
        out.append(template("index_drop", index=sql.Identifier(plan.table_schema, plan.index.old_name)))
    out.append(template("cleanup_drop_column", table=plan.table, column=sql.Identifier(plan.old_column)))
    out.append(sql.SQL("-- then drop the plan's change tracking trigger and function (see prepare)"))
    return out


def _bound_elsewhere(conn: psycopg.Connection, oid: int, column: str, schema: str, own_indexes: set[str]) -> list[str]:
    captured = dependents.capture(conn, oid, column)
    found = [f"{kind} {', '.join(names)}" for kind, names in captured.summary().items()
             if kind not in ("comment", "grant", "statistics_target")]
    # Compare names quoted the same way capture() quotes them: parsing quoted names back breaks on
    # an index whose name holds a quote or a dot.
    own = {row[0] for row in conn.execute("SELECT format('%%I.%%I', %s::text, i) FROM unnest(%s::text[]) AS i",
                                          (schema, sorted(own_indexes)))}
    found += [f"index {i}" for i in captured.indexes if i not in own]
    found += captured.unsupported
    return found


def _drop(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, column: str, index: str | None, phase: str,
          lock_timeout_ms: int, retries: int) -> DropResult:
    from toolkit.phases.prepare import drop_tracking

    oid = dependents.table_oid(conn, plan.table)
    exists = swap.column_state(conn, oid, column) is not None
    result = DropResult(phase=phase, column=column, column_existed=exists, index=index)
    if exists:
        blockers = _bound_elsewhere(conn, oid, column, plan.table_schema, {index} if index else set())
        if blockers:
            raise GateFailed(f"{'; '.join(blockers)} still use(s) column {column} of {plan.table_display}: "
                             "drop or re-point them first (reembed drops without CASCADE); nothing was dropped")
        result.column_bytes = conn.execute(template("cleanup_column_bytes", column=sql.Identifier(column),
                                                    table=plan.table)).fetchone()[0]  # type: ignore[index]
    if index:
        ident = sql.Identifier(plan.table_schema, index)
        size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (ident.as_string(conn),)).fetchone()[0]  # type: ignore[index]
        result.index_bytes = int(size or 0)
        conn.execute(template("index_drop", index=ident))  # CONCURRENTLY: before the column, without a long lock
    if exists:
        def drop_column(c: psycopg.Connection) -> None:
            c.execute(template("cleanup_drop_column", table=plan.table, column=sql.Identifier(column)))
        try:
            run_locked(conn, [plan.table], drop_column, lock_timeout_ms=lock_timeout_ms, retries=retries,
                       what=f"dropping column {column}")
        except psycopg.errors.DependentObjectsStillExist as exc:
            detail = (exc.diag.message_detail or "").replace("\n", "; ")
            raise GateFailed(f"column {column} is still used: {detail}; drop or re-point that first "
                             "(reembed drops without CASCADE)") from None
    drop_tracking(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    if result.column_bytes:
        result.notes.append(
            f"{_mb(result.column_bytes)} of {column} stays in {plan.table_display}'s files until the table is "
            f"rewritten: `VACUUM FULL {plan.table.as_string(conn)}` (locks the table for the whole rewrite) or "
            f"`pg_repack --table {plan.table_display}` (online)")
    if result.index_bytes:
        result.notes.append(f"index {index} freed {_mb(result.index_bytes)} at once")
    set_phase(conn, record.id, phase, f"{phase}: dropped {column}" + (f" and {index}" if index else ""),
              result.to_json())
    record.phase = phase
    return result


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_cleanup(record: PlanRecord, plan: Plan) -> None:
    if record.phase != "cut_over":
        hint = {"rolled_back": f"it was rolled back: `reembed abandon {plan.name}` drops the new vectors instead"}.get(
            record.phase, "cleanup follows a cutover" if record.phase not in FINAL_PHASES else "nothing is left to drop")
        raise GateFailed(f"cannot clean up plan {plan.name!r} in phase {record.phase}: {hint}")


def cleanup(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES) -> DropResult:
    """Drop the old column, its index and the change tracking. Final: rollback is impossible after."""
    check_cleanup(record, plan)
    notes = swap.finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    old_index = plan.index.old_name if plan.index is not None and plan.index.original_name else None
    result = _drop(conn, plan, record, column=plan.old_column, index=old_index, phase="cleaned_up",
                   lock_timeout_ms=lock_timeout_ms, retries=retries)
    result.notes = notes + result.notes
    return result


def check_abandon(record: PlanRecord, plan: Plan) -> None:
    if record.phase not in ABANDONABLE:
        hint = (f"roll it back first (`reembed rollback {plan.name}`)" if record.phase == "cut_over"
                else "it is final already")
        raise GateFailed(f"cannot abandon plan {plan.name!r} in phase {record.phase}: {hint}")


def abandon(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
            lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES) -> DropResult:
    """Drop the shadow column, its index and the change tracking of a plan that is not cut over."""
    check_abandon(record, plan)
    notes = swap.finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries) \
        if record.phase == "rolled_back" else []
    index = plan.index.shadow_name if plan.index is not None else None
    result = _drop(conn, plan, record, column=plan.shadow_column, index=index, phase="abandoned",
                   lock_timeout_ms=lock_timeout_ms, retries=retries)
    result.notes = notes + result.notes
    log_event(conn, record.id, "abandon", f"plan {plan.name} abandoned", phase="abandoned")
    return result
