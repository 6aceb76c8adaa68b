"""Helpers of the reliability suite (tests/test_reliability_*.py).

- `lost_rows(conn, plan)`: the "nothing lost" check of every reliability item, for any table
  shape (quoted identifiers, several text columns): each row's vector in the column that holds
  the target model's vectors in the plan's current phase equals expected_vector(target, the
  row's current text, RETRIEVAL_DOCUMENT, its title, dims); a row with blank text has none.
- `AppLoad`: the application, as a separate process (tests/app_load.py), writing and querying at
  a steady rate while reembed works; its errors and per-query latencies come back as JSON.
- `Recorder`: the figures a test measured, appended to a JSON-lines file that
  tests/reliability_report.py turns into the table in docs/reliability.md.
- subprocess helpers to start and kill `reembed` commands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import psycopg
from psycopg import sql

from backfill_support import vector_problem
from toolkit.emulators import expected_vector
from toolkit.plan import load
from toolkit.strategies import places

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RESULTS = Path(os.environ.get("REEMBED_RELIABILITY_RESULTS",
                              str(Path(tempfile.gettempdir()) / "reembed-reliability-results.jsonl")))


# -- nothing lost ------------------------------------------------------------------------------------

def lost_rows(conn: psycopg.Connection, plan_name: str, column: str | None = None) -> list[str]:
    """Every row whose stored target vector is not exactly the target model's vector of the row's
    current text and title (missing counts, except for blank text, which must have none)."""
    return wrong_vectors(conn, plan_name, "new", column)


def wrong_vectors(conn: psycopg.Connection, plan_name: str, role: str = "new", column: str | None = None) -> list[str]:
    """Every row whose vector in the place holding one model's vectors in the plan's current phase
    (`role` "new": the target model's, `places(...).new`; "old": the source model's) is not exactly
    that model's vector of the row's current text and title. `column`: that column of the plan's
    table instead."""
    from toolkit.phases.prepare import key_json

    plan, record = load(conn, plan_name)
    place = getattr(places(plan, record.phase), role)
    table = place.ident if column is None else plan.table
    column = column or place.column
    model = plan.target if role == "new" else plan.source
    rows = conn.execute(sql.SQL("SELECT {key}, {text}, {title}, {vec} FROM {table} AS t").format(
        key=key_json(plan, "t"), text=plan.text_expression("t"), title=plan.title_expression("t"),
        vec=sql.Identifier("t", column), table=table)).fetchall()
    return [problem for key, text, title, vector in rows
            if (problem := vector_problem(key, text, vector, lambda: expected_vector(
                model, text, task_type=plan.document_task, title=title, dimensions=plan.dimensions)))]


def assert_nothing_lost(conn: psycopg.Connection, plan_name: str, column: str | None = None) -> int:
    """lost_rows() must be empty; returns how many rows were checked."""
    bad = lost_rows(conn, plan_name, column)
    assert bad == [], f"{len(bad)} rows lost or wrong, e.g. {bad[:5]}"
    plan, _ = load(conn, plan_name)
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(plan.table)).fetchone()[0])  # type: ignore[index]


def ledger(conn: psycopg.Connection, plan_name: str | None = None) -> dict[str, int]:
    """Ledger figures of one plan (or all): done, pending, skipped, leased, rows embedded more than
    once and the texts embedded twice (sum of embed_count - 1)."""
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'pending'),
                  count(*) FILTER (WHERE state = 'skipped'), count(*) FILTER (WHERE lease_owner IS NOT NULL),
                  count(*) FILTER (WHERE embed_count > 1), coalesce(sum(greatest(embed_count - 1, 0)), 0)
           FROM reembed.ledger l JOIN reembed.plans p ON p.id = l.plan_id
           WHERE %s::text IS NULL OR p.name = %s""", (plan_name, plan_name)).fetchone()
    assert row is not None
    keys = ("done", "pending", "skipped", "leased", "rows_embedded_twice", "extra_embeds")
    return dict(zip(keys, (int(v) for v in row)))


