"""Issue 12, point 4: a table partitioned by tenant (LIST partitions, one sub-partitioned by HASH,
a DEFAULT one) migrates while the application writes to it: the tracking trigger reaches every
partition, each partition's index is built CONCURRENTLY and attached to one created ON ONLY the
table, the swap happens on the table, a partition created during the migration gets the column
and its indexes, and after cutover every row's vector is exact and the planner scans the
partitions' new indexes, for all tenants and for one."""

from __future__ import annotations

import json

import psycopg
import pytest

from client_tables import create_tenant_partitioned
from shapes_support import ok, vector_mismatches
from tables import passage
from verify_support import old_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")
KEY = ("--column", "embedding", "--text", "content", "--title", "title")


def _explain(conn: psycopg.Connection, where: str = "") -> str:
    q = old_vectors(["lighthouse keepers"])[0]
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # 50-row partitions: the planner would rightly scan them
        conn.execute("SET LOCAL enable_bitmapscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        return "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN SELECT id FROM docs {where} ORDER BY embedding <=> %s LIMIT 5", (q,), prepare=False))


def _index_tree(conn: psycopg.Connection, index: str) -> dict[str, str]:
    """partition -> the name of `index`'s index on it."""
    return dict(conn.execute(
        "SELECT x.indrelid::regclass::text, t.relid::regclass::text FROM pg_partition_tree(%s::regclass) t "
        "JOIN pg_index x ON x.indexrelid = t.relid WHERE t.isleaf", (index,)).fetchall())


def test_a_tenant_partitioned_store_migrates_while_the_application_writes(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_tenant_partitioned(conn, 250)
    before_children = _index_tree(conn, "docs_embedding_idx")
    ok(run_cli("plan", "docs", *KEY, "--name", "part", "--offline"))
    ok(run_cli("run", "part", "--no-progress"))
    # The application meanwhile: edits, a row moving to another tenant, a new tenant's partition.
    conn.execute("UPDATE docs SET content = %s WHERE tenant = 2 AND id < 30", (passage(5050),))
    conn.execute("UPDATE docs SET tenant = 1 WHERE tenant = 0 AND id = 5")
    conn.execute("CREATE TABLE docs_t9 PARTITION OF docs FOR VALUES IN (9)")
    conn.execute("INSERT INTO docs (tenant, id, title, content) VALUES (9, 9001, 't', %s), (9, 9002, 't', %s)",
                 (passage(9001), passage(9002)))
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending'").fetchone()[0] >= 8
    ok(run_cli("run", "part", "--no-progress"))
    result = ok(run_cli("index", "part", "--no-progress", "--json"))
    assert json.loads(result.stdout)["action"] == "built"
    new_children = _index_tree(conn, "gemini_embedding_001__docs_embedding_idx")
    assert set(new_children) == set(before_children) | {"docs_t9"}  # every leaf, the new partition too
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                        "'gemini_embedding_001__docs_embedding_idx'::regclass").fetchone()[0]
    verified = json.loads(run_cli("verify", "part", "--json").stdout)
    assert verified["passed"], [c for c in verified["checks"] if not c["passed"]]
    ok(run_cli("cutover", "part"))

    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []
    after = _index_tree(conn, "docs_embedding_idx")
    for partition, name in before_children.items():
        assert after[partition] == name  # each partition's index has the name it had, on the new column
        assert "(embedding vector_cosine_ops)" in conn.execute("SELECT pg_get_indexdef(%s::regclass)",
                                                               (name,)).fetchone()[0]
    assert all(n.startswith("old_nomic_embed_text__") for p, n in _index_tree(
        conn, "old_nomic_embed_text__docs_embedding_idx").items() if p in before_children)
    every = _explain(conn)
    assert "docs_t1_embedding_idx" in every and "docs_t3_h0_embedding_idx" in every, every
    one = _explain(conn, "WHERE tenant = 2")
    assert "docs_t2_embedding_idx" in one and "docs_t1" not in one, one

    ok(run_cli("rollback", "part"))
    assert _index_tree(conn, "docs_embedding_idx") == {**before_children, "docs_t9": after["docs_t9"]}
    ok(run_cli("verify", "part"))
    ok(run_cli("cutover", "part"))
    ok(run_cli("cleanup", "part", "--yes"))
    assert conn.execute("SELECT count(*) FROM pg_attribute a JOIN pg_partition_tree('docs') t ON t.relid = a.attrelid "
                        "WHERE a.attname LIKE 'embedding\\_\\_%%' AND NOT a.attisdropped").fetchone()[0] == 0
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []
