"""What every command shares: the group, --dsn/--json options, one-line errors and exit codes."""

from __future__ import annotations

import functools
import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import click
import psycopg

from toolkit import __version__
from toolkit.config import configure_logging, register_environment_secrets, scrub
from toolkit.db import Database, connected_target
from toolkit.errors import ReembedError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="reembed")
@click.option("--verbose", "-v", is_flag=True, help="Log what reembed does (secrets are always masked).")
def cli(verbose: bool) -> None:
    """Re-embed a live pgvector column with a new embedding model and swap it in without downtime.

    \b
    Lifecycle of one migration (one plan):
      inspect -> plan -> run -> index -> verify -> cutover -> cleanup
                                                    \\-> rollback (until cleanup)

    The database: --dsn, else DATABASE_URL, else the PG* variables (PGHOST, PGPORT,
    PGUSER, PGDATABASE, PGSERVICE, ...), resolved as psql resolves them (service file and
    ~/.pgpass included); with none of them, an embedded PostgreSQL 18 + pgvector
    (see `reembed db`). Commands that change something first name it on stderr. Exit codes: 0 ok, 1 a gate or precondition failed, 2 bad input,
    3 database or provider unreachable.
    """
    register_environment_secrets()
    configure_logging(verbose)


def dsn_option(func: F) -> F:
    return click.option(
        "--dsn", envvar="DATABASE_URL", show_envvar=True, metavar="DSN",
        help="PostgreSQL connection string (URL, key=value or service=NAME). Default: the PG* "
             "variables as for psql, else the embedded PostgreSQL.")(func)  # type: ignore[return-value]


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(func)  # type: ignore[return-value]


def fail(message: str, code: int) -> None:
    click.echo(f"reembed: error: {scrub(message)}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Every error reaches the user as one line and an exit code; secrets are scrubbed."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ReembedError as exc:
            fail(str(exc), exc.exit_code)
        except psycopg.errors.QueryCanceled as exc:
            # A statement or lock timeout: the server answered, but not in time. Same exit as an
            # unreachable server (try again later), honest wording.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fail(f"database timed out: {first}; run the command again to continue", EXIT_UNREACHABLE)
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fail(f"database unreachable: {first}", EXIT_UNREACHABLE)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fail(f"database error: {first}", EXIT_GATE)
        except KeyboardInterrupt:
            fail("interrupted; the state in the database is consistent, run the command again to continue", 130)

    return wrapper  # type: ignore[return-value]


@contextmanager
def connected(dsn: str | None, *, schema: bool = True,
              changes: bool = True) -> Iterator[tuple[Database, psycopg.Connection]]:
    """A connection (autocommit) with reembed's own schema applied when `schema`. A command that
    `changes` something names the server and database first (stderr), as libpq resolved them."""
    from toolkit.migrations import ensure_schema

    db = Database.from_flag(dsn)
    conn = db.connect()
    try:
        if changes:
            click.echo(f"reembed: acting on {connected_target(conn)}"
                       + (" (the embedded PostgreSQL)" if db.is_embedded else ""), err=True)
        if schema:
            ensure_schema(conn, db.conninfo())
        yield db, conn
    finally:
        conn.close()


def echo_json(data: Any) -> None:
    click.echo(scrub(json.dumps(data, indent=2, default=str)))
