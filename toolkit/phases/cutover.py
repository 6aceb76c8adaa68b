"""`reembed cutover`: swap the new vectors in under the application's column name.

Check (refuses before touching anything): the backfill is complete (nothing pending, nothing
stale, every row with text has a new vector), the new index is valid and ready, the last
verify of the current state passed (`--force` skips only this), nothing binds to the column
that cannot be re-pointed, materialized views only with `--refresh-matviews`. Rows a live
application changed since the last run (up to --catch-up-rows) are embedded first, outside the lock.
Action: the strategy's swap, one short transaction (column strategy: toolkit.phases.swap),
retried on lock timeout with jitter.
Inverse: `reembed rollback` (toolkit.phases.rollback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql

from toolkit.db import Database
from toolkit.errors import GateFailed, PlanMoved
from toolkit.phases import swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.plan import Plan
from toolkit.state import PlanRecord, checked_in_phase, current_phase
from toolkit.strategies import places, strategy_for

CUTOVER_PHASES = ("indexed", "verified", "rolled_back")
DEFAULT_CATCH_UP_ROWS = 1000
CATCH_UP_TRIES = 5


@dataclass
class CutoverOptions:
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    retries: int = DEFAULT_RETRIES
    force: bool = False  # skip the verify gate, and only it
    refresh_matviews: bool = False
    # Rows the live application changed since the last run: cutover embeds up to this many
    # itself, before the lock, so it can succeed under steady writes. 0: refuse instead.
    catch_up_rows: int = DEFAULT_CATCH_UP_ROWS


class BackfillIncomplete(GateFailed):
    """Rows are pending, stale or uncovered: the new column is not complete yet."""


@dataclass
class BackfillState:
    pending: int
    stale: int
    uncovered: int
    without_vector: int


@dataclass
class CheckResult:
    backfill: BackfillState
    verify: str
    dependents: dict[str, list[str]] = field(default_factory=dict)


def planned_sql(plan: Plan, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
    return strategy_for(plan).swap_sql(plan, "cutover", conn)


def backfill_state(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> BackfillState:
    from toolkit.phases.prepare import key_json

    new = places(plan, record.phase).new
    row = conn.execute(template(
        "cutover_gate", plan_id=sql.Literal(record.id), hash=plan.text_hash_expression("t"),
        has_text=sql.SQL("coalesce({} ~ '[^[:space:]]', false)").format(plan.text_expression("t")),
        new=sql.Identifier("t", new.column), table=new.ident, ledger_key=key_json(plan, "t"))).fetchone()
    assert row is not None
    return BackfillState(*(int(v) for v in row))


def verification_passed(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> tuple[bool, str]:
    """The verify engineer's gate, imported late so cutover works (as "not passed") without it."""
    try:
        from toolkit.phases.verify import verification_gate
    except ImportError:
        return False, "`reembed verify` is not available in this installation"
    return verification_gate(conn, plan, record)


def index_ready(conn: psycopg.Connection, plan: Plan, phase: str) -> str | None:
    """None when every planned index on the new vectors is valid and ready; else why not."""
    new = places(plan, phase).new
    for name in new.index_names:
        row = conn.execute(
            """SELECT i.indisvalid, i.indisready FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND i.indrelid = to_regclass(%s)""",
            (new.schema, name, new.ident.as_string(conn))).fetchone()
        if row is None:
            return f"index {name} on the new vectors does not exist: run `reembed index {plan.name}`"
        if not (row[0] and row[1]):
            return f"index {name} is INVALID (an interrupted build): run `reembed index {plan.name}` to rebuild it"
    return None


def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord, options: CutoverOptions) -> CheckResult:
    """Every gate, read-only. Raises GateFailed naming the first that does not hold."""
    if record.phase not in CUTOVER_PHASES:
        hints = {"cut_over": "it is cut over already (`reembed rollback` swaps back)",
                 "backfilled": f"build the index first: `reembed index {plan.name}`"}
        raise GateFailed(f"cannot cut over plan {plan.name!r} in phase {record.phase}: "
                         + hints.get(record.phase, f"run `reembed run {plan.name}` and `reembed index {plan.name}`"))
    # Changes the strategy's tracking did not see, repaired first (the copy strategy's mirror
    # would otherwise be swapped in without them); the rows to embed again are pending then.
    missed = strategy_for(plan).reconcile(conn, plan, record)
    state = backfill_state(conn, plan, record)
    problems = []
    if state.pending > missed.requeued:
        problems.append(f"{state.pending - missed.requeued} rows are pending")
    if state.stale + missed.changed:
        problems.append(f"{state.stale + missed.changed} rows changed since they were embedded")
    if missed.inserted:
        problems.append(f"{missed.inserted} rows were inserted without change tracking seeing them")
    if state.stale or state.uncovered:
        # Changed behind change tracking's back (its trigger does not fire under
        # session_replication_role = replica): queued, so the advised run (or the catch-up) does them.
        from toolkit.phases import ledger

        ledger.requeue_untracked_changes(conn, plan, record.id, record.phase)
    if state.uncovered:
        problems.append(f"{state.uncovered} rows with text have no new vector")
    if problems:
        raise BackfillIncomplete(f"the backfill is not complete ({'; '.join(problems)}): "
                                 f"run `reembed run {plan.name}`")
    if plan.column_not_null and state.without_vector:
        raise GateFailed(f"{plan.column} is NOT NULL but {state.without_vector} rows have no new vector (blank text "
                         "the model cannot embed): fill or delete them, or drop NOT NULL, before cutover")
    why = index_ready(conn, plan, record.phase)
    if why:
        raise GateFailed(why)
    passed, verdict = verification_passed(conn, plan, record)
    if not passed and not options.force:
        raise GateFailed(f"the last verify of the current state did not pass ({verdict}): run `reembed verify "
                         f"{plan.name}`, or pass --force to cut over without it")
    carried = strategy_for(plan).check_swap(conn, plan, record, "cutover", refresh_matviews=options.refresh_matviews)
    return CheckResult(backfill=state, verify=verdict if passed else f"skipped by --force ({verdict})",
                       dependents=carried)


