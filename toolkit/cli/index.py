"""`reembed index`."""

from __future__ import annotations

import click

from toolkit import render
from toolkit.cli.common import cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.phases.index import DEFAULT_MEMORY_CAP, build, parse_size
from toolkit.plan import load
from toolkit.state import get_plan


@cli.command()
@click.argument("plan_ref", metavar="PLAN")
@click.option("--maintenance-work-mem", "memory_cap", default=DEFAULT_MEMORY_CAP, show_default=True, metavar="SIZE",
              help="Upper bound of the build's memory (e.g. 512MB, 4GB). The build asks for rows x (4*dims+8) "
                   "x 1.3 bytes, the size of the graph, and never less than the server's setting.")
@click.option("--workers", type=click.IntRange(0, 64), metavar="N",
              help="Parallel maintenance workers. Default: up to 2, within the server's max_parallel_workers.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@dsn_option
@json_option
@handle_errors
def index(plan_ref: str, memory_cap: str, workers: int | None, no_progress: bool, dsn: str | None,
          as_json: bool) -> None:
    """Build on the new vectors the same kind of index as on PLAN's column (method, opclass, m,
    ef_construction or lists, partial predicate), CONCURRENTLY: reads and writes go on.

    \b
    Runs after `reembed run` has filled the column. A valid index is kept; an INVALID
    leftover of an interrupted build is dropped and rebuilt, so running it again is safe.
    No index is built when the original column has none, unless the plan asked for one
    (`reembed plan ... --index hnsw:cosine`). Progress comes from pg_stat_progress_create_index.
    """
    cap = parse_size(memory_cap)
    with connected(dsn) as (db, conn):
        plan, record = load(conn, plan_ref)
        result = build(db, conn, plan, record, max_memory=cap, workers=workers, progress=not no_progress)
        phase = get_plan(conn, plan.name).phase
    if as_json:
        echo_json(result.to_json(), plan=plan.name, phase=phase)
        return
    if result.action == "none_planned":
        click.echo(f"plan {plan.name}: {result.notes[0]}")
        return
    line = f"plan {plan.name}: index {result.index} {result.action}"
    if result.action == "built":
        s = result.settings
        assert s is not None
        line += (f" in {result.seconds:.1f}s ({render.size(result.size_bytes)}; maintenance_work_mem "
                 f"{render.size(s.maintenance_work_mem)} for ~{s.rows} rows, {s.workers} parallel workers)")
    elif result.action == "kept":
        line += f" ({render.size(result.size_bytes)})"
    if result.dropped_invalid:
        line += "; an INVALID leftover of an interrupted build was dropped first"
    if len(result.indexes) > 1:  # the totals above, then each index (the copy strategy builds them all)
        line = line.replace(f"index {result.index} {result.action}", f"{len(result.indexes)} indexes {result.action}")
    click.echo(line)
    if len(result.indexes) > 1:
        for one in result.indexes:
            timing = f" in {one.seconds:.1f}s" if one.action == "built" else ""
            click.echo(f"  index {one.index} {one.action}{timing} ({render.size(one.size_bytes)})")
    for note in result.notes:
        if result.action == "built":
            click.echo(f"  note: {note}")
