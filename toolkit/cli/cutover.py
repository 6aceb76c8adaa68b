"""`reembed cutover`, `reembed rollback`, `reembed cleanup`, `reembed abandon`."""

from __future__ import annotations

from typing import Any

import click

from toolkit import render
from toolkit.cli.common import (cli, confirm_irreversible, connected, dsn_option, echo_json, handle_errors,
                                json_option, yes_option)
from toolkit.cli.options import provider_options
from toolkit.phases.cleanup import DropPreview
from toolkit.phases.cleanup import abandon as abandon_plan
from toolkit.phases.cleanup import cleanup as cleanup_plan
from toolkit.phases.cleanup import preview as preview_drop
from toolkit.phases.cutover import DEFAULT_CATCH_UP_ROWS, CutoverOptions
from toolkit.phases.cutover import cutover as cutover_plan
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.phases.rollback import rollback as rollback_plan
from toolkit.plan import load
from toolkit.state import get_plan


def _lock_options(func: Any) -> Any:
    func = click.option("--retries", type=click.IntRange(0, 100), default=DEFAULT_RETRIES, show_default=True,
                        metavar="N", help="Further tries after a lock timeout, each after a jittered, growing pause.")(func)
    func = click.option("--lock-timeout", "lock_timeout", type=click.IntRange(1, 60_000),
                        default=DEFAULT_LOCK_TIMEOUT_MS, show_default=True, metavar="MS",
                        help="How long each try waits for the table's lock. Readers arriving meanwhile wait "
                             "behind it at most this long.")(func)
    return func


def _retry_echo(attempt: int, waited_ms: float, pause_s: float) -> None:
    click.echo(f"  lock not granted within {waited_ms:.0f} ms (try {attempt}); next try in {pause_s:.2f} s", err=True)


def _recreated(recreated: dict[str, list[str]]) -> list[str]:
    return [f"  re-created {kind.replace('_', ' ')}: {', '.join(names)}" for kind, names in recreated.items()]


@cli.command()
@click.argument("plan_ref", metavar="PLAN")
@_lock_options
@click.option("--force", is_flag=True, help="Cut over without a passing `reembed verify` (skips that gate only).")
@click.option("--refresh-matviews", is_flag=True,
              help="Re-create and fill materialized views on the column inside the swap (the lock is then held "
                   "as long as their queries take). Without it, such views make cutover refuse.")
@click.option("--catch-up-rows", type=click.IntRange(0, 1_000_000), default=DEFAULT_CATCH_UP_ROWS, show_default=True,
              metavar="N", help="Embed up to N rows the application changed since the last run (before the lock, "
                                "with the target provider); more is refused as an incomplete backfill. 0: never.")
@provider_options
@dsn_option
@json_option
@handle_errors
def cutover(plan_ref: str, lock_timeout: int, retries: int, force: bool, refresh_matviews: bool, catch_up_rows: int,
            dsn: str | None, as_json: bool) -> None:
    """Swap PLAN's new vectors in under the column's own name, in one short transaction, so the
    application's unchanged SQL (`ORDER BY embedding <=> $1`) reads them through the new index.

    \b
    Refuses (exit 1) unless the backfill is complete, the index is valid and the last verify
    passed. Views, SQL-body functions, policies, triggers, CHECK constraints, statistics,
    publication column lists, column grants, the comment and the statistics target follow
    the column. NOT NULL carries over without a table scan. The old vectors stay as
    <column>__old_<model> until `reembed cleanup`; `reembed rollback` swaps them back.
    Prints how long the table's lock was held.
    """
    options = CutoverOptions(lock_timeout_ms=lock_timeout, retries=retries, force=force,
                             refresh_matviews=refresh_matviews, catch_up_rows=catch_up_rows)
    with connected(dsn) as (db, conn):
        plan, record = load(conn, plan_ref)
        result = cutover_plan(conn, plan, record, options, on_retry=None if as_json else _retry_echo, db=db)
        phase = get_plan(conn, plan.name).phase
    if as_json:
        echo_json({**result.to_json(), "query_model": plan.target if phase == "cut_over" else plan.source},
                  plan=plan.name, phase=phase)
        return
    if result.swap is None:
        click.echo(f"plan {plan.name}: " + "; ".join(result.notes))
        return
    s = result.swap
    click.echo(f"plan {plan.name}: cut over. {plan.column} now holds {plan.target} vectors; the {plan.source} "
               f"vectors are in {plan.old_column}.")
    click.echo(f"  lock held {s.lock_ms:.1f} ms (try {s.attempts} of {retries + 1})")
    if result.check:
        click.echo(f"  verify: {result.check.verify}")
    for line in _recreated(s.recreated):
        click.echo(line)
    for note in result.notes:
        click.echo(f"  {note}")
    click.echo(f"  queries must now be embedded with {plan.target} (task {plan.query_task}); "
               f"undo with `reembed rollback {plan.name}`, finish with `reembed cleanup {plan.name}`")


