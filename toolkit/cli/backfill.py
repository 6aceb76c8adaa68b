"""`reembed run`, `reembed bench`."""

from __future__ import annotations

from pathlib import Path

import click

from toolkit import render
from toolkit.cli.common import cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.cli.options import POSITIVE_INT, concurrency_option, provider_options, quota_options
from toolkit.errors import BadInput
from toolkit.phases.backfill import DEFAULT_BATCH_SIZE, DEFAULT_LEASE_SECONDS, RunOptions, RunSummary, rollback_fill
from toolkit.phases.backfill import run as run_backfill
from toolkit.providers.models import BATCH_JOB_ROWS
from toolkit.strategies import STRATEGIES


@cli.command()
@click.argument("plan_ref", metavar="PLAN")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Rows per claim, per provider request and per write transaction (Gemini takes at most 100).")
@concurrency_option
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Local worker processes, each with its own connection; quotas are split between them.")
@quota_options
@click.option("--rpd", type=POSITIVE_INT, envvar="REEMBED_RPD", show_envvar=True,
              help="Provider quota in texts per day, counted from midnight Pacific time (when Gemini's daily "
                   "quotas reset): the run stops there, saying when it resets.")
@click.option("--max-rows-per-second", type=click.FloatRange(min=0, min_open=True),
              help="Throttle writes to the table (all workers together).")
