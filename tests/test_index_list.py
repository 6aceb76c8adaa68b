"""Every vector index that reads the column follows it: planned, built on the new vectors, renamed
at cutover and back at rollback, dropped at cleanup. And plans written before the index list
(one `index` table, no `strategy`) still load."""

from __future__ import annotations

import json
import tomllib

import psycopg

from backfill_support import gemini  # noqa: F401 (fixture)
from swap_support import PLAN, backfilled, indexes, plan_row
from toolkit.plan import Plan

MAIN, PARTIAL, L2 = "docs_embedding_idx", "docs_embedding_tenant_idx", "docs_embedding_l2_idx"


def _three_indexes(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE docs ADD COLUMN tenant int DEFAULT 1")
    conn.execute(f"CREATE INDEX {PARTIAL} ON docs USING hnsw (embedding vector_cosine_ops) WHERE tenant = 1")
    conn.execute(f"CREATE INDEX {L2} ON docs USING hnsw (embedding vector_l2_ops) WITH (m = 8)")


def _uses(conn: psycopg.Connection, query: str) -> str:
    conn.execute("SET enable_seqscan = off")
    try:
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + query, prepare=False).fetchone()[0]
    finally:
        conn.execute("RESET enable_seqscan")
    return json.dumps(plan)


def test_every_vector_index_on_the_column_is_rebuilt_swapped_and_cleaned_up(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, before_run=_three_indexes)
    spec = tomllib.loads((tmp_path / f"reembed-{PLAN}.toml").read_text())
    assert [i["original_name"] for i in spec["indexes"]] == [MAIN, L2, PARTIAL]  # catalog order: by name
    assert {i["shadow_name"] for i in spec["indexes"]} <= set(indexes(conn))
    new_l2 = indexes(conn)[f"gemini_embedding_001__{L2}"]
    assert "USING hnsw (embedding__gemini_embedding_001 vector_l2_ops)" in new_l2 and "m='8'" in new_l2
    assert "WHERE (tenant = 1)" in indexes(conn)[f"gemini_embedding_001__{PARTIAL}"]

    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    after = indexes(conn)
    for name in (MAIN, L2, PARTIAL):
        assert "(embedding " in after[name], after[name]
        assert "(embedding__old_nomic_embed_text " in after[f"old_nomic_embed_text__{name}"]
    vector = "'[" + ",".join(["0.03"] * 768) + "]'"
    assert L2 in _uses(conn, f"SELECT id FROM docs ORDER BY embedding <-> {vector} LIMIT 5")
    assert PARTIAL in _uses(conn, f"SELECT id FROM docs WHERE tenant = 1 ORDER BY embedding <=> {vector} LIMIT 5")

    assert run_cli("rollback", PLAN).exit_code == 0
    back = indexes(conn)
    for name in (MAIN, L2, PARTIAL):
        assert "(embedding " in back[name] and f"gemini_embedding_001__{name}" in back

    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    result = run_cli("cleanup", PLAN, "--json", "--yes")
    assert result.exit_code == 0, result.stderr
    assert sorted(json.loads(result.stdout)["indexes"]) == sorted(f"old_nomic_embed_text__{n}" for n in (MAIN, L2, PARTIAL))
    assert set(indexes(conn)) == {"docs_pkey", MAIN, L2, PARTIAL}
    assert plan_row(conn)[0] == "cleaned_up"


def test_a_plan_written_before_strategies_and_index_lists_still_loads() -> None:
    spec = {
        "name": "old", "created_at": "2026-11-01T00:00:00+00:00", "reembed_version": "0.1.0",
        "table": {"schema": "public", "name": "docs", "primary_key": ["id"], "fingerprint": "f"},
        "column": {"name": "embedding", "type": "vector(768)", "not_null": False,
                   "shadow": "embedding__gemini_embedding_001", "old": "embedding__old_nomic_embed_text"},
        "text": {"columns": ["content"]}, "source": {"model": "ollama:nomic-embed-text"},
        "target": {"model": "gemini:gemini-embedding-001", "dimensions": 768},
        "index": {"method": "hnsw", "opclass": "vector_cosine_ops", "options": {"m": 16, "ef_construction": 64},
                  "original_name": "docs_embedding_idx", "shadow_name": "docs_embedding_idx__gemini_embedding_001",
                  "old_name": "docs_embedding_idx__old_nomic_embed_text"},
    }
    plan = Plan.from_spec(spec)
    assert plan.strategy == "column"
    assert [i.original_name for i in plan.indexes] == ["docs_embedding_idx"] and plan.indexes[0].definition is None
    assert Plan.from_spec(plan.to_spec()) == plan
    del spec["index"]
    assert Plan.from_spec(spec).indexes == []
