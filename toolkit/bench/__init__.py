"""`reembed bench`: what `reembed run` achieves here, measured in one go in scratch databases
against the local Gemini emulator (real google-genai client, real HTTP, real PostgreSQL).

(a) for each strategy, end-to-end rows/s of `reembed run` on a table whose original column has
    an HNSW index, beside its two floors measured in the same bench on the same table
    (`bench.floors`): the same database writes with nothing else running, and the same
    provider calls through the same client with nothing else running; the ratio to the slower
    floor says how much the two get in each other's way. With the server's CPU per row, and the
    same run with its provider client in the run's own process (`--embed-here`) beside it.
(b) for the column strategy, the write order: the same table written in primary-key order
    (every update pays an HNSW insert) and a table with no index at all, with the HOT share
    of each (pg_stat_user_tables).
(c) with 200 ms provider latency and a quota of R texts/min (the emulator answers 429 past it),
    the texts/min achieved as a fraction of R, and the 429s served.
(d) peak memory (RSS) of the `reembed run` process at two table sizes: it must not grow.
(e) for each strategy, how long `reembed cutover` and `reembed rollback` hold the ACCESS EXCLUSIVE
    lock, on the end-to-end table of (a) once its new index is built (a few rounds of each).

Each run and each floor is a separate process, started the way a user starts `reembed run`.
`--lifecycle` (bench.lifecycle) measures whole migrations at several sizes instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psycopg

from toolkit.bench import tables
from toolkit.bench.server import ServerCpu
from toolkit.db import Database

BENCH_KEY = "reembed-bench-key"
TARGET_RATIO = 0.8  # end to end at least this share of the slower floor


@dataclass
class WriteFigure:
    label: str
    strategy: str
    rows: int
    seconds: float
    rows_per_second: float  # end to end: claim, read, embed (HTTP + JSON), write; start-up excluded
    write_rows_per_second: float  # rows / time inside the write transactions: the database's share
    updates: int  # of the application's table (the copy strategy only reads it)
    hot_updates: int
    hot_share: float
    peak_rss_mb: float
    server_cpu_ms_per_row: float | None = None
    # The whole run, its start-up included (the embedding process's start among it), and that start.
    run_seconds: float = 0.0
    embedder_start_seconds: float = 0.0


@dataclass
class FloorFigure:
    """End to end against the two floors, for one strategy."""

    strategy: str
    rows: int
    end_to_end_rows_per_second: float
    database_floor_rows_per_second: float
    provider_floor_rows_per_second: float
    slower_floor: str  # database | provider
    ratio: float  # end to end / the slower floor
    end_to_end_server_cpu_ms_per_row: float | None
    database_floor_server_cpu_ms_per_row: float | None
    # The same run with --embed-here: the provider client in the run's process, sharing its GIL.
    embed_here_rows_per_second: float = 0.0
    embed_here_ratio: float = 0.0
    # The same end-to-end run over its whole time, start-up included (the floors have none to count).
    whole_run_rows_per_second: float = 0.0
    whole_run_ratio: float = 0.0
    embedder_start_seconds: float = 0.0


@dataclass
class QuotaFigure:
    quota_texts_per_minute: int
    latency_ms: int
    rows: int
    seconds: float
    texts_per_minute: float
    fraction_of_quota: float
    rate_limited_429: int
    rpm_flag: int | None
    peak_rss_mb: float

    def reading(self) -> str:
        """The achieved rate against the quota; a run shorter than the quota's minute is a burst
        inside one minute's allowance, so its extrapolated rate may exceed the quota without a 429."""
        rate = f"{self.texts_per_minute:.0f} texts/min = {self.fraction_of_quota:.1%} of quota"
        if self.seconds < 60:
            rate += (f" (a {self.seconds:.1f} s burst inside one minute's allowance, not a sustained rate: "
                     f"--quota-rows {2 * self.quota_texts_per_minute} measures one)")
        return rate


