"""Irreversible steps ask first (under a real pseudo-terminal) and refuse without one; reruns are
safe for schedulers; abandon frees the plan's name; a cutover after a rollback needs a new verify."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import psycopg

from backfill_support import gemini, make_plan  # noqa: F401 (fixture)
from swap_support import PLAN, backfilled, columns, plan_row
from tables import create_docs


def _on_a_terminal(args: list[str], answer: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`reembed ARGS` with a pseudo-terminal as stdin, `answer` typed ahead into it."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=cwd)
        os.close(slave)
        os.write(master, answer.encode())  # the terminal keeps it until the question reads it
        out, err = proc.communicate(timeout=180)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _ledger_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM reembed.ledger").fetchone()[0]  # type: ignore[index]


def test_cleanup_asks_on_a_terminal_and_does_what_the_answer_says(conn, run_cli, gemini, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    old = plan_row(conn)[2]

    declined = _on_a_terminal(["cleanup", PLAN], "n\n", tmp_path)
    assert declined.returncode == 1, declined.stderr
    assert f"column public.docs.{old} (the ollama:nomic-embed-text vectors)" in declined.stderr
    assert "index public.old_nomic_embed_text__docs_embedding_idx" in declined.stderr
    assert "change tracking" in declined.stderr
    assert "`reembed rollback` is no longer possible" in declined.stderr
    assert f"cleanup plan {PLAN}? [y/N]" in declined.stderr and "nothing was changed" in declined.stderr
    assert old in columns(conn) and plan_row(conn)[0] == "cut_over"

    accepted = _on_a_terminal(["cleanup", PLAN], "y\n", tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert old not in columns(conn) and plan_row(conn)[0] == "cleaned_up"


def test_without_a_terminal_and_without_yes_nothing_is_dropped(conn, run_cli, gemini, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    shadow = plan_row(conn)[1]
    before = columns(conn)
    # stdin closed, as under cron: refused with exit 2, the reason names --yes; JSON error for scripts.
    closed = subprocess.run([sys.executable, "-m", "toolkit", "abandon", PLAN, "--json"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert closed.returncode == 2, closed.stderr
    assert "--yes" in closed.stderr and "no terminal" in closed.stderr
    assert json.loads(closed.stdout)["exit_code"] == 2
    assert columns(conn) == before and shadow in before and plan_row(conn)[0] == "indexed"
    # --yes is the scheduler's way to say it.
    done = run_cli("abandon", PLAN, "--yes")
    assert done.exit_code == 0, done.stderr
    assert shadow not in columns(conn)


def test_reruns_of_cleanup_and_abandon_exit_0_and_say_so(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    assert run_cli("cleanup", PLAN, "--yes").exit_code == 0
    again = run_cli("cleanup", PLAN)  # no --yes needed: there is nothing to drop
    assert again.exit_code == 0, again.stderr
    assert "cleaned up already; nothing to drop" in again.stdout
    data = json.loads(run_cli("cleanup", PLAN, "--json").stdout)
    assert data["already_done"] is True and data["phase"] == "cleaned_up"
    refused = run_cli("abandon", PLAN, "--yes")  # a cleaned-up plan cannot be abandoned: a different end
    assert refused.exit_code == 1

    create_docs(conn, 30, table="other")
    make_plan(run_cli, table="other", name="p2")
    assert run_cli("run", "p2", "--no-progress").exit_code == 0
    assert run_cli("abandon", "p2", "--yes").exit_code == 0
    twice = run_cli("abandon", "p2")
    assert twice.exit_code == 0 and "abandoned already; nothing to drop" in twice.stdout


def test_abandon_frees_the_name_and_removes_the_ledger(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 40)
    make_plan(run_cli)
    assert run_cli("run", "p1", "--no-progress").exit_code == 0
    assert _ledger_rows(conn) == 40
    result = run_cli("abandon", "p1", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "the name p1 is free" in result.stdout
    assert _ledger_rows(conn) == 0
    # A new plan under the same name works, and every command now means the new one.
    make_plan(run_cli)
    assert conn.execute("SELECT phase FROM reembed.plans WHERE name = 'p1' ORDER BY id").fetchall() == [
        ("abandoned",), ("planned",)]
    status = json.loads(run_cli("status", "p1", "--json").stdout)
    assert status["phase"] == "planned"
    assert run_cli("run", "p1", "--no-progress").exit_code == 0 and _ledger_rows(conn) == 40


def test_abandon_of_a_never_prepared_plan_says_there_was_nothing_to_drop(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10)
    make_plan(run_cli)
    before = columns(conn)
    result = run_cli("abandon", "p1")  # nothing to drop: no question, even without a terminal
    assert result.exit_code == 0, result.stderr
    assert "nothing to drop: the plan was never prepared" in result.stdout
    assert "Dropped" not in result.stdout and "embedding__" not in result.stdout
    assert columns(conn) == before and plan_row_of(conn, "p1") == "abandoned"


def plan_row_of(conn: psycopg.Connection, name: str) -> str:
    return conn.execute("SELECT phase FROM reembed.plans WHERE name = %s ORDER BY id DESC LIMIT 1",
                        (name,)).fetchone()[0]  # type: ignore[index]


def test_a_plan_whose_preflight_could_not_run_can_be_planned_again(conn, run_cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10)
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    args = ["plan", "docs", "--column", "embedding", "--text", "content", "--name", "p1"]
    first = run_cli(*args)
    assert first.exit_code == 0, first.stderr
    assert "not run" in first.stdout  # no key yet
    again = run_cli(*args, "--title", "title", "--offline")  # the key arrived, or the plan changed
    assert again.exit_code == 0, again.stderr
    rows = conn.execute("SELECT phase, spec->'text'->>'title' FROM reembed.plans WHERE name = 'p1'").fetchall()
    assert rows == [("planned", "title")]  # one plan, the new one
    events = [r[0] for r in conn.execute("SELECT message FROM reembed.events ORDER BY id")]
    assert any("planned again" in m for m in events)


def test_rollback_says_to_switch_the_query_model_back_and_a_new_cutover_needs_a_new_verify(  # type: ignore[no-untyped-def]
        conn, run_cli, gemini) -> None:
    backfilled(conn, run_cli)
    assert run_cli("verify", PLAN, "--no-source").exit_code == 0
    assert run_cli("cutover", PLAN).exit_code == 0
    rolled = run_cli("rollback", PLAN)
    assert rolled.exit_code == 0, rolled.stderr
    assert "switch the application's query model back" in rolled.stdout
    assert "ollama:nomic-embed-text" in rolled.stdout and f"reembed verify {PLAN}" in rolled.stdout
    assert json.loads(run_cli("rollback", PLAN, "--json").stdout)["query_model"] == "ollama:nomic-embed-text"
    # The verification from before the first cutover no longer counts.
    refused = run_cli("cutover", PLAN)
    assert refused.exit_code == 1
    assert "rolled back" in refused.stderr and "needs a new passing" in refused.stderr
    assert plan_row(conn)[0] == "rolled_back"
    assert run_cli("verify", PLAN, "--no-source").exit_code == 0
    again = run_cli("cutover", PLAN)
    assert again.exit_code == 0, again.stderr
    assert plan_row(conn)[0] == "cut_over"
