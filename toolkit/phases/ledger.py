"""The work ledger (reembed.ledger): leases on pending rows, shared by every process on every machine.

PostgreSQL is the only coordinator. A claim is a lease (`lease_owner`, `lease_until`) taken with
FOR UPDATE SKIP LOCKED in one short statement; a lease that runs out (its holder crashed or
hung) is taken over by the next claim. A row is `done` only in the same transaction that wrote
its vector, so a `kill -9` at any instant loses nothing: at most the batches in flight are
embedded again.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from toolkit.phases.ddl import template

if TYPE_CHECKING:
    from toolkit.plan import Plan

Key = dict[str, Any]  # a row's primary key as the ledger stores it: {"id": 42}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return "noboot"


def owner_id(suffix: str = "") -> str:
    """Who holds a lease: host, boot, pid and a nonce. Host, boot and pid let a later run on the same
    machine see that the holder is dead and take its leases at once instead of waiting them out."""
    return f"{socket.gethostname()}/{_boot_id()}/{os.getpid()}/{uuid.uuid4().hex[:8]}{suffix}"


def _is_dead_local_owner(owner: str) -> bool:
    parts = owner.split("/")
    if len(parts) < 4 or parts[0] != socket.gethostname() or parts[1] != _boot_id():
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def keys_param(keys: Sequence[Key]) -> list[Jsonb]:
    return [Jsonb(k) for k in keys]


def claim_statement(plan_id: int) -> sql.Composed:
    """The claim of sql/backfill_claim.sql with its per-call values as named parameters (`claim_params`):
    the same statement text every time, so psycopg prepares it once per connection."""
    return template("backfill_claim", owner=sql.Placeholder("owner"), lease_seconds=sql.Placeholder("lease_seconds"),
                    plan_id=sql.Literal(plan_id), limit=sql.Placeholder("limit"),
                    changed_before=sql.SQL("coalesce({}::timestamptz, 'infinity')").format(
                        sql.Placeholder("changed_before")))


def claim_params(owner: str, limit: int, lease_seconds: float, changed_before: datetime | None) -> dict[str, Any]:
    return {"owner": owner, "limit": int(limit), "lease_seconds": float(lease_seconds),
            "changed_before": changed_before}


def claim(conn: psycopg.Connection, plan_id: int, owner: str, limit: int, lease_seconds: float,
          changed_before: datetime | None = None) -> list[Key]:
    """Lease up to `limit` pending rows to `owner`, in ledger order; with `changed_before`, only rows
    that changed before then. Autocommit: one statement. (The backfill claims and reads in one
    statement: `BatchWriter.claim`.)"""
    rows = conn.execute(claim_statement(plan_id), claim_params(owner, limit, lease_seconds, changed_before)).fetchall()
    return [r[0] for r in sorted(rows, key=lambda r: r[1])]


def release(conn: psycopg.Connection, plan_id: int, owner: str, keys: Sequence[Key]) -> int:
    """Give back leases on rows not written; they stay pending."""
    if not keys:
        return 0
    return conn.execute(template("backfill_release", plan_id=sql.Literal(plan_id), owner=sql.Literal(owner),
                                 keys=sql.Placeholder()), (keys_param(keys),)).rowcount


def release_all(conn: psycopg.Connection, plan_id: int, owners: Sequence[str]) -> int:
    """Give back every lease the given owners hold (a stopped worker, a dead local process)."""
    return conn.execute(
        "UPDATE reembed.ledger SET lease_owner = NULL, lease_until = NULL "
        "WHERE plan_id = %s AND state = 'pending' AND lease_owner = ANY (%s)", (plan_id, list(owners))).rowcount


def renew(conn: psycopg.Connection, plan_id: int, owner: str, keys: Sequence[Key], lease_seconds: float) -> int:
    if not keys:
        return 0
    return conn.execute(template("backfill_renew", plan_id=sql.Literal(plan_id), owner=sql.Literal(owner),
                                 lease_seconds=sql.Literal(float(lease_seconds)), keys=sql.Placeholder()),
                        (keys_param(keys),)).rowcount


def release_dead_local(conn: psycopg.Connection, plan_id: int) -> int:
    """Leases held by processes of this machine that no longer exist (kill -9, OOM): free them now."""
    owners = [r[0] for r in conn.execute(
        "SELECT DISTINCT lease_owner FROM reembed.ledger WHERE plan_id = %s AND state = 'pending' "
        "AND lease_owner IS NOT NULL AND lease_until >= now()", (plan_id,)).fetchall()]
    dead = [o for o in owners if _is_dead_local_owner(o)]
    return release_all(conn, plan_id, dead) if dead else 0


def pending_counts(conn: psycopg.Connection, plan_id: int) -> tuple[int, int]:
    """(pending rows, of which claimable now)."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE lease_until IS NULL OR lease_until < now()) "
        "FROM reembed.ledger WHERE plan_id = %s AND state = 'pending'", (plan_id,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# How many tracked rows a live application may have changed and left pending while the migration
# still counts as complete: 0.1% of the rows, at least 20 (the floor every phase accepts). They
# are re-embedded by the next run or by cutover's catch-up; cutover itself swaps only at zero.
LIVE_TAIL_SHARE = 0.001
LIVE_TAIL_MIN_ROWS = 20
# Verify and its gate go further for an application that keeps writing: what it changes at the
# rate verify measured while it ran, twice over for a rate that wobbles, over the time those
# changes had to pile up. Never more than half the rows: most of what cutover swaps in must be
# what verify judged (and an old verdict expires under a steady load).
LIVE_TAIL_RATE_SAFETY = 2.0
LIVE_TAIL_MAX_SHARE = 0.5


def live_tail_tolerance(rows: int) -> int:
    return max(LIVE_TAIL_MIN_ROWS, int(rows * LIVE_TAIL_SHARE))


def live_tail_allowance(rows: int, rows_per_second: float, seconds: float) -> int:
    """Tracked rows that may change (or wait, pending) over `seconds` while the application writes at
    `rows_per_second` (as verify measured it), for the verdict to still describe the migration:
    the floor, or twice what that rate makes in that time, at most half the rows."""
    floor = live_tail_tolerance(rows)
    by_rate = math.ceil(LIVE_TAIL_RATE_SAFETY * max(0.0, rows_per_second) * max(0.0, seconds))
    return max(floor, min(by_rate, int(rows * LIVE_TAIL_MAX_SHARE)))


@dataclass
class LiveWrites:
    """Ledger rows the application (or a concurrent run) changed over a span of time: what verify
    saw happen while it ran, by the server's clock."""

    since: datetime
    seconds: float
    rows_changed: int

    @property
    def rows_per_second(self) -> float:
        return self.rows_changed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "seconds": round(self.seconds, 3), "rows_changed": self.rows_changed,
                "rows_per_second": round(self.rows_per_second, 4)}


