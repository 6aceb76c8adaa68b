"""The `reembed` command line. Each module here registers the commands of one phase;
commands only parse, call one function, and render."""

from __future__ import annotations

import importlib

from toolkit.cli.common import cli

# One module per phase; a module that is not there yet simply adds no commands.
_COMMAND_MODULES = ("database", "planning", "backfill", "status", "index", "verify", "cutover", "demo", "tools")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"toolkit.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"toolkit.cli.{_name}":
            raise


def main() -> None:
    cli(prog_name="reembed")
