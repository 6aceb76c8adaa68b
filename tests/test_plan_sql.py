"""`reembed plan --sql` prints the exact statements every phase will run: no placeholders, the
dependents to re-create with their definitions, the computed maintenance_work_mem."""

from __future__ import annotations

import json
import re

import psycopg

from tables import create_docs
from toolkit.phases.index import graph_memory


def test_plan_sql_has_every_statement_in_full(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 200, index="hnsw")
    conn.execute("ANALYZE docs")
    conn.execute("CREATE VIEW docs_v AS SELECT id, title, embedding FROM docs WHERE embedding IS NOT NULL")
    conn.execute("""CREATE FUNCTION nearest(q vector) RETURNS SETOF bigint LANGUAGE sql STABLE
                    BEGIN ATOMIC SELECT id FROM docs ORDER BY embedding <=> q LIMIT 5; END""")
    conn.execute("COMMENT ON COLUMN docs.embedding IS 'document vectors'")
    result = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--name", "p1", "--offline",
                     "--strategy", "column", "--sql", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    statements = data["sql"]
    plan_id = conn.execute("SELECT id FROM reembed.plans WHERE name = 'p1'").fetchone()[0]
    everything = "\n".join(s for phase in statements.values() for s in phase)
    assert not re.search(r"<[a-z][^>]*>", everything), "a placeholder is left"  # `<=>` is an operator
    assert not any(s.lstrip().startswith("--") for phase in statements.values() for s in phase)
    # index: the memory the build will ask for, worked out for these rows.
    wanted = max(graph_memory(200, 768),
                 conn.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0])
    assert f"set_config('maintenance_work_mem', '{wanted // 1024}kB', false)" in statements["index"][0]
    # cutover: the view and the function re-created with their definitions, the comment kept.
    cutover = "\n".join(statements["cutover"])
    assert 'CREATE OR REPLACE VIEW "public"."docs_v"' in cutover and "WHERE (embedding IS NOT NULL)" in cutover
    assert "CREATE OR REPLACE FUNCTION public.nearest(q vector)" in cutover
    assert "COMMENT ON COLUMN \"public\".\"docs\".\"embedding\" IS 'document vectors'" in cutover
    assert 'LOCK TABLE "public"."docs_v", "public"."docs" IN ACCESS EXCLUSIVE MODE' in cutover
    assert "rollback" in statements and "CREATE OR REPLACE VIEW" in "\n".join(statements["rollback"])
    # cleanup: the tracking trigger and function by their real names.
    cleanup = "\n".join(statements["cleanup"])
    assert f'DROP TRIGGER IF EXISTS "reembed_track_{plan_id}" ON "public"."docs"' in cleanup
    assert f'DROP FUNCTION IF EXISTS "reembed"."track_{plan_id}"()' in cleanup
    # The human form prints the same statements.
    text = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--name", "p1", "--offline",
                   "--strategy", "column", "--sql").stdout
    assert "-- cutover" in text and 'CREATE OR REPLACE VIEW "public"."docs_v"' in text
