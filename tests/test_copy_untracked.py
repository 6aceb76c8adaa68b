"""Copy strategy: what the application writes where the propagation's trigger does not fire (a
session with session_replication_role = replica, as pg_restore or a logical-replication apply
use) is found before each swap and repaired in the table swapped in, so no swap puts a stale
copy in front of the application: a change of a column that is not embedded, a delete, an
insert, a change of the text; the backfill's write refreshes such a row too."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from shapes_support import ok, vector_mismatches
from tables import create_docs, passage
from verify_support import old_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")

COPY = "docs__gemini_embedding_001"


def _docs_with_status(conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    """docs with a column that is not embedded, planned with the copy strategy, run, indexed, verified."""
    create_docs(conn, 60, vectors=old_vectors)
    conn.execute("ALTER TABLE docs ADD COLUMN status text NOT NULL DEFAULT 'draft'")
    ok(run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title", "--name", "u",
               "--offline", "--strategy", "copy"))
    for step in ("run", "index"):
        ok(run_cli(step, "u", "--no-progress"))
    ok(run_cli("verify", "u"))


def _behind_the_triggers_back(conn: psycopg.Connection, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for statement, params in statements:
            conn.execute(statement, params)


def _rows(conn: psycopg.Connection, table: str = "docs") -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT id, title, content, status FROM {table} ORDER BY id").fetchall()


def test_a_change_of_a_column_not_embedded_and_a_delete_are_repaired_before_the_swap(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    _docs_with_status(conn, run_cli)
    _behind_the_triggers_back(conn, ("UPDATE docs SET status = 'published' WHERE id IN (5, 6)", ()),
                              ("DELETE FROM docs WHERE id = 7", ()))
    written = _rows(conn)
    assert _rows(conn, COPY) != written  # the copy missed them: a swap now would lose them
    ok(run_cli("cutover", "u", "--catch-up-rows", "0"))  # nothing to embed again: repaired, not refused
    assert _rows(conn) == written
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE pk = '{\"id\": 7}'").fetchone()[0] == 0
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []
    events = conn.execute("SELECT details FROM reembed.events WHERE kind = 'reconcile'").fetchall()
    assert [e[0] for e in events] == [{"changed": 0, "inserted": 0, "deleted": 1, "repaired": 2}]


def test_a_changed_text_and_an_insert_are_queued_by_cutover_and_embedded_by_the_run_it_advises(  # type: ignore[no-untyped-def]
        conn, run_cli) -> None:
    _docs_with_status(conn, run_cli)
    _behind_the_triggers_back(
        conn, ("UPDATE docs SET content = %s, status = 'edited' WHERE id = 3", (passage(9001),)),
        ("INSERT INTO docs (id, title, content, embedding, status) SELECT 500, 'new', %s, embedding, 'new' "
         "FROM docs WHERE id = 1", (passage(9002),)))
    written = _rows(conn)
    result = run_cli("cutover", "u", "--catch-up-rows", "0")
    assert result.exit_code == 1, result.output
    assert "1 rows changed since they were embedded" in result.stderr
    assert "1 rows were inserted without change tracking seeing them" in result.stderr
    assert "run `reembed run u`" in result.stderr
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'pending'").fetchone()[0] == 2
    # the copy holds the rows as written now, with no vector of the old text
    assert _rows(conn, COPY) == written
    assert conn.execute(f"SELECT embedding IS NULL FROM {COPY} WHERE id = 3").fetchone()[0]
    ok(run_cli("run", "u", "--no-progress"))
    ok(run_cli("verify", "u"))
    ok(run_cli("cutover", "u"))
    assert _rows(conn) == written
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []


def test_the_backfill_write_refreshes_the_copy_row_from_the_original(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 40, vectors=old_vectors)
    conn.execute("ALTER TABLE docs ADD COLUMN status text NOT NULL DEFAULT 'draft'")
    ok(run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title", "--name", "u",
               "--offline", "--strategy", "copy"))
    ok(run_cli("run", "u", "--no-progress"))
    conn.execute("UPDATE docs SET content = %s WHERE id = 4", (passage(9003),))  # propagated: pending
    _behind_the_triggers_back(conn, ("UPDATE docs SET status = 'published' WHERE id = 4", ()))
    assert conn.execute(f"SELECT status FROM {COPY} WHERE id = 4").fetchone()[0] == "draft"
    ok(run_cli("run", "u", "--no-progress"))
    assert conn.execute(f"SELECT status, embedding IS NOT NULL FROM {COPY} WHERE id = 4").fetchone() == (
        "published", True)


def test_a_change_behind_the_triggers_back_after_cutover_is_kept_by_the_rollback(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    _docs_with_status(conn, run_cli)
    ok(run_cli("cutover", "u"))
    _behind_the_triggers_back(conn, ("UPDATE docs SET status = 'archived' WHERE id = 9", ()),
                              ("UPDATE docs SET content = %s WHERE id = 10", (passage(9004),)))
    written = _rows(conn)
    result = run_cli("rollback", "u")
    assert result.exit_code == 0, result.output
    assert _rows(conn) == written
    assert "--rollback-fill" in result.output  # row 10's source-model vector is of its old text: cleared
    assert conn.execute("SELECT embedding IS NULL FROM docs WHERE id = 10").fetchone()[0]


def test_rows_the_backfill_has_still_to_write_are_left_to_it(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    _docs_with_status(conn, run_cli)
    # As a cutover tried before the run finished finds a row: pending, not in the copy yet.
    conn.execute(f"DELETE FROM {COPY} WHERE id = 12")
    conn.execute("UPDATE reembed.ledger SET state = 'pending', text_hash = NULL WHERE pk = '{\"id\": 12}'")
    result = run_cli("cutover", "u", "--catch-up-rows", "0")
    assert result.exit_code == 1 and "1 rows are pending" in result.stderr, result.output
    assert "inserted" not in result.stderr and "changed since" not in result.stderr
    assert conn.execute(f"SELECT count(*) FROM {COPY} WHERE id = 12").fetchone()[0] == 0  # not copied by cutover
    ok(run_cli("run", "u", "--no-progress"))
    ok(run_cli("verify", "u"))
    ok(run_cli("cutover", "u"))
    assert vector_mismatches(conn, "docs", "id", "content", "embedding", title="title") == []
