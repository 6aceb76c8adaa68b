"""Copy strategy, the swap and after: cutover, rollback, cutover again, cleanup. What the
application sees keeps its shape and its names; everything that binds to the table by OID
follows it; its triggers fire only for its own writes; foreign keys both ways hold and act."""

from __future__ import annotations

import json

import psycopg
import pytest

from backfill_support import gemini, mismatches, ollama  # noqa: F401 (fixtures)
from copy_support import COPY, OLD, PLAN, create_app_table, outbox_count, plan_copy, rows_of, shape
from tables import passage
from toolkit.emulators import expected_vector
from toolkit.phases.cleanup import preview as cleanup_preview
from toolkit.plan import load as load_plan

SOURCE = "ollama:nomic-embed-text"


def _indexes(conn: psycopg.Connection, table: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))}


def _triggers(conn: psycopg.Connection, table: str) -> dict[str, str]:
    return dict(conn.execute("SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgrelid = %s::regclass "
                             "AND NOT tgisinternal ORDER BY 1", (table,)).fetchall())


def _foreign_keys(conn: psycopg.Connection) -> dict[str, tuple[str, str, bool]]:
    return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT conname, conrelid::regclass::text, confrelid::regclass::text, convalidated FROM pg_constraint "
        "WHERE contype = 'f' AND connamespace = 'public'::regnamespace")}


def _prepared(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 200)
    conn.execute("CREATE ROLE reader NOLOGIN")
    conn.execute("GRANT SELECT ON docs TO reader")
    conn.execute("GRANT UPDATE (title) ON docs TO reader")
    conn.execute("CREATE VIEW recent AS SELECT id, title, embedding FROM docs WHERE id > 100")
    conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY tenant_rows ON docs FOR SELECT TO reader USING (tenant = 1)")
    conn.execute("CREATE PUBLICATION docs_pub FOR TABLE docs (id, title, content)")
    conn.execute("ALTER TABLE docs REPLICA IDENTITY USING INDEX docs_pkey")
    plan_copy(run_cli)
    for step in (("run", PLAN, "--no-progress"), ("index", PLAN, "--no-progress")):
        result = run_cli(*step)
        assert result.exit_code == 0, result.output
    result = run_cli("verify", PLAN, "--no-source", "--sample", "30")
    assert result.exit_code == 0, result.output


def _tagged_live(before: list[tuple], now: list[tuple], model: str) -> bool:
    """`now` is `before` but for the vector column's comment, which names the model that filled it
    (the live tag the application's query-model switch reads: toolkit/column_tag.py)."""
    untagged = [row[:-1] + ((None,) if row[0] == "embedding" else (row[-1],)) for row in now]
    tag = json.loads(next(row[-1] for row in now if row[0] == "embedding") or "{}")
    return untagged == before and tag.get("role") == "live" and tag.get("model") == model


