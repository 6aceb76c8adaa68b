"""`reembed demo` end to end on the test's database, with the emulators, small."""

from __future__ import annotations

import os
import re

import numpy as np
import psycopg
import pytest

from tables import create_docs
from toolkit.demo.providers import EMULATOR_KEY
from toolkit.emulators import expected_vector

ROWS = "300"
STEPS = ("inspect", "plan", "run", "index", "verify", "cutover")


@pytest.fixture(autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The corpus cache goes to the data directory: keep it out of the user's home."""
    path = tmp_path_factory.mktemp("reembed-data")
    monkeypatch.setenv("REEMBED_DATA_DIR", str(path))
    return path


@pytest.fixture()
def demo(run_cli):  # type: ignore[no-untyped-def]
    def invoke(*extra: str):  # type: ignore[no-untyped-def]
        return run_cli("demo", "--rows", ROWS, "--emulators", *extra)

    return invoke


def _sql_lines(stdout: str) -> list[str]:
    return [line.split("SQL:", 1)[1].strip() for line in stdout.splitlines() if line.strip().startswith("SQL:")]


def test_demo_runs_the_whole_lifecycle_and_the_sql_text_does_not_change(demo, run_cli, conn: psycopg.Connection,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # a user's setting the demo must restore
    create_docs(conn, 20)  # the user's own table and plan, which the demo must leave alone
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--name",
                   "users-plan").exit_code == 0
    result = demo()
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout

    for step in STEPS:  # each lifecycle command was shown as typed, then ran
        assert re.search(rf"^\$ reembed {step} ", out, re.MULTILINE), step
    assert "verify reembed-demo: PASSED" in out
    assert "NOT DONE" not in out and "(failed in" not in out
    sql_before, sql_after = _sql_lines(out)
    assert sql_before == sql_after and "ORDER BY \"embedding\" <=> $1" in sql_before
    assert "SQL text before and after cutover: IDENTICAL" in out
    assert re.search(r"the table was locked for \d+\.\d ms", out)
    assert out.count("EMULATED") >= 2 and "emulated: Ollama nomic-embed-text, Gemini gemini-embedding-001" in out
    assert EMULATOR_KEY not in out + result.stderr

    # The database agrees with the narration.
    phase, plan_id = conn.execute("SELECT phase, id FROM reembed.plans WHERE name = 'reembed-demo'").fetchone()
    assert phase == "cut_over"
    lock_ms = conn.execute("SELECT lock_ms FROM reembed.swaps WHERE plan_id = %s AND direction = 'cutover'",
                           (plan_id,)).fetchone()[0]
    assert f"{lock_ms:.1f} ms" in out
    assert conn.execute("SELECT passed FROM reembed.verifications WHERE plan_id = %s ORDER BY id DESC LIMIT 1",
                        (plan_id,)).fetchone()[0] is True
    assert conn.execute("SELECT count(*) FROM reembed_demo.passages").fetchone()[0] == int(ROWS)
    # `embedding` now holds the target's document vectors; the source's sit in the old table (the
    # demo takes the recommended strategy: copy, since nothing on its table points elsewhere).
    assert conn.execute("SELECT spec->>'strategy' FROM reembed.plans WHERE id = %s", (plan_id,)).fetchone()[0] == "copy"
    row_id, title, content, new, old = conn.execute(
        "SELECT p.id, p.title, p.content, p.embedding, o.embedding FROM reembed_demo.passages p "
        "JOIN reembed_demo.passages__old_nomic_embed_text o USING (id) ORDER BY p.id LIMIT 1").fetchone()
    np.testing.assert_allclose(new.to_numpy(), expected_vector(
        "gemini:gemini-embedding-001", content, task_type="RETRIEVAL_DOCUMENT", title=title, dimensions=768), atol=1e-5)
    np.testing.assert_allclose(old.to_numpy(), expected_vector(
        "ollama:nomic-embed-text", content, task_type="RETRIEVAL_DOCUMENT", dimensions=768), atol=1e-5)
    # Real text from Python's own documentation, not generated filler.
    assert conn.execute("SELECT count(*) FROM reembed_demo.passages WHERE content ILIKE '%%exception%%'").fetchone()[0] > 0
    # The environment the demo changed is back as it was.
    assert os.environ["OLLAMA_HOST"] == "http://127.0.0.1:9"
    assert "GOOGLE_API_KEY" not in os.environ and "REEMBED_GEMINI_BASE_URL" not in os.environ

    # Running it again is harmless: its own schema and plan start over, nothing else moves.
    second = demo()
    assert second.exit_code == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "removed the previous demo run (plan reembed-demo" in second.stdout
    plans = conn.execute("SELECT name, phase FROM reembed.plans ORDER BY id").fetchall()
    assert plans[0] == ("users-plan", "planned") and [p[0] for p in plans].count("reembed-demo") == 1
    # The first run's change-tracking function (in schema reembed) went with its plan.
    assert conn.execute("SELECT to_regproc(%s)", (f"reembed.track_{plan_id}",)).fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM reembed.ledger l JOIN reembed.plans p ON p.id = l.plan_id "
                        "WHERE p.name = 'reembed-demo'").fetchone()[0] == int(ROWS)
    assert conn.execute("SELECT count(*) FROM public.docs").fetchone()[0] == 20
    assert _sql_lines(second.stdout) == [sql_before, sql_after]


