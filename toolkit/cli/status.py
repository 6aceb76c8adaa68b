"""`reembed status` (once, or refreshed with --watch) and `reembed history`. Read-only: they never
create schema reembed."""

from __future__ import annotations

import sys
import time

import click

from toolkit import render
from toolkit.cli.common import cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.errors import BadInput
from toolkit.migrations import current_revision
from toolkit.phases.status import PlanStatus, history, plan_status


def _read(dsn: str | None, plan_ref: str | None) -> list[PlanStatus]:
    with connected(dsn, schema=False, changes=False) as (_, conn):
        if current_revision(conn) is None:
            if plan_ref:
                raise BadInput(f"no plan named {plan_ref!r}: this database has no schema reembed (see `reembed init`)")
            return []
        return plan_status(conn, plan_ref)


@cli.command()
@click.argument("plan_ref", metavar="[PLAN]", required=False)
@click.option("--watch", type=click.FloatRange(min=0.1), is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Refresh every SECONDS (2 when given alone) until Ctrl-C.")
@dsn_option
@json_option
@handle_errors
def status(plan_ref: str | None, watch: float | None, dsn: str | None, as_json: bool) -> None:
    """Progress of PLAN (or of every live plan): phase, rows embedded of all (percent), the rate of
    the last minute and the time left at that rate, leases held, the last event, and where the
    vectors are now (after cutover the new ones carry the column's own name)."""
    terminal = sys.stdout.isatty()
    try:
        while True:
            reports = _read(dsn, plan_ref)
            if as_json:
                _json(reports, plan_ref)
            else:
                if watch is not None and terminal:
                    click.echo("\x1b[H\x1b[2J", nl=False)  # redraw in place on a terminal only
                click.echo(_text(reports, plan_ref))
            if watch is None:
                return
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        return  # --watch ends with Ctrl-C: that is its normal end


def _json(reports: list[PlanStatus], plan_ref: str | None) -> None:
    if plan_ref:
        echo_json(reports[0].to_json(), plan=reports[0].name, phase=reports[0].phase)
    else:
        echo_json({"plans": [r.to_json() for r in reports]})


def _text(reports: list[PlanStatus], plan_ref: str | None) -> str:
    if not reports:
        return "no live plans"
    if plan_ref:
        text = render.status_report(reports[0])
    else:
        rows = [[r.name, r.phase, render.percent(r.percent), f"{r.rows_per_second:g}/s",
                 render.duration(r.eta_seconds), r.reads, (r.last_event or {}).get("message", "")] for r in reports]
        text = render.table(rows, ["plan", "phase", "done", "rate", "eta", "application reads", "last event"])
        text += "".join(f"\n{r.name}: {hint}" for r in reports for hint in r.hints)
    jobs = [[r.name, j["job_name"] or j["display_name"], j["state"], j["provider_state"] or "", j["rows"],
             j["rows_written"], j["rows_failed"], j["rows_changed"]] for r in reports for j in r.batch_jobs]
    if jobs:
        text += "\n\nbatch jobs (--batch-api):\n" + render.table(
            jobs, ["plan", "job", "state", "provider state", "rows", "written", "failed", "changed meanwhile"])
    return text


@cli.command("history")
@click.argument("plan_ref", metavar="PLAN")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="The newest N events.")
@dsn_option
@json_option
@handle_errors
def history_command(plan_ref: str, limit: int, dsn: str | None, as_json: bool) -> None:
    """PLAN's events, oldest first, with their times (ISO 8601): what every command did to it."""
    with connected(dsn, schema=False, changes=False) as (_, conn):
        if current_revision(conn) is None:
            raise BadInput(f"no plan named {plan_ref!r}: this database has no schema reembed (see `reembed init`)")
        record, items = history(conn, plan_ref, limit)
    if as_json:
        echo_json({"events": items}, plan=record.name, phase=record.phase)
        return
    click.echo(render.table([[e["at"], e["phase"] or "", e["kind"], e["message"]] for e in items],
                            ["at", "phase", "kind", "what happened"]) if items else f"plan {record.name}: no events")
