"""`reembed status`: where each plan stands, from the registry and the ledger (read-only)."""

from __future__ import annotations

from typing import Any

import psycopg

from toolkit.phases import batch_jobs, ledger
from toolkit.state import FINAL_PHASES, PlanRecord, events, get_plan, list_plans


def plan_status(conn: psycopg.Connection, plan_ref: str | None) -> list[dict[str, Any]]:
    """One report per plan: the named one (a name or a plan file), or every live plan."""
    if plan_ref:
        from toolkit.plan import load

        _, record = load(conn, plan_ref) if plan_ref.endswith(".toml") else (None, get_plan(conn, plan_ref))
        records = [record]
    else:
        records = [r for r in list_plans(conn) if r.phase not in FINAL_PHASES]
    return [report(conn, r) for r in records]


def report(conn: psycopg.Connection, record: PlanRecord) -> dict[str, Any]:
    counts = ledger.progress(conn, record.id)
    last = events(conn, record.id, limit=1)
    return {
        "name": record.name,
        "phase": record.phase,
        "table": f"{record.table_schema}.{record.table_name}",
        "column": record.column_name,
        "shadow_column": record.shadow_column,
        "target_model": record.target_model,
        **counts.to_json(),
        "batch_jobs": [job.to_json() for job in batch_jobs.jobs(conn, record.id)],
        "last_event": last[-1] if last else None,
        "updated_at": record.updated_at.isoformat(),
    }
