"""The exchange of two columns in one short transaction, used by cutover and (reversed) rollback.

Inside the lock only catalog work happens: re-check, capture what binds to the application's
column, rename both columns and their indexes, carry NOT NULL as a NOT VALID check, replay the
captured definitions so they bind to the column now carrying the name, prove nothing is left on
the column moved aside, record the swap. The table is never scanned and no provider is called
while the lock is held. What needs a scan (VALIDATE of re-created checks, the NOT NULL proof)
runs after the lock is released, and `finish` can be re-run until it is done.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from toolkit import column_tag
from toolkit.errors import GateFailed
from toolkit.phases import dependents
from toolkit.phases.ddl import recorded, template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES, run_locked
from toolkit.plan import PG_IDENTIFIER_MAX, Plan
from toolkit.state import PlanRecord, log_event, set_phase


@dataclass
class Exchange:
    """One direction of the swap: `incoming` takes the name `column`; `column` moves to `aside`."""

    direction: str  # cutover | rollback
    column: str
    incoming: str
    aside: str
    index_renames: list[tuple[str, str]]  # applied in order: (current name, new name)
    aside_comment: str | None
    phase_after: str
    # What the column under the original name says after the swap (toolkit.column_tag): the
    # target's tag at cutover, the comment it had before the cutover at rollback. Only ever
    # written over no comment or a reembed tag, never over the user's own.
    live_comment: str | None = None


@dataclass
class SwapOutcome:
    direction: str
    lock_ms: float
    attempts: int
    waits_ms: list[float]
    recreated: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)
    captured: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "lock_ms": round(self.lock_ms, 2), "attempts": self.attempts,
                "waits_ms": [round(w, 1) for w in self.waits_ms], "recreated": self.recreated, "notes": self.notes}


def helper_check_name(plan: Plan) -> str:
    """The temporary CHECK (col IS NOT NULL) that lets SET NOT NULL skip its table scan."""
    name = f"{plan.table_name}_{plan.column}_reembed_nn"
    if len(name.encode()) <= PG_IDENTIFIER_MAX:
        return name
    return "reembed_nn_" + hashlib.sha1(name.encode()).hexdigest()[:12]  # stable across processes


def column_state(conn: psycopg.Connection, oid: int, column: str) -> tuple[bool, str | None] | None:
    """(not null, comment) of a column, or None when it does not exist."""
    row = conn.execute("SELECT attnotnull, col_description(attrelid, attnum) FROM pg_attribute "
                       "WHERE attrelid = %s AND attname = %s AND NOT attisdropped", (oid, column)).fetchone()
    return (row[0], row[1]) if row else None


def statements(plan: Plan, exchange: Exchange, captured: dependents.Captured | None = None) -> list[sql.Composable]:
    """The swap's statements for `reembed plan --sql`. With `captured` (what binds to the column
    now) the re-creation of every dependent is rendered by the code that will run it, with its
    definition; cutover captures again under its lock, so a dependent added later is handled too."""
    table = plan.table
    views = [sql.Identifier(v.schema, v.name) for v in captured.views if v.kind == "view"] if captured else []
    out: list[sql.Composable] = [
        sql.SQL("BEGIN"),
        template("cutover_lock_timeout", timeout=sql.Literal(f"{DEFAULT_LOCK_TIMEOUT_MS}ms")),
        template("cutover_lock", relations=sql.SQL(", ").join([*views, table])),
        template("cutover_rename_column", table=table, old_name=sql.Identifier(exchange.column),
                 new_name=sql.Identifier(exchange.aside)),
        template("cutover_rename_column", table=table, old_name=sql.Identifier(exchange.incoming),
                 new_name=sql.Identifier(exchange.column)),
    ]
    out += [template("cutover_rename_index", index=sql.Identifier(plan.table_schema, a), new_name=sql.Identifier(b))
            for a, b in exchange.index_renames]
    if plan.column_not_null:
        out += [template("cutover_drop_not_null", table=table, column=sql.Identifier(exchange.aside)),
                template("cutover_not_null_check", table=table, constraint=sql.Identifier(helper_check_name(plan)),
                         column=sql.Identifier(exchange.column))]
    if captured is not None:
        out += recorded(dependents.recreate, plan.table_schema, plan.table_name, captured)
    else:
        out.append(sql.SQL("-- re-create views, SQL-body functions, policies, triggers, CHECK constraints, "
                           "statistics, publication column lists, column grants, comment and statistics target "
                           "bound to {}").format(sql.Identifier(exchange.column)))
    if captured is not None and column_tag.replaceable(captured.comment):
        out.append(template("swap_live_tag", column=sql.Identifier(plan.table_schema, plan.table_name, exchange.column),
                            comment=sql.Literal(exchange.live_comment)))
    if exchange.aside_comment is not None:
        out.append(template("cutover_comment", column=sql.Identifier(plan.table_schema, plan.table_name, exchange.aside),
                            comment=sql.Literal(exchange.aside_comment)))
    out.append(sql.SQL("COMMIT"))
    if plan.column_not_null:
        check = sql.Identifier(helper_check_name(plan))
        out += [template("cutover_validate_constraint", table=table, constraint=check),
                template("cutover_set_not_null", table=table, column=sql.Identifier(exchange.column)),
                template("cutover_drop_constraint", table=table, constraint=check)]
    return out


def perform(conn: psycopg.Connection, plan: Plan, record: PlanRecord, exchange: Exchange, *,
            recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
            retries: int = DEFAULT_RETRIES, refresh_matviews: bool = False,
            on_retry: Callable[[int, float, float], None] | None = None) -> SwapOutcome:
    """Swap in one transaction (lock_timeout, jittered retries); then finish what needs a scan."""
    oid = dependents.table_oid(conn, plan.table)
    # Captured before the lock (it reads every definition: milliseconds that need not be spent
    # holding it); under the lock a one-query fingerprint proves it is still exact, or it is redone.
    before_token = dependents.token(conn, oid, exchange.column)
    before = dependents.capture(conn, oid, exchange.column)
    # Views are locked before the table, the order readers take (view, then table): no deadlock.
    # LOCK TABLE does not take materialized views; DROP locks them when it comes to them.
    views = [sql.Identifier(v.schema, v.name) for v in before.views if v.kind == "view"]
    table = plan.table

    def swap(c: psycopg.Connection) -> dict[str, Any]:
        started = time.monotonic()
        recheck(c)
        captured = before
        if dependents.token(c, oid, exchange.column) != before_token:  # changed meanwhile: read again, locked
            captured = dependents.capture(c, oid, exchange.column)
            if {v.name for v in captured.views} - {v.name for v in before.views}:
                raise GateFailed(f"a view on {exchange.column} was created during the swap; run it again")
        refuse_unsupported(captured, refresh_matviews)
        incoming = column_state(c, oid, exchange.incoming)
        if incoming is None:
            raise GateFailed(f"column {exchange.incoming} is missing from {plan.table_display}")
        if column_state(c, oid, exchange.aside) is not None:
            raise GateFailed(f"column {exchange.aside} already exists in {plan.table_display}")
        c.execute(template("cutover_rename_column", table=table, old_name=sql.Identifier(exchange.column),
                           new_name=sql.Identifier(exchange.aside)))
        c.execute(template("cutover_rename_column", table=table, old_name=sql.Identifier(exchange.incoming),
                           new_name=sql.Identifier(exchange.column)))
        for current, new in exchange.index_renames:
            c.execute(template("cutover_rename_index", index=sql.Identifier(plan.table_schema, current),
                               new_name=sql.Identifier(new)))
        not_null_check = None
        if plan.column_not_null:
            if captured.not_null:
                c.execute(template("cutover_drop_not_null", table=table, column=sql.Identifier(exchange.aside)))
            if not incoming[0]:
                not_null_check = helper_check_name(plan)
                c.execute(template("cutover_not_null_check", table=table, constraint=sql.Identifier(not_null_check),
                                   column=sql.Identifier(exchange.column)))
        to_validate = dependents.recreate(c, plan.table_schema, plan.table_name, captured)
        if column_tag.replaceable(captured.comment):
            c.execute(template("swap_live_tag", column=sql.Identifier(plan.table_schema, plan.table_name,
                                                                      exchange.column),
                               comment=sql.Literal(exchange.live_comment)))
        c.execute(template("cutover_comment", column=sql.Identifier(plan.table_schema, plan.table_name, exchange.aside),
                           comment=sql.Literal(exchange.aside_comment)))
        left = dependents.still_bound(c, oid, exchange.aside, captured)
        if left:
            raise GateFailed(f"after re-creating, these still point at {exchange.aside}: {', '.join(left)}; "
                             "nothing was changed")
        record_json = {"dependents": captured.to_json(), "incoming_comment": incoming[1],
                       "to_validate": to_validate, "not_null_check": not_null_check,
                       "lock_views": [v.as_string(c) for v in views]}
        swap_id = c.execute(
            "INSERT INTO reembed.swaps (plan_id, direction, lock_ms, attempts, captured) VALUES (%s, %s, %s, 0, %s) "
            "RETURNING id", (record.id, exchange.direction, (time.monotonic() - started) * 1000,
                             Jsonb(record_json))).fetchone()[0]  # type: ignore[index]
        set_phase(c, record.id, exchange.phase_after, f"{exchange.direction}: {exchange.incoming} is now "
                  f"{exchange.column}, {exchange.column} is now {exchange.aside}", {"swap_id": swap_id})
        return {"swap_id": swap_id, "captured": captured, "record": record_json}

    locked = run_locked(conn, views + [table], swap, lock_timeout_ms=lock_timeout_ms, retries=retries,
                        what=exchange.direction, on_retry=on_retry, plan_id=record.id)
    conn.execute("UPDATE reembed.swaps SET lock_ms = %s, attempts = %s WHERE id = %s",
                 (locked.lock_ms, locked.attempts, locked.result["swap_id"]))
    record.phase = exchange.phase_after
    captured: dependents.Captured = locked.result["captured"]
    outcome = SwapOutcome(direction=exchange.direction, lock_ms=locked.lock_ms, attempts=locked.attempts,
                          waits_ms=locked.waits_ms, recreated=captured.summary(), captured=locked.result["record"])
    log_event(conn, record.id, exchange.direction,
              f"{exchange.direction}: lock held {locked.lock_ms:.1f} ms after {locked.attempts} tries",
              outcome.to_json(), phase=exchange.phase_after)
    outcome.notes += finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    return outcome


def refuse_unsupported(captured: dependents.Captured, refresh_matviews: bool) -> None:
    if captured.unsupported:
        raise GateFailed(f"{', '.join(captured.unsupported)} bind(s) to column {captured.column} and reembed cannot "
                         "re-point them: drop them before the swap and re-create them after")
    if captured.materialized_views and not refresh_matviews:
        names = ", ".join(f"{v.schema}.{v.name}" for v in captured.materialized_views)
        raise GateFailed(f"materialized view(s) {names} read column {captured.column}: they must be re-created and "
                         "filled inside the swap, which holds the lock for as long as their queries take; "
                         "pass --refresh-matviews to accept that")


def last_swap(conn: psycopg.Connection, plan_id: int, direction: str | None = None) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, direction, lock_ms, attempts, captured, at FROM reembed.swaps WHERE plan_id = %s "
        "AND (%s::text IS NULL OR direction = %s) ORDER BY id DESC LIMIT 1",
        (plan_id, direction, direction)).fetchone()
    if row is None:
        return None
    return {"id": row[0], "direction": row[1], "lock_ms": row[2], "attempts": row[3], "captured": row[4], "at": row[5]}


def finish(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
           retries: int = DEFAULT_RETRIES) -> list[str]:
    """After the lock: VALIDATE re-created checks, then NOT NULL without a scan. Idempotent; returns notes."""
    notes: list[str] = []
    swap = last_swap(conn, record.id)
    if swap is None:
        return notes
    table = plan.table
    oid = dependents.table_oid(conn, table)
    for name in swap["captured"].get("to_validate", []):
        if _constraint_validated(conn, oid, name) in (None, True):
            continue
        try:
            conn.execute(template("cutover_validate_constraint", table=table, constraint=sql.Identifier(name)))
        except psycopg.errors.CheckViolation:
            notes.append(f"CHECK constraint {name} does not hold for every row of the new vectors: it stays NOT VALID "
                         "(new writes are checked); fix the rows, then run this command again")
    check = helper_check_name(plan)
    state = _constraint_validated(conn, oid, check)
    if state is None:
        return notes
    try:
        if not state:
            conn.execute(template("cutover_validate_constraint", table=table, constraint=sql.Identifier(check)))
    except psycopg.errors.CheckViolation:
        nulls = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            table, sql.Identifier(plan.column))).fetchone()[0]  # type: ignore[index]
        notes.append(f"{nulls} rows have no vector in {plan.column}, so NOT NULL is not restored yet (the NOT VALID "
                     f"check {check} already refuses new NULLs); fill them, then run this command again")
        return notes

    messages: list[str] = []

    def set_not_null(c: psycopg.Connection) -> None:
        # PostgreSQL says at DEBUG1 when a valid CHECK proves the column has no NULLs (no scan).
        c.execute("SELECT set_config('client_min_messages', 'debug1', true)")
        c.execute(template("cutover_set_not_null", table=table, column=sql.Identifier(plan.column)))
        c.execute(template("cutover_drop_constraint", table=table, constraint=sql.Identifier(check)))

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        messages.append(diag.message_primary or "")

    conn.add_notice_handler(collect)
    try:
        locked = run_locked(conn, [table], set_not_null, lock_timeout_ms=lock_timeout_ms, retries=retries,
                            what="restoring NOT NULL")
    except GateFailed as exc:
        # The swap itself is done; only this step waits. The NOT VALID check already refuses NULLs.
        notes.append(f"NOT NULL on {plan.column} not restored yet ({exc}); run this command again to finish")
        return notes
    finally:
        conn.remove_notice_handler(collect)
    proved = any("sufficient to prove" in m for m in messages)
    notes.append(f"NOT NULL carried over to {plan.column} "
                 + ("without a table scan" if proved else "(PostgreSQL scanned the table to prove it)")
                 + f", lock held {locked.lock_ms:.1f} ms")
    log_event(conn, record.id, "not_null", notes[-1],
              {"lock_ms": locked.lock_ms, "attempts": locked.attempts, "scan_skipped": proved}, phase=record.phase)
    return notes


def _constraint_validated(conn: psycopg.Connection, oid: int, name: str) -> bool | None:
    row = conn.execute("SELECT convalidated FROM pg_constraint WHERE conrelid = %s AND conname = %s",
                       (oid, name)).fetchone()
    return row[0] if row else None


def aside_comment(plan: Plan, model: str, role: str) -> str:
    return json.dumps({"reembed": True, "plan": plan.name, "model": model, "role": role,
                       "drop_with": f"reembed cleanup {plan.name}"})
