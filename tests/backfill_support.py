"""Helpers shared by the backfill tests: a Gemini emulator wired into the environment, a plan
on a docs table, and the check that every stored vector is exactly what the emulator gives
for the row's current text and title."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql

from toolkit.emulators import EmulatorServer, expected_vector, start_gemini, start_ollama

TARGET = "gemini:gemini-embedding-001"
API_KEY = "test-key-backfill-0001"
FLOAT32_ATOL = 1e-6
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """A Gemini emulator; the real google-genai client is pointed at it through the environment."""
    server = start_gemini()
    monkeypatch.setenv("GOOGLE_API_KEY", API_KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("REEMBED_GEMINI_BASE_URL", raising=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An Ollama emulator (the source model, for rollback fill and verify); OLLAMA_HOST points at it."""
    server = start_ollama()
    monkeypatch.setenv("OLLAMA_HOST", server.base_url)
    try:
        yield server.base_url
    finally:
        server.stop()


def make_plan(run_cli, table: str = "docs", name: str = "p1", title: bool = True) -> str:  # type: ignore[no-untyped-def]
    args = ["plan", table, "--strategy", "column", "--column", "embedding", "--text", "content", "--name", name, "--offline"]
    if title:
        args += ["--title", "title"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return name


def shadow_column(conn: psycopg.Connection, name: str) -> str:
    return conn.execute("SELECT shadow_column FROM reembed.plans WHERE name = %s", (name,)).fetchone()[0]


def mismatches(conn: psycopg.Connection, column: str, table: str = "docs", title: bool = True,
               dims: int = 768) -> list[str]:
    """Every row whose stored vector is not the float32 vector the target gives for its current
    text and title (a missing vector counts, except for empty text, which must have none)."""
    rows = conn.execute(sql.SQL("SELECT id, content, title, {} FROM {} ORDER BY id").format(
        sql.Identifier(column), sql.Identifier(table))).fetchall()
    return [problem for id_, content, title_, vector in rows
            if (problem := vector_problem(id_, content, vector, lambda: expected_vector(
                TARGET, content, task_type="RETRIEVAL_DOCUMENT", title=title_ if title else None,
                dimensions=dims)))]


def vector_problem(key: object, text: str | None, vector: object, want: Callable[[], np.ndarray]) -> str | None:
    """What is wrong with one row's stored vector, or None: blank text must have no vector, other
    text exactly `want()` at float32 precision (the provider and expected_vector may normalize in
    a different order: last-bit differences, ~1e-8; a vector of another text differs by ~1e-2)."""
    if text is None or not text.strip():
        return f"{key}: blank text but a vector" if vector is not None else None
    if vector is None:
        return f"{key}: no vector"
    expected = want()
    got = np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, dtype=np.float32)
    if got.shape != expected.shape:
        return f"{key}: shape {got.shape}, expected {expected.shape}"
    if not np.allclose(got, expected, rtol=0, atol=FLOAT32_ATOL):
        return f"{key}: max diff {float(np.max(np.abs(got - expected))):.3g}"
    return None


def reembed_subprocess(*args: str, env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "toolkit", *args], env=env, cwd=kwargs.pop("cwd", None),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def status_json(run_cli, name: str) -> dict:  # type: ignore[no-untyped-def]
    result = run_cli("status", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