def live_writes(conn: psycopg.Connection, plan_id: int, since: datetime) -> LiveWrites:
    row = conn.execute("SELECT count(*), extract(epoch FROM clock_timestamp() - %s) FROM reembed.ledger "
                       "WHERE plan_id = %s AND changed_at > %s", (since, plan_id, since)).fetchone()
    assert row is not None
    return LiveWrites(since=since, seconds=float(row[1]), rows_changed=int(row[0]))


def oldest_pending_change(conn: psycopg.Connection, plan_id: int) -> datetime | None:
    row = conn.execute("SELECT min(changed_at) FROM reembed.ledger WHERE plan_id = %s AND state = 'pending'",
                       (plan_id,)).fetchone()
    return row[0] if row else None


def pending_changed_before(conn: psycopg.Connection, plan_id: int, moment: datetime) -> int:
    """Pending rows that were already pending at `moment` (not changed since): a run's backlog."""
    row = conn.execute("SELECT count(*) FROM reembed.ledger WHERE plan_id = %s AND state = 'pending' "
                       "AND changed_at <= %s", (plan_id, moment)).fetchone()
    assert row is not None
    return int(row[0])


def database_now(conn: psycopg.Connection) -> datetime:
    """The server's clock: sweep bounds compare with changed_at, which the server stamps."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


@dataclass
class Progress:
    rows_total: int
    rows_embedded: int
    rows_pending: int
    rows_skipped: int
    leases_held: int
    lease_holders: int
    rows_embedded_more_than_once: int
    embeddings_written: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def progress(conn: psycopg.Connection, plan_id: int) -> Progress:
    row = conn.execute(template("backfill_progress", plan_id=sql.Literal(plan_id))).fetchone()
    assert row is not None
    return Progress(*(int(v) for v in row))


def requeue_untracked_changes(conn: psycopg.Connection, plan: "Plan", plan_id: int, phase: str) -> int:
    """Put back as pending every row whose change tracking could not see its change (its text
    differs from what was embedded, its new vector is gone, or it has no ledger entry), so the
    next run makes progress on it. Scans the table once; returns the rows queued."""
    from toolkit.phases.prepare import key_json
    from toolkit.strategies import places

    new = places(plan, phase).new
    parts = {"plan_id": sql.Literal(plan_id), "ledger_key": key_json(plan, "t"), "table": new.ident}
    with conn.transaction():
        stale = conn.execute(template("ledger_requeue_stale", **parts, hash=plan.text_hash_expression("t"),
                                      new=sql.Identifier("t", new.column))).rowcount
        missing = conn.execute(template("ledger_track_missing", **parts)).rowcount
    return stale + missing
