"""The record of Batch API jobs in schema reembed (batch_jobs, batch_rows): what each job holds,
and where it is between "recorded" and "collected".

A job's life, each step committed before the next one starts, so that a crash anywhere is
finished by the next `reembed run --batch-api` without creating (and paying for) a job twice:

    recorded    its rows are leased to it in the ledger (owner `batch/<plan>/<job>`) and listed
                with the hash of their text; nothing has been sent
    submitting  the rows and hashes are those about to be sent; the provider may or may not
                have created the job (a resume looks it up by its unique display name first)
    submitted   the provider's job name is recorded
    collected   its results are written (or its rows given back); provider_state says how it ended
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Sequence

import psycopg
from psycopg.types.json import Jsonb

from toolkit.phases import ledger
from toolkit.phases.ledger import Key

LEASE_SECONDS = 3 * 24 * 3600.0  # a job may take 24 h; its rows stay its own meanwhile
OPEN_STATES = ("recorded", "submitting", "submitted")


@dataclass
class JobRecord:
    id: int
    plan_id: int
    display_name: str
    state: str
    job_name: str | None
    provider_state: str | None
    input_file: str | None
    rows: int
    rows_written: int
    rows_failed: int
    rows_changed: int
    error: str | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None

    @property
    def owner(self) -> str:
        return owner(self.plan_id, self.id)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("created_at", "submitted_at", "finished_at"):
            data[name] = data[name].isoformat() if data[name] else None
        return data


_COLUMNS = ("id, plan_id, display_name, state, job_name, provider_state, input_file, rows, rows_written, rows_failed, "
            "rows_changed, error, created_at, submitted_at, finished_at")


def owner(plan_id: int, job_id: int) -> str:
    """The ledger's lease owner for a job's rows (never mistaken for a local process: see ledger)."""
    return f"batch/{plan_id}/{job_id}"


def jobs(conn: psycopg.Connection, plan_id: int, *, open_only: bool = False) -> list[JobRecord]:
    where = " AND state = ANY (%s)" if open_only else ""
    params: tuple[Any, ...] = (plan_id, list(OPEN_STATES)) if open_only else (plan_id,)
    rows = conn.execute(f"SELECT {_COLUMNS} FROM reembed.batch_jobs WHERE plan_id = %s{where} ORDER BY id",
                        params).fetchall()
    return [JobRecord(*r) for r in rows]


def record(conn: psycopg.Connection, plan_id: int, keys_and_hashes: Any) -> JobRecord | None:
    """Record one job: insert it, lease up to `limit` pending rows to it, list them with their hashes.

    `keys_and_hashes(conn, owner)` claims the rows under that owner and returns [(key, hash)];
    all of it is one transaction: a crash leaves either a complete record or none."""
    with conn.transaction():
        job_id = conn.execute(
            "INSERT INTO reembed.batch_jobs (plan_id, display_name, rows) VALUES (%s, %s, 0) RETURNING id",
            (plan_id, f"reembed-{plan_id}-{uuid.uuid4().hex[:16]}")).fetchone()[0]  # type: ignore[index]
        rows: Sequence[tuple[Key, str]] = keys_and_hashes(conn, owner(plan_id, job_id))
        if not rows:
            conn.execute("DELETE FROM reembed.batch_jobs WHERE id = %s", (job_id,))
            return None
        _list_rows(conn, job_id, rows)
    return get(conn, job_id)


def rows_of(conn: psycopg.Connection, job_id: int) -> list[tuple[Key, str]]:
    """(key, text hash) per request of the job, in submission order."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT pk, text_hash FROM reembed.batch_rows WHERE job_id = %s ORDER BY position", (job_id,)).fetchall()]


