"""Phase safety under a live application (issue 11, points 1-3): no command writes a vector of the
wrong model, or of text that changed since, to any column, and none that reports success leaves a
row behind it. The randomized interleavings are in test_interleavings.py; these are the cases
the issue names, one by one.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import psycopg
import pytest

from backfill_support import gemini, ollama  # noqa: F401 (fixtures)
from reliability_support import kill_9, ledger, reembed_process, wait_for, wrong_vectors
from swap_support import PLAN, columns, plan_row
from tables import create_docs, passage
from toolkit.emulators import expected_vector, expected_vectors
from toolkit.plan import load
from toolkit.state import set_phase
from toolkit.strategies import STRATEGIES, places

SOURCE = "ollama:nomic-embed-text"
TARGET = "gemini:gemini-embedding-001"


def _source_vectors(texts: list[str]) -> np.ndarray:
    return expected_vectors(SOURCE, texts, task_type="RETRIEVAL_DOCUMENT", dimensions=768)


def _garbage(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(768).astype(np.float32)
    return v / np.linalg.norm(v)


def _indexed(conn: psycopg.Connection, run_cli, rows: int = 150,  # type: ignore[no-untyped-def]
             strategy: str | None = None) -> None:
    """docs filled by the application with the source model's vectors, taken to indexed by the real
    commands (with `strategy`, that one; else the one plan recommends)."""
    create_docs(conn, rows, index="hnsw", vectors=_source_vectors)
    chosen = ["--strategy", strategy] if strategy else []
    assert run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                   "--name", PLAN, "--offline", *chosen).exit_code == 0
    for args in (("run", PLAN, "--no-progress"), ("index", PLAN, "--no-progress")):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
    assert plan_row(conn)[0] == "indexed"


def _cut_over(conn: psycopg.Connection, run_cli, rows: int = 150,  # type: ignore[no-untyped-def]
              strategy: str | None = None) -> None:
    """As `_indexed`, then cut over by the real command."""
    _indexed(conn, run_cli, rows, strategy)
    result = run_cli("cutover", PLAN, "--force")
    assert result.exit_code == 0, result.output
    assert plan_row(conn)[0] == "cut_over"


def _old_vectors_kept(conn: psycopg.Connection) -> bool:
    """The place holding the source model's vectors is still there (a rollback is still possible)."""
    plan, record = load(conn, PLAN)
    old = places(plan, record.phase).old
    present = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (old.ident.as_string(conn),)).fetchone()[0]
    return bool(present) and old.column in columns(conn, old.ident.as_string(conn))


