"""`reembed inspect`, `reembed plan`, `reembed plans`."""

from __future__ import annotations

from pathlib import Path

import click

from toolkit import render
from toolkit.cli.common import cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.cli.options import POSITIVE_INT, complete_model, provider_options, quota_options
from toolkit.migrations import current_revision
from toolkit.phases.planning import PlanRequest, inspection, make_plan, planned_sql
from toolkit.plan import DEFAULT_SOURCE, DEFAULT_TARGET
from toolkit.state import get_plan, list_plans
from toolkit.strategies import STRATEGIES


@cli.command()
@click.argument("table")
@dsn_option
@json_option
@handle_errors
def inspect(table: str, dsn: str | None, as_json: bool) -> None:
    """Describe TABLE (`schema.table` or `table`): key, vector and text columns, vector indexes,
    sizes, what binds to the vector columns, the application's triggers, the publications that
    carry the table, and, when pg_stat_statements is installed, the application's statements on it
    that use SELECT *, RETURNING * or INSERT without a column list. Read-only."""
    from toolkit.strategies.choice import positional_statements

    with connected(dsn, schema=False, changes=False) as (_, conn):
        found = inspection(conn, table)
        statements, checked = positional_statements(conn, found.info)
    if as_json:
        echo_json({**found.to_json(), "positional_statements": statements, "statements_checked": checked})
    else:
        click.echo(render.inspect_report(found.info, found.surroundings) + "\n"
                   + render.statements_report(statements, checked))


def _split_columns(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()] if value else []


@cli.command()
@click.argument("table")
@click.option("--column", required=True, help="The vector column the application queries.")
@click.option("--text", "text_columns", required=True, callback=_split_columns,
              help="Text column(s) to embed, comma-separated; several are joined by a blank line.")
@click.option("--title", "title_column", help="Column sent as the document title (Gemini RETRIEVAL_DOCUMENT).")
@click.option("--to", "target", default=DEFAULT_TARGET, show_default=True, shell_complete=complete_model,
              help="Target PROVIDER:MODEL (completes from the known models; any Ollama model works).")
@click.option("--from", "source", default=DEFAULT_SOURCE, show_default=True, shell_complete=complete_model,
              help="The model that filled the column, PROVIDER:MODEL.")
@click.option("--dimensions", type=click.IntRange(1, 16_000), help="Target dimensions. Default: the column's.")
@click.option("--name", help="Plan name. Default: TABLE-COLUMN-MODEL.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Plan file. Default: reembed-NAME.toml.")
@quota_options
@click.option("--rpd", type=POSITIVE_INT, envvar="REEMBED_RPD", show_envvar=True,
              help="Provider quota in texts per day, for the estimate (default: the free tier's 1000 when no "
                   "--rpm/--tpm is given, else none).")
@click.option("--index", "index", metavar="METHOD:DISTANCE",
              help="Index to build when the column has none, e.g. hnsw:cosine (or l2, ip).")
@click.option("--strategy", type=click.Choice(STRATEGIES),
              help="Where the new vectors live until cutover: `copy` (a copy of the table, swapped in by name; "
                   "the application sees no change) or `column` (a shadow column in the table, renamed in). "
                   "Default: the recommended one (see the plan's report).")
@click.option("--sql", "show_sql", is_flag=True, help="Also print the exact SQL each phase will run.")
@click.option("--offline", is_flag=True, help="Skip the preflight call to the target model.")
@provider_options
@dsn_option
@json_option
@handle_errors
def plan(table: str, column: str, text_columns: list[str], title_column: str | None, target: str, source: str,
         dimensions: int | None, name: str | None, output: Path | None, rpm: int | None, tpm: int | None,
         rpd: int | None, index: str | None, strategy: str | None, show_sql: bool, offline: bool, dsn: str | None,
         as_json: bool) -> None:
    """Plan re-embedding TABLE's vector COLUMN with a new model. Validates everything against the
    live table, writes a reviewable TOML plan file and registers the plan. Changes nothing in TABLE."""
    request = PlanRequest(table=table, column=column, text_columns=text_columns, title_column=title_column,
                          target=target, source=source, dimensions=dimensions, name=name, output=output,
                          rpm=rpm, tpm=tpm, rpd=rpd, offline=offline, index=index, strategy=strategy)
    with connected(dsn) as (db, conn):
        result = make_plan(db, conn, request)
        statements = planned_sql(conn, result.plan, result.plan_id) if show_sql else {}
        phase = get_plan(conn, result.plan.name).phase
    if as_json:
        echo_json({"spec": result.plan.to_spec(), "file": str(result.path), "preflight": result.preflight,
                   "triggers": result.triggers, "subscribers": result.subscribers.to_json(),
                   **({"sql": statements} if show_sql else {})}, plan=result.plan.name, phase=phase)
        return
    click.echo(render.plan_report(result.plan, str(result.path), result.preflight, result.triggers,
                                  result.subscribers.lines()))
    for phase, lines in statements.items():
        click.echo(f"\n-- {phase}")
        for line in lines:
            click.echo(line.rstrip().rstrip(";") + ";")


@cli.command("plans")
@dsn_option
@json_option
@handle_errors
def plans(dsn: str | None, as_json: bool) -> None:
    """List the plans registered in this database with their phase. Read-only: a database without
    schema reembed simply has no plans."""
    with connected(dsn, schema=False, changes=False) as (_, conn):
        records = list_plans(conn) if current_revision(conn) is not None else []
    rows = [{"name": r.name, "table": f"{r.table_schema}.{r.table_name}", "column": r.column_name,
             "target": r.target_model, "phase": r.phase, "updated_at": r.updated_at.isoformat()} for r in records]
    if as_json:
        echo_json({"plans": rows})
    else:
        click.echo(render.table([list(r.values()) for r in rows], list(rows[0].keys())) if rows else "no plans")
