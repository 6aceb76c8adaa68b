"""A finished migration built by hand for verify's tests (no `reembed run` / `reembed index`
needed): the original column holds Ollama document vectors, the shadow column the target's
RETRIEVAL_DOCUMENT vectors of each row's text and title, the ledger says done with each
row's text hash, and an HNSW index like the original's is built on the shadow column."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import numpy as np
import psycopg
import pytest
from psycopg import sql

from tables import create_docs, passage, random_unit_vectors
from toolkit.emulators import start_gemini, start_ollama
from toolkit.emulators.vectors import BUCKETS, expected_vector
from toolkit.phases.prepare import key_json, prepare
from toolkit.plan import Plan, load
from toolkit.state import PlanRecord, set_phase

SOURCE = "ollama:nomic-embed-text"
TARGET = "gemini:gemini-embedding-001"
DIMS = 768
ROWS = 1000


@lru_cache(maxsize=None)
def _short_vocabulary() -> tuple[str, ...]:
    """Made-up words the emulators hash to distinct buckets (two words sharing one would make two
    different texts share a vector, which verify rightly refuses)."""
    seen: set[int] = set()
    words = []
    for stem in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "ta", "ve", "zu"):
        for n in range(400):
            word = f"{stem}{n}"
            bucket = zlib.crc32(word.encode()) % BUCKETS
            if bucket not in seen:
                seen.add(bucket)
                words.append(word)
    return tuple(words)


def short_text(i: int) -> str:
    """A corpus of short, loosely related texts: two or three words of ~1,700, few shared between rows."""
    rng = random.Random(i)
    vocabulary = _short_vocabulary()
    return " ".join(sorted({rng.choice(vocabulary) for _ in range(rng.choice((2, 3)))}))


SHARED_START_GROUP = 40


def shared_start_text(i: int) -> str:
    """Rows in groups of 40 whose texts share their first 100 words (longer than the query verify
    makes from a row's beginning) and differ in ten words after: each row's own query is its whole
    group's, which finds ten of the forty, under any model."""
    vocabulary = _short_vocabulary()
    start = random.Random(f"group {i // SHARED_START_GROUP}")
    own = random.Random(f"row {i}")
    return " ".join([start.choice(vocabulary) for _ in range(100)] + [own.choice(vocabulary) for _ in range(10)])


@lru_cache(maxsize=None)
def old_vector(text: str) -> np.ndarray:
    return expected_vector(SOURCE, text, task_type="RETRIEVAL_DOCUMENT", dimensions=DIMS)


@lru_cache(maxsize=None)
def new_vector(text: str, title: str | None) -> np.ndarray:
    return expected_vector(TARGET, text, task_type="RETRIEVAL_DOCUMENT", title=title, dimensions=DIMS)


def old_vectors(texts: Sequence[str]) -> np.ndarray:
    return np.stack([old_vector(t) for t in texts])


@pytest.fixture(scope="module")
def verify_emulators() -> Iterator[tuple[str, str]]:
    """One Gemini and one Ollama emulator for a whole test module (each test points the env at them)."""
    gemini, ollama = start_gemini(), start_ollama()
    try:
        yield gemini.base_url, ollama.base_url
    finally:
        gemini.stop()
        ollama.stop()


@pytest.fixture()
def verify_env(verify_emulators: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    gemini, ollama = verify_emulators
    monkeypatch.setenv("GOOGLE_API_KEY", "verify-test-key")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini)
    monkeypatch.delenv("REEMBED_GEMINI_BASE_URL", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", ollama)
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "REEMBED_RPM", "REEMBED_TPM", "REEMBED_TIMEOUT", "REEMBED_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    return verify_emulators


@dataclass
class Migration:
    plan: Plan
    record: PlanRecord
    conn: psycopg.Connection

    def reload(self) -> "Migration":
        self.plan, self.record = load(self.conn, self.plan.name)
        return self


def fill_shadow(conn: psycopg.Connection, plan: Plan, plan_id: int, vectors: dict[object, np.ndarray] | None = None) -> None:
    """Write the target's vector of each row's current text and title (or `vectors` by id) and mark
    the ledger done with the row's text hash, as a finished backfill leaves it."""
    rows = conn.execute(sql.SQL("SELECT id, content, title FROM {}").format(plan.table)).fetchall()
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS verify_stage (id bigint, v vector)")
    conn.execute("TRUNCATE verify_stage")
    with conn.cursor().copy("COPY verify_stage (id, v) FROM STDIN") as copy:
        for id_, text, title in rows:
            if text and text.strip():
                copy.write_row((id_, vectors[id_] if vectors else new_vector(text, title)))
    conn.execute(sql.SQL("UPDATE {} AS t SET {} = s.v FROM verify_stage s WHERE t.id = s.id").format(
        plan.table, sql.Identifier(plan.shadow_column)))
    conn.execute(sql.SQL(
        "UPDATE reembed.ledger AS l SET state = CASE WHEN t.{sh} IS NULL THEN 'skipped' ELSE 'done' END, "
        "skip_reason = CASE WHEN t.{sh} IS NULL THEN 'empty text' END, text_hash = {hash}, "
        "embed_count = embed_count + 1, changed_at = now() "
        "FROM {table} AS t WHERE l.plan_id = %s AND l.pk = {key}").format(
        sh=sql.Identifier(plan.shadow_column), hash=plan.text_hash_expression("t"), table=plan.table,
        key=key_json(plan, "t")), (plan_id,))


def build_index(conn: psycopg.Connection, plan: Plan, opclass: str = "vector_cosine_ops", m: int = 24) -> None:
    assert plan.indexes
    # Enough memory for the graph: with the default an HNSW build is several times slower.
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {}) WITH (m = {})").format(
        sql.Identifier(plan.indexes[0].shadow_name), plan.table, sql.Identifier(plan.shadow_column), sql.SQL(opclass),
        sql.Literal(m)))