def wait_for(predicate: Callable[[], Any], timeout: float = 600.0, step: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


# -- cutover under a live application -----------------------------------------------------------------

# Cutover swaps only when nothing is pending under its lock. An application that changes rows
# every fraction of a second can change one between cutover's own catch-up and its lock, five
# times running on a loaded machine: cutover then refuses with "the backfill is not complete",
# changing nothing, and the operator runs it again. Tests allow that many runs, no more.
CUTOVER_RUNS = 5
BACKFILL_RACE = ("the backfill is not complete", "were inserted or changed since the check")


def cutover_under_writes(run_cli, plan_name: str, *args: str) -> tuple[Any, int]:  # type: ignore[no-untyped-def]
    """`reembed cutover PLAN ARGS`, run again (at most CUTOVER_RUNS times) only while it refuses for
    rows the application changed in the instant before the lock; (last result, runs)."""
    for runs in range(1, CUTOVER_RUNS + 1):
        result = run_cli("cutover", plan_name, *args)
        if result.exit_code == 0 or not any(reason in result.stderr for reason in BACKFILL_RACE):
            return result, runs
    return result, runs


# -- reembed as a process ------------------------------------------------------------------------------

def reembed_process(*args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m toolkit ARGS` with this test's environment (DATABASE_URL, emulator URLs, key)."""
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "toolkit", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_9(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)


def backend_pids(conn: psycopg.Connection, application_name: str = "reembed") -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database() "
        "AND pid <> pg_backend_pid()", (application_name,))]


# -- the application ---------------------------------------------------------------------------------

@dataclass
class AppReport:
    ops: dict[str, int]
    errors: list[str]
    error_count: int
    queries: list[tuple[float, float]]  # (wall-clock start, milliseconds)
    writes: list[tuple[float, float]]

    def latencies(self, start: float | None = None, end: float | None = None,
                  of: str = "queries") -> np.ndarray:
        rows = self.queries if of == "queries" else self.writes
        return np.array([ms for t, ms in rows if (start is None or t >= start) and (end is None or t <= end)])

    def p99(self, start: float | None = None, end: float | None = None, of: str = "queries") -> float:
        values = self.latencies(start, end, of)
        return float(np.percentile(values, 99)) if len(values) else float("nan")


@dataclass
class AppLoad:
    """tests/app_load.py in its own process: one writer connection (insert, text update, title
    update, other-column update, delete) and one reader connection (the retrieval query), each at
    a steady rate. Stop it with stop(); its report has every error and latency."""

    dsn: str
    out: Path
    table: str = "docs"
    write_rate: float = 10.0
    query_rate: float = 20.0
    first_id: int = 1_000_000
    max_id: int = 1_000
    weights: str = "insert=2,text=2,title=1,other=3,delete=1"
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "AppLoad":
        stop_file = self.out.with_suffix(".stop")
        stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "app_load.py"), "--dsn", self.dsn, "--out", str(self.out),
             "--table", self.table, "--write-rate", str(self.write_rate), "--query-rate", str(self.query_rate),
             "--first-id", str(self.first_id), "--max-id", str(self.max_id), "--weights", self.weights,
             "--stop-file", str(stop_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: self.out.with_suffix(".ready").exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 timeout=600, what="the application to start")
        assert self.proc.poll() is None, self.proc.communicate()
        return self

    def ops_so_far(self) -> dict[str, int]:
        live = self.out.with_suffix(".ops")
        return json.loads(live.read_text()) if live.exists() else {}

    def stop(self, *, after_every: Iterable[str] = ()) -> AppReport:
        """Stop the application; with `after_every`, first let it go on (bounded) until it has done
        each of those operations at least once, so a short lifecycle still meets every kind of write."""
        assert self.proc is not None
        if self.proc.poll() is None:
            wanted = set(after_every)
            wait_for(lambda: self.proc.poll() is not None or wanted <= set(self.ops_so_far()),  # type: ignore[union-attr]
                     timeout=300, what=f"the application to do each of {sorted(wanted)}")
        self.out.with_suffix(".stop").touch()
        try:
            _, err = self.proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        assert self.proc.returncode == 0, err
        data = json.loads(self.out.read_text())
        return AppReport(ops=data["ops"], errors=data["errors"], error_count=data["error_count"],
                         queries=[tuple(q) for q in data["queries"]], writes=[tuple(w) for w in data["writes"]])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# -- figures for docs/reliability.md -------------------------------------------------------------------

def record(item: str, scenario: str, outcome: str, **figures: Any) -> None:
    """Append one measured line (the table in docs/reliability.md is made from these)."""
    line = {"item": item, "scenario": scenario, "outcome": outcome, "figures": figures,
            "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    with RESULTS.open("a") as f:
        f.write(json.dumps(line, default=float) + "\n")
    print(f"[reliability] {item} | {scenario} | {outcome} | {figures}")


def scan_for(needles: Iterable[str], texts: dict[str, str]) -> list[str]:
    """Where any of `needles` occurs in `texts` (name -> content)."""
    return [f"{needle!r} in {name}" for name, text in texts.items() for needle in needles if needle and needle in text]
