"""`reembed bench`: what `reembed run` achieves here, measured in one go against a scratch database
and the local Gemini emulator (real google-genai client, real HTTP, real PostgreSQL).

(a) write speed with a zero-latency provider on a table whose original column has an HNSW
    index, in the ledger's page-striped order, beside two floors measured in the same run:
    the same table written in primary-key order (every update pays an HNSW insert) and a table
    with no index at all; with the HOT share of each (pg_stat_user_tables).
(b) with 200 ms provider latency and a quota of R texts/min (the emulator answers 429 past it),
    the texts/min achieved as a fraction of R, and the 429s served.
(c) peak memory (RSS) of the `reembed run` process at two table sizes: it must not grow with
    the table.
(d) how long `reembed cutover` and `reembed rollback` hold the table's ACCESS EXCLUSIVE lock,
    on the page-striped table of (a) once its new index is built (a few rounds of each).

(e) the two strategies on identical tables (HNSW on the original column): `reembed run`'s rows/s
    end to end, the index phase's time (the copy builds every index of the table), and how long
    each cutover and rollback held the lock, at two table sizes (the copy's must stay flat).

Each `reembed run` is a separate process, started the way a user starts it.
"""

from __future__ import annotations

import json
import os
import random
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
from psycopg import sql

from toolkit.db import Database

BENCH_KEY = "reembed-bench-key"
WORDS = ("postgres vector index graph query latency embedding model search document retrieval cosine distance "
         "table column row page tuple cluster replica backup lock transaction snapshot vacuum analyze planner "
         "network memory disk cache token batch quota request response error retry timeout window worker lease "
         "river mountain forest ocean desert city village garden kitchen library museum theatre market harbor").split()


@dataclass
class WriteFigure:
    label: str
    rows: int
    seconds: float
    rows_per_second: float  # end to end: claim, read, embed (HTTP + JSON), write; start-up excluded
    write_rows_per_second: float  # rows / time inside the write transactions: the database's share
    updates: int
    hot_updates: int
    hot_share: float
    peak_rss_mb: float


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


@dataclass
class StrategyFigure:
    strategy: str
    rows: int
    rows_per_second: float  # `reembed run` end to end
    write_rows_per_second: float
    index_seconds: float
    cutover_lock_ms: float
    rollback_lock_ms: float


@dataclass
class SwapFigure:
    rows: int
    rounds: int
    cutover_lock_ms: list[float]  # one per round, as reembed.swaps records them
    rollback_lock_ms: list[float]
    attempts: int  # tries over all swaps; == 2 * rounds when nothing else held the table

    @property
    def medians(self) -> tuple[float, float]:
        return float(np.median(self.cutover_lock_ms)), float(np.median(self.rollback_lock_ms))


@dataclass
class BenchResult:
    rows: int
    dims: int
    hnsw_m: int
    write: list[WriteFigure] = field(default_factory=list)
    quota: list[QuotaFigure] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    swap: SwapFigure | None = None
    strategies: list[StrategyFigure] = field(default_factory=list)
    speedup_vs_pk_order: float = 0.0
    write_speedup_vs_pk_order: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchOptions:
    rows: int = 5000
    small_rows: int = 1000
    dims: int = 768
    hnsw_m: int = 16
    quota: int = 3000
    quota_rows: int | None = None  # default: one minute of quota
    latency_ms: int = 200
    adaptive: bool = False  # also run (b) without --rpm, finding the quota from 429s
    skip_pk_order: bool = False
    swap_rounds: int = 3
    skip_strategies: bool = False
    strategy_rows: tuple[int, ...] = ()  # table sizes of (e); default: small_rows and rows
    batch_size: int = 100
    concurrency: int = 4


def _passage(i: int) -> str:
    rng = random.Random(i)
    return f"passage {i}: " + " ".join(rng.choice(WORDS) for _ in range(40))


