"""The toolkit's own tables in schema `reembed`: plan registry, phases, event log.

Every command reads its state from here, never only from memory, so any command can be re-run
after a crash and continue from what the database says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence, TypeVar

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from toolkit.config import scrub
from toolkit.errors import BadInput, GateFailed, PlanMoved

T = TypeVar("T")

PHASES = (
    "planned", "prepared", "backfilling", "backfilled", "indexed", "verified",
    "cut_over", "rolled_back", "cleaned_up", "abandoned",
)
FINAL_PHASES = ("cleaned_up", "abandoned")


@dataclass
class PlanRecord:
    id: int
    name: str
    table_schema: str
    table_name: str
    column_name: str
    shadow_column: str
    old_column: str
    source_model: str
    target_model: str
    dimensions: int
    spec: dict[str, Any]
    table_fingerprint: str
    phase: str
    created_at: datetime
    updated_at: datetime


_COLUMNS = ("id, name, table_schema, table_name, column_name, shadow_column, old_column, source_model, "
            "target_model, dimensions, spec, table_fingerprint, phase, created_at, updated_at")


def register_plan(conn: psycopg.Connection, spec: dict[str, Any], fingerprint: str) -> PlanRecord:
    """Insert a plan; refuses a taken name or a second live plan on the same column."""
    table, column, target = spec["table"], spec["column"], spec["target"]
    try:
        with conn.transaction():
            record = conn.cursor(row_factory=class_row(PlanRecord)).execute(
                f"""INSERT INTO reembed.plans (name, table_schema, table_name, column_name, shadow_column, old_column,
                                              source_model, target_model, dimensions, spec, table_fingerprint)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
                (spec["name"], table["schema"], table["name"], column["name"], column["shadow"], column["old"],
                 spec["source"]["model"], target["model"], target["dimensions"], Jsonb(spec), fingerprint),
            ).fetchone()
            assert record is not None
            log_event(conn, record.id, "planned", f"plan {record.name} registered", phase="planned")
            return record
    except psycopg.errors.UniqueViolation as exc:
        replanned = _replan(conn, spec, fingerprint)
        if replanned is not None:
            return replanned
        if "plans_name_live" in str(exc):
            raise BadInput(f"plan name {spec['name']!r} is already in use: choose another with --name") from None
        other = live_plan_on_column(conn, table["schema"], table["name"], column["name"])
        raise BadInput(
            f"column {column['name']} of {table['schema']}.{table['name']} already has a live plan "
            f"{other!r}: finish it (cleanup) or abandon it first") from None


def _replan(conn: psycopg.Connection, spec: dict[str, Any], fingerprint: str) -> PlanRecord | None:
    """The same name on the same column, still only planned (say its preflight could not run yet):
    nothing was done to the table, so the new plan replaces it. Anything further along refuses."""
    table, column, target = spec["table"], spec["column"], spec["target"]
    with conn.transaction():
        record = conn.cursor(row_factory=class_row(PlanRecord)).execute(
            f"""UPDATE reembed.plans SET shadow_column = %s, old_column = %s, source_model = %s, target_model = %s,
                       dimensions = %s, spec = %s, table_fingerprint = %s, updated_at = now()
                WHERE name = %s AND phase = 'planned' AND table_schema = %s AND table_name = %s AND column_name = %s
                RETURNING {_COLUMNS}""",
            (column["shadow"], column["old"], spec["source"]["model"], target["model"], target["dimensions"],
             Jsonb(spec), fingerprint, spec["name"], table["schema"], table["name"], column["name"])).fetchone()
        if record is not None:
            log_event(conn, record.id, "planned", f"plan {record.name} planned again (it had not started)",
                      phase="planned")
    return record


def live_plan_on_column(conn: psycopg.Connection, schema: str, table: str, column: str) -> str | None:
    row = conn.execute(
        "SELECT name FROM reembed.plans WHERE table_schema = %s AND table_name = %s AND column_name = %s "
        "AND phase <> ALL (%s)", (schema, table, column, list(FINAL_PHASES))).fetchone()
    return row[0] if row else None


