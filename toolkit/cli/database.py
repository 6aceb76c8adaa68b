"""`reembed init` and `reembed db url|start|stop|status`."""

from __future__ import annotations

import click

from toolkit import embedded
from toolkit.cli.common import cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.db import connected_target
from toolkit.migrations import current_revision


@cli.command()
@dsn_option
@json_option
@handle_errors
def init(dsn: str | None, as_json: bool) -> None:
    """Create or upgrade reembed's own schema `reembed` (harmless to repeat)."""
    with connected(dsn) as (db, conn):
        revision, target = current_revision(conn), connected_target(conn)
    if as_json:
        echo_json({"revision": revision, "database": target, "embedded": db.is_embedded})
    else:
        click.echo(f"schema reembed is at revision {revision} on {target}"
                   + (" (the embedded PostgreSQL)" if db.is_embedded else ""))


@cli.group()
def db() -> None:
    """Manage the embedded PostgreSQL used when no --dsn / DATABASE_URL is given."""


@db.command("url")
@handle_errors
def db_url() -> None:
    """Start the embedded PostgreSQL if needed and print its connection URL."""
    click.echo(embedded.url())


@db.command("start")
@handle_errors
def db_start() -> None:
    """Start the embedded PostgreSQL (data kept in the user's data directory)."""
    url = embedded.url()
    click.echo(f"embedded PostgreSQL running: {url}")


@db.command("stop")
@handle_errors
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    click.echo("stopped" if embedded.stop() else "not running")


@db.command("status")
@json_option
@handle_errors
def db_status(as_json: bool) -> None:
    """Say whether the embedded PostgreSQL runs, and where its data lives."""
    status = {"running": embedded.is_running(), "data_dir": str(embedded.data_dir())}
    if as_json:
        echo_json(status)
    else:
        click.echo(f"{'running' if status['running'] else 'stopped'}; data in {status['data_dir']}")