@click.option("--max-replica-lag", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Pause writing while any standby in pg_stat_replication replays further behind than this (the "
                   "progress display says which); needs pg_monitor or superuser.")
@click.option("--lease-seconds", type=click.FloatRange(min=1), default=DEFAULT_LEASE_SECONDS, show_default=True,
              help="How long a claimed batch stays reserved; a crashed holder's rows are taken over after it.")
@click.option("--rollback-fill", "fill_old", is_flag=True,
              help="Instead: give rows that have no vector of the SOURCE model one (into the old-model column), "
                   "so a rollback leaves no row without a vector.")
@click.option("--batch-api", is_flag=True,
              help="Embed through Gemini's Batch API instead: half the list price, no per-minute quota, each job "
                   "done within 24 h (usually much sooner). Jobs are recorded before they are sent, so a resumed "
                   "run never submits or pays for one twice.")
@click.option("--batch-job-rows", type=POSITIVE_INT, default=BATCH_JOB_ROWS, show_default=True,
              help="Rows per batch job (--batch-api).")
@click.option("--batch-poll-seconds", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds between polls of the open batch jobs (--batch-api).")
@click.option("--batch-inline-limit-bytes", type=POSITIVE_INT, hidden=True,
              help="Above this request size a job's requests go as an uploaded file (default: the API's limit).")
@click.option("--follow", is_flag=True,
              help="Keep embedding the rows the application inserts or changes as they come, until the plan is "
                   "cleaned up, abandoned or rolled back (or Ctrl-C / SIGTERM, which end it cleanly).")
@click.option("--embed-process/--embed-here", "embed_process", default=True, show_default=True,
              envvar="REEMBED_EMBED_PROCESS", show_envvar=True,
              help="Run the provider client in a process of its own (started at the first batch), so parsing "
                   "the provider's answers and writing to the database do not take turns on one Python "
                   "interpreter (measured up to 1.5x the rows/s when CPU is scarce, the same otherwise; about "
                   "55 MB more memory). Each of --workers is one process.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@provider_options
@dsn_option
@json_option
@handle_errors
def run(plan_ref: str, batch_size: int, concurrency: int, workers: int, rpm: int | None, tpm: int | None,
        rpd: int | None, max_rows_per_second: float | None, max_replica_lag: float | None, lease_seconds: float,
        fill_old: bool, batch_api: bool,
        batch_job_rows: int, batch_poll_seconds: float, batch_inline_limit_bytes: int | None, follow: bool,
        embed_process: bool, no_progress: bool,
        dsn: str | None, as_json: bool) -> None:
    """Fill the new-model column of PLAN (its name or plan file), preparing it first when needed:
    adds the shadow column, installs change tracking, then embeds every row in leased, checkpointed
    batches until no row is pending (rows changed meanwhile are embedded again, in a few catch-up
    sweeps; under steady application writes a small tail may stay pending for the next run).

    \b
    Safe to interrupt (even kill -9) and run again: it continues where it stopped. Several
    `reembed run` on several machines share the work. Exit 0 when nothing is left pending.
    After cutover, until cleanup, reembed owns the column: every row the application inserts
    or whose text changes is embedded again, whatever vector it wrote. Run this (or keep
    `--follow` running) until every application instance writes with the new model.
    Every write checks, in its own transaction, where the plan's vectors are now: a run
    racing a cutover, rollback, cleanup or abandon follows the swap or stops, never
    writing by the old names.
    """
    if follow and fill_old:
        raise BadInput("--follow and --rollback-fill do not go together: the fill walks the table once")
    if follow and batch_api:
        raise BadInput("--follow and --batch-api do not go together: batch jobs take minutes to hours")
    if batch_api and fill_old:
        raise BadInput("--batch-api and --rollback-fill do not go together")
    options = RunOptions(batch_size=batch_size, concurrency=concurrency, workers=workers, rpm=rpm, tpm=tpm, rpd=rpd,
                         max_rows_per_second=max_rows_per_second, max_replica_lag=max_replica_lag,
                         lease_seconds=lease_seconds, progress=not no_progress, follow=follow,
                         embed_process=embed_process)
    with connected(dsn) as (db, _conn):  # applies reembed's schema when missing; the run opens its own connections
        if batch_api:
            from toolkit.phases.batch_api import BatchOptions, run_batch

            summary = run_batch(db, plan_ref, options, BatchOptions(job_rows=batch_job_rows,
                                                                    poll_seconds=batch_poll_seconds,
                                                                    inline_limit_bytes=batch_inline_limit_bytes))
        else:
            summary = rollback_fill(db, plan_ref, options) if fill_old else run_backfill(db, plan_ref, options)
    if as_json:
        echo_json(summary.to_json(), plan=summary.name, phase=summary.phase)
    else:
        click.echo(_summary_text(summary))


def _summary_text(s: RunSummary) -> str:
    c, p = s.counters, s.progress
    if s.rollback_fill:
        return (f"{s.name}: {c.rows_written} rows given source-model vectors in {s.column} in {s.seconds:.1f}s "
                f"({s.rows_per_second:.0f} rows/s); {c.rows_skipped} skipped (empty), {c.rows_rejected} changed meanwhile")
    lines = [
        f"plan {s.name}: phase {s.phase}, column {s.column}",
        f"  this run: {c.rows_written} rows embedded, {c.rows_skipped} skipped (empty text), "
        f"{c.rows_rejected} changed while embedding (embedded again), {c.provider_retries} provider retries, "
        f"{s.seconds:.1f}s, {s.rows_per_second:.0f} rows/s" + (f", {s.workers} workers" if s.workers > 1 else ""),
        f"  table: {p.rows_embedded} of {p.rows_total} rows embedded, {p.rows_skipped} skipped, "
        f"{p.rows_pending} pending",
    ]
    if c.replica_pauses:
        lines.append(f"  writing paused {c.replica_pauses} times ({c.replica_paused_seconds:.0f}s) for standbys behind "
                     "--max-replica-lag")
    if s.followed_until:
        why = "a signal" if s.followed_until == "signal" else f"the plan being {s.followed_until.replace('_', ' ')}"
        lines.append(f"  followed the application's changes until {why}")
    if p.rows_pending:
        lines.append(f"  {p.rows_pending} rows still pending (changed by the application during the run, or held "
                     "by other processes); run again, or let cutover (or cleanup) catch them up")
    return "\n".join(lines)


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of row counts") from None
    if not sizes or min(sizes) < 100:
        raise click.BadParameter("every size must be at least 100 rows")
    return sizes


@cli.command()
@click.option("--rows", type=click.IntRange(min=100), default=5000, show_default=True,
              help="Rows of each write-speed table (use 20000 or 100000 for the README figures).")
@click.option("--small-rows", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Rows of the small table whose peak memory is the baseline for (c).")
@click.option("--hnsw-m", type=click.IntRange(2, 100), default=16, show_default=True,
              help="m of the HNSW index on the original column.")
@click.option("--quota", type=click.IntRange(min=10), default=3000, show_default=True,
              help="Emulator quota in texts per minute for (b); 429 beyond it.")
@click.option("--quota-rows", type=POSITIVE_INT, help="Rows embedded under the quota. Default: one minute's worth.")
@click.option("--latency-ms", type=click.IntRange(min=0), default=200, show_default=True,
              help="Emulator latency for (c).")
@click.option("--adaptive", is_flag=True, help="Also run (c) without --rpm: the quota found from 429s alone.")
@click.option("--skip-pk-order", is_flag=True, help="Skip the slow primary-key-order floor.")
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(STRATEGIES),
              help="Strategies to measure (repeat the option; default: every one).")
@click.option("--lifecycle", "sizes", metavar="ROWS,ROWS,...", callback=_sizes,
              help="Instead: the whole migration (ledger seed, run, index, verify, cutover) at each size, e.g. "
                   "20000,100000,1000000: rows/s, the server's CPU per row, peak RSS, index and verify time, lock.")
@click.option("--keep-templates", is_flag=True,
              help="--lifecycle: keep each size's loaded table (a template database) for the next bench.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="--lifecycle: write the figures so far to this JSON file after every phase.")
@dsn_option
@json_option
@handle_errors
def bench(rows: int, small_rows: int, hnsw_m: int, quota: int, quota_rows: int | None, latency_ms: int,
          adaptive: bool, skip_pk_order: bool, strategies: tuple[str, ...], sizes: tuple[int, ...] | None,
          keep_templates: bool, out: Path | None, dsn: str | None, as_json: bool) -> None:
    """Measure `reembed run` here, in a scratch database (dropped afterwards) against the local Gemini
    emulator, for each strategy: end-to-end rows/s beside its two floors (the same database writes
    alone, the same provider calls alone) and their ratio; for the column strategy, page-striped vs
    primary-key order vs no index with the HOT share; texts/min achieved under a quota, and 429s;
    peak memory of the run process at two table sizes; the lock held by cutover and rollback.
    With --lifecycle, whole migrations at several sizes instead."""

    chosen = strategies or STRATEGIES
    if sizes is not None:
        from toolkit.bench.lifecycle import LifecycleOptions, lifecycle
        from toolkit.bench.lifecycle import render as render_lifecycle

        options = LifecycleOptions(sizes=sizes, strategies=tuple(chosen), hnsw_m=hnsw_m,
                                   keep_templates=keep_templates, out=out)
        with connected(dsn) as (db, _conn):
            figures = lifecycle(db, options, say=lambda line: click.echo(line, err=True))
        echo_json(figures.to_json()) if as_json else click.echo(render_lifecycle(figures))
        return
    from toolkit.bench import BenchOptions, render
    from toolkit.bench import bench as run_bench
    options = BenchOptions(rows=rows, small_rows=small_rows, hnsw_m=hnsw_m, quota=quota, quota_rows=quota_rows,
                           latency_ms=latency_ms, adaptive=adaptive, skip_pk_order=skip_pk_order,
                           strategies=tuple(chosen))
    with connected(dsn) as (db, _conn):
        result = run_bench(db, options, say=lambda line: click.echo(line, err=True))
    echo_json(result.to_json()) if as_json else click.echo(render(result))