def _scratch_dsn(admin_dsn: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def _load_table(conn: psycopg.Connection, table: str, rows: int, dims: int, hnsw_m: int | None) -> None:
    ident = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, title text, content text NOT NULL, "
                         "embedding vector({}))").format(ident, sql.Literal(dims)))
    rng = np.random.default_rng(0)
    with conn.cursor().copy(sql.SQL("COPY {} (id, title, content, embedding) FROM STDIN (FORMAT BINARY)")
                            .format(ident)) as copy:
        copy.set_types(["int8", "text", "text", "vector"])
        for start in range(0, rows, 1000):  # vectors made in chunks: the bench's memory stays flat too
            chunk = rng.standard_normal((min(1000, rows - start), dims)).astype(np.float32)
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            for j, v in enumerate(chunk):
                i = start + j
                copy.write_row((i, f"title {i % 50}", _passage(i), v))
    if hnsw_m:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {})").format(
            sql.Identifier(f"{table}_embedding_idx"), ident, sql.Literal(hnsw_m)))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))


def _plan(db: Database, conn: psycopg.Connection, table: str, workdir: Path, strategy: str = "column") -> str:
    from toolkit.phases.planning import PlanRequest, make_plan

    result = make_plan(db, conn, PlanRequest(table=table, column="embedding", text_columns=["content"],
                                             title_column="title", name=f"bench-{table}", offline=True,
                                             output=workdir / f"{table}.toml", strategy=strategy))
    return result.plan.name


def _prepare(conn: psycopg.Connection, name: str) -> None:
    from toolkit.phases.prepare import prepare
    from toolkit.plan import load

    plan, record = load(conn, name)
    prepare(conn, plan, record)


def _pk_order(conn: psycopg.Connection, name: str) -> None:
    """Renumber the plan's ledger in primary-key order: the naive order, for the floor."""
    conn.execute(
        """UPDATE reembed.ledger l SET seq = o.n
           FROM (SELECT pk, row_number() OVER (ORDER BY (pk->>'id')::bigint) AS n FROM reembed.ledger
                 WHERE plan_id = (SELECT id FROM reembed.plans WHERE name = %s)) o
           WHERE l.plan_id = (SELECT id FROM reembed.plans WHERE name = %s) AND l.pk = o.pk""", (name, name))


