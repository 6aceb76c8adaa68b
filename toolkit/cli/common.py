"""What every command shares: the group, the global options, one-line errors and exit codes.

Global options (--dsn, --json, -v) are accepted before or after the command name; a value given
after it wins. With --json every document on stdout carries `schema_version`, the plan's name and
its phase, and an error is a JSON document too (`{"error": ..., "exit_code": N}`).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, Callable, Iterator, Sequence, TypeVar

import click
import psycopg
from click.core import ParameterSource

from toolkit import __version__
from toolkit.config import configure_logging, register_environment_secrets, scrub
from toolkit.db import Database, connected_target
from toolkit.errors import BadInput, GateFailed, ReembedError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SCHEMA_VERSION = 1  # of every --json document; raised when a key changes meaning or goes away

EXIT_CODES = """\b
Exit codes:
  0    done, or nothing left to do (a rerun of finished work says so)
  1    a gate or precondition refused; nothing was changed
  2    bad input, or an irreversible step asked for with no terminal and no --yes
  3    the database or a provider is unreachable or timed out: run it again later
  130  interrupted (Ctrl-C); the state is consistent, run it again to continue"""

_VERBOSITY = "reembed.verbosity"


def _count_verbosity(ctx: click.Context, _param: click.Parameter, value: int) -> int:
    ctx.meta[_VERBOSITY] = ctx.meta.get(_VERBOSITY, 0) + (value or 0)
    return value


def _verbose_option() -> click.Option:
    return click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_count_verbosity,
                        help="-v: reembed's own log lines; -vv: also the HTTP and database libraries' debug "
                             "output. Secrets are always masked.")


class ReembedCommand(click.Command):
    """A command that takes the global options after its name too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_verbose_option())
        if self.epilog is None:
            self.epilog = EXIT_CODES

    def invoke(self, ctx: click.Context) -> Any:
        _take_global_options(ctx)
        configure_logging(ctx.meta.get(_VERBOSITY, 0))
        with _saying_stopping():
            return super().invoke(ctx)


