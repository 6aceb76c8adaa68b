"""`reembed plan`: validated against the live table, a reviewable file, a registered plan; bad input
is refused with exit 2 and changes nothing."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import psycopg
import pytest

from cli_support import error_lines
from tables import create_docs
from toolkit.plan import read_plan_file


def _snapshot(conn: psycopg.Connection) -> tuple:
    columns = conn.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3").fetchall()
    triggers = conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1").fetchall()
    plans = conn.execute("SELECT name FROM reembed.plans ORDER BY 1").fetchall()
    return columns, triggers, plans


def test_plan_writes_a_reviewable_file_with_an_estimate(conn: psycopg.Connection, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 300)
    conn.execute("UPDATE docs SET content = '  ' WHERE id < 10")
    before = _snapshot(conn)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--offline")
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "reembed-docs-embedding-gemini_embedding_001.toml"
    spec = tomllib.loads(path.read_text())
    assert spec["column"] == {"name": "embedding", "type": "vector(768)", "not_null": False,
                              "shadow": "embedding__gemini_embedding_001",
                              "old": "embedding__old_nomic_embed_text"}
    assert spec["target"]["model"] == "gemini:gemini-embedding-001" and spec["target"]["dimensions"] == 768
    assert spec["source"]["model"] == "ollama:nomic-embed-text"
    assert spec["strategy"] == "column"
    [index] = spec["indexes"]
    assert index["method"] == "hnsw" and index["options"] == {"m": 24, "ef_construction": 64}
    assert index["original_name"] == "docs_embedding_idx"
    assert index["body"] == "USING hnsw (embedding vector_cosine_ops) WITH (m='24')"
    estimate = spec["estimate"]
    assert estimate["rows_total"] == 300 and estimate["rows_to_embed"] == 290 and estimate["rows_empty"] == 10
    assert estimate["http_requests"] == 3 and estimate["quota_requests"] == 290
    assert estimate["tokens"] > 290 * 10
    assert estimate["minutes_at_quota"] == pytest.approx(max(290 / 100, estimate["tokens"] / 30000), abs=0.1)
    assert estimate["cost_usd"] == pytest.approx(estimate["tokens"] / 1e6 * 0.15, abs=1e-4)
    assert estimate["shadow_column_bytes"] == 300 * (4 * 768 + 8)
    assert "estimate:" in result.stdout and "time at quota" in result.stdout
    # Nothing in the user's table changed; the plan is registered.
    columns, triggers, plans = _snapshot(conn)
    assert (columns, triggers) == before[:2]
    assert plans == [("docs-embedding-gemini_embedding_001",)]
    assert read_plan_file(path).name == "docs-embedding-gemini_embedding_001"
    listed = json.loads(run_cli("plans", "--json").stdout)
    assert listed["plans"][0]["phase"] == "planned"


def test_plan_json_and_sql(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content,title", "--offline", "--json",
                     "--name", "p1", "--output", "p1.toml", "--rpm", "1000", "--tpm", "1000000")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["file"] == "p1.toml"
    assert data["spec"]["text"]["columns"] == ["content", "title"]
    assert data["spec"]["estimate"]["rpm"] == 1000


def test_plan_sql_shows_prepare_ddl(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("toolkit.phases.prepare")
    create_docs(conn, 5)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--sql")
    assert result.exit_code == 0, result.stderr
    assert "-- prepare" in result.stdout
    assert 'ADD COLUMN "embedding__gemini_embedding_001"' in result.stdout


BAD_INPUTS = [
    (["nope", "--column", "embedding", "--text", "content"], "table nope does not exist"),
    (["docs", "--column", "missing", "--text", "content"], "column 'missing' does not exist"),
    (["docs", "--column", "content", "--text", "content"], "not a vector column"),
    (["nokey", "--column", "embedding", "--text", "content"], "has no primary key"),
    (["docs", "--column", "embedding", "--text", "content", "--dimensions", "0"],
     "0 is not in the range 1<=x<=16000"),
    (["unsized", "--column", "embedding", "--text", "content", "--dimensions", "3072", "--index", "hnsw:cosine"],
     "cannot index vector above 2000 dimensions"),
    (["docs", "--column", "embedding", "--text", "nope"], "text column 'nope' does not exist"),
    (["docs", "--column", "embedding", "--text", "id"], "not a text column"),
    (["docs", "--column", "embedding", "--text", "content", "--title", "id"], "not a text column"),
    (["docs", "--column", "embedding", "--text", "content", "--to", "openai:text-embedding-3-small"],
     "unknown provider 'openai'"),
    (["docs", "--column", "embedding", "--text", "content", "--to", "gemini:text-embedding-004"],
     "text-embedding-004 was shut down on 2026-01-14; use gemini:gemini-embedding-001"),
    (["docs", "--column", "embedding", "--text", "content", "--to", "text-embedding-004"],
     "use gemini:gemini-embedding-001"),
    (["docs", "--column", "embedding", "--text", "content", "--to", "gemini"], "must be written PROVIDER:MODEL"),
    (["docs", "--column", "embedding", "--text", "content", "--name", "taken"], "already in use"),
    (["docs", "--column", "embedding", "--text", "content", "--name", "bad name;drop"], "plan name"),
    (["docs", "--column", "embedding", "--text", "content", "--index", "btree:x"], "--index"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_exits_2_and_changes_nothing(conn: psycopg.Connection, run_cli, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 5, index="hnsw")
    conn.execute("CREATE TABLE nokey (embedding vector(768), content text)")
    conn.execute("CREATE TABLE unsized (id int PRIMARY KEY, content text, embedding vector)")
    conn.execute("INSERT INTO reembed.plans (name, table_schema, table_name, column_name, shadow_column, old_column, "
                 "source_model, target_model, dimensions, spec, table_fingerprint, phase) VALUES ('taken', 'public', "
                 "'other', 'c', 's', 'o', 'a', 'b', 1, '{}', 'x', 'cleaned_up')")
    before = _snapshot(conn)
    result = run_cli("plan", *args, "--offline")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(error_lines(result.stderr)) == 1
    assert _snapshot(conn) == before


def test_second_live_plan_on_a_column_is_refused(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 5)
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline").exit_code == 0
    again = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--name", "other")
    assert again.exit_code == 2
    assert "already has a live plan 'docs-embedding-gemini_embedding_001'" in again.stderr


def test_edited_plan_file_is_refused_with_the_difference(conn: psycopg.Connection, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from toolkit.errors import BadInput
    from toolkit.plan import load

    create_docs(conn, 5)
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "-o", "p.toml").exit_code == 0
    path = tmp_path / "p.toml"
    path.write_text(path.read_text().replace('shadow = "embedding__gemini_embedding_001"',
                                             'shadow = "x\\"; DROP TABLE docs; --"'))
    with pytest.raises(BadInput, match="column.shadow is"):
        load(conn, str(path))
    conn.execute("ALTER TABLE docs ALTER COLUMN content TYPE varchar(500)")
    with pytest.raises(BadInput, match="changed since plan"):
        load(conn, "docs-embedding-gemini_embedding_001")
