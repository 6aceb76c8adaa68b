"""`reembed bench --lifecycle`: the whole migration at several table sizes, for each strategy.

For each size a template database is loaded once (the table, an HNSW index on its original
column, VACUUM ANALYZE); each strategy then migrates its own clone of it, every phase a separate
process started the way a user starts it, against the zero-latency Gemini emulator (and the
Ollama one for verify's old-model comparison). Reported per size and strategy:

- ledger seed: the time prepare spends seeding the ledger (one row per table row);
- run: end-to-end rows/s, the run process's peak RSS, and the CPU the PostgreSQL server spent
  per migrated row over the run (its processes' CPU time, from /proc; `bench.server`);
- index: the build's wall time; verify: its wall time and verdict; cutover: the lock held.

What must stay flat as the table grows is the per-row cost: rows/s, server CPU per row, RSS, the
lock; verify may grow at most linearly. The emulator answers every size at the same cost per
row (no answer cache, so 20k rows are not served from memory while 1M rows are computed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg

from toolkit.bench import child_env, tables
from toolkit.bench.server import ServerCpu, activity
from toolkit.db import Database



SETTINGS = ("shared_buffers", "max_wal_size", "checkpoint_timeout", "full_page_writes", "wal_compression",
            "maintenance_work_mem", "autovacuum")


@dataclass
class PhaseFigure:
    seconds: float
    peak_rss_mb: float | None = None
    server_cpu_seconds: float | None = None
    exit_code: int = 0


@dataclass
class LifecycleFigure:
    strategy: str
    rows: int
    seed_seconds: float = 0.0
    run_rows_per_second: float = 0.0
    run_seconds: float = 0.0
    run_peak_rss_mb: float = 0.0
    server_cpu_ms_per_row: float | None = None  # over `reembed run`
    index_seconds: float = 0.0
    index_peak_rss_mb: float | None = None
    verify_seconds: float = 0.0
    verify_passed: bool = False
    verify_failed_checks: list[str] = field(default_factory=list)
    cutover_lock_ms: float | None = None
    cutover_forced: bool = False
    # Why the server's CPU per row moves (over `reembed run`): WAL, full-page images, buffers,
    # index block accesses, per migrated row; the application table's HOT share; checkpoints.
    run_per_row: dict[str, float] = field(default_factory=dict)
    run_hot_share: float | None = None
    run_checkpoints: int = 0
    phases: dict[str, PhaseFigure] = field(default_factory=dict)


@dataclass
class LifecycleOptions:
    sizes: tuple[int, ...] = (20_000,)
    strategies: tuple[str, ...] = ("column",)
    dims: int = 768
    hnsw_m: int = 16
    batch_size: int = 100
    concurrency: int = 4
    keep_templates: bool = False  # keep each size's loaded template database for the next bench
    out: Path | None = None  # the figures so far, rewritten after every phase (long runs)


@dataclass
class LifecycleResult:
    figures: list[LifecycleFigure] = field(default_factory=list)
    templates: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # the server's, where per-row costs depend on them

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def template_name(rows: int, dims: int, hnsw_m: int) -> str:
    return f"reembed_soak_{rows}_{dims}_m{hnsw_m}"


def build_template(admin: psycopg.Connection, admin_dsn: str, rows: int, options: LifecycleOptions,
                   say: Callable[[str], None]) -> dict[str, float]:
    """The size's template database (kept from an earlier bench when it is there)."""
    name = template_name(rows, options.dims, options.hnsw_m)
    if tables.exists(admin, name):
        say(f"[{rows}] template {name} kept from an earlier bench")
        return {"reused": 1.0}
    say(f"[{rows}] loading {rows} rows and building HNSW (m={options.hnsw_m}) on the original column")
    started = time.monotonic()
    tables.make_template(admin, admin_dsn, name, rows, options.dims, options.hnsw_m)
    return {"build_seconds": round(time.monotonic() - started, 1)}


