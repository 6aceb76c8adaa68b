"""Prepare: shadow column like the original, its JSON tag, change tracking before the seed,
page-striped ledger order, idempotence, short lock waits, and refusals that change nothing."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from toolkit.errors import GateFailed
from toolkit.phases import prepare as prep
from toolkit.plan import load
from tables import create_docs


def _plan(run_cli, table: str = "docs") -> str:  # type: ignore[no-untyped-def]
    result = run_cli("plan", table, "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title",
                     "--name", "p1", "--offline")
    assert result.exit_code == 0, result.output
    return "p1"


def _prepare(conn: psycopg.Connection, name: str = "p1", **kwargs) -> bool:  # type: ignore[no-untyped-def]
    plan, record = load(conn, name)
    return prep.prepare(conn, plan, record, **kwargs)


def _column(conn: psycopg.Connection, name: str) -> tuple[str, str, str | None] | None:
    return conn.execute(
        "SELECT format_type(atttypid, atttypmod), attstorage::text, col_description(attrelid, attnum) "
        "FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = %s AND NOT attisdropped",
        (name,)).fetchone()


def test_prepare_adds_tagged_shadow_column_tracking_and_ledger(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 200, index="hnsw")
    conn.execute("ALTER TABLE docs ALTER COLUMN embedding SET STORAGE MAIN")
    name = _plan(run_cli)
    assert _prepare(conn) is True
    shadow = "embedding__gemini_embedding_001"
    type_, storage, comment = _column(conn, shadow)
    assert type_ == "vector(768)" and storage == "m"
    tag = json.loads(comment)
    assert tag["provider"] == "gemini" and tag["model"] == "gemini-embedding-001"
    assert tag["task_type"] == "RETRIEVAL_DOCUMENT" and tag["dimensions"] == 768 and tag["plan"] == name
    assert tag["created_at"]
    plan_id = conn.execute("SELECT id, phase FROM reembed.plans").fetchone()
    assert plan_id[1] == "prepared"
    names = prep.tracking_names(plan_id[0])
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s", (names.trigger,)).fetchone()[0] == 1
    assert conn.execute("SELECT to_regprocedure(%s)", (names.function_name + "()",)).fetchone()[0] is not None
    assert conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'pending') FROM reembed.ledger"
                        ).fetchone() == (200, 200)
    # Nothing in the user's rows changed.
    assert conn.execute(f'SELECT count(*) FROM docs WHERE "{shadow}" IS NOT NULL').fetchone()[0] == 0


def test_ledger_order_is_page_striped(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 400, index=None)
    _plan(run_cli)
    _prepare(conn)
    rows = conn.execute(
        """SELECT (d.ctid::text::point)[0]::int AS page, (d.ctid::text::point)[1]::int AS slot
           FROM reembed.ledger l JOIN docs d ON d.id = (l.pk->>'id')::bigint ORDER BY l.seq""").fetchall()
    pages = {p for p, _ in rows}
    assert len(pages) > 1
    # First the first row of every page in page order, then the second row of every page...
    assert rows == sorted(rows, key=lambda r: (r[1], r[0]))
    assert [p for p, _ in rows[:len(pages)]] == sorted(pages)


def test_tracking_marks_inserts_and_text_changes_only(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 20, index=None)
    _plan(run_cli)
    _prepare(conn)
    conn.execute("UPDATE reembed.ledger SET state = 'done', text_hash = 'x'")
    conn.execute("UPDATE docs SET content = 'new' WHERE id = 1")
    conn.execute("UPDATE docs SET title = 'new title' WHERE id = 2")
    conn.execute("UPDATE docs SET content = content WHERE id = 3")  # same value: not stale
    conn.execute("UPDATE docs SET embedding = embedding WHERE id = 4")  # not a tracked column
    conn.execute("INSERT INTO docs (id, title, content) VALUES (100, 't', 'inserted')")
    conn.execute("UPDATE docs SET id = 200 WHERE id = 5")  # a key change: old key gone, new key pending
    conn.execute("DELETE FROM docs WHERE id = 6")
    pending = {r[0]["id"] for r in conn.execute("SELECT pk FROM reembed.ledger WHERE state = 'pending'")}
    assert pending == {1, 2, 100, 200}
    keys = {r[0]["id"] for r in conn.execute("SELECT pk FROM reembed.ledger")}
    assert 5 not in keys and 6 not in keys and len(keys) == 20
    assert conn.execute("SELECT text_hash FROM reembed.ledger WHERE pk = '{\"id\": 1}'").fetchone()[0] is None


def test_tracking_works_for_a_role_without_rights_on_reembed(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 5, index=None)
    _plan(run_cli)
    _prepare(conn)
    conn.execute("CREATE ROLE app_writer_p LOGIN")
    conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO app_writer_p")
    try:
        with conn.transaction():
            conn.execute("SET LOCAL ROLE app_writer_p")
            conn.execute("INSERT INTO docs (id, title, content) VALUES (50, 't', 'from the app')")
        assert conn.execute("SELECT state FROM reembed.ledger WHERE pk = '{\"id\": 50}'").fetchone()[0] == "pending"
    finally:
        conn.execute("REVOKE ALL ON docs FROM app_writer_p")
        conn.execute("DROP ROLE app_writer_p")


def test_prepare_is_idempotent_and_finishes_a_half_done_prepare(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 50, index=None)
    _plan(run_cli)
    plan, record = load(conn, "p1")
    # A crash right after the column was added: the phase still says planned.
    conn.execute(prep.planned_sql(plan, record.id)[0])
    conn.execute(prep.planned_sql(plan, record.id)[1])
    assert _prepare(conn) is True
    assert _prepare(conn) is False
    assert conn.execute("SELECT count(*) FROM reembed.ledger").fetchone()[0] == 50
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'reembed_track_%'").fetchone()[0] == 1


def test_prepare_refuses_a_foreign_shadow_column_and_changes_nothing(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10, index=None)
    _plan(run_cli)
    conn.execute('ALTER TABLE docs ADD COLUMN "embedding__gemini_embedding_001" vector(768)')
    with pytest.raises(GateFailed, match="was not created by plan"):
        _prepare(conn)
    assert conn.execute("SELECT count(*) FROM reembed.ledger").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'reembed_track_%'").fetchone()[0] == 0
    assert conn.execute("SELECT phase FROM reembed.plans").fetchone()[0] == "planned"


def test_prepare_does_not_queue_behind_a_long_transaction(conn, database, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10, index=None)
    _plan(run_cli)
    blocker = database.connect(autocommit=False)
    try:
        # Bounds the test if lock_timeout ever failed: the blocker would end, prepare succeed, the test fail.
        blocker.execute("SET idle_in_transaction_session_timeout = '600s'")
        blocker.execute("SELECT count(*) FROM docs")  # holds ACCESS SHARE until it ends
        answered: list[int] = []

        def reader() -> None:
            # While prepare retries, the application's reads get their answers: each waits at most
            # for one try's lock_timeout, never for the long transaction.
            with database.connect() as c:
                for _ in range(10):
                    answered.append(c.execute("SELECT count(*) FROM docs").fetchone()[0])
                    time.sleep(0.05)

        thread = threading.Thread(target=reader)
        thread.start()
        with pytest.raises(GateFailed, match="could not take the lock"):
            _prepare(conn, lock_timeout_ms=50, retries=2)
        thread.join(timeout=600)
        # Every read answered while the long transaction still held the table.
        assert not thread.is_alive() and answered == [10] * 10
        assert blocker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        blocker.rollback()
        blocker.close()
    assert _column(conn, "embedding__gemini_embedding_001") is None
    assert _prepare(conn) is True  # once the long transaction ended


def test_halfvec_column_gets_a_halfvec_shadow(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE hdocs (id int PRIMARY KEY, title text, content text, embedding halfvec(768))")
    conn.execute("INSERT INTO hdocs SELECT g, 't', 'text ' || g, NULL FROM generate_series(1, 5) g")
    result = run_cli("plan", "hdocs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "p1", "--offline")
    assert result.exit_code == 0, result.output
    _prepare(conn)
    row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'hdocs'::regclass "
                       "AND attname = 'embedding__gemini_embedding_001'").fetchone()
    assert row[0] == "halfvec(768)"


def test_plan_sql_shows_the_prepare_statements(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 3, index=None)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "p1", "--offline",
                     "--sql", "--json")
    assert result.exit_code == 0, result.output
    statements = json.loads(result.stdout)["sql"]["prepare"]
    assert any("ADD COLUMN" in s and "embedding__gemini_embedding_001" in s for s in statements)
    assert any("CREATE OR REPLACE TRIGGER" in s for s in statements)
    assert any("INSERT INTO reembed.ledger" in s and "ctid" in s for s in statements)
