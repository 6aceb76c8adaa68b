"""Verify: read-only gates that say, with evidence, whether the new column may replace the old.

Shaped like the other phases: `check` refuses before reading anything heavy (nothing to
verify yet, or a final phase); `run_verify` runs every check, stores the verdict with a
fingerprint of the state it judged (`state_token`), and moves the plan to `verified` when all
pass. There is no inverse: verify changes nothing in the user's table. `verification_gate` is
what cutover asks: did the latest verification pass, and is the state still the one it judged,
or changed only as much as the application's write rate, measured while verify ran, explains?
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from toolkit.config import scrub
from toolkit.db import Database
from toolkit.errors import GateFailed
from toolkit.phases import ledger
from toolkit.phases.verification import agreement as agreement_check
from toolkit.phases.verification import index_checks, model_checks, table_checks
from toolkit.phases.verification.models import Model
from toolkit.phases.verification.options import CheckResult, VerifyOptions
from toolkit.phases.verification.subject import Subject, resolve, sample_rows
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, PlanRecord, log_event, set_phase
from toolkit.strategies import places

# A passing verify moves these phases to `verified`; later phases (cut_over...) never move back.
ADVANCES_FROM = ("backfilled", "indexed")


@dataclass
class VerifyResult:
    plan: str
    passed: bool
    checks: list[CheckResult]
    state_token: str
    state: dict[str, Any]
    verification_id: int
    at: datetime
    phase: str  # the plan's phase after verify
    options: dict[str, Any]
    state_changed: bool = False  # rows or the index changed while verify ran (see live_writes)
    live_writes: dict[str, Any] = field(default_factory=dict)  # what the application changed while verify ran

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_json() for c in self.checks], "plan": self.plan,
                "phase": self.phase, "verification_id": self.verification_id, "at": self.at.isoformat(),
                "state_token": self.state_token, "state": self.state,
                "state_changed_during_verify": self.state_changed, "live_writes": self.live_writes,
                "options": self.options}


# -- the state a verdict is about ----------------------------------------------------------------

def state_snapshot(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> dict[str, Any]:
    """What verify's verdict depends on, in a form independent of the phase (cutover renames the
    column or table and the indexes but keeps their attnum and oid): the ledger's counts and last
    change by state, the new column's number, and the new indexes' oid and validity."""
    new = places(plan, record.phase).new
    ledger = {state: {"rows": rows, "last_change": last.isoformat() if last else None, "embeds": int(embeds or 0)}
              for state, rows, last, embeds in conn.execute(
                  "SELECT state, count(*), max(changed_at), sum(embed_count) FROM reembed.ledger "
                  "WHERE plan_id = %s GROUP BY state ORDER BY state", (record.id,))}
    column = conn.execute(
        "SELECT a.attnum FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped",
        (new.schema, new.table, new.column)).fetchone()
    indexes = [_index_snapshot(conn, new.schema, name) for name in new.index_names]
    snapshot: dict[str, Any] = {"plan_id": record.id, "ledger": ledger,
                                "new_column_attnum": column[0] if column else None,
                                "new_index": indexes[0] if indexes else None}
    if len(indexes) > 1:
        snapshot["other_new_indexes"] = indexes[1:]
    return snapshot


def _index_snapshot(conn: psycopg.Connection, schema: str, name: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT c.oid, i.indisvalid, i.indisready FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name)).fetchone()
    return {"oid": row[0], "valid": row[1], "ready": row[2]} if row else None


def state_token(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> str:
    """A fingerprint of the state verify judged; cutover compares it with the stored one."""
    return _token_of(state_snapshot(conn, plan, record))


def _token_of(snapshot: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:32]


def verification_gate(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> tuple[bool, str]:
    """(True, note) when the latest verification passed and judged the current state; else (False, reason)."""
    row = conn.execute(
        "SELECT id, at, passed, state_token, result FROM reembed.verifications WHERE plan_id = %s "
        "ORDER BY id DESC LIMIT 1", (record.id,)).fetchone()
    if row is None:
        return False, f"plan {plan.name!r} has not been verified: run `reembed verify {plan.name}`"
    _, at, passed, token, result = row
    when = at.isoformat(timespec="seconds")
    rolled_back = conn.execute("SELECT max(at) FROM reembed.swaps WHERE plan_id = %s AND direction = 'rollback'",
                               (record.id,)).fetchone()[0]  # type: ignore[index]
    if rolled_back is not None and rolled_back > at:
        return False, (f"plan {plan.name!r} was rolled back ({rolled_back.isoformat(timespec='seconds')}) after its "
                       f"last verification ({when}): a cutover after a rollback needs a new passing "
                       f"`reembed verify {plan.name}`")
    if not passed:
        failed = [c.get("name") for c in (result or {}).get("checks", []) if not c.get("passed")]
        return False, (f"the latest verification of {plan.name!r} ({when}) failed: {', '.join(failed) or 'see it'}; "
                       f"fix that and run `reembed verify {plan.name}` again")
    snapshot = state_snapshot(conn, plan, record)
    if _token_of(snapshot) == token:
        return True, f"verified {when}, state unchanged since"
    judged = (result or {}).get("state") or {}
    if any(judged.get(k) != snapshot.get(k) for k in ("new_column_attnum", "new_index", "other_new_indexes")):
        return False, (f"the new column or its index changed since it was verified ({when}); "
                       f"run `reembed verify {plan.name}` again")
    # A live application keeps changing rows: those are re-embedded by the same guarded path and the
    # cutover gate refuses any that are still pending or stale. What verify vouches for is the model,
    # the index and the vectors it judged; as many changes since it began as the application's
    # write rate, measured while verify ran, explains do not void it. A burst beyond that does.
    writes = (result or {}).get("live_writes") or {}
    since = datetime.fromisoformat(writes["since"]) if writes.get("since") else at
    rate = float(writes.get("rows_per_second") or 0.0)
    drift, total, elapsed = conn.execute(
        "SELECT count(*) FILTER (WHERE changed_at > %s), count(*), extract(epoch FROM clock_timestamp() - %s) "
        "FROM reembed.ledger WHERE plan_id = %s", (since, since, record.id)).fetchone()
    tolerance = ledger.live_tail_allowance(total, rate, float(elapsed))
    at_rate = f"at the {rate:.2f} rows/s the application changed while verify ran" if rate else \
        "none changed while verify ran"
    if drift > tolerance:
        return False, (f"{drift} rows changed since it was verified ({when}), more than the {tolerance} a "
                       f"verification stays valid for ({at_rate}, over {float(elapsed):.0f} s); run "
                       f"`reembed verify {plan.name}` again")
    return True, (f"verified {when}; {drift} rows changed since (within {tolerance}, {at_rate}), "
                  "re-embedded by the same path")


# -- check, action -------------------------------------------------------------------------------

def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> Subject:
    """Refuse what cannot be verified, before any heavy read."""
    if record.phase in FINAL_PHASES:
        raise GateFailed(f"plan {plan.name!r} is {record.phase}: there is nothing left to verify")
    if record.phase == "planned":
        raise GateFailed(f"plan {plan.name!r} is only planned: run `reembed run {plan.name}` first")
    return resolve(conn, plan, record)


def run_verify(db: Database, conn: psycopg.Connection, plan: Plan, record: PlanRecord,
               options: VerifyOptions) -> VerifyResult:
    """Run every check (read-only on the user's table), store the verdict, advance the phase."""
    subject = check(conn, plan, record)
    began = ledger.database_now(conn)
    snapshot = state_snapshot(conn, plan, record)  # before the checks: a change during verify voids the verdict
    checks: list[CheckResult] = []

    def run(step: Callable[[], CheckResult]) -> None:
        started = time.perf_counter()
        result = step()
        result.evidence["seconds"] = round(time.perf_counter() - started, 3)
        checks.append(result)

    for table_check in (table_checks.sanity, table_checks.outliers):
        run(lambda c=table_check: c(conn, subject, options))  # type: ignore[misc]
    sample = sample_rows(conn, subject, options.sample, options.seed)
    target, source = _models(subject, options)
    # A table with no row to embed (none at all, or only blank texts) has nothing to sample: the
    # checks that measure sampled rows do not apply, rather than fail or pass on nothing.
    nothing_embedded = not sample and not _any_text(conn, subject)

    def sampled(name: str, threshold: Any, step: Callable[[], CheckResult]) -> Callable[[], CheckResult]:
        if not nothing_embedded:
            return step
        return lambda: CheckResult(name, True, "n/a", threshold,
                                   "not applicable: the table has no row with text to embed", {})

    try:
        query_vectors = model_checks.sample_query_vectors(target, sample)
        # The same texts as the source model embeds them: the original index's recall, the baseline.
        source_vectors = model_checks.sample_query_vectors(source, sample) if source is not None else None
        run(lambda: index_checks.index(conn, subject, options, sample))
        run(sampled("ann_recall", options.min_recall,
                    lambda: index_checks.ann_recall(conn, subject, options, sample, query_vectors, source_vectors)))
        run(sampled("fidelity", options.min_fidelity, lambda: model_checks.fidelity(subject, options, sample, target)))
        fidelity_passed = checks[-1].passed
        run(sampled("self_retrieval", options.min_self_retrieval,
                    lambda: model_checks.self_retrieval(conn, subject, options, sample, target, query_vectors,
                                                        source_vectors, fidelity_passed)))
        run(sampled("agreement", f">= -{options.margin:g}",
                    lambda: agreement_check.agreement(conn, subject, options, sample, target, source)))
    finally:
        target.close()
        if source is not None:
            source.close()
    # Coverage and freshness last, reported first: rows left pending are judged against the write
    # rate the application kept up while the other checks ran.
    writes = ledger.live_writes(conn, record.id, began)
    allowed = _pending_allowance(conn, record, options, writes)
    ledger_checks: list[CheckResult] = []
    for table_check in (table_checks.coverage, table_checks.freshness):
        run(lambda c=table_check: c(conn, subject, options, allowed))  # type: ignore[misc]
        ledger_checks.append(checks.pop())
    checks[:0] = ledger_checks
    changed = state_snapshot(conn, plan, record) != snapshot
    return _record(conn, plan, record, checks, snapshot, options, changed, writes)


def _pending_allowance(conn: psycopg.Connection, record: PlanRecord, options: VerifyOptions,
                       writes: ledger.LiveWrites) -> Callable[[int], int]:
    """How many tracked rows may wait, pending, for the migration to count as complete: --max-pending,
    or what the application's write rate (measured while verify ran) piles up since the oldest of them
    changed (ledger.live_tail_allowance). With no writes during verify, only the floor: a backfill
    that did not finish is not a live tail."""
    if options.max_pending is not None:
        return lambda rows: int(options.max_pending)  # type: ignore[arg-type]
    oldest = ledger.oldest_pending_change(conn, record.id)
    age = max(0.0, (ledger.database_now(conn) - oldest).total_seconds()) if oldest else 0.0
    return lambda rows: ledger.live_tail_allowance(rows, writes.rows_per_second, age)


def _any_text(conn: psycopg.Connection, subject: Subject) -> bool:
    """Whether any row has text to embed (blank text is skipped by the backfill)."""
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(
        subject.table, subject.has_text("t"))).fetchone()
    return bool(row and row[0])


