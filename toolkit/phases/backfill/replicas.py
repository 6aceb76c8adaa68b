"""`--max-replica-lag SECONDS`: stop writing while a standby falls behind (gh-ost's --max-lag-millis).

The backfill's writes become WAL. Applications reading from streaming standbys would see the
standby fall behind on *their* changes too, so while any standby in pg_stat_replication replays
further behind than the limit, the run writes nothing: finished batches wait with their leases
renewed, no new batch is embedded, and the progress display names the standby and its lag.
Writing resumes when every standby is back under the limit.

How far behind a standby is: the larger of the server's own `replay_lag` and the age of the
oldest WAL the standby has not replayed yet, from (WAL position, time) samples this guard takes at
every check. `replay_lag` alone freezes while replay is paused or stuck (the server measures it
when the standby reports progress); the samples keep ageing. The sample age is a lower bound
(off by at most the time between two checks), so a standby that streams normally is never taken
for a lagging one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import psycopg

from toolkit.errors import GateFailed
from toolkit.state import log_event

CHECK_SECONDS = 1.0  # between two looks at pg_stat_replication while writing
PAUSE_POLL_SECONDS = 0.5  # between two looks while paused
_MAX_SAMPLES = 100_000

_STANDBYS = """
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,
       coalesce(nullif(r.application_name, ''), host(r.client_addr), 'pid ' || r.pid),
       r.state, r.replay_lsn - '0/0'::pg_lsn, extract(epoch FROM r.replay_lag)
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_replication AS r ON true
"""


@dataclass(frozen=True)
class StandbyLag:
    standby: str
    seconds: float

    def describe(self, limit: float) -> str:
        return f"standby {self.standby} {self.seconds:.1f} s behind (max {limit:g} s)"


def check_can_watch(conn: psycopg.Connection) -> None:
    """pg_stat_replication shows positions only to superusers and pg_read_all_stats (pg_monitor)."""
    row = conn.execute("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
                       "FROM pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        user = conn.info.user
        raise GateFailed(f"--max-replica-lag reads the standbys' positions in pg_stat_replication, which role "
                         f"{user} may not see: GRANT pg_monitor TO {user} (or run without --max-replica-lag)")


class ReplicaLag:
    """The standbys of the server `conn` is connected to, and how far each is behind."""

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_seconds = max_seconds
        self.clock = clock
        self._samples: deque[tuple[int, float]] = deque(maxlen=_MAX_SAMPLES)  # (WAL position, when)
        self._next_check = 0.0

    def standbys(self, conn: psycopg.Connection) -> list[StandbyLag]:
        """Every standby and its replay lag now (one query)."""
        rows = conn.execute(_STANDBYS, prepare=False).fetchall()
        now = self.clock()
        current = int(rows[0][0])
        if not self._samples or self._samples[-1][0] != current:
            self._samples.append((current, now))
        lags = []
        for _, name, state, replayed, replay_lag in rows:
            if name is None:
                continue  # no standby: the LEFT JOIN's empty row
            if replayed is None:
                # Connected but not streaming yet (startup, catchup): judged by the server's figure, if any.
                lags.append(StandbyLag(str(name), float(replay_lag or 0.0)))
                continue
            lags.append(StandbyLag(str(name), self._behind(int(replayed), current, now, replay_lag)))
        self._forget(min((int(r[3]) for r in rows if r[3] is not None), default=current))
        return lags

    def _behind(self, replayed: int, current: int, now: float, replay_lag: float | None) -> float:
        if replayed >= current:
            return 0.0
        # The oldest sample the standby has not replayed was written at `since` or later.
        since = next((at for position, at in self._samples if position > replayed), now)
        return max(now - since, float(replay_lag or 0.0))

    def _forget(self, replayed_by_all: int) -> None:
        while len(self._samples) > 1 and self._samples[1][0] <= replayed_by_all:
            self._samples.popleft()

    def lagging(self, conn: psycopg.Connection, *, now: bool = False) -> list[StandbyLag]:
        """The standbys behind the limit; looked up at most once a second unless `now`."""
        if not now and self.clock() < self._next_check:
            return []
        self._next_check = self.clock() + CHECK_SECONDS
        return [s for s in self.standbys(conn) if s.seconds > self.max_seconds]


class ReplicaGate:
    """What a writer asks before each write: `hold` returns at once while every standby keeps up,
    else waits (renewing what the caller holds) until they do, logging the pause in the plan's events."""

    def __init__(self, max_seconds: float, plan_id: int, phase: str | None,
                 on_pause: Callable[[str | None], None] | None = None) -> None:
        self.lag = ReplicaLag(max_seconds)
        self.plan_id, self.phase, self.on_pause = plan_id, phase, on_pause
        self.pauses = 0
        self.paused_seconds = 0.0

    def hold(self, conn: psycopg.Connection, *, renew: Callable[[], None] | None = None, renew_every: float = 60.0,
             stop: threading.Event | None = None) -> float:
        """Seconds paused (0.0: no standby was behind)."""
        lagging = self.lag.lagging(conn)
        if not lagging:
            return 0.0
        limit = self.lag.max_seconds
        began = last_renew = time.monotonic()
        log_event(conn, self.plan_id, "replica", f"writing paused: {'; '.join(s.describe(limit) for s in lagging)}",
                  {"standbys": {s.standby: round(s.seconds, 2) for s in lagging}, "max_replica_lag": limit},
                  phase=self.phase)
        while lagging and not (stop is not None and stop.is_set()):
            if self.on_pause:
                self.on_pause(f"paused: {'; '.join(s.describe(limit) for s in lagging)}")
            time.sleep(PAUSE_POLL_SECONDS)
            if renew is not None and time.monotonic() - last_renew > renew_every:
                renew()
                last_renew = time.monotonic()
            lagging = self.lag.lagging(conn, now=True)
        paused = time.monotonic() - began
        self.pauses += 1
        self.paused_seconds += paused
        log_event(conn, self.plan_id, "replica", f"writing resumed after {paused:.1f} s: every standby is within "
                  f"{limit:g} s", {"paused_seconds": round(paused, 2)}, phase=self.phase)
        if self.on_pause:
            self.on_pause(None)
        return paused