def _status(run_cli) -> dict:  # type: ignore[no-untyped-def]
    result = run_cli("status", PLAN, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_run_racing_a_rollback_follows_the_swap_and_never_writes_the_live_column(  # type: ignore[no-untyped-def]
        conn, run_cli, gemini, ollama, tmp_path, strategy) -> None:
    _cut_over(conn, run_cli, rows=300, strategy=strategy)
    # After cutover the application changes 200 rows' text and writes vectors reembed cannot trust.
    rng = np.random.default_rng(5)
    for i in range(200):
        conn.execute("UPDATE docs SET content = %s, embedding = %s WHERE id = %s", (passage(50_000 + i), _garbage(rng), i))
    assert ledger(conn, PLAN)["pending"] == 200
    gemini.configure(latency=0.05)
    proc = reembed_process("run", PLAN, "--batch-size", "5", "--concurrency", "1", "--no-progress", "--json",
                           cwd=tmp_path)
    try:
        wait_for(lambda: ledger(conn, PLAN)["pending"] <= 185 or proc.poll() is not None, timeout=180,
                 what="the run to be writing")
        assert proc.poll() is None, proc.communicate()
        rolled = run_cli("rollback", PLAN)
        assert rolled.exit_code == 0, rolled.output
        out, err = proc.communicate(timeout=300)
    finally:
        kill_9(proc)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["phase"] == "rolled_back" and summary["rows_pending"] == 0
    # The live column holds the source model's vectors only: not one of the run's target vectors.
    target_in_live = [i for i, text, title, v in conn.execute("SELECT id, content, title, embedding FROM docs")
                      if v is not None and np.allclose(v.to_numpy(), expected_vector(TARGET, text, task_type="RETRIEVAL_DOCUMENT",
                                                                   title=title, dimensions=768), atol=1e-6)]
    assert target_in_live == []
    # Every target vector, before and after the swap, went where the target's vectors are now.
    assert wrong_vectors(conn, PLAN, "new") == []
    # The 200 changed rows lack a source vector of their text: listed, then filled.
    assert "200 rows written or changed since cutover" in rolled.output
    assert len(wrong_vectors(conn, PLAN, "old")) == 200
    fill = run_cli("run", PLAN, "--rollback-fill", "--no-progress")
    assert fill.exit_code == 0, fill.output
    assert wrong_vectors(conn, PLAN, "old") == []
    assert _status(run_cli)["rows_source_stale"] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rollback_lists_and_the_fill_re_embeds_every_row_changed_since_cutover(conn, run_cli, gemini,  # type: ignore[no-untyped-def]
                                                                              ollama, strategy) -> None:
    _cut_over(conn, run_cli, strategy=strategy)
    # The application, on the new model: 50 texts changed (new-model vectors), 10 rows inserted,
    # 5 titles changed, 20 rows updated in another column only, 3 rows deleted.
    for i in range(50):
        text = passage(70_000 + i)
        conn.execute("UPDATE docs SET content = %s, embedding = %s WHERE id = %s",
                     (text, expected_vector(TARGET, text, task_type="RETRIEVAL_DOCUMENT", title=f"title {i % 50}",
                                            dimensions=768), i))
    for i in range(10):
        text = passage(80_000 + i)
        conn.execute("INSERT INTO docs (id, title, content, embedding) VALUES (%s, 'new', %s, %s)",
                     (10_000 + i, text, expected_vector(TARGET, text, task_type="RETRIEVAL_DOCUMENT", title="new",
                                                        dimensions=768)))
    conn.execute("UPDATE docs SET title = 'retitled' WHERE id BETWEEN 100 AND 104")
    conn.execute("UPDATE docs SET embedding = embedding WHERE id BETWEEN 120 AND 139")  # no tracked column
    conn.execute("DELETE FROM docs WHERE id IN (1, 2, 3)")
    assert _status(run_cli)["rows_source_stale"] == 47 + 10 + 5
    result = run_cli("rollback", PLAN, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["missing_old_vectors"] == 62
    # nomic-embed-text has no titles: with the column strategy the 5 retitled rows' old vectors happen
    # to be right (listed anyway); the copy strategy's propagation cleared them in the old table.
    assert len(wrong_vectors(conn, PLAN, "old")) == (57 if strategy == "column" else 62)
    status = _status(run_cli)
    assert any("62 rows changed since cutover" in h and "--rollback-fill" in h for h in status["hints"])
    fill = run_cli("run", PLAN, "--rollback-fill", "--no-progress", "--json")
    assert fill.exit_code == 0, fill.output
    assert json.loads(fill.stdout)["rows_written"] == 62
    assert wrong_vectors(conn, PLAN, "old") == []
    assert _status(run_cli)["rows_source_stale"] == 0
    # A second fill finds nothing; abandon then has nothing owed.
    assert json.loads(run_cli("run", PLAN, "--rollback-fill", "--no-progress", "--json").stdout)["rows_written"] == 0
    assert run_cli("abandon", PLAN, "--yes", "--catch-up-rows", "0").exit_code == 0
    assert wrong_vectors(conn, PLAN, "old", column="embedding") == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_old_model_writes_after_cutover_are_re_embedded_and_cleanup_leaves_none(conn, run_cli, gemini,  # type: ignore[no-untyped-def]
                                                                               ollama, strategy) -> None:
    _cut_over(conn, run_cli, strategy=strategy)
    # An application instance still on the old model inserts rows and changes texts with its own
    # (source-model) vectors after cutover.
    for i in range(2):
        text = passage(90_000 + i)
        conn.execute("INSERT INTO docs (id, title, content, embedding) VALUES (%s, 'old app', %s, %s)",
                     (20_000 + i, text, _source_vectors([text])[0]))
    conn.execute("UPDATE docs SET content = content || ' (edited)', embedding = %s WHERE id = 7",
                 (_source_vectors(["whatever"])[0],))
    assert len(wrong_vectors(conn, PLAN, "new")) == 3
    status = _status(run_cli)
    assert status["rows_pending"] == 3
    assert any(h.startswith("3 rows the application inserted or changed") and f"reembed run {PLAN} --follow" in h
               for h in status["hints"]), status["hints"]
    shown = run_cli("status", PLAN)
    assert "  3 rows the application inserted or changed" in shown.output
    # cleanup never drops the tracking with rows pending: refused with their count...
    refused = run_cli("cleanup", PLAN, "--yes", "--catch-up-rows", "0")
    assert refused.exit_code == 1 and "3 rows the application inserted or changed" in refused.stderr
    assert plan_row(conn)[0] == "cut_over" and _old_vectors_kept(conn)
    # ... or embeds them first.
    done = run_cli("cleanup", PLAN, "--yes")
    assert done.exit_code == 0, done.output
    assert "embedded 3 rows the application changed since the last run" in done.output
    assert plan_row(conn)[0] == "cleaned_up"
    assert ledger(conn, PLAN)["pending"] == 0
    assert wrong_vectors(conn, PLAN, "new") == []


def test_run_follow_embeds_changes_until_cleanup_and_ends_cleanly(conn, run_cli, gemini, ollama,  # type: ignore[no-untyped-def]
                                                                  tmp_path) -> None:
    _cut_over(conn, run_cli)
    proc = reembed_process("run", PLAN, "--follow", "--no-progress", "--json", cwd=tmp_path)
    try:
        wait_for(lambda: conn.execute("SELECT count(*) FROM reembed.events WHERE kind = 'run' "
                                      "AND message LIKE 'run started%%'").fetchone()[0] >= 2, timeout=120,
                 what="the follower to start")
        rng = np.random.default_rng(8)
        for i in range(20):
            conn.execute("INSERT INTO docs (id, title, content, embedding) VALUES (%s, 't', %s, %s)",
                         (30_000 + i, passage(30_000 + i), _garbage(rng)))
            conn.execute("UPDATE docs SET content = %s, embedding = %s WHERE id = %s",
                         (passage(31_000 + i), _garbage(rng), i))
        wait_for(lambda: ledger(conn, PLAN)["pending"] == 0, timeout=120, what="the follower to embed the changes")
        assert proc.poll() is None  # still following
        assert wrong_vectors(conn, PLAN, "new") == []
        assert run_cli("cleanup", PLAN, "--yes").exit_code == 0
        out, err = proc.communicate(timeout=120)
    finally:
        kill_9(proc)
    assert proc.returncode == 0, err
    assert json.loads(out)["followed_until"] == "cleaned_up"


def test_run_follow_ends_cleanly_on_sigterm_with_its_leases_given_back(conn, run_cli, gemini, ollama,  # type: ignore[no-untyped-def]
                                                                       tmp_path) -> None:
    _cut_over(conn, run_cli, rows=100)
    rng = np.random.default_rng(9)
    for i in range(60):
        conn.execute("UPDATE docs SET content = %s, embedding = %s WHERE id = %s", (passage(40_000 + i), _garbage(rng), i))
    gemini.configure(latency=0.2)
    proc = reembed_process("run", PLAN, "--follow", "--batch-size", "5", "--concurrency", "2", "--no-progress",
                           "--json", cwd=tmp_path)
    try:
        wait_for(lambda: ledger(conn, PLAN)["leased"] > 0, timeout=120, what="leases")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        kill_9(proc)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["followed_until"] == "signal"
    assert ledger(conn, PLAN)["leased"] == 0
    gemini.configure(latency=0.0)
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    assert wrong_vectors(conn, PLAN, "new") == []


def test_a_run_racing_abandon_stops_with_nothing_written(conn, run_cli, gemini, ollama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 200, index="hnsw", vectors=_source_vectors)
    assert run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                   "--name", PLAN, "--offline").exit_code == 0
    gemini.configure(latency=0.05)
    proc = reembed_process("run", PLAN, "--batch-size", "5", "--concurrency", "1", "--no-progress", cwd=tmp_path)
    try:
        wait_for(lambda: conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'done'").fetchone()[0] >= 10
                 or proc.poll() is not None, timeout=180, what="the run to be writing")
        assert proc.poll() is None, proc.communicate()
        assert run_cli("abandon", PLAN, "--yes").exit_code == 0
        out, err = proc.communicate(timeout=300)
    finally:
        kill_9(proc)
    assert proc.returncode == 1 and "abandoned by another command" in err, err
    assert ledger(conn, PLAN)["leased"] == 0
    assert columns(conn) == ["id", "title", "content", "embedding"]
    assert wrong_vectors(conn, PLAN, "old", column="embedding") == []


def test_abandon_after_a_rollback_gives_changed_rows_their_source_vector_first(conn, run_cli, gemini,  # type: ignore[no-untyped-def]
                                                                               ollama) -> None:
    _cut_over(conn, run_cli, rows=100)
    for i in range(15):
        conn.execute("UPDATE docs SET content = %s WHERE id = %s", (passage(60_000 + i), i))
    assert run_cli("rollback", PLAN).exit_code == 0
    refused = run_cli("abandon", PLAN, "--yes", "--catch-up-rows", "0")
    assert refused.exit_code == 1 and "15 rows changed since cutover" in refused.stderr
    assert plan_row(conn)[0] == "rolled_back"
    done = run_cli("abandon", PLAN, "--yes")
    assert done.exit_code == 0, done.output
    assert "gave 15 rows changed since cutover their ollama:nomic-embed-text vector" in done.output
    assert wrong_vectors(conn, PLAN, "old", column="embedding") == []


def test_a_phase_is_only_moved_on_from_the_phase_its_command_saw(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10, index=None)
    assert run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--name", PLAN,
                   "--offline").exit_code == 0
    plan_id = conn.execute("SELECT id FROM reembed.plans WHERE name = %s", (PLAN,)).fetchone()[0]
    # A verify that started before a cutover must not move the cut-over plan back to verified.
    set_phase(conn, plan_id, "cut_over", "the test")
    assert set_phase(conn, plan_id, "verified", "a late verify", expect=("backfilled", "indexed")) is False
    assert plan_row(conn)[0] == "cut_over"
    assert conn.execute("SELECT cut_over_at IS NOT NULL FROM reembed.plans WHERE id = %s", (plan_id,)).fetchone()[0]


