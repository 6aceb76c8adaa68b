"""`reembed status` and `reembed history`: where each plan stands, from the registry and the
ledger (read-only): progress, the current rate and what it means for the end, and the table and
columns as they are named now (after cutover the new vectors carry the original name)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from toolkit.phases import batch_jobs, ledger
from toolkit.phases.ddl import template
from toolkit.state import FINAL_PHASES, PlanRecord, events, get_plan, list_plans

RATE_WINDOW_S = 60  # the rate is what the last minute did: a stalled run shows 0, not its old average


@dataclass
class PlanStatus:
    """One plan's state. `reads` is the column the application reads; `new_vectors` and
    `old_vectors` name where each model's vectors are now (None once dropped)."""

    name: str
    phase: str
    table: str
    strategy: str  # copy | column: where the new vectors live until cutover
    reads: str
    new_vectors: str | None
    old_vectors: str | None
    source_model: str
    target_model: str
    progress: ledger.Progress
    percent: float | None  # rows finished (embedded or skipped) of all rows; None before prepare
    rows_per_second: float  # over the last RATE_WINDOW_S seconds
    eta_seconds: float | None  # pending rows at that rate; None when nothing moves or nothing is left
    last_event: dict[str, Any] | None
    updated_at: datetime
    batch_jobs: list[dict[str, Any]] = field(default_factory=list)  # --batch-api jobs and their states
    rows_source_stale: int = 0  # rows changed since cutover whose source-model vector is not of their text
    hints: list[str] = field(default_factory=list)  # what pending / stale rows mean now, and what to run

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("progress")
        out.update(self.progress.to_json())
        out["updated_at"] = self.updated_at.isoformat()
        out["column"] = self.reads.rsplit(".", 1)[-1]
        out["shadow_column"] = (self.new_vectors or "").rsplit(".", 1)[-1] if self.phase not in (
            "cut_over", "cleaned_up") else None
        return out


def plan_status(conn: psycopg.Connection, plan_ref: str | None) -> list[PlanStatus]:
    """One report per plan: the named one (a name or a plan file), or every live plan."""
    if plan_ref:
        from toolkit.plan import load

        _, record = load(conn, plan_ref) if plan_ref.endswith(".toml") else (None, get_plan(conn, plan_ref))
        records = [record]
    else:
        records = [r for r in list_plans(conn) if r.phase not in FINAL_PHASES]
    return [report(conn, r) for r in records]


def report(conn: psycopg.Connection, record: PlanRecord) -> PlanStatus:
    from toolkit.plan import Plan
    from toolkit.phases.rollback import source_stale
    from toolkit.strategies import places

    counts = ledger.progress(conn, record.id)
    stale = source_stale(conn, record.id)
    last = events(conn, record.id, limit=1)
    plan = Plan.from_spec(record.spec)
    now = places(plan, record.phase)
    finished = counts.rows_embedded + counts.rows_skipped
    rate = round(_rate(conn, record.id), 1)  # the ETA is worked out from the rate as shown
    gone = {"cleaned_up": "old", "abandoned": "new"}.get(record.phase)
    return PlanStatus(
        name=record.name, phase=record.phase, table=f"{record.table_schema}.{record.table_name}",
        strategy=plan.strategy, reads=now.read.display, new_vectors=None if gone == "new" else now.new.display,
        old_vectors=None if gone == "old" else now.old.display,
        source_model=record.source_model, target_model=record.target_model, progress=counts,
        percent=round(100.0 * finished / counts.rows_total, 1) if counts.rows_total else None,
        rows_per_second=rate,
        eta_seconds=round(counts.rows_pending / rate, 1) if rate > 0 and counts.rows_pending else None,
        last_event=last[-1] if last else None, updated_at=record.updated_at,
        batch_jobs=[job.to_json() for job in batch_jobs.jobs(conn, record.id)],
        rows_source_stale=stale, hints=hints(record, counts, stale, reads=now.read.display,
                                             new_vectors=now.new.display))


def _rate(conn: psycopg.Connection, plan_id: int) -> float:
    done, since = conn.execute(template("status_rate", plan_id=sql.Literal(plan_id),
                                        window=sql.Literal(RATE_WINDOW_S))).fetchone()  # type: ignore[misc]
    if not done or since is None:
        return 0.0
    # Over the part of the window that had work in it: a run that started 10 s ago is not diluted.
    span = max(1.0, min(float(RATE_WINDOW_S), (datetime.now(timezone.utc) - since).total_seconds()))
    return done / span


def history(conn: psycopg.Connection, plan_ref: str, limit: int = 1000) -> tuple[PlanRecord, list[dict[str, Any]]]:
    """Every event of the plan, oldest first: what each command did and when."""
    from toolkit.plan import load

    _, record = load(conn, plan_ref) if plan_ref.endswith(".toml") else (None, get_plan(conn, plan_ref))
    return record, events(conn, record.id, limit=limit)


def hints(record: PlanRecord, counts: ledger.Progress, stale: int, *, reads: str, new_vectors: str) -> list[str]:
    """What the pending and stale rows mean in this phase, and the command that deals with them."""
    out: list[str] = []
    name = record.name
    pending = counts.rows_pending
    if pending and record.phase == "cut_over":
        out.append(f"{pending} rows the application inserted or changed since the last run do not hold a "
                   f"{record.target_model} vector of their current text in {reads} yet, whatever vector the "
                   f"application wrote: run `reembed run {name}`, or keep `reembed run {name} --follow` running "
                   "until cleanup (cleanup embeds them first, or refuses)")
    elif pending and record.phase == "rolled_back":
        out.append(f"{pending} rows changed since the last run have no {record.target_model} vector of their "
                   f"current text in {new_vectors}: `reembed run {name}` before cutting over again")
    elif pending and record.phase not in FINAL_PHASES:
        out.append(f"{pending} rows to embed with {record.target_model}: run `reembed run {name}`"
                   + (" (cutover embeds a few itself, before its lock)" if record.phase in ("indexed", "verified")
                      else ""))
    if stale and record.phase == "rolled_back":
        out.append(f"{stale} rows changed since cutover have no {record.source_model} vector of their current text "
                   f"in {reads}: run `reembed run {name} --rollback-fill` (abandon does it first, or refuses)")
    elif stale and record.phase == "cut_over":
        out.append(f"{stale} rows changed since cutover have no {record.source_model} vector of their current text: "
                   f"a rollback lists them for `reembed run {name} --rollback-fill`")
    return out
