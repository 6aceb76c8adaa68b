"""reembed run: a whole migration through the real google-genai client against the emulator."""

from __future__ import annotations

import json

import pytest

from backfill_support import gemini, make_plan, mismatches, shadow_column, status_json  # noqa: F401 (fixture)
from tables import create_docs

STATUS_KEYS = {"name", "phase", "shadow_column", "rows_total", "rows_embedded", "rows_pending", "rows_skipped"}


@pytest.mark.parametrize("rows", [3000, pytest.param(20000, marks=pytest.mark.soak)])
def test_run_embeds_every_row_exactly(conn, run_cli, gemini, rows: int) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, rows, index="hnsw")
    conn.execute("UPDATE docs SET content = '' WHERE id IN (5, 6)")
    conn.execute("UPDATE docs SET content = NULL WHERE id = 7")
    name = make_plan(run_cli)
    result = run_cli("run", name, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows_written"] == rows - 3 and summary["rows_skipped"] == 3
    assert summary["phase"] == "backfilled"
    assert mismatches(conn, shadow_column(conn, name)) == []
    status = status_json(run_cli, name)
    assert STATUS_KEYS <= set(status)
    assert (status["phase"], status["rows_total"], status["rows_embedded"], status["rows_pending"],
            status["rows_skipped"]) == ("backfilled", rows, rows - 3, 0, 3)
    reasons = conn.execute("SELECT DISTINCT skip_reason FROM reembed.ledger WHERE state = 'skipped'").fetchall()
    assert reasons == [("empty text",)]
    # The original column and the application's rows are untouched apart from the new column.
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NULL").fetchone()[0] == 0


def test_run_again_is_a_no_op_then_picks_up_changes(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 300, index=None)
    name = make_plan(run_cli)
    first = run_cli("run", name)
    assert first.exit_code == 0, first.output
    assert "re-embedding" in first.stderr and "rows/s" in first.stderr  # the progress bar
    assert "300 of 300 rows embedded" in first.stdout  # the summary
    listing = run_cli("status")
    assert listing.exit_code == 0 and name in listing.stdout and "backfilled" in listing.stdout
    again = json.loads(run_cli("run", name, "--json", "--no-progress").stdout)
    assert again["rows_written"] == 0
    conn.execute("UPDATE docs SET content = 'changed text ' || id WHERE id < 10")
    conn.execute("UPDATE docs SET title = 'new title' WHERE id = 20")
    conn.execute("INSERT INTO docs (id, title, content) VALUES (1000, 't', 'a brand new row')")
    conn.execute("UPDATE docs SET content = '' WHERE id = 30")  # had a vector: it must not survive
    conn.execute("UPDATE docs SET content = content WHERE id = 40")  # same text: nothing to do
    conn.execute("DELETE FROM docs WHERE id = 50")
    status = status_json(run_cli, name)
    assert status["rows_pending"] == 10 + 1 + 1 + 1 and status["rows_total"] == 300
    third = json.loads(run_cli("run", name, "--json", "--no-progress").stdout)
    assert third["rows_written"] == 12 and third["rows_skipped"] == 1
    assert mismatches(conn, shadow_column(conn, name)) == []


def test_status_unknown_plan_is_bad_input(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("status", "no-such-plan", "--json")
    assert result.exit_code == 2
    assert "no-such-plan" in result.stderr
    result = run_cli("run", "no-such-plan")
    assert result.exit_code == 2


def test_run_rejects_bad_options(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10, index=None)
    name = make_plan(run_cli)
    assert run_cli("run", name, "--batch-size", "0").exit_code == 2
    assert run_cli("run", name, "--workers", "0").exit_code == 2
    # Refused before anything was touched: still only planned, no shadow column.
    assert status_json(run_cli, name)["phase"] == "planned"


def test_rollback_fill_gives_rows_without_an_old_vector_one_from_the_source(conn, run_cli, gemini,  # type: ignore[no-untyped-def]
                                                                            monkeypatch) -> None:
    import numpy as np

    from toolkit.emulators import expected_vector, start_ollama

    create_docs(conn, 200, index=None)
    name = make_plan(run_cli)
    assert run_cli("run", name, "--no-progress").exit_code == 0
    # Rows the application wrote with only a new-model vector (as after a cutover).
    conn.execute("UPDATE docs SET embedding = NULL WHERE id % 10 = 0")
    conn.execute("UPDATE docs SET content = '  ' WHERE id = 10")  # empty: nothing to embed
    before = {r[0]: r[1].to_numpy() for r in conn.execute("SELECT id, embedding FROM docs WHERE id % 10 <> 0")}
    with start_ollama() as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.base_url)
        result = run_cli("run", name, "--rollback-fill", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rollback_fill"] is True and summary["rows_written"] == 19 and summary["column"] == "embedding"
    for id_, content, vector in conn.execute("SELECT id, content, embedding FROM docs WHERE id % 10 = 0"):
        if id_ == 10:
            assert vector is None
            continue
        want = expected_vector("ollama:nomic-embed-text", content, task_type="RETRIEVAL_DOCUMENT", dimensions=768)
        assert np.allclose(vector.to_numpy(), want, rtol=0, atol=1e-6), id_
    after = {r[0]: r[1].to_numpy() for r in conn.execute("SELECT id, embedding FROM docs WHERE id % 10 <> 0")}
    assert all(np.array_equal(before[k], after[k]) for k in before)  # rows that had one: untouched
    # The new-model column is still exact.
    assert [m for m in mismatches(conn, shadow_column(conn, name)) if not m.startswith("10:")] == []


def test_run_embeds_in_a_process_of_its_own_unless_asked_not_to(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 600, index=None)
    name = make_plan(run_cli)
    first = json.loads(run_cli("run", name, "--json", "--no-progress").stdout)
    assert first["rows_written"] == 600 and mismatches(conn, shadow_column(conn, name)) == []
    # The provider client's process counts in the run's memory figure.
    assert first["embedder_peak_rss_mb"] > 0 and first["peak_rss_mb"] > first["embedder_peak_rss_mb"]
    # Its start-up is waited for before the loop, and counted apart from it, as an in-process
    # client's construction is.
    assert first["embedder_start_seconds"] > 0
    assert first["seconds"] >= first["embedder_start_seconds"] + first["loop_seconds"]
    again = json.loads(run_cli("run", name, "--json", "--no-progress").stdout)
    assert again["rows_written"] == 0 and again["embedder_peak_rss_mb"] == 0  # nothing to embed: none started
    assert again["embedder_start_seconds"] == 0
    conn.execute("UPDATE docs SET content = 'changed text ' || id WHERE id < 100")
    here = json.loads(run_cli("run", name, "--json", "--no-progress", "--embed-here").stdout)
    assert here["rows_written"] == 100 and here["embedder_peak_rss_mb"] == 0 and here["embedder_start_seconds"] == 0
    assert mismatches(conn, shadow_column(conn, name)) == []
