"""Issue 12, points 7 and 8: `inspect` and `plan` list the application's triggers (saying which the
column strategy's backfill fires) and the publications that carry the table, FOR ALL TABLES ones
too, with what every subscriber needs, in order. The steps themselves are followed on a real
subscriber in test_shapes_replication.py."""

from __future__ import annotations

import json

import psycopg
import pytest

from tables import create_docs

pytestmark = pytest.mark.usefixtures("provider_env")


def _app_triggers(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE docs ADD COLUMN updated_at timestamptz")
    conn.execute("CREATE TABLE outbox (id bigint, op text)")
    conn.execute("""CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$""")
    conn.execute("""CREATE FUNCTION to_outbox() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN INSERT INTO outbox VALUES (NEW.id, TG_OP); RETURN NULL; END $$""")
    conn.execute("CREATE TRIGGER docs_touch BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION touch()")
    conn.execute("CREATE TRIGGER docs_outbox AFTER INSERT OR UPDATE OF content ON docs "
                 "FOR EACH ROW EXECUTE FUNCTION to_outbox()")
    conn.execute("CREATE TRIGGER docs_audit AFTER UPDATE ON docs FOR EACH STATEMENT EXECUTE FUNCTION to_outbox()")
    conn.execute("ALTER TABLE docs DISABLE TRIGGER docs_audit")


def test_inspect_and_plan_list_the_application_triggers_and_which_the_backfill_fires(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 40)
    _app_triggers(conn)
    inspected = run_cli("inspect", "docs")
    assert inspected.exit_code == 0, inspected.output
    lines = {line.split(":")[0].strip(): line for line in inspected.stdout.splitlines() if line.startswith("  docs_")}
    assert "FIRES once per row during `reembed run`" in lines["docs_touch"]
    assert "not fired by reembed" in lines["docs_outbox"]  # UPDATE OF content: the backfill sets only the new column
    assert "disabled" in lines["docs_audit"] and "not fired" in lines["docs_audit"]
    data = json.loads(run_cli("inspect", "docs", "--json").stdout)
    assert {t["name"] for t in data["triggers"]} == {"docs_touch", "docs_outbox", "docs_audit"}

    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "t1", "--offline", "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["triggers"]
    assert any(n.startswith("docs_touch") and "FIRES once per row" in n for n in notes)
    # What the notes say is what happens: the backfill fires docs_touch on every row, not docs_outbox.
    assert run_cli("run", "t1", "--no-progress").exit_code == 0
    assert conn.execute("SELECT count(*) FROM docs WHERE updated_at IS NULL").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_plan_says_what_every_subscriber_needs_in_order(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, note text)")
    conn.execute("SET client_min_messages = error")  # "wal_level is insufficient" warnings
    conn.execute("CREATE PUBLICATION docs_pub FOR TABLE docs")
    conn.execute("CREATE PUBLICATION titles_pub FOR TABLE docs (id, title)")
    conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
    conn.execute("CREATE PUBLICATION inserts_only FOR TABLE other WITH (publish = 'insert')")

    inspected = run_cli("inspect", "docs")
    assert "docs_pub: FOR TABLE, publishes insert, update, delete, truncate" in inspected.stdout
    assert "titles_pub: FOR TABLE (id, title)" in inspected.stdout
    assert "everything: FOR ALL TABLES" in inspected.stdout and "inserts_only" not in inspected.stdout
    assert "also publish reembed's own schema" in inspected.stdout

    text = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "r1",
                   "--offline").stdout
    assert "logical replication:" in text and "on every subscriber of docs_pub, everything, in this order:" in text
    assert run_cli("abandon", "r1", "--yes").exit_code == 0
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name",
                     "r2", "--offline", "--json")
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)["subscribers"]
    assert advice["publications"] == ["docs_pub", "everything"]
    assert any("titles_pub publishes id, title" in w and "need nothing" in w for w in advice["warnings"])
    steps = advice["steps"]
    assert [s["when"].split(" ")[0:2] for s in steps] == [["now", "(schema"], ["before", "`reembed"],
                                                         ["before", "`reembed"], ["after", "`reembed"],
                                                         ["after", "`reembed"]]
    assert steps[0]["shell"] and "pg_dump --schema-only --schema=reembed" in steps[0]["statements"][0]
    assert steps[1]["statements"] == [
        'ALTER TABLE "public"."docs" ADD COLUMN "embedding__gemini_embedding_001" vector(768)']
    assert steps[2]["statements"][0].startswith('CREATE INDEX CONCURRENTLY "gemini_embedding_001__docs_embedding_idx"')
    swap = steps[3]["statements"]
    assert swap[0] == "BEGIN" and swap[-1] == "COMMIT"
    assert ('ALTER TABLE "public"."docs" RENAME COLUMN "embedding" TO "embedding__old_nomic_embed_text"' in swap)
    assert "missing replicated column embedding__old_nomic_embed_text" in steps[3]["when"]
    assert steps[4]["statements"] == ['ALTER TABLE "public"."docs" DROP COLUMN "embedding__old_nomic_embed_text"']


def test_a_column_list_naming_the_vector_column_says_what_to_change_before_run(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10)
    conn.execute("SET client_min_messages = error")
    conn.execute("CREATE PUBLICATION vec_pub FOR TABLE docs (id, embedding)")
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "r3", "--offline", "--json")
    advice = json.loads(result.stdout)["subscribers"]
    assert any("vec_pub lists the columns it publishes (id, embedding)" in w and
               'ALTER PUBLICATION vec_pub DROP TABLE "public"."docs"' in w for w in advice["warnings"])