def test_an_instance_on_the_other_model_re_saving_an_unchanged_document_is_re_embedded(  # type: ignore[no-untyped-def]
        conn, run_cli, gemini, ollama) -> None:
    """Soak seed 1029: text and title unchanged, but the application wrote its own vector."""
    _cut_over(conn, run_cli)
    text, title = conn.execute("SELECT content, title FROM docs WHERE id = 7").fetchone()
    # An instance still on the source model saves document 7 again, with that model's vector.
    conn.execute("UPDATE docs SET content = content, embedding = %s WHERE id = 7", (_source_vectors([text])[0],))
    # The same value written back, and another column changed, are no change.
    conn.execute("UPDATE docs SET embedding = embedding, title = title WHERE id BETWEEN 20 AND 29")
    assert ledger(conn, PLAN)["pending"] == 1 and _status(run_cli)["rows_source_stale"] == 1
    assert len(wrong_vectors(conn, PLAN, "new")) == 1
    result = run_cli("run", PLAN, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_written"] == 1
    # reembed's own write of that column is not the application's: nothing pending after it.
    assert ledger(conn, PLAN)["pending"] == 0 and wrong_vectors(conn, PLAN, "new") == []
    # After a rollback the column holds the source model's vectors: an instance already on the
    # target model re-saving a document is caught the same way, and the fill's writes are its own.
    assert run_cli("run", PLAN, "--rollback-fill", "--no-progress").exit_code == 0
    assert run_cli("rollback", PLAN).exit_code == 0
    conn.execute("UPDATE docs SET embedding = %s WHERE id = 8", (expected_vector(
        TARGET, conn.execute("SELECT content FROM docs WHERE id = 8").fetchone()[0], task_type="RETRIEVAL_DOCUMENT",
        title=conn.execute("SELECT title FROM docs WHERE id = 8").fetchone()[0], dimensions=768),))
    assert _status(run_cli)["rows_source_stale"] == 1 and len(wrong_vectors(conn, PLAN, "old")) == 1
    fill = run_cli("run", PLAN, "--rollback-fill", "--no-progress", "--json")
    assert fill.exit_code == 0, fill.output
    assert json.loads(fill.stdout)["rows_written"] == 1
    assert wrong_vectors(conn, PLAN, "old") == [] and _status(run_cli)["rows_source_stale"] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_second_rollback_behind_the_first_says_the_plan_moved(conn, run_cli, gemini, ollama,  # type: ignore[no-untyped-def]
                                                                strategy) -> None:
    from toolkit.errors import PlanMoved
    from toolkit.phases.rollback import rollback

    _cut_over(conn, run_cli, rows=30, strategy=strategy)
    plan, stale = load(conn, PLAN)  # read while cut over, as a second `reembed rollback` started at once would
    assert run_cli("rollback", PLAN).exit_code == 0
    with pytest.raises(PlanMoved, match="moved to phase rolled_back \\(another command\\)"):
        rollback(conn, plan, stale)
    assert plan_row(conn)[0] == "rolled_back" and _old_vectors_kept(conn)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_second_cutover_behind_the_first_says_the_plan_moved(conn, run_cli, gemini, ollama,  # type: ignore[no-untyped-def]
                                                               strategy) -> None:
    from toolkit.errors import PlanMoved
    from toolkit.phases.cutover import CutoverOptions, cutover

    _indexed(conn, run_cli, rows=30, strategy=strategy)
    plan, stale = load(conn, PLAN)  # read while indexed, as a second `reembed cutover` started at once would
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    # Its checks read the new vectors by the names they had before the first cutover took them
    # (interleaving soak seed 1195: a raw "relation ... does not exist").
    with pytest.raises(PlanMoved, match="moved to phase cut_over \\(another command\\)"):
        cutover(conn, plan, stale, CutoverOptions(force=True, catch_up_rows=0))
    assert plan_row(conn)[0] == "cut_over" and wrong_vectors(conn, PLAN, "new") == []
