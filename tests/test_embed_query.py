"""`reembed embed-query` and `reembed emulator`: real HTTP to the emulators, real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from typing import Iterator

import numpy as np
import psycopg
import pytest

from tables import create_docs
from toolkit.emulators import expected_vector, start_gemini, start_ollama

QUESTION = "which index makes vector search fast"


@pytest.fixture()
def providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, object]]:
    """Both emulators, and the environment reembed reads pointing at them (a dummy key)."""
    with start_gemini(api_keys=["test-key-embed-query"]) as gemini, start_ollama() as ollama:
        for name in ("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("GOOGLE_API_KEY", "test-key-embed-query")
        monkeypatch.setenv("REEMBED_GEMINI_BASE_URL", gemini.base_url)
        monkeypatch.setenv("OLLAMA_HOST", ollama.base_url)
        yield gemini, ollama


@pytest.fixture()
def planned(conn: psycopg.Connection, run_cli) -> str:  # type: ignore[no-untyped-def]
    create_docs(conn, 30)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--offline",
                     "--name", "docs-gemini")
    assert result.exit_code == 0, result.stderr
    return "docs-gemini"


def _parse(literal: str) -> np.ndarray:
    text = literal.strip()
    assert text.startswith("[") and text.endswith("]") and " " not in text
    return np.array([float(x) for x in text[1:-1].split(",")], dtype=np.float32)


def test_target_query_vector_is_the_retrieval_query_embedding(run_cli, planned: str, providers) -> None:  # type: ignore[no-untyped-def]
    gemini, _ = providers
    result = run_cli("embed-query", QUESTION)
    assert result.exit_code == 0, result.stderr
    got = _parse(result.stdout)
    want = expected_vector("gemini:gemini-embedding-001", QUESTION, task_type="RETRIEVAL_QUERY", dimensions=768)
    assert got.shape == (768,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    doc = expected_vector("gemini:gemini-embedding-001", QUESTION, task_type="RETRIEVAL_DOCUMENT", dimensions=768)
    assert not np.allclose(got, doc, atol=1e-3), "a query must not be embedded as a document"
    assert gemini.stats.texts == 1
    assert "test-key-embed-query" not in result.stdout + result.stderr


def test_source_query_vector_uses_the_ollama_query_prefix(run_cli, planned: str, providers) -> None:  # type: ignore[no-untyped-def]
    gemini, ollama = providers
    result = run_cli("embed-query", QUESTION, "--plan", planned, "--source")
    assert result.exit_code == 0, result.stderr
    got = _parse(result.stdout)
    np.testing.assert_allclose(
        got, expected_vector("ollama:nomic-embed-text", QUESTION, task_type="RETRIEVAL_QUERY", dimensions=768),
        atol=1e-6)
    assert ollama.stats.texts == 1 and gemini.stats.texts == 0


def test_the_literal_works_in_the_unchanged_retrieval_sql(run_cli, conn: psycopg.Connection, planned: str,
                                                          providers) -> None:  # type: ignore[no-untyped-def]
    literal = run_cli("embed-query", QUESTION, "--source").stdout.strip()
    rows = conn.execute("SELECT id FROM docs ORDER BY embedding <=> %s::vector LIMIT 3", (literal,)).fetchall()
    assert len(rows) == 3
    norm = conn.execute("SELECT vector_norm(%s::vector)", (literal,)).fetchone()[0]
    assert abs(norm - 1.0) < 1e-5


def test_without_plan_it_needs_exactly_one_live_plan(run_cli, conn: psycopg.Connection, providers) -> None:  # type: ignore[no-untyped-def]
    none = run_cli("embed-query", QUESTION)
    assert none.exit_code == 2 and "no live plan" in none.stderr
    create_docs(conn, 10, table="a")
    create_docs(conn, 10, table="b")
    for table in ("a", "b"):
        assert run_cli("plan", table, "--strategy", "column", "--column", "embedding", "--text", "content", "--offline").exit_code == 0
    two = run_cli("embed-query", QUESTION)
    assert two.exit_code == 2 and "--plan" in two.stderr and "2 live plans" in two.stderr
    assert two.stdout == ""
    named = run_cli("embed-query", QUESTION, "--plan", "b-embedding-gemini_embedding_001")
    assert named.exit_code == 0, named.stderr
    unknown = run_cli("embed-query", QUESTION, "--plan", "nope")
    assert unknown.exit_code == 2 and "nope" in unknown.stderr


def test_empty_text_is_bad_input(run_cli, planned: str, providers) -> None:  # type: ignore[no-untyped-def]
    gemini, _ = providers
    result = run_cli("embed-query", "   ")
    assert result.exit_code == 2 and "empty" in result.stderr
    assert gemini.stats.requests == 0


def test_an_unreachable_provider_exits_3(run_cli, planned: str, providers, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("REEMBED_TIMEOUT", "2")
    result = run_cli("embed-query", QUESTION, "--source")
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("api", ["ollama", "gemini"])
def test_emulator_command_serves_in_the_foreground_until_interrupted(api: str) -> None:
    # Without PYTHONUNBUFFERED, as a user's shell: the URL line must reach the pipe while it serves.
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "PYTHONUNBUFFERED")}
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "emulator", api, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        if api == "ollama":
            request = urllib.request.Request(f"{url}/api/embed", data=json.dumps(
                {"model": "nomic-embed-text", "input": ["hello"]}).encode(), headers={"Content-Type": "application/json"})
            body = json.load(urllib.request.urlopen(request, timeout=120))
            assert len(body["embeddings"][0]) == 768
        else:
            request = urllib.request.Request(
                f"{url}/v1beta/models/gemini-embedding-001:embedContent",
                data=json.dumps({"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 768}).encode(),
                headers={"Content-Type": "application/json", "x-goog-api-key": "anything"})
            body = json.load(urllib.request.urlopen(request, timeout=120))
            assert len(body["embedding"]["values"]) == 768
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "1 embedding requests" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
