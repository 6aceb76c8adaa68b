"""Tables the way real clients create them (langchain, Supabase vecs, LlamaIndex, Haystack), filled
with the source model's vectors of their text, for the shape tests."""

from __future__ import annotations

import json
import uuid
from typing import Sequence

import psycopg
from psycopg import sql

from tables import passage
from verify_support import old_vectors


def _uuid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def create_langchain(conn: psycopg.Connection, rows: int, *, dims: Sequence[int] = (768,)) -> None:
    """langchain's legacy PGVector store: one unsized `vector` column for every collection
    (`Vector(None)`), `document` varchar, a uuid key. Rows are spread over one collection per
    entry of `dims`, each holding vectors of that dimension."""
    conn.execute("CREATE TABLE langchain_pg_collection (uuid uuid PRIMARY KEY, name varchar, cmetadata json)")
    conn.execute("""CREATE TABLE langchain_pg_embedding (
        uuid uuid PRIMARY KEY,
        collection_id uuid REFERENCES langchain_pg_collection (uuid) ON DELETE CASCADE,
        embedding vector, document varchar, cmetadata json, custom_id varchar)""")
    collections = [_uuid(10_000 + n) for n in range(len(dims))]
    for n, coll in enumerate(collections):
        conn.execute("INSERT INTO langchain_pg_collection VALUES (%s, %s, '{}')", (coll, f"collection_{n}"))
    texts = [passage(i) for i in range(rows)]
    vectors = old_vectors(texts)
    with conn.cursor().copy("COPY langchain_pg_embedding (uuid, collection_id, embedding, document, cmetadata, "
                            "custom_id) FROM STDIN") as copy:
        for i, text in enumerate(texts):
            n = i % len(dims)
            copy.write_row((_uuid(i), collections[n], vectors[i][:dims[n]], text, json.dumps({"i": i}), None))
    conn.execute("ANALYZE langchain_pg_embedding")


def create_docs_with_text_type(conn: psycopg.Connection, rows: int, text_type: str) -> None:
    """docs(id, content <text_type>, embedding vector(768)) with an HNSW cosine index."""
    conn.execute(sql.SQL("CREATE TABLE docs (id bigint PRIMARY KEY, content {}, embedding vector(768))").format(
        sql.SQL(text_type)))
    texts = [passage(i) for i in range(rows)]
    with conn.cursor().copy("COPY docs (id, content, embedding) FROM STDIN") as copy:
        for i, (text, vector) in enumerate(zip(texts, old_vectors(texts) if texts else [])):
            copy.write_row((i, text, vector))
    conn.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops)")
    conn.execute("ANALYZE docs")


def create_vecs(conn: psycopg.Connection, rows: int, dims: int = 768) -> None:
    """A Supabase vecs collection (`vecs.docs`: id varchar, vec vector(N) NOT NULL, metadata jsonb) with
    vecs' own index names (`ix_vector_cosine_ops_hnsw_m16_efc64_<7 chars>`, `ix_meta_<7 chars>`).
    vecs keeps the text in metadata; a VIRTUAL generated column exposes it to reembed."""
    conn.execute("CREATE SCHEMA vecs")
    conn.execute(sql.SQL("""CREATE TABLE vecs.docs (id varchar PRIMARY KEY, vec vector({}) NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb)""").format(sql.Literal(dims)))
    conn.execute("CREATE INDEX ix_meta_3f2a9c1 ON vecs.docs USING gin (metadata jsonb_path_ops)")
    texts = [passage(i) for i in range(rows)]
    with conn.cursor().copy("COPY vecs.docs (id, vec, metadata) FROM STDIN") as copy:
        for i, (text, vector) in enumerate(zip(texts, old_vectors(texts))):
            copy.write_row((f"doc-{i}", vector[:dims], json.dumps({"text": text, "source": "handbook"})))
    conn.execute("CREATE INDEX ix_vector_cosine_ops_hnsw_m16_efc64_a1b2c3d ON vecs.docs "
                 "USING hnsw (vec vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
    conn.execute("ALTER TABLE vecs.docs ADD COLUMN content text GENERATED ALWAYS AS (metadata ->> 'text') VIRTUAL")
    conn.execute("ANALYZE vecs.docs")


def create_tenant_partitioned(conn: psycopg.Connection, rows: int) -> None:
    """A RAG store partitioned by tenant, as large ones are: docs (tenant, id, title, content,
    embedding vector(768)), key (tenant, id), LIST partitions for tenants 1 and 2, tenant 3
    sub-partitioned by HASH (id), a DEFAULT partition; one HNSW cosine index on the parent
    (PostgreSQL gives each partition its own)."""
    conn.execute("""CREATE TABLE docs (tenant int NOT NULL, id bigint NOT NULL, title text, content text,
                    embedding vector(768), PRIMARY KEY (tenant, id)) PARTITION BY LIST (tenant)""")
    conn.execute("CREATE TABLE docs_t1 PARTITION OF docs FOR VALUES IN (1)")
    conn.execute("CREATE TABLE docs_t2 PARTITION OF docs FOR VALUES IN (2)")
    conn.execute("CREATE TABLE docs_t3 PARTITION OF docs FOR VALUES IN (3) PARTITION BY HASH (id)")
    conn.execute("CREATE TABLE docs_t3_h0 PARTITION OF docs_t3 FOR VALUES WITH (MODULUS 2, REMAINDER 0)")
    conn.execute("CREATE TABLE docs_t3_h1 PARTITION OF docs_t3 FOR VALUES WITH (MODULUS 2, REMAINDER 1)")
    conn.execute("CREATE TABLE docs_other PARTITION OF docs DEFAULT")
    texts = [passage(i) for i in range(rows)]
    with conn.cursor().copy("COPY docs (tenant, id, title, content, embedding) FROM STDIN") as copy:
        for i, (text, vector) in enumerate(zip(texts, old_vectors(texts))):
            copy.write_row((i % 5, i, f"title {i % 7}", text, vector))
    conn.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops)")
    conn.execute("ANALYZE docs")