def mark_submitting(conn: psycopg.Connection, job: JobRecord, rows: Sequence[tuple[Key, str]]) -> None:
    """The rows and hashes about to be sent replace what was recorded (texts may have changed since:
    nothing was sent yet), committed before the provider is asked."""
    with conn.transaction():
        conn.execute("DELETE FROM reembed.batch_rows WHERE job_id = %s", (job.id,))
        _list_rows(conn, job.id, rows)
        conn.execute("UPDATE reembed.batch_jobs SET state = 'submitting', updated_at = now() WHERE id = %s",
                     (job.id,))
    job.state, job.rows = "submitting", len(rows)


def mark_submitted(conn: psycopg.Connection, job: JobRecord, job_name: str, input_file: str | None) -> None:
    conn.execute("UPDATE reembed.batch_jobs SET state = 'submitted', job_name = %s, input_file = %s, "
                 "submitted_at = now(), updated_at = now() WHERE id = %s", (job_name, input_file, job.id))
    job.state, job.job_name, job.input_file = "submitted", job_name, input_file


def mark_polled(conn: psycopg.Connection, job: JobRecord, provider_state: str) -> None:
    if provider_state != job.provider_state:
        conn.execute("UPDATE reembed.batch_jobs SET provider_state = %s, updated_at = now() WHERE id = %s",
                     (provider_state, job.id))
        job.provider_state = provider_state


def mark_collected(conn: psycopg.Connection, job: JobRecord, provider_state: str, *, written: int, failed: int,
                   changed: int, error: str | None = None) -> None:
    """The job is done with: whatever of its rows was not written is pending again (leases released)."""
    with conn.transaction():
        ledger.release_all(conn, job.plan_id, [job.owner])
        conn.execute(
            "UPDATE reembed.batch_jobs SET state = 'collected', provider_state = %s, rows_written = %s, "
            "rows_failed = %s, rows_changed = %s, error = %s, finished_at = now(), updated_at = now() WHERE id = %s",
            (provider_state, written, failed, changed, error, job.id))
    job.state, job.provider_state, job.rows_written, job.rows_failed, job.rows_changed, job.error = (
        "collected", provider_state, written, failed, changed, error)


def drop_empty(conn: psycopg.Connection, job: JobRecord) -> None:
    """A recorded job none of whose rows is left to send (all deleted, emptied or taken): forget it."""
    with conn.transaction():
        ledger.release_all(conn, job.plan_id, [job.owner])
        conn.execute("DELETE FROM reembed.batch_jobs WHERE id = %s", (job.id,))


def get(conn: psycopg.Connection, job_id: int) -> JobRecord:
    row = conn.execute(f"SELECT {_COLUMNS} FROM reembed.batch_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return JobRecord(*row)


def summary(conn: psycopg.Connection, plan_id: int) -> dict[str, int]:
    """Jobs by where they stand (pending / running / succeeded / failed, as last polled) and their rows."""
    counts = {"jobs": 0, "pending": 0, "running": 0, "succeeded": 0, "failed": 0, "rows_in_open_jobs": 0}
    for job in jobs(conn, plan_id):
        counts["jobs"] += 1
        counts[where(job)] += 1
        if job.state in OPEN_STATES:
            counts["rows_in_open_jobs"] += job.rows
    return counts


def where(job: JobRecord) -> str:
    """pending | running | succeeded | failed, for progress and status."""
    if job.state in ("recorded", "submitting"):
        return "pending"
    if job.state == "submitted":
        return "running" if job.provider_state == "running" else "pending"
    return "succeeded" if job.provider_state == "succeeded" else "failed"


def _list_rows(conn: psycopg.Connection, job_id: int, rows: Sequence[tuple[Key, str]]) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY reembed.batch_rows (job_id, position, pk, text_hash) FROM STDIN") as copy:
            for position, (key, text_hash) in enumerate(rows):
                copy.write_row((job_id, position, Jsonb(key), text_hash))
    conn.execute("UPDATE reembed.batch_jobs SET rows = %s, updated_at = now() WHERE id = %s", (len(rows), job_id))
