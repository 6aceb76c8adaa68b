"""Issue 12, points 6 and 9: what the migration role sees and may do is checked at plan. Row
security that hides rows, and every missing privilege, are refused with exit 2, naming the fixes,
before anything is paid for; nothing in the table changes."""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from cli_support import error_lines
from shapes_support import table_state
from tables import create_docs

PLAN_ARGS = ("docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "acc", "--offline")


def _dsn_as(dsn: str, user: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = user
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture()
def migrator(conn: psycopg.Connection, database, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A plain login role owning docs(300) and schema reembed; DATABASE_URL connects as it."""
    role = f"migrator_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(ident))
    create_docs(conn, 300)
    conn.execute(sql.SQL("ALTER TABLE docs OWNER TO {}").format(ident))
    conn.execute("DROP SCHEMA reembed CASCADE")
    conn.execute(sql.SQL("CREATE SCHEMA reembed AUTHORIZATION {}").format(ident))
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ident))
    monkeypatch.setenv("DATABASE_URL", _dsn_as(database.dsn, role))
    try:
        yield role
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_force_row_level_security_on_the_owners_table_is_refused_naming_the_fixes(conn, run_cli, migrator) -> None:  # type: ignore[no-untyped-def]
    conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
    conn.execute("ALTER TABLE docs FORCE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY one_in_three ON docs USING (id % 3 = 0)")
    run_cli("init")  # reembed's tables, created by the migrator
    before = table_state(conn)
    result = run_cli("plan", *PLAN_ARGS)
    assert result.exit_code == 2, result.output
    message = "\n".join(error_lines(result.stderr))
    assert len(message.splitlines()) == 1
    assert "FORCE ROW LEVEL SECURITY" in message and f"ALTER ROLE {migrator} BYPASSRLS" in message
    assert "NO FORCE ROW LEVEL SECURITY" in message
    assert table_state(conn) == before
    # The owner without FORCE sees every row: plan counts all 300.
    conn.execute("ALTER TABLE docs NO FORCE ROW LEVEL SECURITY")
    result = run_cli("plan", *PLAN_ARGS, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["spec"]["estimate"]["rows_total"] == 300


def test_row_security_for_a_role_that_does_not_own_the_table_is_refused(conn, run_cli, migrator, database,  # type: ignore[no-untyped-def]
                                                                        monkeypatch) -> None:
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(reader)))
    try:
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON docs TO {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA reembed TO {}").format(sql.Identifier(reader)))
        conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY mine ON docs USING (id < 100)")
        monkeypatch.setenv("DATABASE_URL", _dsn_as(database.dsn, reader))
        result = run_cli("plan", *PLAN_ARGS)
        assert result.exit_code == 2
        assert f"role {reader} neither owns it nor has BYPASSRLS" in result.stderr
        assert f"run reembed as its owner {migrator}" in result.stderr
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(reader)))


def test_every_missing_privilege_is_named_at_plan_and_nothing_changes(conn, run_cli, migrator) -> None:  # type: ignore[no-untyped-def]
    other = f"other_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(other)))
    try:
        # A view on the column owned by someone else (cutover must re-create it), no CREATE on the
        # table's schema (the new index), no TEMP (the writers' staging tables).
        conn.execute("CREATE VIEW docs_titles AS SELECT id, title, embedding FROM docs")
        conn.execute(sql.SQL("ALTER VIEW docs_titles OWNER TO {}").format(sql.Identifier(other)))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(sql.Identifier(migrator)))
        conn.execute(sql.SQL("REVOKE TEMP ON DATABASE {} FROM PUBLIC").format(sql.Identifier(conn.info.dbname)))
        run_cli("init")
        before = table_state(conn)
        result = run_cli("plan", *PLAN_ARGS)
        assert result.exit_code == 2, result.output
        message = "\n".join(error_lines(result.stderr))
        assert len(message.splitlines()) == 1
        assert f"GRANT CREATE ON SCHEMA public TO {migrator}" in message
        assert f"GRANT TEMP ON DATABASE {conn.info.dbname} TO {migrator}" in message
        assert f"ownership of view public.docs_titles, owned by {other}" in message
        assert "nothing was changed" in message
        assert table_state(conn) == before
    finally:
        conn.execute("DROP VIEW IF EXISTS docs_titles")
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))
