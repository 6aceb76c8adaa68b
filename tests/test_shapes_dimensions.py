"""Issue 15, point 3: new dimensions. `plan --dimensions 3072` on a vector(768) column makes the new
column halfvec(3072) (HNSW holds at most 2,000 dimensions as vector) and rebuilds every vector index
with the halfvec opclass; after cutover the application's unchanged `ORDER BY embedding <=> $1`,
given a 3072-dim vector, is an index scan on the halfvec HNSW index. 1536 stays vector. The reverse
(halfvec(3072) -> 768) works the same way. What names the old dimension is refused at plan by name;
the estimate's disk figure follows the new type."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest

from backfill_support import TARGET
from shapes_support import column_type, lifecycle, ok, table_state
from tables import create_docs, passage
from toolkit.emulators import expected_vector
from verify_support import old_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")
ROWS = 120
APP_QUERY = "SELECT id FROM docs ORDER BY embedding <=> %s LIMIT 5"


def _stored(conn: psycopg.Connection, column: str = "embedding") -> dict[int, np.ndarray]:
    return {i: np.asarray(v.to_numpy(), dtype=np.float32) for i, v in conn.execute(
        f'SELECT id, "{column}" FROM docs WHERE "{column}" IS NOT NULL')}


def _assert_exact(conn: psycopg.Connection, model: str, dims: int, half: bool) -> None:
    """Every row's vector is the model's for its text: to float32's last bits, or for halfvec to
    float16's precision (one part in 2**11; a vector of another text is off by ~1e-2)."""
    stored = _stored(conn)
    rows = conn.execute("SELECT id, content, title FROM docs").fetchall()
    assert len(stored) == len(rows)
    for i, content, title in rows:
        want = expected_vector(model, content, task_type="RETRIEVAL_DOCUMENT", title=title, dimensions=dims)
        np.testing.assert_allclose(stored[i], want, rtol=2 ** -10 if half else 0, atol=1e-6)


def _index_scan(conn: psycopg.Connection, q: np.ndarray) -> str:
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # a 120-row table: the planner would rightly scan it
        return "\n".join(r[0] for r in conn.execute("EXPLAIN " + APP_QUERY, (q,), prepare=False))


@pytest.mark.parametrize("strategy", ["column", "copy"])
@pytest.mark.parametrize("dims, new_type, opclass", [(3072, "halfvec(3072)", "halfvec_cosine_ops"),
                                                    (1536, "vector(1536)", "vector_cosine_ops")])
def test_new_dimensions_give_a_new_column_type_and_index_the_unchanged_query_uses(conn, run_cli, dims: int,  # type: ignore[no-untyped-def]
                                                                                  new_type: str, opclass: str,
                                                                                  strategy: str) -> None:
    create_docs(conn, ROWS, vectors=old_vectors)
    conn.execute("CREATE INDEX docs_l2_idx ON docs USING hnsw (embedding vector_l2_ops)")
    plan = json.loads(ok(run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                                 "--dimensions", str(dims), "--name", "dim", "--offline", "--json",
                                 "--strategy", strategy)).stdout)["spec"]
    assert plan["column"]["new_type"] == new_type
    assert {i["opclass"] for i in plan["indexes"]} == {opclass, opclass.replace("cosine", "l2")}
    element = 2 if new_type.startswith("halfvec") else 4
    if strategy == "column":
        assert plan["estimate"]["shadow_column_bytes"] == ROWS * (element * dims + 8)
    ok(run_cli("abandon", "dim", "--yes"))
    lifecycle(run_cli, "dim2", "docs", "--column", "embedding", "--text", "content", "--title", "title",
              "--dimensions", str(dims), "--strategy", strategy)
    assert column_type(conn, "docs", "embedding") == new_type
    old_place = ("docs", "embedding__old_nomic_embed_text") if strategy == "column" else \
        ("docs__old_nomic_embed_text", "embedding")
    assert column_type(conn, *old_place) == "vector(768)"
    definition = conn.execute("SELECT pg_get_indexdef('docs_embedding_idx'::regclass)").fetchone()[0]
    assert f"(embedding {opclass})" in definition, definition
    _assert_exact(conn, TARGET, dims, half=new_type.startswith("halfvec"))
    # The application, switched to the new query model, sends a `dims`-dim vector: same SQL, new index.
    q = expected_vector(TARGET, "how are lighthouses kept", task_type="RETRIEVAL_QUERY", dimensions=dims)
    assert "Index Scan using docs_embedding_idx on docs" in _index_scan(conn, q)
    assert len(conn.execute(APP_QUERY, (q,)).fetchall()) == 5
    # A row the application writes now carries a vector of the new size.
    conn.execute("INSERT INTO docs (id, title, content, embedding) VALUES (9000, 't', %s, %s)", (passage(9000), q))
    ok(run_cli("rollback", "dim2"))  # and back: the old 768-dim vectors under the name again
    assert column_type(conn, "docs", "embedding") == "vector(768)"
    ok(run_cli("run", "dim2", "--rollback-fill", "--no-progress"))
    assert conn.execute("SELECT vector_dims(embedding) FROM docs WHERE id = 9000").fetchone()[0] == 768


def test_the_reverse_from_halfvec_3072_to_768(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, title text, content text, embedding halfvec(3072))")
    texts = [passage(i) for i in range(ROWS)]
    with conn.cursor().copy("COPY docs (id, title, content, embedding) FROM STDIN") as copy:
        for i, text in enumerate(texts):
            vector = expected_vector(TARGET, text, task_type="RETRIEVAL_DOCUMENT", title="t", dimensions=3072)
            copy.write_row((i, "t", text, "[" + ",".join(map(str, vector)) + "]"))
    conn.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding halfvec_cosine_ops)")
    conn.execute("ANALYZE docs")
    lifecycle(run_cli, "rev", "docs", "--column", "embedding", "--text", "content", "--title", "title",
              "--from", TARGET, "--to", "ollama:nomic-embed-text", "--dimensions", "768")
    assert column_type(conn, "docs", "embedding") == "vector(768)"
    assert "(embedding vector_cosine_ops)" in conn.execute(
        "SELECT pg_get_indexdef('docs_embedding_idx'::regclass)").fetchone()[0]
    _assert_exact(conn, "ollama:nomic-embed-text", 768, half=False)
    q = expected_vector("ollama:nomic-embed-text", "search_query: lighthouses", dimensions=768)
    assert "Index Scan using docs_embedding_idx on docs" in _index_scan(conn, q)


@pytest.mark.parametrize("strategy", ["column", "copy"])
def test_what_names_the_old_dimension_is_refused_at_plan_by_name(conn, run_cli, strategy: str) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20, vectors=old_vectors)
    conn.execute("CREATE VIEW docs_half AS SELECT id, embedding::halfvec(768) AS half FROM docs")
    conn.execute("ALTER TABLE docs ADD CONSTRAINT dims_ok CHECK (vector_dims(embedding) = 768)")
    conn.execute("CREATE VIEW docs_titles AS SELECT id, title, embedding IS NOT NULL AS embedded FROM docs")
    before = table_state(conn)
    result = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--dimensions", "3072", "--offline",
                     "--strategy", strategy)
    assert result.exit_code == 2, result.output
    assert "view public.docs_half" in result.stderr and "check constraint dims_ok" in result.stderr
    assert "docs_titles" not in result.stderr and "name(s) the dimension 768" in result.stderr
    assert table_state(conn) == before