def migrated(conn: psycopg.Connection, run_cli, rows: int = ROWS, *, empty: Sequence[int] = (),  # type: ignore[no-untyped-def]
             opclass: str = "vector_cosine_ops", text: Callable[[int], str] = passage, title: bool = True,
             m: int = 24) -> Migration:
    """The original index and the new one alike: HNSW with `m` (and the default ef_construction)."""
    create_docs(conn, rows, vectors=old_vectors, text=text, title=title, m=m)
    for i in empty:
        conn.execute("UPDATE docs SET content = '' WHERE id = %s", (i,))
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--offline")
    assert result.exit_code == 0, result.output
    plan, record = load(conn, "docs-embedding-gemini_embedding_001")
    prepare(conn, plan, record)
    # Filling the shadow column by hand would insert every row's new version into the original's
    # HNSW graph (the slow path `reembed run` avoids with HOT-aware writes): drop it meanwhile.
    definition = conn.execute("SELECT pg_get_indexdef('docs_embedding_idx'::regclass)").fetchone()[0]
    conn.execute("DROP INDEX docs_embedding_idx")
    fill_shadow(conn, plan, record.id)
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute(definition)
    build_index(conn, plan, opclass, m)
    conn.execute("ANALYZE docs")
    set_phase(conn, record.id, "indexed", "index built by the test")
    return Migration(*load(conn, plan.name), conn=conn)


def table_checksum(conn: psycopg.Connection) -> str:
    """Changes with any write to docs (every row version has a new xmin/ctid)."""
    return conn.execute("SELECT md5(string_agg(t::text || t.xmin::text || t.ctid::text, ',' ORDER BY id)) "
                        "FROM docs t").fetchone()[0]  # type: ignore[index]


def random_vectors(n: int, seed: int) -> np.ndarray:
    return random_unit_vectors(n, DIMS, seed=seed)
