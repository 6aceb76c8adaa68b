"""Issue 12, point 5: text that changes without an UPDATE OF the text column is still tracked — an
application BEFORE trigger deriving it from another column, a VIRTUAL generated column (a
Supabase vecs table exposing its metadata's text) — and a change made behind the trigger's back
is queued again by the commands that find it, so the `reembed run` they advise makes progress.
Inheritance, whose children's rows the trigger cannot see, is refused at plan, and so is a
single partition or inheritance child (its columns can only be renamed on the parent)."""

from __future__ import annotations

import psycopg
import pytest

from cli_support import error_lines
from client_tables import create_vecs
from shapes_support import lifecycle, ok, table_state, vector_mismatches
from tables import create_docs, passage
from verify_support import old_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")


def _derived_content(conn: psycopg.Connection, rows: int) -> None:
    """docs whose content the application derives from raw in a BEFORE trigger; it updates raw only."""
    create_docs(conn, rows, vectors=old_vectors, title=False)
    conn.execute("ALTER TABLE docs ADD COLUMN raw text")
    conn.execute("UPDATE docs SET raw = content")
    conn.execute("""CREATE FUNCTION derive_content() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN NEW.content := 'derived: ' || NEW.raw; RETURN NEW; END $$""")
    conn.execute("CREATE TRIGGER docs_derive BEFORE INSERT OR UPDATE OF raw ON docs "
                 "FOR EACH ROW EXECUTE FUNCTION derive_content()")


def test_text_derived_by_an_application_trigger_is_tracked(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    _derived_content(conn, 120)
    ok(run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--name", "der", "--offline"))
    ok(run_cli("run", "der", "--no-progress"))
    conn.execute("UPDATE docs SET raw = %s WHERE id < 10", (passage(7777),))  # content changes, not in the SET list
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending'").fetchone()[0] == 10
    ok(run_cli("run", "der", "--no-progress"))
    ok(run_cli("index", "der", "--no-progress"))
    ok(run_cli("verify", "der"))
    ok(run_cli("cutover", "der"))
    assert vector_mismatches(conn, "docs", "id", "content", "embedding") == []


def test_a_virtual_generated_text_column_is_tracked_through_its_inputs(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_vecs(conn, 100)
    ok(run_cli("plan", "vecs.docs", "--column", "vec", "--text", "content", "--name", "gen", "--offline"))
    ok(run_cli("run", "gen", "--no-progress"))
    conn.execute("UPDATE vecs.docs SET metadata = jsonb_set(metadata, '{text}', to_jsonb(%s::text)) "
                 "WHERE id IN ('doc-3', 'doc-4')", (passage(4242),))
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending'").fetchone()[0] == 2
    ok(run_cli("run", "gen", "--no-progress"))
    ok(run_cli("index", "gen", "--no-progress"))
    ok(run_cli("verify", "gen"))
    ok(run_cli("cutover", "gen"))
    assert vector_mismatches(conn, "vecs.docs", "id", "content", "vec") == []


def test_a_change_behind_the_triggers_back_is_queued_by_cutover_and_done_by_the_run_it_advises(  # type: ignore[no-untyped-def]
        conn, run_cli) -> None:
    create_docs(conn, 80, vectors=old_vectors)
    lifecycle_args = ("docs", "--column", "embedding", "--text", "content", "--title", "title")
    ok(run_cli("plan", *lifecycle_args, "--name", "bk", "--offline"))
    for step in ("run", "index"):
        ok(run_cli(step, "bk", "--no-progress"))
    ok(run_cli("verify", "bk"))
    # A session whose triggers do not fire (pg_restore, a logical-replication apply) edits rows.
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE docs SET content = %s WHERE id IN (1, 2, 3)", (passage(9999),))
    result = run_cli("cutover", "bk", "--catch-up-rows", "0")
    assert result.exit_code == 1 and "3 rows changed since they were embedded" in result.stderr
    assert "run `reembed run bk`" in result.stderr
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending'").fetchone()[0] == 3
    ok(run_cli("run", "bk", "--no-progress"))  # the advice makes progress
    ok(run_cli("verify", "bk"))
    ok(run_cli("cutover", "bk"))
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []


@pytest.mark.parametrize("shape", ["inheritance parent", "inherited column", "a partition on its own"])
def test_shapes_whose_rows_tracking_cannot_see_are_refused_at_plan(conn, run_cli, shape: str) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20)
    table = "docs"
    if shape == "inheritance parent":
        conn.execute("CREATE TABLE docs_archive () INHERITS (docs)")
        expected = "has inheritance children (docs_archive)"
    elif shape == "inherited column":
        conn.execute("CREATE TABLE docs_archive (PRIMARY KEY (id)) INHERITS (docs)")
        conn.execute("INSERT INTO docs_archive SELECT * FROM docs")
        table, expected = "docs_archive", "come from docs"
    else:  # the partitioned table itself migrates (test_shapes_partitions.py); one partition cannot
        conn.execute("CREATE TABLE pdocs (id bigint, tenant int, content text, embedding vector(768), "
                     "PRIMARY KEY (tenant, id)) PARTITION BY LIST (tenant)")
        conn.execute("CREATE TABLE pdocs_1 PARTITION OF pdocs FOR VALUES IN (1)")
        table, expected = "pdocs_1", "come from pdocs"
    before = table_state(conn)
    result = run_cli("plan", table, "--column", "embedding", "--text", "content", "--offline")
    assert result.exit_code == 2 and expected in result.stderr, result.output
    assert len(error_lines(result.stderr)) == 1
    assert table_state(conn) == before