@contextmanager
def _saying_stopping() -> Iterator[None]:
    """Ctrl-C says "stopping…" the moment it is pressed (finishing a batch or cancelling a build can
    take a few seconds); a second Ctrl-C is Python's default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        click.echo("reembed: stopping…", err=True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _take_global_options(ctx: click.Context) -> None:
    """--dsn / --json given before the command name apply unless given again after it."""
    root = ctx.find_root()
    for name in ("dsn", "as_json"):
        if name not in ctx.params or ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            continue
        if root.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            ctx.params[name] = root.params[name]


def _wants_json(args: Sequence[str]) -> bool:
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


class ReembedGroup(click.Group):
    command_class = ReembedCommand
    group_class = type  # `reembed db ...`, `reembed emulator ...` behave the same

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:  # a caller driving commands in-process (the demo) handles exits itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:  # usage errors: bad option, missing argument, out of range
            report_error(exc.format_message(), exc.exit_code, as_json=_wants_json(argv))
        except (click.Abort, KeyboardInterrupt):
            report_error("interrupted; the state in the database is consistent, run the command again to continue",
                         EXIT_INTERRUPTED, as_json=_wants_json(argv))
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=ReembedGroup, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="reembed")
@click.option("--dsn", envvar="DATABASE_URL", show_envvar=True, metavar="DSN",
              help="PostgreSQL connection string (URL, key=value or service=NAME); also accepted after the "
                   "command. Default: the PG* variables as for psql, else the embedded PostgreSQL.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout (errors too); also "
                                                     "accepted after the command.")
@click.option("-v", "--verbose", count=True, callback=_count_verbosity,
              help="-v: reembed's own log lines; -vv: also the HTTP libraries' debug output.")
@click.option("--data-dir", envvar="REEMBED_DATA_DIR", show_envvar=True, metavar="DIR",
              type=click.Path(file_okay=False), help="Where the embedded PostgreSQL keeps its data. "
                                                     "Default: the user's data directory.")
def cli(dsn: str | None, as_json: bool, verbose: int, data_dir: str | None) -> None:
    """Re-embed a live pgvector column with a new embedding model and swap it in without downtime.

    \b
    Lifecycle of one migration (one plan):
      inspect -> plan -> run -> index -> verify -> cutover -> cleanup
                                                    \\-> rollback (until cleanup)

    The database: --dsn, else DATABASE_URL, else the PG* variables (PGHOST, PGPORT,
    PGUSER, PGDATABASE, PGSERVICE, ...), resolved as psql resolves them (service file and
    ~/.pgpass included); with none of them, an embedded PostgreSQL 18 + pgvector
    (see `reembed db`). Commands that change something first name it on stderr.

    Provider keys are read from the environment only (GOOGLE_API_KEY, else GEMINI_API_KEY),
    never from a flag, so they stay out of shell history and process lists.
    """
    import os

    if data_dir and click.get_current_context().get_parameter_source("data_dir") is ParameterSource.COMMANDLINE:
        os.environ["REEMBED_DATA_DIR"] = data_dir  # the embedded server and child processes read it
    register_environment_secrets()
    configure_logging(verbose)


def dsn_option(func: F) -> F:
    return click.option(
        "--dsn", envvar="DATABASE_URL", show_envvar=True, metavar="DSN",
        help="PostgreSQL connection string (URL, key=value or service=NAME). Default: the PG* "
             "variables as for psql, else the embedded PostgreSQL.")(func)  # type: ignore[return-value]


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON (errors too).")(func)  # type: ignore[return-value]


def _json_mode() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def _plan_argument() -> str | None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    value = ctx.params.get("plan_ref") or ctx.params.get("plan")
    return str(value) if value else None


def report_error(message: str, code: int, *, as_json: bool) -> None:
    """One line on stderr; with --json also a JSON document on stdout. Then exit with code."""
    message = scrub(message)
    click.echo(f"reembed: error: {message}", err=True)
    if as_json:
        echo_json({"error": message, "exit_code": code}, plan=_plan_argument())
    sys.exit(code)


def fail(message: str, code: int) -> None:
    report_error(message, code, as_json=_json_mode())


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
            fail(f"database timed out: {_first_line(exc)}; run the command again to continue", EXIT_UNREACHABLE)
        except psycopg.OperationalError as exc:
            fail(f"database unreachable: {_first_line(exc)}", EXIT_UNREACHABLE)
        except psycopg.Error as exc:
            fail(f"database error: {_first_line(exc)}", EXIT_GATE)
        except KeyboardInterrupt:
            fail("interrupted; the state in the database is consistent, run the command again to continue",
                 EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def yes_option(func: F) -> F:
    return click.option("--yes", "-y", "yes", is_flag=True,
                        help="Do it without asking. Without a terminal to ask on, --yes is required.")(func)  # type: ignore[return-value]


def confirm_irreversible(what: str, lines: list[str], *, yes: bool) -> None:
    """Show what an irreversible step will do and ask on the terminal; --yes skips the question.
    With no terminal and no --yes it refuses (exit 2) before anything is touched."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput(f"{what} cannot be undone and there is no terminal to ask on: pass --yes to confirm; "
                       "nothing was changed")
    for line in lines:
        click.echo(line, err=True)
    if not click.confirm(f"{what}?", default=False, err=True):
        raise GateFailed(f"{what}: answered no; nothing was changed")


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


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def echo_json(data: dict[str, Any], *, plan: str | None = None, phase: str | None = None) -> None:
    """One JSON document on stdout: schema_version, the plan's name and phase, then the data."""
    document = {"schema_version": SCHEMA_VERSION, "plan": plan, "phase": phase, **data}
    click.echo(scrub(json.dumps(document, indent=2, default=_json_default)))