def recheck(plan: Plan, record: PlanRecord) -> Callable[[psycopg.Connection], None]:
    """The in-lock re-check: index-backed, no table scan. The plan's registry row is locked by
    now (run_locked): no other command can have moved the plan since this read."""
    def run(conn: psycopg.Connection) -> None:
        phase = current_phase(conn, record.id)
        if phase not in CUTOVER_PHASES:
            raise PlanMoved(f"plan {plan.name!r} moved to phase {phase} (another command) before the swap: "
                            "nothing was changed", phase)
        pending = conn.execute(template("cutover_recheck", plan_id=sql.Literal(record.id))).fetchone()[0]  # type: ignore[index]
        if pending:
            raise BackfillIncomplete(f"{pending} rows were inserted or changed since the check: run "
                                     f"`reembed run {plan.name}` and cut over again; nothing was changed")
        why = index_ready(conn, plan, record.phase)
        if why:
            raise GateFailed(why)
    return run


@dataclass
class CutoverResult:
    check: CheckResult | None
    swap: swap.SwapOutcome | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check.__dict__ | {"backfill": self.check.backfill.__dict__} if self.check else None,
                "swap": self.swap.to_json() if self.swap else None, "notes": self.notes}


def cutover(conn: psycopg.Connection, plan: Plan, record: PlanRecord, options: CutoverOptions,
            on_retry: Callable[[int, float, float], None] | None = None, db: Database | None = None) -> CutoverResult:
    """Check, catch up with the live application (when `db` is given), swap.

    Rows the application changes between the last run and the lock are embedded here, before
    the lock and never under it; a row changed in the instant between catch-up and lock makes
    the in-lock re-check refuse that try, and the next try catches up again.
    """
    strategy = strategy_for(plan)
    if record.phase == "cut_over":  # re-run: finish what needs a scan (VALIDATE, NOT NULL), nothing else
        notes = strategy.finish_swap(conn, plan, record, lock_timeout_ms=options.lock_timeout_ms,
                                     retries=options.retries)
        return CutoverResult(check=None, swap=None, notes=["already cut over"] + notes)
    caught_up = 0
    for attempt in range(1, CATCH_UP_TRIES + 1):
        if db is not None and options.catch_up_rows:
            caught_up += catch_up(db, conn, plan, record, options.catch_up_rows)
        try:
            result = checked_in_phase(conn, plan.name, record.id, record.phase,
                                      lambda: check(conn, plan, record, options))
            outcome = strategy.swap(conn, plan, record, "cutover", recheck=recheck(plan, record),
                                    lock_timeout_ms=options.lock_timeout_ms, retries=options.retries,
                                    refresh_matviews=options.refresh_matviews, on_retry=on_retry)
        except BackfillIncomplete:
            if db is None or not options.catch_up_rows or attempt == CATCH_UP_TRIES:
                raise
            continue
        notes = list(outcome.notes)
        if caught_up:
            notes.insert(0, f"embedded {caught_up} rows the application changed since the last run, before the lock")
        return CutoverResult(check=result, swap=outcome, notes=notes)
    raise AssertionError("unreachable")


def catch_up(db: Database, conn: psycopg.Connection, plan: Plan, record: PlanRecord, limit: int) -> int:
    """Embed the few rows left pending by a live application; more than `limit` is a backlog for
    `reembed run`, refused by the gate as before. Returns the rows written."""
    from toolkit.phases import ledger
    from toolkit.phases.backfill import RunOptions
    from toolkit.phases.backfill import run as run_backfill

    pending, _ = ledger.pending_counts(conn, record.id)
    if not pending or pending > limit:
        return 0
    summary = run_backfill(db, plan.name, RunOptions(progress=False))
    return summary.counters.rows_written