@cli.command()
@click.argument("plan_ref", metavar="PLAN")
@_lock_options
@click.option("--refresh-matviews", is_flag=True, help="As for cutover.")
@dsn_option
@json_option
@handle_errors
def rollback(plan_ref: str, lock_timeout: int, retries: int, refresh_matviews: bool, dsn: str | None,
             as_json: bool) -> None:
    """Swap PLAN's old vectors back under the column's name: the exact reverse of cutover, in one
    short transaction. Possible until `reembed cleanup`.

    \b
    Lists rows written after cutover that have no old-model vector; `reembed run PLAN
    --rollback-fill` embeds them with the source model. Run again after that fill to restore
    NOT NULL when the column had it.
    """
    with connected(dsn) as (_, conn):
        plan, record = load(conn, plan_ref)
        result = rollback_plan(conn, plan, record, lock_timeout_ms=lock_timeout, retries=retries,
                               refresh_matviews=refresh_matviews, on_retry=None if as_json else _retry_echo)
        phase = get_plan(conn, plan.name).phase
    if as_json:
        echo_json({**result.to_json(), "query_model": plan.source}, plan=plan.name, phase=phase)
        return
    if result.swap is not None:
        click.echo(f"plan {plan.name}: rolled back. {plan.column} holds {plan.source} vectors again; the "
                   f"{plan.target} vectors are back in {plan.shadow_column}.")
        click.echo(f"  lock held {result.swap.lock_ms:.1f} ms (try {result.swap.attempts} of {retries + 1})")
        for line in _recreated(result.swap.recreated):
            click.echo(line)
        click.echo(f"  queries must now be embedded with {plan.source} again: switch the application's query "
                   f"model back; a new cutover needs a new passing `reembed verify {plan.name}`")
    else:
        click.echo(f"plan {plan.name}: rolled back already")
    for note in result.notes:
        if note != "already rolled back":
            click.echo(f"  {note}")
    if result.missing_keys:
        more = result.missing_total - len(result.missing_keys)
        click.echo("  rows without an old-model vector of their text: " + ", ".join(result.missing_keys)
                   + (f" and {more} more" if more > 0 else ""))


