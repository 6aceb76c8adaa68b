"""The command line as a user first meets it."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from toolkit.cli import cli


def test_help_lists_the_lifecycle_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("inspect", "plan", "init", "db"):
        assert f"  {command} " in result.output
    assert "Exit codes" in result.output


def test_python_dash_m_toolkit_works() -> None:
    proc = subprocess.run([sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "reembed" in proc.stdout


def test_every_command_explains_itself() -> None:
    runner = CliRunner()
    for name, command in cli.commands.items():
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert (command.help or "").split()[0] in result.output, name


def test_unknown_option_is_bad_input() -> None:
    result = CliRunner().invoke(cli, ["inspect", "--no-such-flag"])
    assert result.exit_code == 2