def test_a_schema_of_the_same_name_it_did_not_create_is_refused(demo, conn: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE SCHEMA reembed_demo")
    conn.execute("CREATE TABLE reembed_demo.mine (id int)")
    result = demo()
    assert result.exit_code == 2
    assert "was not created by `reembed demo`" in result.stderr
    assert conn.execute("SELECT to_regclass('reembed_demo.mine')").fetchone()[0] is not None


def test_rows_out_of_range_is_bad_input(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("demo", "--rows", "5", "--emulators")
    assert result.exit_code == 2 and "--rows" in result.stderr


def test_real_services_are_used_when_present_and_the_environment_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.demo.providers import DemoProviders
    from toolkit.emulators import start_ollama

    monkeypatch.setenv("GOOGLE_API_KEY", "users-real-key-1234")
    monkeypatch.delenv("REEMBED_GEMINI_BASE_URL", raising=False)
    with start_ollama() as ollama:  # stands in for a real Ollama that has nomic-embed-text
        monkeypatch.setenv("OLLAMA_HOST", ollama.base_url)
        with DemoProviders() as found:
            assert not found.source_emulated and not found.target_emulated
            assert os.environ["GOOGLE_API_KEY"] == "users-real-key-1234"
            assert "REEMBED_GEMINI_BASE_URL" not in os.environ
            assert all("EMULATED" not in line for line in found.describe())
            assert "users-real-key-1234" not in " ".join(found.describe())
        with DemoProviders(force_emulators=True) as forced:
            # The user's key must not travel to the emulator; the dummy one is for the demo only.
            assert os.environ["GOOGLE_API_KEY"] == EMULATOR_KEY
            assert os.environ["OLLAMA_HOST"] != ollama.base_url
            assert sum("EMULATED" in line for line in forced.describe()) == 2
    assert os.environ["GOOGLE_API_KEY"] == "users-real-key-1234"
    assert "REEMBED_GEMINI_BASE_URL" not in os.environ and "GOOGLE_GEMINI_BASE_URL" not in os.environ


def test_an_ollama_without_the_model_or_nothing_listening_means_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.demo.providers import DemoProviders
    from toolkit.emulators import start_ollama

    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with start_ollama(models=("all-minilm",)) as other:
        monkeypatch.setenv("OLLAMA_HOST", other.base_url)
        with DemoProviders() as found:
            assert found.source_emulated and found.target_emulated
            assert os.environ["OLLAMA_HOST"] != other.base_url
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    with DemoProviders() as found:
        assert found.source_emulated


def test_the_corpus_is_real_prose_shipped_with_python_and_stable() -> None:
    from toolkit.demo import corpus

    first = corpus.passages(400)
    assert first == corpus.passages(400)  # same order every run: reruns build the same table
    assert len({p.content for p in first}) == 400
    assert all(p.title.strip() and corpus.is_prose(p.content) and len(p.content) <= 2 * corpus.MAX_CHARS
               for p in first)
    assert any(p.title == "The assert statement" for p in first)  # the language reference's own pages
    assert not corpus.is_prose(">>> sorted([3, 1, 2])\n[1, 2, 3]")
    assert len(corpus.passages(2500)) >= 2000  # "a few thousand" passages are there to load


def test_the_corpus_cache_returns_what_was_built_and_survives_damage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from toolkit.demo import corpus

    built = corpus.passages(200, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("demo-corpus-*.json")
    assert corpus.passages(200, cache_dir=tmp_path) == built == corpus.passages(200)
    assert corpus.passages(50, cache_dir=tmp_path) == built[:50]
    cache.write_text("{not json")
    assert corpus.passages(200, cache_dir=tmp_path) == built


def test_table_only_leaves_a_filled_table_to_practise_the_real_job_on(demo, run_cli,  # type: ignore[no-untyped-def]
                                                                      conn: psycopg.Connection) -> None:
    result = demo("--table-only")
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows, vectors = conn.execute("SELECT count(*), count(embedding) FROM reembed_demo.passages").fetchone()
    assert rows == vectors == int(ROWS)
    assert conn.execute("SELECT count(*) FROM reembed.plans").fetchone()[0] == 0  # the lifecycle is the user's
    assert "practise the real job on reembed_demo.passages" in result.stdout
    assert "reembed emulator gemini" in result.stdout and "reembed plan reembed_demo.passages" in result.stdout
    planned = run_cli("plan", "reembed_demo.passages", "--column", "embedding", "--text", "content", "--title",
                      "title", "--name", "practice", "--offline")
    assert planned.exit_code == 0, planned.stderr
