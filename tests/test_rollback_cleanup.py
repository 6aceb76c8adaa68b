"""`reembed rollback` (the exact reverse swap), `reembed cleanup` (drop the old vectors) and
`reembed abandon` (drop the new ones): nothing of reembed's is left behind but its registry."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

from backfill_support import TARGET, gemini, ollama  # noqa: F401 (fixtures)
from swap_support import PLAN, backfilled, columns, indexes, plan_row, swap_record, vector_of
from tables import passage
from toolkit.emulators import expected_vector

APP_QUERY = "SELECT id FROM docs ORDER BY embedding <=> %s LIMIT 5"


def _leftovers(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Everything of reembed's outside its registry schema."""
    return {
        "triggers": [r[0] for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal")],
        "functions": [r[0] for r in conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'reembed' AND p.proname NOT IN ('mark_changed', 'guard_write')")],  # the registry's own
        "columns": [c for c in columns(conn) if "__" in c],
        "indexes": [n for n in indexes(conn) if "__" in n],
        "constraints": [r[0] for r in conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'docs'::regclass AND conname LIKE '%%reembed%%'")],
    }


def test_rollback_gives_back_the_old_vectors_for_the_same_query(conn, run_cli, gemini, ollama, database) -> None:  # type: ignore[no-untyped-def]
    def dependents(c: psycopg.Connection) -> None:
        c.execute("CREATE VIEW docs_v AS SELECT id, embedding FROM docs")
        c.execute("ALTER TABLE docs ALTER COLUMN embedding SET NOT NULL")
    backfilled(conn, run_cli, before_run=dependents)
    _, shadow, old = plan_row(conn)
    q = np.random.default_rng(3).standard_normal(768).astype(np.float32)
    before_ids = [r[0] for r in conn.execute(APP_QUERY, (q,))]
    before_view = conn.execute("SELECT pg_get_viewdef('docs_v'::regclass)").fetchone()[0]
    before_indexes = indexes(conn)
    old_7 = vector_of(conn, "embedding", 7)

    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    assert [r[0] for r in conn.execute(APP_QUERY, (q,))] != before_ids
    # The application writes a row after cutover: it has a new vector only.
    new_text = passage(10_000)
    new_vector = expected_vector(TARGET, new_text, task_type="RETRIEVAL_DOCUMENT", title="late", dimensions=768)
    conn.execute("INSERT INTO docs (id, title, content, embedding) VALUES (10000, 'late', %s, %s)",
                 (new_text, new_vector))

    result = run_cli("rollback", PLAN)
    assert result.exit_code == 0, result.stderr
    assert "lock held" in result.output
    assert "1 rows written or changed since cutover have no ollama:nomic-embed-text vector" in result.output
    assert f"reembed run {PLAN} --rollback-fill" in result.output and "10000" in result.output
    assert "NOT NULL is not restored yet" in result.output
    # The same query returns what it returned before cutover; view, index names, columns are back.
    assert [r[0] for r in conn.execute(APP_QUERY, (q,))] == before_ids
    np.testing.assert_array_equal(vector_of(conn, "embedding", 7), old_7)
    np.testing.assert_array_equal(conn.execute("SELECT embedding FROM docs_v WHERE id = 7").fetchone()[0].to_numpy(),
                                  old_7)
    assert conn.execute("SELECT pg_get_viewdef('docs_v'::regclass)").fetchone()[0] == before_view
    assert set(indexes(conn)) == set(before_indexes)
    assert shadow in columns(conn) and old not in columns(conn)
    assert plan_row(conn)[0] == "rolled_back"
    swap_record(conn, "rollback")  # held, at the first try, released
    # A NULL is refused meanwhile (the NOT VALID check), then the fill and a re-run restore NOT NULL.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO docs (id, title, content) VALUES (10001, 't', 'no vector')")
    fill = run_cli("run", PLAN, "--rollback-fill", "--no-progress", "--json")
    assert fill.exit_code == 0, fill.output
    np.testing.assert_allclose(vector_of(conn, "embedding", 10000), expected_vector(
        "ollama:nomic-embed-text", new_text, task_type="RETRIEVAL_DOCUMENT", dimensions=768), atol=1e-6)
    again = run_cli("rollback", PLAN)
    assert again.exit_code == 0 and "without a table scan" in again.output
    assert conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'docs'::regclass "
                        "AND attname = 'embedding'").fetchone()[0] is True
    # And it can be cut over again.
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    assert run_cli("cutover", PLAN, "--force").exit_code == 0


def test_rollback_refuses_unless_cut_over(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    result = run_cli("rollback", PLAN)
    assert result.exit_code == 1 and "only a cut-over plan" in result.stderr


def test_cleanup_leaves_nothing_but_the_registry(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert _leftovers(conn)["triggers"] and _leftovers(conn)["functions"]
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    new_3 = vector_of(conn, "embedding", 3)
    result = run_cli("cleanup", PLAN, "--yes")
    assert result.exit_code == 0, result.stderr
    assert "MB of embedding__old_nomic_embed_text stays" in result.output
    assert "VACUUM FULL" in result.output and "pg_repack" in result.output
    assert _leftovers(conn) == {"triggers": [], "functions": [], "columns": [], "indexes": [], "constraints": []}
    assert columns(conn) == ["id", "title", "content", "embedding"]
    assert set(indexes(conn)) == {"docs_pkey", "docs_embedding_idx"}
    np.testing.assert_array_equal(vector_of(conn, "embedding", 3), new_3)
    assert plan_row(conn)[0] == "cleaned_up"
    assert conn.execute("SELECT count(*) FROM reembed.swaps").fetchone()[0] == 1  # the registry keeps the history
    assert run_cli("rollback", PLAN).exit_code == 1  # final


def test_cleanup_stops_at_a_forgotten_dependent_and_drops_nothing(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    old = plan_row(conn)[2]
    conn.execute(f'CREATE VIEW old_vectors AS SELECT id, "{old}" FROM docs')
    before = (columns(conn), indexes(conn), _leftovers(conn))
    result = run_cli("cleanup", PLAN, "--json", "--yes")
    assert result.exit_code == 1
    assert "public.old_vectors" in result.stderr and "without CASCADE" in result.stderr
    assert (columns(conn), indexes(conn), _leftovers(conn)) == before
    assert plan_row(conn)[0] == "cut_over"
    conn.execute("DROP VIEW old_vectors")
    done = run_cli("cleanup", PLAN, "--json", "--yes")
    assert done.exit_code == 0
    data = json.loads(done.stdout)
    assert data["column"] == old and data["column_bytes"] > 300 * 3000 and data["index_bytes"] > 0


def test_abandon_drops_the_new_vectors_and_tracking(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    old_1 = vector_of(conn, "embedding", 1)
    result = run_cli("abandon", PLAN, "--yes")
    assert result.exit_code == 0, result.stderr
    assert _leftovers(conn) == {"triggers": [], "functions": [], "columns": [], "indexes": [], "constraints": []}
    assert set(indexes(conn)) == {"docs_pkey", "docs_embedding_idx"}
    np.testing.assert_array_equal(vector_of(conn, "embedding", 1), old_1)
    assert plan_row(conn)[0] == "abandoned"


def test_abandon_refuses_a_cut_over_plan(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    result = run_cli("abandon", PLAN, "--yes")
    assert result.exit_code == 1 and f"reembed rollback {PLAN}" in result.stderr
    assert plan_row(conn)[0] == "cut_over"