def _drop_command(action: Any, kind: str, plan_ref: str, lock_timeout: int, retries: int, catch_up_rows: int,
                  yes: bool, dsn: str | None, as_json: bool) -> None:
    """cleanup and abandon: show what will be dropped and ask, then drop (catching up first), and one report."""
    with connected(dsn) as (db, conn):
        plan, record = load(conn, plan_ref)
        preview = preview_drop(conn, plan, record, "cleanup" if action is cleanup_plan else "abandon")
        if preview.needs_confirmation:
            confirm_irreversible(f"{preview.action} plan {plan.name}", _question(preview), yes=yes)
        result = action(conn, plan, record, lock_timeout_ms=lock_timeout, retries=retries, db=db,
                        catch_up_rows=catch_up_rows)
        phase = get_plan(conn, plan.name).phase
    if as_json:
        echo_json(result.to_json(), plan=plan.name, phase=phase)
        return
    if result.already_done:
        click.echo(f"plan {plan.name}: {kind} already; nothing to drop")
        return
    if result.dropped_anything:
        dropped = ([f"{result.what} {result.column}"] if result.column_existed else []) \
            + ([f"index {', '.join(result.indexes)}"] if result.indexes else [])
        click.echo(f"plan {plan.name}: {kind}. Dropped {', '.join(dropped)} and the change tracking.")
    else:
        click.echo(f"plan {plan.name}: {kind}.")
    for note in result.notes:
        click.echo(f"  {note}")
    if action is abandon_plan:
        click.echo(f"  its ledger rows are removed; the name {plan.name} is free for a new plan")


def _question(preview: DropPreview) -> list[str]:
    lines = [f"{preview.action} of plan {preview.plan} drops, without CASCADE:"]
    lines += [f"  - {item}" for item in preview.drops]
    if preview.ends_rollback:
        lines.append("This is final: `reembed rollback` is no longer possible afterwards.")
    return lines


@cli.command()
@click.argument("plan_ref", metavar="PLAN")
@_lock_options
@click.option("--catch-up-rows", type=click.IntRange(0, 1_000_000), default=DEFAULT_CATCH_UP_ROWS, show_default=True,
              metavar="N", help="Embed up to N rows still pending (with the target provider) before dropping the "
                                "tracking; more is refused with their count. 0: refuse whenever any is pending.")
@yes_option
@dsn_option
@json_option
@handle_errors
def cleanup(plan_ref: str, lock_timeout: int, retries: int, catch_up_rows: int, yes: bool, dsn: str | None,
            as_json: bool) -> None:
    """Finish a cut-over PLAN: drop the old vectors' column and index and the change tracking.
    Final: no rollback after this, and nothing re-embeds what the application writes.

    \b
    Never leaves a row pending: rows the application inserted or changed and reembed has not
    embedded yet are embedded first (up to --catch-up-rows), or cleanup refuses. Drops without
    CASCADE: anything still using the old column stops it, named. The old column's space
    returns only when the table is rewritten (VACUUM FULL, or pg_repack online); the report
    says how much. On a terminal it shows what it will drop and asks; --yes skips the
    question, and without a terminal --yes is required (else exit 2). A rerun on a cleaned-up
    plan exits 0 and says there is nothing left to drop.
    """
    _drop_command(cleanup_plan, "cleaned up", plan_ref, lock_timeout, retries, catch_up_rows, yes, dsn, as_json)


@cli.command()
@click.argument("plan_ref", metavar="PLAN")
@_lock_options
@click.option("--catch-up-rows", type=click.IntRange(0, 1_000_000), default=DEFAULT_CATCH_UP_ROWS, show_default=True,
              metavar="N", help="After a rollback: give up to N rows changed since cutover their source-model "
                                "vector before dropping the tracking; more is refused with their count.")
@yes_option
@dsn_option
@json_option
@handle_errors
def abandon(plan_ref: str, lock_timeout: int, retries: int, catch_up_rows: int, yes: bool, dsn: str | None,
            as_json: bool) -> None:
    """Give up PLAN before cutover (or after a rollback): drop the new vectors' column and index
    and the change tracking, and its ledger rows. The table is left as it was before the plan,
    and the plan's name is free for a new `reembed plan`.

    \b
    After a rollback, rows changed since cutover get their source-model vector first (up to
    --catch-up-rows), or abandon refuses. On a terminal it shows what it will drop and asks;
    --yes skips the question, and without a terminal --yes is required (else exit 2). A plan
    never prepared has nothing to drop; a rerun on an abandoned plan exits 0 and says so.
    """
    _drop_command(abandon_plan, "abandoned", plan_ref, lock_timeout, retries, catch_up_rows, yes, dsn, as_json)
