"""Options several commands share: provider settings (each one also an environment variable, so
`--help` shows every setting reembed reads) and model names that complete from the known models."""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import click
from click.core import ParameterSource
from click.shell_completion import CompletionItem

from toolkit.providers.models import KNOWN_MODELS
from toolkit.providers.settings import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S

F = TypeVar("F", bound=Callable[..., Any])

POSITIVE_INT = click.IntRange(min=1)


def complete_model(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(name) for name in KNOWN_MODELS if name.startswith(incomplete)]


def _export(variable: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """The provider code reads its settings from the environment (worker processes inherit it):
    a flag given on the command line becomes that variable for this process and its children."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and param.name and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            os.environ[variable] = str(value)
        return value

    return callback


def provider_options(func: F) -> F:
    """Where the providers are and how long to wait for them."""
    func = click.option("--ollama-host", envvar="OLLAMA_HOST", show_envvar=True, metavar="URL", expose_value=False,
                        callback=_export("OLLAMA_HOST"),
                        help="Ollama server. Default: http://127.0.0.1:11434.")(func)
    func = click.option("--gemini-base-url", envvar=["REEMBED_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"],
                        show_envvar=True, metavar="URL", expose_value=False, callback=_export("REEMBED_GEMINI_BASE_URL"),
                        help="Another Gemini endpoint (a proxy, the emulator). Default: Google's.")(func)
    func = click.option("--timeout", envvar="REEMBED_TIMEOUT", show_envvar=True, metavar="SECONDS",
                        type=click.FloatRange(min=0, min_open=True, max=3600), expose_value=False,
                        callback=_export("REEMBED_TIMEOUT"),
                        help=f"Seconds per provider request. Default: {DEFAULT_TIMEOUT_S:g}.")(func)
    return func


def quota_options(func: F) -> F:
    """--rpm / --tpm: the provider quota, for pacing (run) or for the estimate (plan)."""
    func = click.option("--tpm", type=POSITIVE_INT, envvar="REEMBED_TPM", show_envvar=True,
                        help="Provider quota in tokens per minute (default: adapt to 429s).")(func)
    func = click.option("--rpm", type=POSITIVE_INT, envvar="REEMBED_RPM", show_envvar=True,
                        help="Provider quota in texts per minute (default: adapt to 429s; the estimate "
                             "assumes the free tier, 100).")(func)
    return func


def concurrency_option(func: F) -> F:
    return click.option("--concurrency", type=click.IntRange(1, 256), default=DEFAULT_CONCURRENCY, show_default=True,
                        envvar="REEMBED_CONCURRENCY", show_envvar=True,
                        help="Provider requests in flight per process (one shared rate limiter).")(func)
