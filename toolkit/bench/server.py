"""CPU time the PostgreSQL server spends, read from /proc: the figure a production database feels.

The postmaster reaps every backend, parallel worker and autovacuum worker it starts, and the
kernel then adds their CPU time to its `cutime`/`cstime`; the processes still running count
their own. The sum over both, before and after a piece of work, is what the whole server spent
on it (including background writers and autovacuum, and anything else the server did meanwhile).
Only possible when the server runs on this machine and is readable by this user (the embedded
one always is); otherwise the figures are None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def postmaster_pid(conn: psycopg.Connection) -> int | None:
    """The server's postmaster, when it runs on this machine (its data directory is readable here)."""
    try:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return None
    if not row:
        return None
    try:
        pid = int((Path(row[0]) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _stat(pid) is not None else None


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name, from field 3 (state)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def server_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of the server so far: the postmaster, its reaped children, its live ones."""
    if pid is None:
        return None
    fields = _stat(pid)
    if fields is None:
        return None
    # Fields 14-17 of /proc/PID/stat (utime, stime, cutime, cstime) are at 11..14 here.
    return sum(int(v) for v in fields[11:15]) / _TICKS + sum(children_cpu_seconds(pid).values())


def children_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of each live child of `pid` (the server's processes)."""
    spent: dict[int, float] = {}
    for child in _children(pid):
        fields = _stat(child)
        if fields is not None:
            spent[child] = (int(fields[11]) + int(fields[12])) / _TICKS
    return spent


class ServerCpu:
    """Server CPU seconds spent between `start()` and `seconds()`."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.pid = postmaster_pid(conn)
        self._began: float | None = None

    def start(self) -> "ServerCpu":
        self._began = server_cpu_seconds(self.pid)
        return self

    def seconds(self) -> float | None:
        now = server_cpu_seconds(self.pid)
        if now is None or self._began is None:
            return None
        return round(now - self._began, 3)


@dataclass
class Activity:
    """What the server did between two snapshots, from its cumulative statistics: WAL (records,
    full-page images, bytes, checkpoints; the whole server), buffer reads and hits (this database),
    updates and HOT updates of each table, and block accesses of each index. The figures that
    say *why* the server's CPU per row moves with the table's size."""

    wal_records: int = 0
    wal_fpi: int = 0
    wal_bytes: int = 0
    checkpoints: int = 0
    blks_read: int = 0
    blks_hit: int = 0
    updates: dict[str, list[int]] = field(default_factory=dict)  # table: [n_tup_upd, n_tup_hot_upd, n_tup_ins]
    index_blocks: dict[str, list[int]] = field(default_factory=dict)  # index: [read, hit]

    def minus(self, before: "Activity") -> "Activity":
        def diff(now: dict[str, list[int]], then: dict[str, list[int]]) -> dict[str, list[int]]:
            return {k: [a - b for a, b in zip(v, then.get(k, [0] * len(v)))] for k, v in now.items()}

        return Activity(self.wal_records - before.wal_records, self.wal_fpi - before.wal_fpi,
                        self.wal_bytes - before.wal_bytes, self.checkpoints - before.checkpoints,
                        self.blks_read - before.blks_read, self.blks_hit - before.blks_hit,
                        diff(self.updates, before.updates), diff(self.index_blocks, before.index_blocks))

    def per_row(self, rows: int) -> dict[str, float]:
        """The figures per migrated row, the indexes' block accesses included."""
        if not rows:
            return {}
        out = {"wal_records": self.wal_records / rows, "wal_fpi": self.wal_fpi / rows,
               "wal_bytes": self.wal_bytes / rows, "blks_read": self.blks_read / rows,
               "blks_hit": self.blks_hit / rows}
        out.update({f"blocks {name}": (read + hit) / rows for name, (read, hit) in self.index_blocks.items()})
        return {k: round(v, 3) for k, v in out.items()}


def activity(conn: psycopg.Connection, settle: float = 1.0) -> Activity:
    """A snapshot of the server's cumulative statistics, `settle` seconds after the work (a backend
    reports its counts when it finishes, within about a second)."""
    time.sleep(settle)
    conn.execute("SELECT pg_stat_clear_snapshot()")
    wal = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
    checkpoints = _checkpoints(conn)
    blocks = conn.execute("SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()"
                          ).fetchone()
    updates = {f"{s}.{t}": [int(u), int(h), int(i)] for s, t, u, h, i in conn.execute(
        "SELECT schemaname, relname, n_tup_upd, n_tup_hot_upd, n_tup_ins FROM pg_stat_user_tables")}
    indexes = {f"{s}.{i}": [int(r or 0), int(h or 0)] for s, i, r, h in conn.execute(
        "SELECT schemaname, indexrelname, idx_blks_read, idx_blks_hit FROM pg_statio_user_indexes")}
    return Activity(int(wal[0]), int(wal[1]), int(wal[2]), checkpoints, int(blocks[0]), int(blocks[1]),
                    updates, indexes)


def _checkpoints(conn: psycopg.Connection) -> int:
    if conn.info.server_version >= 170000:
        row = conn.execute("SELECT num_timed + num_requested FROM pg_stat_checkpointer").fetchone()
    else:
        row = conn.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").fetchone()
    return int(row[0]) if row else 0
