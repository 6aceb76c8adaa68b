"""Output scripts and schedulers rely on: JSON documents and JSON errors, exit codes, global options
anywhere, settings visible in --help, verbosity levels, model completion, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from backfill_support import gemini, make_plan  # noqa: F401 (fixture)
from tables import create_docs
from toolkit.cli import cli
from toolkit.emulators import start_gemini

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nowhere"


def _document(stdout: str) -> dict:
    data = json.loads(stdout)
    assert data["schema_version"] == 1 and "plan" in data and "phase" in data, data
    return data


def test_errors_are_json_documents_on_stdout_with_their_exit_code(run_cli) -> None:  # type: ignore[no-untyped-def]
    unknown = run_cli("status", "no-such-plan", "--json")
    assert unknown.exit_code == 2
    error = _document(unknown.stdout)
    assert error["exit_code"] == 2 and "no plan named 'no-such-plan'" in error["error"]
    assert error["plan"] == "no-such-plan"
    assert "reembed: error:" in unknown.stderr  # the one line for people stays
    # --json before the command name counts the same; an unreachable server is exit 3.
    down = run_cli("--json", "plans", "--dsn", UNREACHABLE)
    assert down.exit_code == 3 and _document(down.stdout)["exit_code"] == 3
    # Usage errors too: a missing argument, an out-of-range number.
    missing = run_cli("run", "--json")
    assert missing.exit_code == 2 and "Missing argument" in _document(missing.stdout)["error"]
    out_of_range = run_cli("--json", "run", "p", "--batch-size", "0")
    assert out_of_range.exit_code == 2 and "1<=x<=10000" in _document(out_of_range.stdout)["error"]


def test_every_json_document_names_the_plan_and_its_phase_with_iso_timestamps(
        conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20)
    planned = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--offline", "--name", "p1",
                      "--json")
    assert planned.exit_code == 0, planned.stderr
    doc = _document(planned.stdout)
    assert (doc["plan"], doc["phase"]) == ("p1", "planned") and doc["spec"]["name"] == "p1"
    listed = _document(run_cli("plans", "--json").stdout)
    assert [p["name"] for p in listed["plans"]] == ["p1"]
    stamp = listed["plans"][0]["updated_at"]
    assert "T" in stamp and datetime.fromisoformat(stamp).tzinfo is not None
    # The human table prints the same ISO 8601 form, not Python's str() of a datetime.
    assert stamp[:19] in run_cli("plans").stdout
    status = _document(run_cli("status", "p1", "--json").stdout)
    assert (status["plan"], status["phase"]) == ("p1", "planned")
    everything = _document(run_cli("status", "--json").stdout)
    assert [p["name"] for p in everything["plans"]] == ["p1"]
    init = _document(run_cli("init", "--json").stdout)
    assert init["revision"] and init["database"].endswith("/" + conn.info.dbname)


def test_global_options_work_before_and_after_the_command(run_cli, database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dsn = database.dsn
    monkeypatch.delenv("DATABASE_URL")
    for args in (["--dsn", dsn, "--json", "plans"], ["plans", "--dsn", dsn, "--json"], ["--json", "plans", "--dsn", dsn]):
        result = run_cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
        assert _document(result.stdout)["plans"] == [], args
    # Given twice, the one after the command name wins.
    result = run_cli("--dsn", UNREACHABLE, "plans", "--dsn", dsn)
    assert result.exit_code == 0, result.stderr


def test_settings_are_options_with_their_environment_variables_and_ranges_in_help() -> None:
    runner = CliRunner()
    run_help = runner.invoke(cli, ["run", "--help"], terminal_width=200).output
    for variable in ("REEMBED_RPM", "REEMBED_TPM", "REEMBED_CONCURRENCY", "REEMBED_TIMEOUT", "OLLAMA_HOST",
                     "REEMBED_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "DATABASE_URL"):
        assert f"{variable}" in run_help, variable
    assert "1<=x<=10000" in run_help and "1<=x<=256" in run_help
    top = runner.invoke(cli, ["--help"], terminal_width=200).output
    assert "REEMBED_DATA_DIR" in top and "GOOGLE_API_KEY" in top
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"  {code}" in top, code
    assert "130" in runner.invoke(cli, ["cleanup", "--help"]).output
    verify_help = runner.invoke(cli, ["verify", "--help"], terminal_width=200).output
    assert "0<=x<=1" in verify_help


def test_an_environment_variable_is_checked_like_its_option(run_cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REEMBED_CONCURRENCY", "0")
    result = run_cli("run", "p1")
    assert result.exit_code == 2 and "--concurrency" in result.stderr and "1<=x<=256" in result.stderr


def test_model_names_complete_from_the_known_models() -> None:
    env = dict(os.environ, _REEMBED_COMPLETE="bash_complete", COMP_WORDS="reembed plan docs --to gemini:",
               COMP_CWORD="4")
    proc = subprocess.run([sys.executable, "-m", "toolkit"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    completions = [line.split(",", 1)[1] for line in proc.stdout.splitlines()]
    assert "gemini:gemini-embedding-001" in completions and "gemini:gemini-embedding-2" in completions
    assert not any(c.startswith("ollama:") for c in completions)


def test_v_shows_reembeds_log_lines_and_vv_adds_the_http_libraries(
        conn: psycopg.Connection, run_cli, gemini, tmp_path: Path) -> None:  # type: ignore[no-untyped-def,no-redef]
    create_docs(conn, 5)
    make_plan(run_cli)

    def embed(*flags: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "toolkit", *flags, "embed-query", "hello", "--plan", "p1"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    quiet, v, vv = embed(), embed("-v"), embed("-vv")
    assert "toolkit.db" not in quiet and "httpcore" not in quiet
    assert "toolkit.db: connected to" in v and "httpcore" not in v and "httpx" not in v
    assert "toolkit.db: connected to" in vv and ("httpcore" in vv or "httpx" in vv)


def test_ctrl_c_exits_130_and_says_the_state_is_consistent(conn: psycopg.Connection, run_cli,  # type: ignore[no-untyped-def]
                                                           monkeypatch, tmp_path: Path) -> None:
    create_docs(conn, 60)
    with start_gemini(latency=1.0) as slow:
        monkeypatch.setenv("GOOGLE_API_KEY", "test-key-ctrl-c")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", slow.base_url)
        monkeypatch.delenv("REEMBED_GEMINI_BASE_URL", raising=False)
        make_plan(run_cli)
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", "run", "p1", "--batch-size", "10",
                                 "--concurrency", "1", "--no-progress", "--json"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while slow.stats.embed_requests == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the command again" in err
    assert 0 <= err.index("reembed: stopping…") < err.index("interrupted")  # said at once, before the wind-down
    assert _document(out)["exit_code"] == 130


def test_read_only_commands_do_not_create_schema_reembed(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("DROP SCHEMA reembed CASCADE")
    listed = run_cli("plans")
    assert listed.exit_code == 0 and listed.stdout.strip() == "no plans"
    assert _document(run_cli("plans", "--json").stdout)["plans"] == []
    assert run_cli("status").stdout.strip() == "no live plans"
    unknown = run_cli("status", "p1")
    assert unknown.exit_code == 2 and "no schema reembed" in unknown.stderr
    assert conn.execute("SELECT to_regnamespace('reembed')").fetchone()[0] is None