def _phase(env: dict[str, str], *args: str) -> tuple[PhaseFigure, dict[str, Any] | None, str]:
    """`reembed ARGS --json` as its own process: wall time, its peak RSS, its JSON output."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args, "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    streams: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: streams.__setitem__(n, s.read()))  # type: ignore[misc]
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    # wait4: the kernel's accounting of this one child, its peak RSS (ru_maxrss, kB on Linux) included.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    seconds = time.monotonic() - started
    out = streams.get("out", "")
    try:
        document = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        document = None
    return (PhaseFigure(seconds=round(seconds, 2), peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                        exit_code=proc.returncode), document, streams.get("err", ""))


def migrate(admin: psycopg.Connection, admin_dsn: str, rows: int, strategy: str, options: LifecycleOptions,
            env: dict[str, str], workdir: Path, say: Callable[[str], None],
            saved: Callable[[LifecycleFigure], None]) -> LifecycleFigure:
    """One strategy's whole migration of a clone of the size's template."""
    from toolkit.phases.planning import make_plan
    from toolkit.phases.prepare import prepare
    from toolkit.plan import load

    figure = LifecycleFigure(strategy=strategy, rows=rows)
    clone = f"reembed_soak_{rows}_{strategy}"
    tables.clone(admin, template_name(rows, options.dims, options.hnsw_m), clone)
    dsn = tables.dsn_for(admin_dsn, clone)
    env = dict(env, DATABASE_URL=dsn)
    db = Database(dsn)
    conn = db.connect()
    try:
        plan_result = make_plan(db, conn, tables.plan_request(f"soak-{strategy}", strategy,
                                                             workdir / f"soak-{strategy}.toml"))
        name = plan_result.plan.name
        say(f"[{rows} {strategy}] prepare: seeding the ledger")
        plan, record = load(conn, name)
        cpu = ServerCpu(conn).start()
        started = time.monotonic()
        prepare(conn, plan, record)
        figure.phases["prepare"] = PhaseFigure(seconds=round(time.monotonic() - started, 2),
                                               server_cpu_seconds=cpu.seconds())
        seeded = conn.execute("SELECT details->>'seed_seconds' FROM reembed.events WHERE plan_id = %s "
                              "AND details ? 'seed_seconds' ORDER BY id DESC LIMIT 1", (record.id,)).fetchone()
        figure.seed_seconds = float(seeded[0]) if seeded and seeded[0] else figure.phases["prepare"].seconds
        saved(figure)

        say(f"[{rows} {strategy}] reembed run")
        before = activity(conn, settle=0.0)
        cpu = ServerCpu(conn).start()
        phase, summary, err = _phase(env, "run", name, "--no-progress", "--batch-size", str(options.batch_size),
                                     "--concurrency", str(options.concurrency))
        phase.server_cpu_seconds = cpu.seconds()
        figure.phases["run"] = phase
        if phase.exit_code != 0 or summary is None:
            raise RuntimeError(f"reembed run failed ({phase.exit_code}): {err.strip()[-500:]}")
        written = summary["rows_written"] + summary["rows_skipped"]
        figure.run_rows_per_second = summary["rows_per_second"]
        figure.run_seconds = round(summary["loop_seconds"], 2)
        figure.run_peak_rss_mb = summary["peak_rss_mb"]
        if phase.server_cpu_seconds is not None and written:
            figure.server_cpu_ms_per_row = round(1000 * phase.server_cpu_seconds / written, 4)
        spent = activity(conn).minus(before)
        figure.run_per_row, figure.run_checkpoints = spent.per_row(written), spent.checkpoints
        updated, hot, _ = spent.updates.get(f"public.{tables.TABLE}", [0, 0, 0])
        figure.run_hot_share = round(hot / updated, 3) if updated else None
        saved(figure)
        say(f"    {figure.run_rows_per_second:.0f} rows/s, server CPU {figure.server_cpu_ms_per_row} ms/row, "
            f"HOT {figure.run_hot_share}, per row {figure.run_per_row}, {figure.run_checkpoints} checkpoints")

        say(f"[{rows} {strategy}] reembed index")
        cpu = ServerCpu(conn).start()
        phase, _, err = _phase(env, "index", name, "--no-progress", "--maintenance-work-mem",
                               tables.graph_memory(rows, options.dims))
        phase.server_cpu_seconds = cpu.seconds()
        figure.phases["index"] = phase
        if phase.exit_code != 0:
            raise RuntimeError(f"reembed index failed ({phase.exit_code}): {err.strip()[-500:]}")
        figure.index_seconds = phase.seconds
        saved(figure)

        say(f"[{rows} {strategy}] reembed verify")
        cpu = ServerCpu(conn).start()
        phase, report, err = _phase(env, "verify", name)
        phase.server_cpu_seconds = cpu.seconds()
        figure.phases["verify"] = phase
        if report is None:
            raise RuntimeError(f"reembed verify failed ({phase.exit_code}): {err.strip()[-500:]}")
        figure.verify_seconds = phase.seconds
        figure.verify_passed = bool(report.get("passed"))
        figure.verify_failed_checks = [c["name"] for c in report.get("checks", []) if not c.get("passed")]
        saved(figure)

        say(f"[{rows} {strategy}] reembed cutover")
        figure.cutover_forced = not figure.verify_passed
        phase, _, err = _phase(env, "cutover", name, *(["--force"] if figure.cutover_forced else []))
        figure.phases["cutover"] = phase
        if phase.exit_code != 0:
            raise RuntimeError(f"reembed cutover failed ({phase.exit_code}): {err.strip()[-500:]}")
        lock = conn.execute("SELECT lock_ms FROM reembed.swaps WHERE plan_id = %s AND direction = 'cutover' "
                            "ORDER BY id DESC LIMIT 1", (record.id,)).fetchone()
        figure.cutover_lock_ms = round(float(lock[0]), 2) if lock else None
        saved(figure)
    finally:
        conn.close()
        tables.drop(admin, clone)
    return figure


def lifecycle(db: Database, options: LifecycleOptions, say: Callable[[str], None] = lambda s: None) -> LifecycleResult:
    from toolkit.emulators import start_gemini, start_ollama

    result = LifecycleResult()
    admin_dsn = db.conninfo()
    admin = db.connect()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"reembed-soak-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    gemini = start_gemini(answer_cache_bytes=0)
    ollama = start_ollama()
    env = child_env(admin_dsn, gemini.base_url, ollama.base_url)

    def saved(figure: LifecycleFigure) -> None:
        result.figures[-1] = figure  # the one being measured, as far as it got
        if options.out is not None:
            options.out.write_text(json.dumps(result.to_json(), indent=2, default=str))

    try:
        result.settings = {name: value for name, value in admin.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (list(SETTINGS),))}
        for rows in options.sizes:
            result.templates[str(rows)] = build_template(admin, admin_dsn, rows, options, say)
            for strategy in options.strategies:
                figure = LifecycleFigure(strategy=strategy, rows=rows)
                result.figures.append(figure)
                done = migrate(admin, admin_dsn, rows, strategy, options, env, workdir, say, saved)
                result.figures[-1] = done
                saved(done)
            if not options.keep_templates:
                tables.drop(admin, template_name(rows, options.dims, options.hnsw_m))
    finally:
        gemini.stop()
        ollama.stop()
        admin.close()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return result


def render(result: LifecycleResult) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    lines = ["reembed bench --lifecycle: embedded PostgreSQL, zero-latency emulators (real clients over HTTP), "
             "each phase its own process", f"server: {settings}", "",
             f"{'strategy':<8} {'rows':>8} {'seed s':>7} {'rows/s':>7} {'srv ms/row':>10} {'RSS MB':>7} "
             f"{'index s':>8} {'verify s':>8} {'lock ms':>8} {'HOT':>5} {'WAL B/row':>9} {'FPI/row':>7}  verify"]
    for f in result.figures:
        cpu = f"{f.server_cpu_ms_per_row:.3f}" if f.server_cpu_ms_per_row is not None else "n/a"
        lock = f"{f.cutover_lock_ms:.1f}" if f.cutover_lock_ms is not None else "n/a"
        hot = f"{f.run_hot_share:.0%}" if f.run_hot_share is not None else "-"
        verdict = "passed" if f.verify_passed else "failed: " + ", ".join(f.verify_failed_checks)
        lines.append(f"{f.strategy:<8} {f.rows:>8} {f.seed_seconds:>7.1f} {f.run_rows_per_second:>7.0f} {cpu:>10} "
                     f"{f.run_peak_rss_mb:>7.0f} {f.index_seconds:>8.1f} {f.verify_seconds:>8.1f} {lock:>8} {hot:>5} "
                     f"{f.run_per_row.get('wal_bytes', 0):>9.0f} {f.run_per_row.get('wal_fpi', 0):>7.3f}  {verdict}")
    return "\n".join(lines)
