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
    total = sum(int(v) for v in fields[11:15])
    for child in _children(pid):
        child_fields = _stat(child)
        if child_fields is not None:
            total += int(child_fields[11]) + int(child_fields[12])
    return total / _TICKS


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
