"""Issue 12, point 1 (and the index-name rule of point 10): every index that reads the vector column
follows it — the main HNSW index, a partial one, an l2 one, an expression index over a halfvec
cast, a btree over an expression of it, a btree covering it through INCLUDE, a btree whose predicate
reads it — each rebuilt on the
new column, verified, and after cutover carrying the original's name and taken by the planner for
the query it serves; the old ones are renamed so that their names no longer begin with the
originals' (Supabase vecs finds its index by the prefix `ix_vector`)."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

from client_tables import create_vecs
from shapes_support import lifecycle, ok, vector_mismatches
from tables import create_docs
from toolkit.strategies import STRATEGIES
from verify_support import old_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")

INDEXES = {
    "docs_embedding_idx": "USING hnsw (embedding vector_cosine_ops)",
    "docs_tenant1_idx": "USING hnsw (embedding vector_cosine_ops) WHERE tenant = 1",
    "docs_l2_idx": "USING hnsw (embedding vector_l2_ops)",
    "docs_half_idx": "USING hnsw ((embedding::halfvec(768)) halfvec_cosine_ops)",
    "docs_dedupe_idx": "USING btree (md5(embedding::text))",
    "docs_missing_idx": "USING btree (id) WHERE embedding IS NULL",
}
# The query each index serves, as the application writes it, with the planner told to avoid a
# sequential scan (at 300 rows it would rightly prefer one).
QUERIES = {
    "docs_embedding_idx": "SELECT id FROM docs ORDER BY embedding <=> %(q)s LIMIT 5",
    "docs_tenant1_idx": "SELECT id FROM docs WHERE tenant = 1 ORDER BY embedding <=> %(q)s LIMIT 5",
    "docs_l2_idx": "SELECT id FROM docs ORDER BY embedding <-> %(q)s LIMIT 5",
    "docs_half_idx": "SELECT id FROM docs ORDER BY embedding::halfvec(768) <=> %(q)s::halfvec(768) LIMIT 5",
    "docs_dedupe_idx": "SELECT id FROM docs WHERE md5(embedding::text) = md5(%(q)s::vector::text)",
    "docs_missing_idx": "SELECT id FROM docs WHERE embedding IS NULL",
}


def _plan_of(conn: psycopg.Connection, query: str, q: np.ndarray) -> str:
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {"q": q}, prepare=False))


def _definitions(conn: psycopg.Connection, table: str = "docs") -> dict[str, str]:
    return dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)).fetchall())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_index_reading_the_column_follows_it_and_serves_its_query(conn, run_cli,  # type: ignore[no-untyped-def]
                                                                        strategy: str) -> None:
    create_docs(conn, 300, vectors=old_vectors, index=None)
    conn.execute("ALTER TABLE docs ADD COLUMN tenant int")
    conn.execute("UPDATE docs SET tenant = id % 3")
    for name, body in INDEXES.items():
        conn.execute(f"CREATE INDEX {name} ON docs {body}")
    conn.execute("ANALYZE docs")
    before = _definitions(conn)

    result = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                     "--name", "ix", "--offline", "--json", "--strategy", strategy)
    assert result.exit_code == 0, result.output
    planned = json.loads(result.stdout)["spec"]["indexes"]
    assert [i["original_name"] for i in planned][0] == "docs_embedding_idx"  # the one serving the app's query
    assert sorted(i["original_name"] for i in planned) == sorted(INDEXES)
    ok(run_cli("run", "ix", "--no-progress"))
    ok(run_cli("index", "ix", "--no-progress"))
    verified = json.loads(run_cli("verify", "ix", "--json").stdout)
    index_check = next(c for c in verified["checks"] if c["name"] == "index")
    assert index_check["passed"], index_check
    explained = {o["index"]: o["explain"] for o in index_check["other_indexes"]}
    for name in ("docs_tenant1_idx", "docs_l2_idx", "docs_half_idx"):
        assert explained[f"gemini_embedding_001__{name}"].startswith(("used", "usable")), explained
    ok(run_cli("cutover", "ix"))

    after = _definitions(conn)
    # The old vectors: a renamed column of docs (column strategy), or the renamed old table (copy).
    old_table, old_column = (("docs", "embedding__old_nomic_embed_text") if strategy == "column"
                             else ("docs__old_nomic_embed_text", "embedding"))
    aside = _definitions(conn, old_table)
    for name, definition in before.items():
        if name not in INDEXES:
            continue
        # The original's name, the original's definition, on the column now carrying the new vectors.
        assert after[name] == definition, (name, after[name])
        old = f"old_nomic_embed_text__{name}"
        assert f"ON public.{old_table} " in aside[old] and old_column in aside[old], aside
    assert not [n for n in after if n != "docs_pkey" and n not in INDEXES and n.startswith("docs_")]
    q = old_vectors(["a query about lighthouses"])[0]
    for name, query in QUERIES.items():
        assert name in _plan_of(conn, query, q), (name, _plan_of(conn, query, q))
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []


def test_supabase_vecs_finds_only_its_new_index_by_prefix(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_vecs(conn, 80)

    def vecs_index() -> list[str]:  # the query vecs' Collection.index runs
        return [r[0] for r in conn.execute(
            """SELECT pi.relname FROM pg_class pi JOIN pg_index i ON pi.oid = i.indexrelid
               JOIN pg_class pt ON pt.oid = i.indrelid
               WHERE pi.relnamespace = 'vecs'::regnamespace AND pi.relname ILIKE 'ix_vector%%'
                 AND pi.relkind = 'i' AND pt.relname = 'docs'""")]

    lifecycle(run_cli, "vx", "vecs.docs", "--column", "vec", "--text", "content", verify=True)
    assert vecs_index() == ["ix_vector_cosine_ops_hnsw_m16_efc64_a1b2c3d"]
    definition = conn.execute("SELECT pg_get_indexdef('vecs.ix_vector_cosine_ops_hnsw_m16_efc64_a1b2c3d'::regclass)"
                              ).fetchone()[0]
    assert "(vec vector_cosine_ops)" in definition  # on the column now holding the new vectors
    ok(run_cli("rollback", "vx"))
    assert vecs_index() == ["ix_vector_cosine_ops_hnsw_m16_efc64_a1b2c3d"]
    ok(run_cli("verify", "vx"))
    ok(run_cli("cutover", "vx"))
    ok(run_cli("cleanup", "vx", "--yes"))
    assert vecs_index() == ["ix_vector_cosine_ops_hnsw_m16_efc64_a1b2c3d"]
    assert vector_mismatches(conn, "vecs.docs", "id", "content", "vec") == []


def test_a_btree_covering_the_column_through_include_follows_it(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    # A 384-dim vector fits a btree row (768 dims would not): a covering index for fetching vectors by key.
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, content text, embedding vector(384))")
    conn.execute("INSERT INTO docs SELECT i, 'passage ' || i || ' about harbors', "
                 "(SELECT array_agg(random())::vector(384) FROM generate_series(1, 384) WHERE i > 0) "
                 "FROM generate_series(1, 60) AS i")
    conn.execute("CREATE INDEX docs_by_id_idx ON docs USING btree (id) INCLUDE (embedding)")
    conn.execute("ANALYZE docs")
    lifecycle(run_cli, "inc", "docs", "--column", "embedding", "--text", "content", verify=False)
    definition = conn.execute("SELECT pg_get_indexdef('docs_by_id_idx'::regclass)").fetchone()[0]
    assert definition.endswith("USING btree (id) INCLUDE (embedding)")
    assert "INCLUDE (embedding__old_nomic_embed_text)" in conn.execute(
        "SELECT pg_get_indexdef('old_nomic_embed_text__docs_by_id_idx'::regclass)").fetchone()[0]
    conn.execute("VACUUM ANALYZE docs")  # an index-only scan needs the visibility map
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT id, embedding FROM docs WHERE id = 7"))
    assert "Index Only Scan using docs_by_id_idx" in plan, plan
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", dims=384) == []
