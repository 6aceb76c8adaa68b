"""What a copy-strategy `reembed run` costs the PostgreSQL server, per migrated row, at any size
(issue 15, point 6), and which of the server's processes spend it.

Each run migrates a fresh clone of a bench table (`toolkit.bench.tables`: ROWS rows, 768 dims) on
the embedded server (REEMBED_DATA_DIR picks another one, so that nothing else runs on the server
measured), planned, prepared (ledger seeded) and then `reembed run` as its own process against
the zero-latency Gemini emulator. Printed per run, one JSON line: the ledger seed time, rows/s,
the run's peak RSS, the whole server's CPU per row (as `reembed bench --lifecycle` counts it),
the same split by process (reembed's backends, autovacuum, checkpointer, walwriter...; sampled
from /proc every 0.1 s, so a process that lives under 0.1 s is missed), and WAL per row.

--no-original-index loads the table without the HNSW index on the original column: the copy
strategy never writes the original's indexes (0 page accesses per row at 20k and 100k rows), and
at 1M rows building that graph would take longer than the migration. --settle waits, before the
run, for the clone's and the seed's leftovers (a CHECKPOINT, autovacuum gone quiet) and ends with
a CHECKPOINT inside the measurement, so the run's own dirty pages are charged to it.

Run: python bench/copy_run_cost.py [--rows 20000] [--repeat 1] [--no-original-index] [--settle]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from toolkit import embedded
from toolkit.bench import child_env, tables
from toolkit.bench.lifecycle import template_name
from toolkit.bench.server import ServerCpu, activity, children_cpu_seconds, postmaster_pid
from toolkit.db import Database
from toolkit.emulators import start_gemini
from toolkit.phases.planning import make_plan
from toolkit.phases.prepare import prepare
from toolkit.plan import load

GROUPS = ("checkpointer", "walwriter", "background writer", "autovacuum launcher", "autovacuum worker",
          "logical replication launcher", "io worker")


def process_group(pid: int) -> str:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "gone"
    return next((g for g in GROUPS if g in title), "backend")


class ProcessSampler:
    """Each server process's CPU from its first sample to its last, summed by process group."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        for pid, seconds in children_cpu_seconds(self.postmaster).items():
            self.first.setdefault(pid, seconds)
            self.last[pid] = seconds
            if pid not in self.group:
                self.group[pid] = process_group(pid)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.1)

    def start(self) -> "ProcessSampler":
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        spent: dict[str, float] = {}
        for pid, seconds in self.last.items():
            spent[self.group[pid]] = spent.get(self.group[pid], 0.0) + seconds - self.first[pid]
        return spent


def settle(conn: psycopg.Connection) -> None:
    conn.execute("CHECKPOINT")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'").fetchone()[0]:
        time.sleep(0.2)
    conn.execute("CHECKPOINT")


def one_run(admin: psycopg.Connection, admin_dsn: str, template: str, env: dict[str, str], workdir: Path,
            settled: bool) -> dict[str, Any]:
    clone = f"{template}_run"
    tables.clone(admin, template, clone)
    dsn = tables.dsn_for(admin_dsn, clone)
    db = Database(dsn)
    conn = db.connect()
    conn.autocommit = True
    try:
        planned = make_plan(db, conn, tables.plan_request("cost", "copy", workdir / "cost.toml"))
        plan, record = load(conn, planned.plan.name)
        started = time.monotonic()
        prepare(conn, plan, record)
        seed_seconds = time.monotonic() - started
        if settled:
            settle(conn)
        postmaster = postmaster_pid(conn)
        before = activity(conn, settle=0.0)
        sampler = ProcessSampler(postmaster).start() if postmaster else None
        cpu = ServerCpu(conn).start()
        done = subprocess.run([sys.executable, "-m", "toolkit", "run", planned.plan.name, "--no-progress", "--json",
                               "--batch-size", "100", "--concurrency", "4"], env=dict(env, DATABASE_URL=dsn),
                              capture_output=True, text=True)
        if settled:
            conn.execute("CHECKPOINT")
        spent = activity(conn)  # its one second lets the run's backends report and exit
        by_process = sampler.stop() if sampler else {}
        server_seconds = cpu.seconds()
        if done.returncode != 0:
            raise SystemExit(f"reembed run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        summary = json.loads(done.stdout)
        rows = summary["rows_written"] + summary["rows_skipped"]
        per_row = spent.minus(before).per_row(rows)
        return {"rows": rows, "settled": settled, "seed_seconds": round(seed_seconds, 1),
                "rows_per_second": summary["rows_per_second"], "peak_rss_mb": summary["peak_rss_mb"],
                "server_cpu_ms_per_row": (round(1000 * server_seconds / rows, 4)
                                          if server_seconds is not None else None),
                "by_process_ms_per_row": {g: round(1000 * s / rows, 4) for g, s in sorted(by_process.items()) if s},
                "wal_bytes_per_row": per_row.get("wal_bytes"), "wal_fpi_per_row": per_row.get("wal_fpi"),
                "blks_read_per_row": per_row.get("blks_read")}
    finally:
        conn.close()
        tables.drop(admin, clone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-original-index", action="store_true")
    parser.add_argument("--settle", action="store_true")
    args = parser.parse_args()
    admin_dsn = embedded.url()
    admin = Database(admin_dsn).connect()
    admin.autocommit = True
    hnsw_m = None if args.no_original_index else 16
    template = template_name(args.rows, tables.DIMS, hnsw_m) if hnsw_m else f"reembed_cost_{args.rows}_no_index"
    if not tables.exists(admin, template):
        started = time.monotonic()
        tables.make_template(admin, admin_dsn, template, args.rows, tables.DIMS, hnsw_m)
        print(json.dumps({"template": template, "seconds": round(time.monotonic() - started, 1)}), flush=True)
    gemini = start_gemini(answer_cache_bytes=0)
    workdir = Path("/tmp") / f"reembed-copy-run-cost-{args.rows}"
    workdir.mkdir(exist_ok=True)
    try:
        env = child_env(admin_dsn, gemini.base_url)
        for _ in range(args.repeat):
            print(json.dumps(one_run(admin, admin_dsn, template, env, workdir, args.settle)), flush=True)
    finally:
        gemini.stop()
        admin.close()


if __name__ == "__main__":
    main()
