"""Copy strategy, before cutover: the copy has exactly the original's columns, every application
write reaches it in the same transaction, the backfill fills it with exact vectors, and nothing
reembed does touches the application's table or fires its triggers."""

from __future__ import annotations

import json

import psycopg

from backfill_support import gemini, mismatches  # noqa: F401 (fixture)
from copy_support import COPY, PLAN, create_app_table, outbox_count, plan_copy, rows_of, shape


def _table_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def test_plan_names_the_copy_and_every_index_to_carry(conn, run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 20)
    result = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                     "--name", PLAN, "--offline", "--strategy", "copy", "--sql")
    assert result.exit_code == 0, result.output
    assert "strategy: copy" in result.output and f"create public.{COPY}" in result.output
    assert 'CREATE TABLE "public"."docs__gemini_embedding_001" (LIKE "public"."docs"' in result.output
    assert 'CREATE INDEX CONCURRENTLY "gemini_embedding_001__docs_title_idx"' in result.output
    assert 'ALTER TABLE "public"."docs" RENAME TO "docs__old_nomic_embed_text"' in result.output
    assert 'DROP TABLE "public"."docs__old_nomic_embed_text"' in result.output
    from toolkit.plan import load

    plan, _ = load(conn, PLAN)
    assert plan.strategy == "copy" and plan.copy is not None
    assert plan.copy.table == COPY and plan.copy.old_table == "docs__old_nomic_embed_text"
    assert [i.original_name for i in plan.copy.indexes] == ["docs_pkey", "docs_embedding_idx", "docs_title_idx"]
    assert plan.copy.indexes[0].constraint == "p" and plan.copy.indexes[0].body.startswith("USING btree (id)")
    assert not _table_exists(conn, COPY)  # planning changes nothing


def test_plan_refuses_what_the_copy_cannot_carry(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE parts (id int, content text, embedding vector(768), PRIMARY KEY (id)) "
                 "PARTITION BY RANGE (id)")
    result = run_cli("plan", "parts", "--column", "embedding", "--text", "content", "--offline", "--strategy", "copy")
    assert result.exit_code == 2 and "partitioned" in result.stderr and "--strategy column" in result.stderr
    conn.execute("CREATE TABLE taken (id int PRIMARY KEY, content text, embedding vector(768))")
    conn.execute("CREATE TABLE taken__gemini_embedding_001 (x int)")
    result = run_cli("plan", "taken", "--column", "embedding", "--text", "content", "--offline", "--strategy", "copy")
    assert result.exit_code == 2 and "taken__gemini_embedding_001 exists already" in result.stderr
    conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
    result = run_cli("plan", "taken", "--column", "embedding", "--text", "content", "--offline", "--strategy", "copy",
                     "--name", "t2")
    assert result.exit_code == 2 and "publication everything publishes every table" in result.stderr
    conn.execute("DROP PUBLICATION everything")
    # A rule of another table that writes this one binds to it by OID and is no view: named at plan.
    conn.execute("CREATE TABLE audit (id int, content text)")
    conn.execute("CREATE RULE audit_to_taken AS ON INSERT TO audit DO ALSO INSERT INTO taken (id, content) "
                 "VALUES (NEW.id, NEW.content)")
    conn.execute("DROP TABLE taken__gemini_embedding_001")
    result = run_cli("plan", "taken", "--column", "embedding", "--text", "content", "--offline", "--strategy", "copy",
                     "--name", "t3")
    assert result.exit_code == 2 and "rule audit_to_taken on audit depend(s) on it" in result.stderr, result.stderr


def test_run_fills_an_exact_copy_and_leaves_the_application_table_untouched(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 120)
    conn.execute("UPDATE docs SET content = '  ' WHERE id = 7")  # blank text: copied without a vector
    conn.execute("TRUNCATE outbox")
    before = rows_of(conn, "docs")
    xmins = conn.execute("SELECT array_agg(xmin::text ORDER BY id) FROM docs").fetchone()[0]
    plan_copy(run_cli)
    result = run_cli("run", PLAN, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    # Same columns, same order, same types, defaults, generated and identity columns, storage,
    # statistics targets and comments; only the vector column may be NULL until the swap.
    assert shape(conn, COPY) == shape(conn, "docs")
    # The application's table: not one row written, not one trigger fired.
    assert rows_of(conn, "docs") == before
    assert conn.execute("SELECT array_agg(xmin::text ORDER BY id) FROM docs").fetchone()[0] == xmins
    assert outbox_count(conn) == 0
    # The copy: every row, every column as in the original, the new model's exact vector.
    assert rows_of(conn, COPY, vector=False) == rows_of(conn, "docs", vector=False)
    assert mismatches(conn, "embedding", table=COPY) == []
    assert conn.execute(f"SELECT embedding IS NULL FROM {COPY} WHERE id = 7").fetchone()[0]
    # Only reembed's triggers are on the copy.
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                        (COPY,)).fetchone()[0] == 0
    status = json.loads(run_cli("status", PLAN, "--json").stdout)
    assert status["phase"] == "backfilled" and status["rows_pending"] == 0