def test_cutover_rollback_cutover_cleanup(conn, run_cli, gemini, ollama) -> None:  # type: ignore[no-untyped-def]
    _prepared(conn, run_cli)
    before_shape = shape(conn, "docs")
    before_indexes = _indexes(conn, "docs")

    result = run_cli("cutover", PLAN, "--json")
    assert result.exit_code == 0, result.output
    swap = json.loads(result.stdout)["swap"]
    assert swap["lock_ms"] > 0
    # The application's table: the same columns and names, the new model's vectors.
    assert _tagged_live(before_shape, shape(conn, "docs"), "gemini-embedding-001"), shape(conn, "docs")
    assert _indexes(conn, "docs") == before_indexes
    assert mismatches(conn, "embedding") == []
    assert {t for t in _triggers(conn, "docs") if not t.startswith("reembed")} == {"docs_touch", "docs_outbox"}
    assert {t for t in _triggers(conn, OLD) if not t.startswith("reembed")} == set()
    fks = _foreign_keys(conn)
    assert fks["comments_doc_id_fkey"] == ("comments", "docs", True)
    assert fks["docs_author_id_fkey"] == ("docs", "authors", True)
    assert conn.execute("SELECT has_table_privilege('reader', 'docs', 'SELECT'), "
                        "has_column_privilege('reader', 'docs', 'title', 'UPDATE')").fetchone() == (True, True)
    assert conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'docs'::regclass").fetchone()[0]
    assert conn.execute("SELECT polname FROM pg_policy WHERE polrelid = 'docs'::regclass").fetchall() == [("tenant_rows",)]
    assert conn.execute("SELECT obj_description('docs'::regclass, 'pg_class')").fetchone()[0] == \
        "the application's documents"
    assert conn.execute("SELECT prrelid::regclass::text FROM pg_publication_rel").fetchall() == [("docs",)]
    assert conn.execute("SELECT relreplident FROM pg_class WHERE oid = 'docs'::regclass").fetchone()[0] == "i"
    assert conn.execute("SELECT indisreplident FROM pg_index WHERE indexrelid = 'docs_pkey'::regclass").fetchone()[0]
    # Identity and serial sequences: the same names, and they carry on from where they were.
    assert conn.execute("SELECT pg_get_serial_sequence('docs', 'seq'), pg_get_serial_sequence('docs', 'id')"
                        ).fetchone() == ("public.docs_seq_seq", "public.docs_id_seq")
    view_rows = conn.execute("SELECT id, embedding::text FROM recent ORDER BY id").fetchall()
    assert view_rows == conn.execute("SELECT id, embedding::text FROM docs WHERE id > 100 ORDER BY id").fetchall()

    # The application writes after cutover: its triggers fire once for each of its own writes.
    conn.execute("TRUNCATE outbox")
    conn.execute("INSERT INTO docs (title, content, author_id) VALUES ('late', %s, 3)", (passage(1001),))
    conn.execute("UPDATE docs SET content = %s WHERE id = 11", (passage(1002),))
    assert outbox_count(conn) == 2
    # The old table stays current for a rollback, through the propagation running the other way.
    assert rows_of(conn, OLD, vector=False) == rows_of(conn, "docs", vector=False)
    result = run_cli("run", PLAN, "--no-progress", "--json")  # the new table's changed rows
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_written"] == 2
    assert outbox_count(conn) == 2  # reembed's writes fired none of them
    assert mismatches(conn, "embedding") == []
    # Foreign keys act: a deleted document takes its comments, a deleted author its documents.
    conn.execute("DELETE FROM docs WHERE id = 20")
    assert conn.execute("SELECT count(*) FROM comments WHERE doc_id = 20").fetchone()[0] == 0
    new_id = conn.execute("INSERT INTO docs (title, content, author_id) VALUES ('x', %s, 1) RETURNING id",
                          (passage(1003),)).fetchone()[0]
    assert new_id > 200  # the shared sequence carried on
    assert conn.execute("SELECT seq FROM docs WHERE id = %s", (new_id,)).fetchone()[0] > 200  # so did the identity

    result = run_cli("rollback", PLAN, "--json")
    assert result.exit_code == 0, result.output
    assert shape(conn, "docs") == before_shape and _indexes(conn, "docs") == before_indexes
    assert {t for t in _triggers(conn, "docs") if not t.startswith("reembed")} == {"docs_touch", "docs_outbox"}
    assert {t for t in _triggers(conn, COPY) if not t.startswith("reembed")} == set()
    assert _foreign_keys(conn)["comments_doc_id_fkey"] == ("comments", "docs", True)
    conn.execute("DELETE FROM docs WHERE id = 40")
    assert conn.execute("SELECT count(*) FROM comments WHERE doc_id = 40").fetchone()[0] == 0
    conn.execute("DELETE FROM authors WHERE id = 4")
    assert conn.execute("SELECT count(*) FROM docs WHERE author_id = 4").fetchone()[0] == 0
    # Rows written or edited after cutover have no source-model vector yet: --rollback-fill.
    missing = json.loads(result.stdout)["missing_old_vectors"]
    assert missing == 3
    conn.execute("TRUNCATE outbox")
    result = run_cli("run", PLAN, "--rollback-fill", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    assert outbox_count(conn) == 0
    rows = conn.execute("SELECT id, content, title, embedding FROM docs WHERE id > 200 OR id = 11").fetchall()
    for id_, content, title, vector in rows:
        want = expected_vector(SOURCE, content, task_type="RETRIEVAL_DOCUMENT", title=title, dimensions=768)
        got = vector.to_numpy()
        assert abs(got - want).max() < 1e-5, id_
    conn.execute("UPDATE docs SET title = 'after rollback' WHERE id = 12")
    assert outbox_count(conn) == 1

    for step in (("run", PLAN, "--no-progress"), ("index", PLAN, "--no-progress"),
                 ("verify", PLAN, "--no-source", "--sample", "30"), ("cutover", PLAN)):
        result = run_cli(*step)
        assert result.exit_code == 0, (step, result.output)
    assert mismatches(conn, "embedding") == []
    question = cleanup_preview(conn, *load_plan(conn, PLAN), "cleanup")  # what cleanup asks before dropping
    assert [d.split(" (")[0] for d in question.drops] == [f"table public.{OLD}", "the change tracking"]
    assert question.needs_confirmation and question.ends_rollback
    result = run_cli("cleanup", PLAN, "--yes", "--json")
    assert result.exit_code == 0, result.output
    dropped = json.loads(result.stdout)
    assert dropped["what"] == "table" and dropped["column_bytes"] > 0
    assert conn.execute("SELECT to_regclass(%s)", (OLD,)).fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'reembed%'").fetchone()[0] == 0
    assert _tagged_live(before_shape, shape(conn, "docs"), "gemini-embedding-001")
    assert _indexes(conn, "docs") == before_indexes
    conn.execute("DELETE FROM authors WHERE id = 2")
    assert conn.execute("SELECT count(*) FROM docs WHERE author_id = 2").fetchone()[0] == 0
    conn.execute("DELETE FROM docs WHERE id = 30")
    assert conn.execute("SELECT count(*) FROM comments WHERE doc_id = 30").fetchone()[0] == 0
    assert _foreign_keys(conn)["comments_doc_id_fkey"] == ("comments", "docs", True)