@dataclass
class SwapFigure:
    rows: int
    rounds: int
    cutover_lock_ms: list[float]  # one per round, as reembed.swaps records them
    rollback_lock_ms: list[float]
    attempts: int  # tries over all swaps; == 2 * rounds when nothing else held the table
    strategy: str = "column"

    @property
    def medians(self) -> tuple[float, float]:
        return float(np.median(self.cutover_lock_ms)), float(np.median(self.rollback_lock_ms))


@dataclass
class BenchResult:
    rows: int
    dims: int
    hnsw_m: int
    floors: list[FloorFigure] = field(default_factory=list)
    write: list[WriteFigure] = field(default_factory=list)
    quota: list[QuotaFigure] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    swaps: list[SwapFigure] = field(default_factory=list)
    speedup_vs_pk_order: float = 0.0
    write_speedup_vs_pk_order: float = 0.0
    target_ratio: float = TARGET_RATIO

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchOptions:
    rows: int = 5000
    small_rows: int = 1000
    dims: int = tables.DIMS
    hnsw_m: int = 16
    quota: int = 3000
    quota_rows: int | None = None  # default: one minute of quota
    latency_ms: int = 200
    adaptive: bool = False  # also run (c) without --rpm, finding the quota from 429s
    skip_pk_order: bool = False
    swap_rounds: int = 3
    batch_size: int = 100
    concurrency: int = 4
    strategies: tuple[str, ...] = ("column",)


def child_env(dsn: str, gemini_url: str, ollama_url: str | None = None) -> dict[str, str]:
    """The environment of a bench's child process: its database and the emulators, nothing of the user's."""
    env = dict(os.environ, DATABASE_URL=dsn, GOOGLE_API_KEY=BENCH_KEY, GOOGLE_GEMINI_BASE_URL=gemini_url)
    if ollama_url:
        env["OLLAMA_HOST"] = ollama_url
    for var in ("GEMINI_API_KEY", "REEMBED_GEMINI_BASE_URL", "REEMBED_RPM", "REEMBED_TPM", "REEMBED_CONCURRENCY"):
        env.pop(var, None)
    return env


