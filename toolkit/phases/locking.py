"""Short ACCESS EXCLUSIVE sections that never leave readers queued for long.

An ALTER waiting for its lock blocks every reader that arrives after it, so a swap stuck behind
one long transaction would stop the application. Each try therefore sets `lock_timeout`; when
it expires the transaction is rolled back (readers run again at once), and the next try comes
after a jittered, growing pause. Nothing inside a locked section may call a provider or do
work proportional to the table: only catalog changes and index-backed checks.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed
from toolkit.phases.ddl import template

log = logging.getLogger(__name__)

T = TypeVar("T")

# The first keys of reembed's advisory locks (the second is the plan's id). They must differ: one
# process holds one while another of its connections takes the other (abandon holds prepare's
# lock while its catch-up fill writes, and a fill write takes the write-role lock).
PREPARE_LOCK = 0x7265_656D  # "reem": prepare, and whatever must not run beside it
WRITE_ROLE_LOCK = 0x7265_6577  # "reew": a backfill write (shared) against a rollback-fill write (exclusive)

DEFAULT_LOCK_TIMEOUT_MS = 100
DEFAULT_RETRIES = 8
BACKOFF_CAP_S = 5.0


@dataclass
class Locked(Generic[T]):
    """The outcome of a locked section: its result, how long the lock was held, and the tries."""

    result: T
    lock_ms: float
    attempts: int
    waits_ms: list[float] = field(default_factory=list)  # how long each failed try waited for the lock


def backoff_seconds(attempt: int, lock_timeout_ms: int, rng: random.Random) -> float:
    """Pause after the `attempt`-th failed try: doubling from twice the timeout, full jitter, capped.

    Jitter keeps several waiting swaps (or one swap and a retrying application) from colliding
    again at the same instant.
    """
    ceiling = min(BACKOFF_CAP_S, 2 * lock_timeout_ms / 1000 * 2 ** (attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


def run_locked(conn: psycopg.Connection, relations: Sequence[sql.Identifier], work: Callable[[psycopg.Connection], T],
               *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
               what: str = "the swap", rng: random.Random | None = None,
               on_retry: Callable[[int, float, float], None] | None = None,
               plan_id: int | None = None) -> Locked[T]:
    """Run `work` in one transaction holding ACCESS EXCLUSIVE on `relations` (taken in that order).

    With `plan_id` (every change of where a plan's vectors are: swaps, drops), the plan's registry
    row is locked first (FOR NO KEY UPDATE): every vector write holds that row FOR SHARE in its
    own transaction and checks the phase it was built for, so none is in flight across the change
    and none after it writes by the old names. Row first, table second: the order writers take
    them, so the two never wait for each other in a circle (and the ledger's foreign-key checks,
    FOR KEY SHARE, are not blocked by it).

    `conn` must be in autocommit mode. Gives up with GateFailed after `retries` further tries,
    naming the sessions that held the lock. `work` may raise to roll everything back.
    """
    from toolkit.state import current_phase

    if lock_timeout_ms <= 0:
        raise ValueError("lock timeout must be positive")
    rng = rng or random.Random()
    waits: list[float] = []
    lock = template("cutover_lock", relations=sql.SQL(", ").join(relations))
    for attempt in range(1, retries + 2):
        asked = time.monotonic()
        try:
            with conn.transaction():
                conn.execute(template("cutover_lock_timeout", timeout=sql.Literal(f"{lock_timeout_ms}ms")))
                if plan_id is not None:
                    current_phase(conn, plan_id, lock="NO KEY UPDATE")
                conn.execute(lock)
                granted = time.monotonic()
                result = work(conn)
            released = time.monotonic()
            return Locked(result=result, lock_ms=(released - granted) * 1000, attempts=attempt, waits_ms=waits)
        except psycopg.errors.LockNotAvailable:
            waited = (time.monotonic() - asked) * 1000
            waits.append(waited)
            if attempt > retries:
                break
            pause = backoff_seconds(attempt, lock_timeout_ms, rng)
            log.info("%s: lock not granted within %d ms (try %d), retrying in %.2f s", what, lock_timeout_ms,
                     attempt, pause)
            if on_retry:
                on_retry(attempt, waited, pause)
            time.sleep(pause)
    holders = lock_holders(conn, relations)
    raise GateFailed(
        f"{what}: could not take the lock within {lock_timeout_ms} ms in {len(waits)} tries"
        + (f"; held by {holders}" if holders else "")
        + "; nothing was changed. Retry later, or raise --lock-timeout / --retries")


def lock_holders(conn: psycopg.Connection, relations: Sequence[sql.Identifier]) -> str:
    """Sessions holding a lock on the relations: pid, application, state, transaction age (no query text,
    which may hold data)."""
    names = [r.as_string(conn) for r in relations]
    rows = conn.execute(
        f"""SELECT DISTINCT {_SESSION_COLUMNS}
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.granted AND l.relation = ANY (SELECT to_regclass(n)::oid FROM unnest(%s::text[]) AS n)
             AND a.pid <> pg_backend_pid()
           ORDER BY 1""", (names,)).fetchall()
    return _sessions(rows)


def blocking_sessions(conn: psycopg.Connection, pid: int) -> str:
    """The sessions `pid` is waiting for (a lock, or a CREATE INDEX CONCURRENTLY waiting for older
    transactions), described like `lock_holders`; empty when it waits for nobody."""
    rows = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM pg_stat_activity a "
                        "WHERE a.pid = ANY (pg_blocking_pids(%s)) ORDER BY 1", (pid,)).fetchall()
    return _sessions(rows)


_SESSION_COLUMNS = ("a.pid, coalesce(nullif(a.application_name, ''), '?'), coalesce(a.state, '?'), "
                    "extract(epoch FROM now() - a.xact_start)::int")


def _sessions(rows: Sequence[tuple]) -> str:
    """pid, application, state, transaction age: no query text, which may hold data."""
    return "; ".join(f"pid {pid} ({app}, {state}, transaction open {age}s)" for pid, app, state, age in rows)
