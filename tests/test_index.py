"""`reembed index`: the original's kind of vector index, built CONCURRENTLY on the new vectors."""

from __future__ import annotations

import json

import psycopg
import pytest

from backfill_support import gemini  # noqa: F401 (fixture)
from swap_support import PLAN, backfilled, indexes, plan_row
from tables import create_docs
from toolkit.errors import BadInput
from toolkit.phases.index import graph_memory, parse_size

SHADOW_INDEX = "gemini_embedding_001__docs_embedding_idx"


def _index_state(conn: psycopg.Connection, name: str) -> tuple[bool, bool] | None:
    row = conn.execute("SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = to_regclass(%s)",
                       (name,)).fetchone()
    return (row[0], row[1]) if row else None


def test_builds_the_same_kind_of_index_with_progress_and_sized_memory(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, build_index=False)
    result = run_cli("index", PLAN, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["action"] == "built" and data["index"] == SHADOW_INDEX and not data["dropped_invalid"]
    # Graph-sized memory: rows x (4*dims+8) x 1.3, never below the server's own setting.
    settings = data["settings"]
    assert settings["rows"] == 300 and settings["wanted"] == graph_memory(300, 768)
    current = conn.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0]
    assert settings["maintenance_work_mem"] == max(graph_memory(300, 768), current)
    definition = indexes(conn)[SHADOW_INDEX]
    assert "USING hnsw (embedding__gemini_embedding_001 vector_cosine_ops)" in definition
    assert "m='24'" in definition
    assert _index_state(conn, SHADOW_INDEX) == (True, True)
    assert plan_row(conn)[0] == "indexed"
    # Progress from pg_stat_progress_create_index goes to stderr (tqdm).
    again = run_cli("index", PLAN)
    assert again.exit_code == 0 and "already exists and is valid" not in again.output  # notes only on builds
    assert "kept" in again.output
    # A kept index reports its real size, as a built one does.
    kept = json.loads(run_cli("index", PLAN, "--json").stdout)
    real = conn.execute("SELECT pg_relation_size(%s::regclass)", (SHADOW_INDEX,)).fetchone()[0]
    assert kept["action"] == "kept" and kept["size_bytes"] == real == data["size_bytes"] > 0
    assert (kept["plan"], kept["phase"]) == (PLAN, "indexed")


def test_memory_is_capped_by_the_flag(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, rows=400, build_index=False)  # the graph wants ~1.6 MB
    result = run_cli("index", PLAN, "--maintenance-work-mem", "1MB", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    assert "maintenance_work_mem 1.0 MB" in result.output and "0 parallel workers" in result.output
    assert "capped at 1 MB" in result.output
    assert _index_state(conn, SHADOW_INDEX) == (True, True)


def test_progress_bar_reports_the_build(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, rows=1500, build_index=False)
    result = run_cli("index", PLAN, "--workers", "0")
    assert result.exit_code == 0, result.stderr
    assert f"index {SHADOW_INDEX}" in result.stderr  # the tqdm bar's description
    assert "built in" in result.output


def test_an_invalid_leftover_is_dropped_and_rebuilt(conn, run_cli, gemini, database) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, build_index=False)
    shadow = plan_row(conn)[1]
    # An interrupted CONCURRENTLY build: a writer keeps it waiting, the statement times out,
    # and the index stays behind INVALID.
    writer = database.connect(autocommit=False)
    writer.execute("UPDATE docs SET title = title WHERE id = 1")
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SET statement_timeout = '300ms'")
        conn.execute(f'CREATE INDEX CONCURRENTLY "{SHADOW_INDEX}" ON docs USING hnsw ("{shadow}" vector_cosine_ops)')
    conn.execute("RESET statement_timeout")
    writer.rollback()
    writer.close()
    assert _index_state(conn, SHADOW_INDEX) == (False, False)
    result = run_cli("index", PLAN)
    assert result.exit_code == 0, result.stderr
    assert "INVALID leftover" in result.output
    assert _index_state(conn, SHADOW_INDEX) == (True, True)
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (SHADOW_INDEX,)).fetchone()[0] == 1


def test_no_index_is_built_when_the_original_has_none(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, index=None, build_index=False)
    result = run_cli("index", PLAN)
    assert result.exit_code == 0
    assert "has no vector index, so none is built" in result.output
    assert [n for n in indexes(conn) if n != "docs_pkey"] == []
    assert plan_row(conn)[0] == "indexed"
    assert run_cli("cutover", PLAN, "--force").exit_code == 0  # nothing to rename, still one swap


def test_an_index_is_built_when_the_plan_asks(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, index=None, build_index=False, plan_args=("--index", "hnsw:l2"))
    result = run_cli("index", PLAN)
    assert result.exit_code == 0, result.stderr
    built = [d for n, d in indexes(conn).items() if n != "docs_pkey"]
    assert len(built) == 1 and "USING hnsw (embedding__gemini_embedding_001 vector_l2_ops)" in built[0]
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    assert "USING hnsw (embedding vector_l2_ops)" in [d for n, d in indexes(conn).items() if n != "docs_pkey"][0]


def test_index_refuses_before_the_backfill(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10)
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", PLAN,
                   "--offline").exit_code == 0
    result = run_cli("index", PLAN)
    assert result.exit_code == 1 and f"reembed run {PLAN}" in result.stderr
    assert list(indexes(conn)) == ["docs_pkey", "docs_embedding_idx"] or set(indexes(conn)) == {
        "docs_pkey", "docs_embedding_idx"}


def test_sizes_parse() -> None:
    assert parse_size("512MB") == 512 * 2**20 and parse_size("2GB") == 2 * 2**30 and parse_size("65536kB") == 2**26
    assert graph_memory(10_000, 768) == int(10_000 * 3080 * 1.3)
    with pytest.raises(BadInput):
        parse_size("lots")


def test_a_partial_index_keeps_its_predicate(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    def partial(c: psycopg.Connection) -> None:
        c.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops) WITH (m = 12) "
                  "WHERE title IS NOT NULL")
    backfilled(conn, run_cli, index=None, before_run=partial)
    definition = indexes(conn)[SHADOW_INDEX]
    assert "WITH (m='12') WHERE (title IS NOT NULL)" in definition  # exactly the original's


def test_a_predicate_on_the_vector_column_itself_is_carried_to_the_new_column(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    def partial(c: psycopg.Connection) -> None:
        c.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops) "
                  "WHERE embedding IS NOT NULL")
    backfilled(conn, run_cli, index=None, before_run=partial)
    assert "WHERE (embedding__gemini_embedding_001 IS NOT NULL)" in indexes(conn)[SHADOW_INDEX]