"""`reembed embed-query` and `reembed emulator gemini|ollama`: tools for trying things by hand."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from toolkit.cli.common import cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.cli.options import provider_options
from toolkit.errors import BadInput


@cli.command("embed-query")
@click.argument("text")
@click.option("--plan", "plan_ref", metavar="PLAN",
              help="Plan name or plan file. Default: the single live plan in the database.")
@click.option("--source", is_flag=True,
              help="Embed with the plan's source model (the one the column held before cutover) instead of the target.")
@provider_options
@dsn_option
@json_option
@handle_errors
def embed_query(text: str, plan_ref: str | None, source: bool, dsn: str | None, as_json: bool) -> None:
    """Print TEXT's query vector as a pgvector literal `[0.1,...]`.

    The target model embeds it as a query (Gemini: task type RETRIEVAL_QUERY); with --source the
    source model does (Ollama nomic-embed-text: the `search_query: ` prefix). Paste it into the
    application's unchanged retrieval SQL in psql, e.g.

    \b
      SELECT id, title FROM docs ORDER BY embedding <=> '[...]' LIMIT 5;

    Before cutover `embedding` holds the source model's vectors (use --source); after cutover
    the target's (the default). With --json: the model, its task type, the dimensions and the
    vector as a list. Provider settings as for `reembed run`.
    """
    from toolkit.plan import load
    from toolkit.query import embed_query, single_live_plan, vector_literal

    with connected(dsn, changes=False) as (_, conn):
        plan, record = load(conn, plan_ref or single_live_plan(conn))
    model = plan.source_ref if source else plan.target_ref
    vector = embed_query(model, plan.dimensions, text)
    if as_json:
        echo_json({"model": str(model), "task_type": "RETRIEVAL_QUERY", "dimensions": plan.dimensions,
                   "vector": [float(x) for x in vector]}, plan=plan.name, phase=record.phase)
    else:
        click.echo(vector_literal(vector))


@cli.group()
def emulator() -> None:
    """Serve a local emulator of an embedding API in the foreground, for trying reembed by hand.

    The emulators answer like the real APIs (same paths, JSON and errors) with deterministic
    vectors that keep lexical similarity; no model runs and nothing leaves this machine.
    """


def _fault_options(func: Any) -> Any:
    func = click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
                        help="Port on 127.0.0.1; 0 picks a free one (printed).")(func)
    func = click.option("--latency", type=click.FloatRange(min=0), default=0.0, show_default=True,
                        help="Seconds added to every answer.")(func)
    func = click.option("--quota-texts-per-minute", type=click.IntRange(min=1),
                        help="Texts accepted per minute; beyond it Gemini answers 429 with RetryInfo, Ollama 503.")(func)
    func = click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                        help="Share of requests answered with a 503.")(func)
    return func


@emulator.command("gemini")
@_fault_options
@click.option("--quota-texts-per-day", type=int,
              help="Texts accepted in all; beyond it a 429 naming a per-day quota (reembed run stops on it).")
@click.option("--batch-seconds", type=float, default=5.0, show_default=True,
              help="How long a batch job stays pending, then as long running, before it succeeds.")
@handle_errors
def emulator_gemini(port: int, latency: float, quota_texts_per_minute: int | None, error_rate: float,
                    quota_texts_per_day: int | None, batch_seconds: float) -> None:
    """Serve the Gemini API emulator (embedContent, batchEmbedContents, batch jobs and files for
    `run --batch-api`) until Ctrl-C. Any key is accepted."""
    from toolkit.emulators import start_gemini

    server = _start(start_gemini, port, latency=latency, quota_texts_per_minute=quota_texts_per_minute,
                    error_rate=error_rate, quota_texts_per_day=quota_texts_per_day,
                    batch_pending_seconds=batch_seconds, batch_running_seconds=batch_seconds)
    _serve(server, [f"export REEMBED_GEMINI_BASE_URL={server.base_url}",
                    "export GOOGLE_API_KEY=emulator   # any non-empty value; the emulator accepts every key"])


@emulator.command("ollama")
@_fault_options
@click.option("--model", "models", multiple=True, default=("nomic-embed-text",), show_default=True,
              help="Model to serve (repeatable).")
@handle_errors
def emulator_ollama(port: int, latency: float, quota_texts_per_minute: int | None, error_rate: float,
                    models: tuple[str, ...]) -> None:
    """Serve the Ollama API emulator (/api/embed, /api/tags) until Ctrl-C."""
    from toolkit.emulators import start_ollama

    server = _start(start_ollama, port, models=models, latency=latency,
                    quota_texts_per_minute=quota_texts_per_minute, error_rate=error_rate)
    _serve(server, [f"export OLLAMA_HOST={server.base_url}"])


def _start(starter: Any, port: int, **options: Any) -> Any:
    try:
        return starter(port, **{k: v for k, v in options.items() if v is not None})
    except OSError as exc:
        raise BadInput(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None


def _serve(server: Any, exports: list[str]) -> None:
    """Print where it listens (first line: the URL alone, for scripts), then block until a signal."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(server.base_url)  # click.echo flushes: a script reading the pipe gets the URL at once
        click.echo("# emulated, deterministic vectors; in another shell:", err=True)
        for line in exports:
            click.echo(f"#   {line}", err=True)
        click.echo("# Ctrl-C stops it.", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stats = server.stats
        click.echo(f"# stopped after {stats.embed_requests} embedding requests ({stats.texts} texts)", err=True)