def get_plan(conn: psycopg.Connection, name: str) -> PlanRecord:
    """The plan of that name; an abandoned plan's name may be taken again, and the newer plan wins."""
    record = conn.cursor(row_factory=class_row(PlanRecord)).execute(
        f"SELECT {_COLUMNS} FROM reembed.plans WHERE name = %s ORDER BY phase = 'abandoned', id DESC LIMIT 1",
        (name,)).fetchone()
    if record is None:
        raise BadInput(f"no plan named {name!r} is registered in this database (see `reembed plans`)")
    return record


def list_plans(conn: psycopg.Connection) -> list[PlanRecord]:
    return conn.cursor(row_factory=class_row(PlanRecord)).execute(
        f"SELECT {_COLUMNS} FROM reembed.plans ORDER BY id").fetchall()


def set_phase(conn: psycopg.Connection, plan_id: int, phase: str, message: str | None = None,
              details: dict[str, Any] | None = None, *, expect: Sequence[str] | None = None) -> bool:
    """Move the plan to `phase`. With `expect`, only from one of those phases (compare and set):
    a command that read the phase long ago must not move back a plan another command moved on
    meanwhile (a verify finishing after a cutover). Returns False when nothing was changed.

    The first cutover is stamped (`cut_over_at`): from then on the change tracking also marks
    rows whose source-model vector fell behind their text (reembed.mark_changed).

    A transaction that also writes the user's table or the ledger must lock the plan's row
    before those (`current_phase(conn, id, lock="NO KEY UPDATE")`): writers hold it FOR SHARE
    while they write rows, so the other order could wait in a circle."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    changed = conn.execute(
        "UPDATE reembed.plans SET phase = %s, updated_at = now(), "
        "cut_over_at = CASE WHEN %s = 'cut_over' THEN coalesce(cut_over_at, now()) ELSE cut_over_at END "
        "WHERE id = %s AND (%s::text[] IS NULL OR phase = ANY (%s::text[]))",
        (phase, phase, plan_id, list(expect) if expect is not None else None,
         list(expect) if expect is not None else None)).rowcount
    if not changed:
        return False
    log_event(conn, plan_id, "phase", message or f"phase is now {phase}", details=details, phase=phase)
    return True


def current_phase(conn: psycopg.Connection, plan_id: int, lock: str | None = None) -> str:
    """The plan's phase now; with `lock` ("SHARE" for writers, "NO KEY UPDATE" for what changes where
    the vectors are), its registry row stays locked until the caller's transaction ends."""
    suffix = {None: "", "SHARE": " FOR SHARE", "NO KEY UPDATE": " FOR NO KEY UPDATE"}[lock]
    row = conn.execute("SELECT phase FROM reembed.plans WHERE id = %s" + suffix, (plan_id,)).fetchone()
    if row is None:
        raise BadInput(f"plan {plan_id} is no longer registered")
    return row[0]


def checked_in_phase(conn: psycopg.Connection, name: str, plan_id: int, phase: str, check: Callable[[], T]) -> T:
    """A command's checks before its lock, read for `phase`. When they refuse because another command
    moved the plan meanwhile (a second rollback behind the first: the table it checks is gone; a
    second cutover reading the copy by the name the first one just took from it), the refusal says
    that, not what the move left behind."""
    try:
        return check()
    except PlanMoved:
        raise
    except (GateFailed, psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        now = current_phase(conn, plan_id)
        if now != phase:
            raise PlanMoved(f"plan {name!r} moved to phase {now} (another command) while this command checked it: "
                            "nothing was changed", now) from exc
        raise


def log_event(conn: psycopg.Connection, plan_id: int | None, kind: str, message: str,
              details: dict[str, Any] | None = None, phase: str | None = None) -> None:
    """Append to reembed.events. Secrets are scrubbed before anything is stored."""
    clean_details = json.loads(scrub(json.dumps(details, default=str))) if details is not None else None
    conn.execute(
        "INSERT INTO reembed.events (plan_id, phase, kind, message, details) VALUES (%s, %s, %s, %s, %s)",
        (plan_id, phase, kind, scrub(message), Jsonb(clean_details) if clean_details is not None else None))


def events(conn: psycopg.Connection, plan_id: int, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, phase, kind, message, details FROM reembed.events WHERE plan_id = %s ORDER BY id DESC LIMIT %s",
        (plan_id, limit)).fetchall()
    return [{"at": r[0].isoformat(), "phase": r[1], "kind": r[2], "message": r[3], "details": r[4]}
            for r in reversed(rows)]
