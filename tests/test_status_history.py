"""`reembed status` (percent, rate, time left, where the vectors are now, --watch) and
`reembed history` (every event with its time)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from backfill_support import gemini  # noqa: F401 (fixture)
from swap_support import PLAN, backfilled


def _status(run_cli) -> dict:  # type: ignore[no-untyped-def]
    result = run_cli("status", PLAN, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_status_shows_percent_rate_eta_and_the_columns_as_they_are_now(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    done = _status(run_cli)
    assert done["percent"] == 100.0 and done["rows_pending"] == 0 and done["eta_seconds"] is None
    assert done["rows_per_second"] > 0  # the run finished within the last minute
    assert done["reads"] == "public.docs.embedding"
    assert done["new_vectors"] == "public.docs.embedding__gemini_embedding_001"
    assert done["old_vectors"] == "public.docs.embedding"
    changed = conn.execute("UPDATE docs SET content = 'changed ' || id WHERE id < 30").rowcount
    behind = _status(run_cli)
    share = round(100 * (300 - changed) / 300, 1)
    assert behind["rows_pending"] == changed and behind["percent"] == share
    assert behind["eta_seconds"] == round(changed / behind["rows_per_second"], 1)
    text = run_cli("status", PLAN).stdout
    assert f"({share}% done)" in text and "rows/s over the last minute" in text and "left at that rate" in text

    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    after = _status(run_cli)
    assert after["reads"] == after["new_vectors"] == "public.docs.embedding"
    assert after["old_vectors"] == "public.docs.embedding__old_nomic_embed_text"
    listing = run_cli("status").stdout
    assert PLAN in listing and "cut_over" in listing and "public.docs.embedding" in listing


def test_history_lists_every_event_with_its_time(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    data = json.loads(run_cli("history", PLAN, "--json").stdout)
    assert (data["plan"], data["phase"]) == (PLAN, "cut_over")
    messages = [e["message"] for e in data["events"]]
    assert messages[0] == f"plan {PLAN} registered"
    assert any("cut" in m for m in messages[-3:])
    times = [datetime.fromisoformat(e["at"]) for e in data["events"]]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    text = run_cli("history", PLAN).stdout
    assert f"plan {PLAN} registered" in text and data["events"][0]["at"] in text


def test_status_watch_refreshes_until_ctrl_c(conn, run_cli, gemini, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, rows=50)
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "status", PLAN, "--watch", "0.2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = 0, time.monotonic() + 120
    assert proc.stdout is not None
    while seen < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line.startswith(f"plan {PLAN}: phase")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert seen == 3, err
    assert proc.returncode == 0, err
    assert "\x1b[" not in out  # no screen control codes when stdout is not a terminal