def _models(subject: Subject, options: VerifyOptions) -> tuple[Model, Model | None]:
    from toolkit.providers.settings import ProviderSettings

    settings = options.provider_settings or ProviderSettings.from_env()
    plan = subject.plan
    target = Model.build(plan.target_ref, plan.dimensions, settings)
    source = None
    if not options.no_source and subject.old_column is not None:
        source = Model.build(plan.source_ref, subject.old_dimensions or plan.dimensions, settings)
    return target, source


def _record(conn: psycopg.Connection, plan: Plan, record: PlanRecord, checks: list[CheckResult],
            snapshot: dict[str, Any], options: VerifyOptions, changed: bool,
            writes: ledger.LiveWrites) -> VerifyResult:
    passed = all(c.passed for c in checks)
    token = _token_of(snapshot)
    # The verdict is stored against the state seen when verify started: if rows changed while it
    # ran, the token no longer matches and cutover's gate counts the changes since that start
    # against the write rate measured meanwhile (verification_gate); an index change voids it.
    result = json.loads(scrub(json.dumps({"passed": passed, "checks": [c.to_json() for c in checks],
                                          "state": snapshot, "state_changed_during_verify": changed,
                                          "live_writes": writes.to_json(), "options": options.public()},
                                         default=str)))
    failed = [c.name for c in checks if not c.passed]
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO reembed.verifications (plan_id, passed, state_token, result) VALUES (%s, %s, %s, %s) "
            "RETURNING id, at", (record.id, passed, token, Jsonb(result))).fetchone()
        assert row is not None
        message = "verify passed" if passed else f"verify failed: {', '.join(failed)}"
        log_event(conn, record.id, "verify", message, {"verification_id": row[0], "failed": failed},
                  phase=record.phase)
        phase = record.phase
        if passed and record.phase in ADVANCES_FROM:
            # Compare and set: a cutover or abandon that finished while verify ran keeps its phase.
            if set_phase(conn, record.id, "verified", f"verified: {len(checks)} checks passed",
                         {"verification_id": row[0]}, expect=ADVANCES_FROM):
                phase = record.phase = "verified"
    return VerifyResult(plan=plan.name, passed=passed, checks=checks, state_token=token, state=snapshot,
                        verification_id=row[0], at=row[1], phase=phase, options=options.public(),
                        state_changed=changed, live_writes=writes.to_json())