def _hot(conn: psycopg.Connection, table: str) -> tuple[int, int]:
    row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
                       (table,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _reembed(dsn: str, emulator_url: str, *args: str) -> str:
    """`reembed ARGS` as its own process, started the way a user starts it; its standard output."""
    env = dict(os.environ, DATABASE_URL=dsn, GOOGLE_API_KEY=BENCH_KEY, GOOGLE_GEMINI_BASE_URL=emulator_url)
    for var in ("GEMINI_API_KEY", "REEMBED_GEMINI_BASE_URL", "REEMBED_RPM", "REEMBED_TPM", "REEMBED_CONCURRENCY"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "toolkit", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reembed {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _run_process(dsn: str, emulator_url: str, name: str, *extra: str) -> dict[str, Any]:
    """`reembed run NAME --json`; its summary."""
    return json.loads(_reembed(dsn, emulator_url, "run", name, "--json", "--no-progress", *extra))


def _swap_figure(conn: psycopg.Connection, dsn: str, emulator_url: str, name: str, rows: int,
                 rounds: int) -> SwapFigure:
    """Index the plan, then cut over and roll back `rounds` times (--force: the bench does not verify);
    the lock times are the ones reembed.swaps records."""
    _reembed(dsn, emulator_url, "index", name, "--no-progress")
    for _ in range(rounds):
        _reembed(dsn, emulator_url, "cutover", name, "--force", "--json")
        _reembed(dsn, emulator_url, "rollback", name, "--json")
    figures = conn.execute("SELECT s.direction, s.lock_ms, s.attempts FROM reembed.swaps s JOIN reembed.plans p "
                           "ON p.id = s.plan_id WHERE p.name = %s ORDER BY s.id", (name,)).fetchall()
    return SwapFigure(rows=rows, rounds=rounds,
                      cutover_lock_ms=[round(float(ms), 2) for d, ms, _ in figures if d == "cutover"],
                      rollback_lock_ms=[round(float(ms), 2) for d, ms, _ in figures if d == "rollback"],
                      attempts=sum(int(a) for _, _, a in figures))


def _strategy_case(conn: psycopg.Connection, db: Database, dsn: str, emulator_url: str, workdir: Path,
                   strategy: str, table: str, rows: int, options: BenchOptions, run_args: list[str]) -> StrategyFigure:
    """One whole migration of a fresh table with `strategy`: run, index, cutover, rollback (--force:
    the bench measures the swap, not the gates)."""
    _load_table(conn, table, rows, options.dims, options.hnsw_m)
    name = _plan(db, conn, table, workdir, strategy)
    summary = _run_process(dsn, emulator_url, name, *run_args)
    index = json.loads(_reembed(dsn, emulator_url, "index", name, "--json", "--no-progress"))
    cut = json.loads(_reembed(dsn, emulator_url, "cutover", name, "--force", "--json"))
    back = json.loads(_reembed(dsn, emulator_url, "rollback", name, "--json"))
    return StrategyFigure(strategy=strategy, rows=rows, rows_per_second=summary["rows_per_second"],
                          write_rows_per_second=round(summary["rows_written"] / summary["write_seconds"], 1),
                          index_seconds=round(index["seconds"], 1), cutover_lock_ms=round(cut["swap"]["lock_ms"], 2),
                          rollback_lock_ms=round(back["swap"]["lock_ms"], 2))


def bench(db: Database, options: BenchOptions, say: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Run the whole benchmark in a scratch database (dropped at the end)."""
    from toolkit.emulators import start_gemini
    from toolkit.migrations import upgrade

    result = BenchResult(rows=options.rows, dims=options.dims, hnsw_m=options.hnsw_m)
    scratch = f"reembed_bench_{uuid.uuid4().hex[:8]}"
    admin = db.connect()
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    dsn = _scratch_dsn(db.conninfo(), scratch)
    workdir = Path(tempfile.mkdtemp(prefix="reembed-bench-"))
    # Every answer serialised before the clock starts (the write tables share their passages): the
    # stand-in then costs next to no CPU on this shared machine, and the bench measures reembed.
    emulator = start_gemini(answer_cache_bytes=min(2 ** 30, 12_000 * options.rows))
    say(f"serialising the emulator's answers for {options.rows} passages")
    emulator.app.warm("gemini-embedding-001", ((_passage(i), "RETRIEVAL_DOCUMENT", f"title {i % 50}", options.dims)
                                               for i in range(options.rows)))
    run_args = ["--batch-size", str(options.batch_size), "--concurrency", str(options.concurrency)]
    try:
        bench_db = Database(dsn)
        conn = bench_db.connect()
        upgrade(dsn)

        def write_case(label: str, table: str, rows: int, hnsw: int | None, pk_order: bool) -> WriteFigure:
            say(f"(a) {label}: loading {rows} rows" + (f" and building HNSW (m={hnsw})" if hnsw else ""))
            _load_table(conn, table, rows, options.dims, hnsw)
            name = _plan(bench_db, conn, table, workdir)
            _prepare(conn, name)
            if pk_order:
                _pk_order(conn, name)
            before = _hot(conn, table)
            say(f"(a) {label}: reembed run")
            summary = _run_process(dsn, emulator.base_url, name, *run_args)
            rss = summary["peak_rss_mb"]
            time.sleep(1.0)  # the run's backend flushes its table statistics when it exits
            after = _hot(conn, table)
            updates, hot = after[0] - before[0], after[1] - before[1]
            figure = WriteFigure(label=label, rows=rows, seconds=summary["loop_seconds"],
                                 rows_per_second=summary["rows_per_second"],
                                 write_rows_per_second=round(summary["rows_written"] / summary["write_seconds"], 1),
                                 updates=updates, hot_updates=hot,
                                 hot_share=round(hot / updates, 3) if updates else 0.0, peak_rss_mb=rss)
            say(f"    {figure.rows_per_second:.0f} rows/s, {figure.hot_share:.0%} HOT, peak RSS {rss:.0f} MB")
            if table == "bench_striped" and options.swap_rounds:
                say(f"(d) {label}: reembed index, then {options.swap_rounds} x reembed cutover + rollback")
                result.swap = _swap_figure(conn, dsn, emulator.base_url, name, rows, options.swap_rounds)
                cut, back = result.swap.medians
                say(f"    lock held: cutover median {cut:.1f} ms, rollback median {back:.1f} ms")
            return figure

        striped = write_case("HNSW on the original column, page-striped order (reembed run)", "bench_striped",
                             options.rows, options.hnsw_m, False)
        result.write.append(striped)
        if not options.skip_pk_order:
            naive = write_case("HNSW on the original column, primary-key order (naive floor)", "bench_pk_order",
                               options.rows, options.hnsw_m, True)
            result.write.append(naive)
            result.speedup_vs_pk_order = round(striped.rows_per_second / naive.rows_per_second, 2)
            result.write_speedup_vs_pk_order = round(striped.write_rows_per_second / naive.write_rows_per_second, 2)
        result.write.append(write_case("no index on the original column (no-index floor)", "bench_noindex",
                                       options.rows, None, False))
        small = write_case("no index, small table (memory baseline)", "bench_small", options.small_rows, None, False)
        result.memory = {"rows_small": options.small_rows, "peak_rss_mb_small": small.peak_rss_mb,
                         "rows_large": options.rows,
                         "peak_rss_mb_large": max(f.peak_rss_mb for f in result.write),
                         "growth_mb": round(max(f.peak_rss_mb for f in result.write) - small.peak_rss_mb, 1)}

        if not options.skip_strategies:
            for rows in sorted(set(options.strategy_rows or (options.small_rows, options.rows))):
                for strategy in ("column", "copy"):
                    say(f"(e) {strategy} strategy, {rows} rows: run, index, cutover, rollback")
                    figure = _strategy_case(conn, bench_db, dsn, emulator.base_url, workdir, strategy,
                                            f"bench_{strategy}_{rows}", rows, options, run_args)
                    say(f"    {figure.rows_per_second:.0f} rows/s end to end, index {figure.index_seconds:.1f}s, "
                        f"cutover lock {figure.cutover_lock_ms:.1f} ms, rollback lock {figure.rollback_lock_ms:.1f} ms")
                    result.strategies.append(figure)

        quota_rows = options.quota_rows or options.quota
        for rpm in ([options.quota, None] if options.adaptive else [options.quota]):
            table = f"bench_quota_{'rpm' if rpm else 'adaptive'}"
            say(f"(b) {options.latency_ms} ms latency, quota {options.quota} texts/min, "
                + (f"--rpm {rpm}" if rpm else "no --rpm (adaptive)") + f": {quota_rows} rows")
            _load_table(conn, table, quota_rows, options.dims, None)
            name = _plan(bench_db, conn, table, workdir)
            emulator.configure(latency=options.latency_ms / 1000, quota_texts_per_minute=options.quota)
            emulator.reset_stats()
            summary = _run_process(dsn, emulator.base_url, name, *run_args, *(["--rpm", str(rpm)] if rpm else []))
            rss = summary["peak_rss_mb"]
            stats = emulator.stats
            emulator.configure(latency=0.0, quota_texts_per_minute=None)
            per_minute = summary["rows_per_second"] * 60
            figure = QuotaFigure(quota_texts_per_minute=options.quota, latency_ms=options.latency_ms,
                                 rows=quota_rows, seconds=summary["loop_seconds"], texts_per_minute=round(per_minute, 1),
                                 fraction_of_quota=round(per_minute / options.quota, 3),
                                 rate_limited_429=stats.rate_limited, rpm_flag=rpm, peak_rss_mb=rss)
            say(f"    {figure.texts_per_minute:.0f} texts/min = {figure.fraction_of_quota:.0%} of the quota, "
                f"{figure.rate_limited_429} 429s")
            result.quota.append(figure)
        conn.close()
    finally:
        emulator.stop()
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
        admin.close()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return result


def render(result: BenchResult) -> str:
    lines = [f"reembed bench: {result.rows} rows x {result.dims} dims, HNSW m={result.hnsw_m}, "
             "zero-latency Gemini emulator (real google-genai client over HTTP);",
             "each run is a separate `reembed run` process; rows/s over its claim-embed-write loop", "",
             "(a) write speed"]
    for f in result.write:
        lines.append(f"  {f.label:<66} {f.rows:>7} rows {f.rows_per_second:>7.0f} rows/s end to end, "
                     f"writes {f.write_rows_per_second:>6.0f} rows/s, HOT {f.hot_share:>4.0%}, "
                     f"peak RSS {f.peak_rss_mb:.0f} MB")
    if result.speedup_vs_pk_order:
        lines.append(f"  page-striped vs primary-key order: {result.speedup_vs_pk_order:.1f}x end to end, "
                     f"{result.write_speedup_vs_pk_order:.1f}x on the writes")
    lines += ["", "(b) provider quota"]
    for q in result.quota:
        how = f"--rpm {q.rpm_flag}" if q.rpm_flag else "adaptive (no --rpm)"
        lines.append(f"  {q.latency_ms} ms latency, quota {q.quota_texts_per_minute} texts/min, {how}: "
                     f"{q.texts_per_minute:.0f} texts/min = {q.fraction_of_quota:.1%} of quota, "
                     f"{q.rate_limited_429} x 429, {q.rows} rows in {q.seconds:.1f}s")
    m = result.memory
    if m:
        lines += ["", "(c) peak memory of `reembed run`",
                  f"  {m['rows_small']} rows: {m['peak_rss_mb_small']:.0f} MB; {m['rows_large']} rows: "
                  f"{m['peak_rss_mb_large']:.0f} MB (growth {m['growth_mb']:+.0f} MB)"]
    w = result.swap
    if w:
        cut, back = w.medians
        lines += ["", "(d) lock held by the swap (ACCESS EXCLUSIVE, as reembed.swaps records it)",
                  f"  {w.rows} rows, {w.rounds} rounds: cutover median {cut:.1f} ms (max {max(w.cutover_lock_ms):.1f}), "
                  f"rollback median {back:.1f} ms (max {max(w.rollback_lock_ms):.1f}); {w.attempts} tries for "
                  f"{2 * w.rounds} swaps"]
    if result.strategies:
        lines += ["", "(e) the strategies on identical tables (HNSW on the original column)"]
        for f in result.strategies:
            lines.append(f"  {f.strategy:<6} {f.rows:>7} rows {f.rows_per_second:>7.0f} rows/s end to end, writes "
                         f"{f.write_rows_per_second:>6.0f} rows/s, index {f.index_seconds:>5.1f}s, cutover lock "
                         f"{f.cutover_lock_ms:>5.1f} ms, rollback lock {f.rollback_lock_ms:>5.1f} ms")
        by = {(f.strategy, f.rows): f for f in result.strategies}
        for rows in sorted({f.rows for f in result.strategies}):
            if ("column", rows) in by and ("copy", rows) in by:
                ratio = by[("copy", rows)].rows_per_second / max(by[("column", rows)].rows_per_second, 1e-9)
                lines.append(f"  {rows} rows: copy / column end to end = {ratio:.2f}")
    return "\n".join(lines)