def test_every_application_write_reaches_the_copy_in_the_same_transaction(conn, run_cli, gemini, database) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 40)
    plan_copy(run_cli)
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    app = database.connect()
    try:
        app.autocommit = False
        app.execute("INSERT INTO docs (title, content, author_id) VALUES ('new', 'a new passage', 2)")
        app.execute("UPDATE docs SET content = 'changed text' WHERE id = 3")
        app.execute("UPDATE docs SET tenant = 4 WHERE id = 4")  # not the text: its vector stays
        app.execute("DELETE FROM docs WHERE id = 5")
        # Inside the application's transaction the copy already agrees with it ...
        assert app.execute(f"SELECT count(*) FROM {COPY} WHERE content = 'a new passage'").fetchone()[0] == 1
        assert app.execute(f"SELECT content, embedding IS NULL FROM {COPY} WHERE id = 3").fetchone() == \
            ("changed text", True)
        assert app.execute(f"SELECT tenant, embedding IS NOT NULL FROM {COPY} WHERE id = 4").fetchone() == (4, True)
        assert app.execute(f"SELECT count(*) FROM {COPY} WHERE id = 5").fetchone()[0] == 0
        # ... and nobody else sees either table change until it commits.
        assert conn.execute(f"SELECT content FROM {COPY} WHERE id = 3").fetchone()[0] != "changed text"
        app.rollback()
        assert rows_of(conn, COPY, vector=False) == rows_of(conn, "docs", vector=False)
        app.execute("INSERT INTO docs (title, content, author_id) VALUES ('new', 'a new passage', 2)")
        app.execute("UPDATE docs SET content = 'changed text' WHERE id = 3")
        app.execute("UPDATE docs SET id = 1000 WHERE id = 6")
        app.execute("DELETE FROM docs WHERE id = 5")
        app.commit()
    finally:
        app.close()
    assert rows_of(conn, COPY, vector=False) == rows_of(conn, "docs", vector=False)
    pending = conn.execute("SELECT pk->>'id' FROM reembed.ledger WHERE state = 'pending' ORDER BY 1").fetchall()
    new_id = conn.execute("SELECT id FROM docs WHERE content = 'a new passage'").fetchone()[0]
    assert sorted(int(p[0]) for p in pending) == sorted([3, 1000, new_id])
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    assert mismatches(conn, "embedding", table=COPY) == []
    assert rows_of(conn, COPY, vector=False) == rows_of(conn, "docs", vector=False)
    conn.execute("TRUNCATE docs CASCADE")
    assert conn.execute(f"SELECT count(*) FROM {COPY}").fetchone()[0] == 0


def test_abandon_drops_the_copy_and_the_propagation(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 30)
    plan_copy(run_cli)
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    result = run_cli("abandon", PLAN, "--yes", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["what"] == "table" and report["column_bytes"] > 0
    assert not _table_exists(conn, COPY)
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'reembed%'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = 'reembed' AND p.proname NOT IN ('mark_changed', 'guard_write')"  # the registry's own
                        ).fetchone()[0] == 0
    conn.execute("INSERT INTO docs (title, content) VALUES ('after', 'the application goes on')")


def test_a_not_null_vector_column_does_not_stop_the_application_writing(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 20)
    conn.execute("ALTER TABLE docs ALTER COLUMN embedding SET NOT NULL")
    plan_copy(run_cli)
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    conn.execute("INSERT INTO docs (title, content, embedding) VALUES ('x', 'y', %s)", ("[" + ",".join(["0.1"] * 768) + "]",))
    assert conn.execute(f"SELECT embedding IS NULL FROM {COPY} WHERE content = 'y'").fetchone()[0]


def test_a_delete_racing_a_batch_write_of_the_same_row_leaves_nothing_behind(conn, run_cli, database) -> None:  # type: ignore[no-untyped-def]
    """The batch holds the row's ledger entry (FOR UPDATE, as sql/copy_write.sql does) while it
    inserts the row into the copy; the application deletes the row meanwhile. The propagation
    waits on the ledger entry before touching the copy, so the delete lands after the insert."""
    import threading

    from toolkit.phases.prepare import prepare
    from toolkit.plan import load

    create_app_table(conn, 10)
    plan_copy(run_cli)
    plan, record = load(conn, PLAN)
    prepare(conn, plan, record)  # the copy exists, empty; the ledger is seeded; nothing written yet
    batch = database.connect()
    app = database.connect()
    app.autocommit = False
    try:
        batch.autocommit = False
        batch.execute("SELECT 1 FROM reembed.ledger WHERE pk = '{\"id\": 5}' FOR UPDATE")
        done = threading.Event()

        def delete() -> None:
            app.execute("DELETE FROM docs WHERE id = 5")
            app.commit()
            done.set()

        worker = threading.Thread(target=delete)
        worker.start()
        pid = app.info.backend_pid
        from reliability_support import wait_for
        wait_for(lambda: conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                      (pid,)).fetchone()[0] == "Lock", timeout=60, what="the delete to wait")
        batch.execute(f"INSERT INTO {COPY} (id, title, content, author_id, tenant, seq, updated_at) "
                      "OVERRIDING SYSTEM VALUE SELECT id, title, content, author_id, tenant, seq, updated_at "
                      "FROM docs WHERE id = 5")
        batch.execute("UPDATE reembed.ledger SET state = 'done' WHERE pk = '{\"id\": 5}'")
        batch.commit()
        worker.join(timeout=60)
        assert done.is_set()
    finally:
        batch.close()
        app.close()
    assert conn.execute(f"SELECT count(*) FROM {COPY} WHERE id = 5").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE pk = '{\"id\": 5}'").fetchone()[0] == 0


def test_several_workers_share_the_copy_s_ledger(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 120)
    plan_copy(run_cli)
    result = run_cli("run", PLAN, "--no-progress", "--workers", "2", "--batch-size", "20", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_embedded_more_than_once"] == 0
    assert mismatches(conn, "embedding", table=COPY) == []
    assert rows_of(conn, COPY, vector=False) == rows_of(conn, "docs", vector=False)