def _json_process(args: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def _plan(db: Database, conn: psycopg.Connection, strategy: str, name: str, workdir: Path) -> str:
    from toolkit.phases.planning import make_plan
    from toolkit.phases.prepare import prepare
    from toolkit.plan import load

    result = make_plan(db, conn, tables.plan_request(name, strategy, workdir / f"{name}.toml"))
    plan, record = load(conn, result.plan.name)
    prepare(conn, plan, record)
    return result.plan.name


def _pk_order(conn: psycopg.Connection, name: str) -> None:
    """Renumber the plan's ledger in primary-key order: the naive order, for the floor."""
    conn.execute(
        """UPDATE reembed.ledger l SET seq = o.n
           FROM (SELECT pk, row_number() OVER (ORDER BY (pk->>'id')::bigint) AS n FROM reembed.ledger
                 WHERE plan_id = (SELECT id FROM reembed.plans WHERE name = %s)) o
           WHERE l.plan_id = (SELECT id FROM reembed.plans WHERE name = %s) AND l.pk = o.pk""", (name, name))


def _hot(conn: psycopg.Connection) -> tuple[int, int]:
    row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = %s::regclass",
                       (tables.TABLE,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _per_row_ms(seconds: float | None, rows: int) -> float | None:
    return round(1000 * seconds / rows, 4) if seconds is not None and rows else None


class _Bench:
    """The scratch databases of one bench: templates loaded once, a clone per case."""

    def __init__(self, db: Database, options: BenchOptions, emulator_url: str, workdir: Path,
                 say: Callable[[str], None]) -> None:
        self.admin_dsn = db.conninfo()
        self.admin = db.connect()
        self.options, self.emulator_url, self.workdir, self.say = options, emulator_url, workdir, say
        self.prefix = f"reembed_bench_{uuid.uuid4().hex[:8]}"
        self.databases: list[str] = []
        self.run_args = ["--batch-size", str(options.batch_size), "--concurrency", str(options.concurrency)]

    def template(self, label: str, rows: int, hnsw_m: int | None) -> str:
        name = f"{self.prefix}_{label}"
        self.say(f"loading {rows} rows" + (f" and building HNSW (m={hnsw_m})" if hnsw_m else "") + f" ({label})")
        self.databases.append(name)
        tables.make_template(self.admin, self.admin_dsn, name, rows, self.options.dims, hnsw_m)
        return name

    def case(self, template: str, label: str, strategy: str) -> tuple[Database, psycopg.Connection, str]:
        """A clone of `template` with a prepared plan of `strategy`: (database, connection, plan name)."""
        name = f"{self.prefix}_{label}"
        self.databases.append(name)
        tables.clone(self.admin, template, name)
        db = Database(tables.dsn_for(self.admin_dsn, name))
        conn = db.connect()
        return db, conn, _plan(db, conn, strategy, f"bench-{label}", self.workdir)

    def run(self, db: Database, conn: psycopg.Connection, plan: str, label: str, strategy: str,
            rows: int, *extra: str) -> WriteFigure:
        before = _hot(conn)
        cpu = ServerCpu(self.admin).start()
        summary = _json_process(["-m", "toolkit", "run", plan, "--json", "--no-progress", *self.run_args, *extra],
                                child_env(db.conninfo(), self.emulator_url), f"reembed run {plan}")
        server = cpu.seconds()
        time.sleep(1.0)  # the run's backend flushes its table statistics as it exits, after the process
        after = _hot(conn)
        updates, hot = after[0] - before[0], after[1] - before[1]
        written = summary["rows_written"] + summary["rows_skipped"]
        figure = WriteFigure(label=label, strategy=strategy, rows=rows, seconds=summary["loop_seconds"],
                             rows_per_second=summary["rows_per_second"],
                             write_rows_per_second=round(summary["rows_written"] / summary["write_seconds"], 1),
                             updates=updates, hot_updates=hot, hot_share=round(hot / updates, 3) if updates else 0.0,
                             peak_rss_mb=summary["peak_rss_mb"], server_cpu_ms_per_row=_per_row_ms(server, written),
                             run_seconds=summary["seconds"], embedder_start_seconds=summary["embedder_start_seconds"])
        self.say(f"    {figure.rows_per_second:.0f} rows/s end to end, server CPU "
                 f"{figure.server_cpu_ms_per_row} ms/row, peak RSS {figure.peak_rss_mb:.0f} MB")
        return figure

    def reembed(self, db: Database, *args: str) -> str:
        """`reembed ARGS` as its own process; its standard output."""
        proc = subprocess.run([sys.executable, "-m", "toolkit", *args], env=child_env(db.conninfo(), self.emulator_url),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"reembed {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def swaps(self, db: Database, conn: psycopg.Connection, plan: str, strategy: str) -> SwapFigure:
        """Index the plan, then cut over and roll back `swap_rounds` times (--force: the bench does not
        verify); the lock times are the ones reembed.swaps records."""
        rounds = self.options.swap_rounds
        self.reembed(db, "index", plan, "--no-progress")
        for _ in range(rounds):
            self.reembed(db, "cutover", plan, "--force", "--json")
            self.reembed(db, "rollback", plan, "--json")
        figures = conn.execute("SELECT s.direction, s.lock_ms, s.attempts FROM reembed.swaps s JOIN reembed.plans p "
                               "ON p.id = s.plan_id WHERE p.name = %s ORDER BY s.id", (plan,)).fetchall()
        figure = SwapFigure(rows=self.options.rows, rounds=rounds, strategy=strategy,
                            cutover_lock_ms=[round(float(ms), 2) for d, ms, _ in figures if d == "cutover"],
                            rollback_lock_ms=[round(float(ms), 2) for d, ms, _ in figures if d == "rollback"],
                            attempts=sum(int(a) for _, _, a in figures))
        cut, back = figure.medians
        self.say(f"    lock held: cutover median {cut:.1f} ms, rollback median {back:.1f} ms")
        return figure

    def floor(self, kind: str, db: Database, plan: str) -> tuple[dict[str, Any], float | None]:
        cpu = ServerCpu(self.admin).start()
        figure = _json_process(["-m", "toolkit.bench.floors", kind, plan, str(self.options.batch_size),
                                str(self.options.concurrency)], child_env(db.conninfo(), self.emulator_url),
                               f"the {kind} floor")
        server = cpu.seconds()
        self.say(f"    {kind} floor: {figure['rows_per_second']:.0f} rows/s")
        return figure, _per_row_ms(server, figure["rows"])

    def close(self) -> None:
        for name in reversed(self.databases):
            tables.drop(self.admin, name)
        self.admin.close()


def bench(db: Database, options: BenchOptions, say: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Run the whole benchmark in scratch databases (dropped at the end)."""
    from toolkit.emulators import start_gemini

    result = BenchResult(rows=options.rows, dims=options.dims, hnsw_m=options.hnsw_m)
    workdir = Path(tempfile.mkdtemp(prefix="reembed-bench-"))
    # Every answer serialised before the clock starts (the tables share their passages): the
    # stand-in then costs next to no CPU on this shared machine, and the bench measures reembed.
    emulator = start_gemini(answer_cache_bytes=min(2 ** 30, 12_000 * options.rows))
    say(f"serialising the emulator's answers for {options.rows} passages")
    emulator.app.warm("gemini-embedding-001", tables.answers(options.rows, options.dims))
    scratch = _Bench(db, options, emulator.base_url, workdir, say)
    try:
        hnsw = scratch.template("hnsw", options.rows, options.hnsw_m)
        for strategy in options.strategies:
            say(f"(a) {strategy} strategy: provider floor, end to end, database floor")
            e2e_db, conn, plan = scratch.case(hnsw, f"{strategy}_e2e", strategy)
            provider, _ = scratch.floor("provider", e2e_db, plan)  # reads only: before the run, same table
            label = ("HNSW on the original column, page-striped order (reembed run)" if strategy == "column"
                     else f"HNSW on the original column ({strategy} strategy, reembed run)")
            e2e = scratch.run(e2e_db, conn, plan, label, strategy, options.rows)
            result.write.append(e2e)
            if options.swap_rounds:
                say(f"(e) {strategy} strategy: reembed index, then {options.swap_rounds} x reembed cutover + rollback")
                result.swaps.append(scratch.swaps(e2e_db, conn, plan, strategy))
            conn.close()
            here_db, conn, plan = scratch.case(hnsw, f"{strategy}_here", strategy)
            here = scratch.run(here_db, conn, plan, label.replace("reembed run", "reembed run --embed-here"), strategy,
                               options.rows, "--embed-here")
            conn.close()
            floor_db, conn, plan = scratch.case(hnsw, f"{strategy}_floor", strategy)
            database, database_cpu = scratch.floor("database", floor_db, plan)
            conn.close()
            slower = "database" if database["rows_per_second"] <= provider["rows_per_second"] else "provider"
            slowest = min(database["rows_per_second"], provider["rows_per_second"])
            figure = FloorFigure(strategy=strategy, rows=options.rows, end_to_end_rows_per_second=e2e.rows_per_second,
                                 database_floor_rows_per_second=database["rows_per_second"],
                                 provider_floor_rows_per_second=provider["rows_per_second"], slower_floor=slower,
                                 ratio=round(e2e.rows_per_second / slowest, 3) if slowest else 0.0,
                                 end_to_end_server_cpu_ms_per_row=e2e.server_cpu_ms_per_row,
                                 database_floor_server_cpu_ms_per_row=database_cpu,
                                 embed_here_rows_per_second=here.rows_per_second,
                                 embed_here_ratio=round(here.rows_per_second / slowest, 3) if slowest else 0.0,
                                 embedder_start_seconds=round(e2e.embedder_start_seconds, 3))
            if e2e.run_seconds:
                figure.whole_run_rows_per_second = round(options.rows / e2e.run_seconds, 1)
                figure.whole_run_ratio = round(figure.whole_run_rows_per_second / slowest, 3) if slowest else 0.0
            say(f"    ratio {figure.ratio:.2f} of the slower ({slower}) floor; {figure.embed_here_ratio:.2f} with "
                f"--embed-here; {figure.whole_run_ratio:.2f} over the whole run")
            result.floors.append(figure)

        if "column" in options.strategies:
            if not options.skip_pk_order:
                say("(b) column strategy, primary-key order (the naive floor)")
                case_db, conn, plan = scratch.case(hnsw, "pk_order", "column")
                _pk_order(conn, plan)
                naive = scratch.run(case_db, conn, plan, "HNSW on the original column, primary-key order (naive floor)",
                                    "column", options.rows)
                conn.close()
                result.write.append(naive)
                striped = next(f for f in result.write if f.strategy == "column")
                result.speedup_vs_pk_order = round(striped.rows_per_second / naive.rows_per_second, 2)
                result.write_speedup_vs_pk_order = round(striped.write_rows_per_second / naive.write_rows_per_second, 2)
            say("(b) column strategy, no index on the original column")
            noindex = scratch.template("noindex", options.rows, None)
            case_db, conn, plan = scratch.case(noindex, "noindex_run", "column")
            result.write.append(scratch.run(case_db, conn, plan, "no index on the original column (no-index floor)",
                                            "column", options.rows))
            conn.close()

        say("(d) small table (memory baseline)")
        small_tpl = scratch.template("small", options.small_rows, None)
        case_db, conn, plan = scratch.case(small_tpl, "small_run", options.strategies[0])
        small = scratch.run(case_db, conn, plan, "no index, small table (memory baseline)", options.strategies[0],
                            options.small_rows)
        conn.close()
        largest = max(f.peak_rss_mb for f in result.write)
        result.memory = {"rows_small": options.small_rows, "peak_rss_mb_small": small.peak_rss_mb,
                         "rows_large": options.rows, "peak_rss_mb_large": largest,
                         "growth_mb": round(largest - small.peak_rss_mb, 1)}

        quota_rows = options.quota_rows or options.quota
        quota_tpl = scratch.template("quota", quota_rows, None)
        for rpm in ([options.quota, None] if options.adaptive else [options.quota]):
            label = "rpm" if rpm else "adaptive"
            say(f"(c) {options.latency_ms} ms latency, quota {options.quota} texts/min, "
                + (f"--rpm {rpm}" if rpm else "no --rpm (adaptive)") + f": {quota_rows} rows")
            case_db, conn, plan = scratch.case(quota_tpl, f"quota_{label}", options.strategies[0])
            emulator.configure(latency=options.latency_ms / 1000, quota_texts_per_minute=options.quota)
            emulator.reset_stats()
            run = scratch.run(case_db, conn, plan, f"quota {label}", options.strategies[0], quota_rows,
                              *(["--rpm", str(rpm)] if rpm else []))
            conn.close()
            stats = emulator.stats
            emulator.configure(latency=0.0, quota_texts_per_minute=None)
            per_minute = run.rows_per_second * 60
            figure = QuotaFigure(quota_texts_per_minute=options.quota, latency_ms=options.latency_ms,
                                 rows=quota_rows, seconds=run.seconds, texts_per_minute=round(per_minute, 1),
                                 fraction_of_quota=round(per_minute / options.quota, 3),
                                 rate_limited_429=stats.rate_limited, rpm_flag=rpm, peak_rss_mb=run.peak_rss_mb)
            say(f"    {figure.reading()}, {figure.rate_limited_429} 429s")
            result.quota.append(figure)
    finally:
        emulator.stop()
        scratch.close()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return result


def render(result: BenchResult) -> str:
    lines = [f"reembed bench: {result.rows} rows x {result.dims} dims, HNSW m={result.hnsw_m}, "
             "zero-latency Gemini emulator (real google-genai client over HTTP, answers pre-serialised);",
             "each run and floor is a separate process; rows/s over its claim-embed-write loop (start-up, the "
             "embedding process's included, is outside it, as the floors' client construction is)", "",
             f"(a) end to end vs the floors (target: at least {result.target_ratio:.0%} of the slower floor)"]
    for f in result.floors:
        cpu = lambda v: f"{v:.3f}" if v is not None else "n/a"  # noqa: E731
        lines.append(f"  {f.strategy:<7} end to end {f.end_to_end_rows_per_second:>7.0f} rows/s | database floor "
                     f"{f.database_floor_rows_per_second:>7.0f} | provider floor {f.provider_floor_rows_per_second:>7.0f}"
                     f" | ratio {f.ratio:.2f} of the {f.slower_floor} floor | server CPU "
                     f"{cpu(f.end_to_end_server_cpu_ms_per_row)} ms/row end to end, "
                     f"{cpu(f.database_floor_server_cpu_ms_per_row)} on the database floor")
        lines.append(f"  {'':<7} --embed-here {f.embed_here_rows_per_second:>5.0f} rows/s | ratio "
                     f"{f.embed_here_ratio:.2f} (the provider client in the run's process)")
        lines.append(f"  {'':<7} whole run    {f.whole_run_rows_per_second:>5.0f} rows/s | ratio "
                     f"{f.whole_run_ratio:.2f} (the run's setup included: the embedding process took "
                     f"{f.embedder_start_seconds:.1f} s to be ready)")
    lines += ["", "(b) write speed (runs)"]
    for w in result.write:
        lines.append(f"  {w.label:<66} {w.rows:>7} rows {w.rows_per_second:>7.0f} rows/s end to end, "
                     f"writes {w.write_rows_per_second:>6.0f} rows/s, HOT {w.hot_share:>4.0%} of {w.updates} updates, "
                     f"peak RSS {w.peak_rss_mb:.0f} MB")
    if result.speedup_vs_pk_order:
        lines.append(f"  page-striped vs primary-key order: {result.speedup_vs_pk_order:.1f}x end to end, "
                     f"{result.write_speedup_vs_pk_order:.1f}x on the writes")
    lines += ["", "(c) provider quota"]
    for q in result.quota:
        how = f"--rpm {q.rpm_flag}" if q.rpm_flag else "adaptive (no --rpm)"
        lines.append(f"  {q.latency_ms} ms latency, quota {q.quota_texts_per_minute} texts/min, {how}: "
                     f"{q.reading()}, {q.rate_limited_429} x 429, {q.rows} rows in {q.seconds:.1f}s")
    m = result.memory
    if m:
        lines += ["", "(d) peak memory of `reembed run`",
                  f"  {m['rows_small']} rows: {m['peak_rss_mb_small']:.0f} MB; {m['rows_large']} rows: "
                  f"{m['peak_rss_mb_large']:.0f} MB (growth {m['growth_mb']:+.0f} MB)"]
    if result.swaps:
        lines += ["", "(e) lock held by the swap (ACCESS EXCLUSIVE, as reembed.swaps records it)"]
    for w in result.swaps:
        cut, back = w.medians
        lines.append(f"  {w.strategy:<7} {w.rows} rows, {w.rounds} rounds: cutover median {cut:.1f} ms "
                     f"(max {max(w.cutover_lock_ms):.1f}), rollback median {back:.1f} ms "
                     f"(max {max(w.rollback_lock_ms):.1f}); {w.attempts} tries for {2 * w.rounds} swaps")
    return "\n".join(lines)
