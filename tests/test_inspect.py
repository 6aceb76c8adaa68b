"""`reembed inspect` on tables shaped like real ones."""

from __future__ import annotations

import json

import psycopg
import pytest

from cli_support import error_lines
from tables import create_docs


def _inspect(run_cli, table: str) -> dict:  # type: ignore[no-untyped-def]
    result = run_cli("inspect", table, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("pk, pk_type", [("bigint", "bigint"), ("uuid", "uuid"), ("text", "text")])
def test_primary_key_types_and_hnsw_options(conn: psycopg.Connection, run_cli, pk: str, pk_type: str) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20, pk=pk, m=24)
    data = _inspect(run_cli, "docs")
    assert data["table"] == "public.docs"
    assert data["primary_key"] == ["id"]
    assert data["primary_key_types"] == {"id": pk_type}
    assert data["rows_estimate"] == 20
    assert data["vector_columns"] == [{"name": "embedding", "type": "vector", "dimensions": 768, "not_null": False}]
    assert data["indexes"] == [{
        "name": "docs_embedding_idx", "column": "embedding", "method": "hnsw", "opclass": "vector_cosine_ops",
        "options": {"m": 24, "ef_construction": 64}, "valid": True, "ready": True, "predicate": None,
        "size_bytes": data["indexes"][0]["size_bytes"]}]
    assert data["indexes"][0]["size_bytes"] > 0
    assert {c["name"] for c in data["text_columns"]} == {"title", "content"} | ({"id"} if pk == "text" else set())
    assert data["sizes"]["heap_bytes"] > 0


def test_composite_key_ivfflat_unsized_vector(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE chunks (doc_id bigint, chunk int, body text, emb vector, emb2 vector(3) NOT NULL, "
                 "PRIMARY KEY (doc_id, chunk))")
    conn.execute("CREATE TABLE ivf (id int PRIMARY KEY, body text, emb vector(3))")
    conn.execute("INSERT INTO ivf SELECT g, 'x', ARRAY[g, 1, 2]::vector FROM generate_series(1, 50) g")
    conn.execute("CREATE INDEX ivf_idx ON ivf USING ivfflat (emb vector_l2_ops) WITH (lists = 5)")
    chunks = _inspect(run_cli, "chunks")
    assert chunks["primary_key"] == ["doc_id", "chunk"]
    assert chunks["vector_columns"] == [
        {"name": "emb", "type": "vector", "dimensions": None, "not_null": False},
        {"name": "emb2", "type": "vector", "dimensions": 3, "not_null": True},
    ]
    ivf = _inspect(run_cli, "public.ivf")
    assert ivf["indexes"][0]["method"] == "ivfflat"
    assert ivf["indexes"][0]["opclass"] == "vector_l2_ops"
    assert ivf["indexes"][0]["options"] == {"lists": 5}


def test_dependents_bound_to_the_vector_column(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10)
    conn.execute("CREATE VIEW v AS SELECT id, embedding FROM docs")
    conn.execute("CREATE MATERIALIZED VIEW mv AS SELECT id, embedding FROM docs")
    conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY has_vector ON docs USING (embedding IS NOT NULL)")
    conn.execute("DROP ROLE IF EXISTS reembed_reader")
    conn.execute("CREATE ROLE reembed_reader")
    conn.execute("GRANT SELECT (embedding) ON docs TO reembed_reader")
    conn.execute("ALTER TABLE docs ADD CONSTRAINT dims CHECK (vector_dims(embedding) = 768)")
    conn.execute("CREATE FUNCTION first_vec() RETURNS vector LANGUAGE sql BEGIN ATOMIC "
                 "SELECT embedding FROM docs ORDER BY id LIMIT 1; END")
    conn.execute("COMMENT ON COLUMN docs.embedding IS 'nomic vectors'")
    try:
        data = _inspect(run_cli, "docs")
        kinds = {(d["kind"], d["name"]) for d in data["dependents"]}
        assert ("view", "public.v") in kinds
        assert ("materialized_view", "public.mv") in kinds
        assert ("policy", "has_vector") in kinds
        assert ("check_constraint", "dims") in kinds
        assert ("function", "first_vec()") in kinds
        assert any(k == "grant" and "reembed_reader" in n for k, n in kinds)
        assert ("comment", "embedding") in kinds
        assert all(d["column"] == "embedding" for d in data["dependents"])
        human = run_cli("inspect", "docs")
        assert human.exit_code == 0
        assert "public.v" in human.stdout and "has_vector" in human.stdout
    finally:
        conn.execute("DROP OWNED BY reembed_reader")
        conn.execute("DROP ROLE reembed_reader")


def test_quoted_mixed_case_identifiers_in_another_schema(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute('CREATE SCHEMA "Tenant One"')
    conn.execute('CREATE TABLE "Tenant One"."My Docs" ("Id" bigint PRIMARY KEY, "Body Text" text, '
                 '"select" vector(4))')
    conn.execute('CREATE INDEX "My Idx" ON "Tenant One"."My Docs" USING hnsw ("select" vector_ip_ops)')
    for spelling in ('Tenant One.My Docs', '"Tenant One"."My Docs"'):
        data = _inspect(run_cli, spelling)
        assert data["table"] == "Tenant One.My Docs"
        assert data["primary_key"] == ["Id"]
        assert data["vector_columns"][0]["name"] == "select"
        assert data["indexes"][0]["name"] == "My Idx"
        assert data["indexes"][0]["opclass"] == "vector_ip_ops"


def test_missing_table_and_non_table(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("CREATE VIEW tv AS SELECT * FROM t")
    missing = run_cli("inspect", "nope")
    assert missing.exit_code == 2
    assert error_lines(missing.stderr) == ["reembed: error: table nope does not exist"]
    view = run_cli("inspect", "tv")
    assert view.exit_code == 2
    assert "is not a table" in view.stderr
