"""Item 7, privileges: the whole lifecycle as a role holding only what docs/privileges.md lists.

The superuser pre-creates only the vector extension and an empty schema `reembed` owned by the
migrating role (or grants that role CREATE on the database instead). The migrating role owns the
application's table and nothing else: no superuser, no CREATEDB/CREATEROLE, no rights on other
schemas. The application's own role has only SELECT/INSERT/UPDATE/DELETE on its table and no
right at all on schema reembed; its writes during the migration go through (the tracking trigger
is SECURITY DEFINER).
"""

from __future__ import annotations

import uuid
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from backfill_support import gemini  # noqa: F401 (fixture)
from cli_support import error_lines
from reliability_support import assert_nothing_lost, record
from tables import create_docs, passage


def _dsn_as(dsn: str, user: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = user
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture()
def roles(conn: psycopg.Connection) -> Iterator[tuple[str, str]]:
    """(migrator, app): cluster-wide roles, dropped with what they own after the test."""
    tag = uuid.uuid4().hex[:8]
    migrator, app = f"migrator_{tag}", f"app_{tag}"
    for role in (migrator, app):
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(sql.Identifier(role)))
    try:
        yield migrator, app
    finally:
        for role in (app, migrator):
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _setup(conn: psycopg.Connection, migrator: str, app: str, *, schema: str) -> None:
    m, a = sql.Identifier(migrator), sql.Identifier(app)
    create_docs(conn, 200, index="hnsw")
    conn.execute(sql.SQL("ALTER TABLE docs OWNER TO {}").format(m))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO {}").format(a))
    conn.execute("DROP SCHEMA reembed CASCADE")  # the template's, owned by the superuser
    # PostgreSQL 15+: PUBLIC may not create in schema public. The migrator needs CREATE on the
    # table's schema: the new index is created there (PostgreSQL checks it even for the owner).
    conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(m))
    if schema == "pre-created":
        conn.execute(sql.SQL("CREATE SCHEMA reembed AUTHORIZATION {}").format(m))
    else:
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), m))


@pytest.mark.parametrize("schema", ["pre-created", "CREATE on database"])
def test_the_whole_lifecycle_as_a_role_with_only_the_documented_rights(conn, database, run_cli, gemini, roles,  # type: ignore[no-untyped-def]
                                                                        monkeypatch, schema: str) -> None:
    migrator, app = roles
    _setup(conn, migrator, app, schema=schema)
    mdsn = _dsn_as(database.dsn, migrator)
    monkeypatch.setenv("DATABASE_URL", mdsn)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--name", "p1",
                     "--offline")
    assert result.exit_code == 0, result.output
    owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'reembed'").fetchone()[0]
    assert owner == migrator
    assert run_cli("run", "p1", "--no-progress").exit_code == 0
    # The application writes meanwhile with its own narrow role: tracked, no right on reembed needed.
    with psycopg.connect(_dsn_as(database.dsn, app), autocommit=True) as app_conn:
        assert not app_conn.execute("SELECT has_schema_privilege('reembed', 'USAGE')").fetchone()[0]
        app_conn.execute("INSERT INTO docs (id, title, content) VALUES (5000, 'new', %s)", (passage(5000),))
        app_conn.execute("UPDATE docs SET content = %s WHERE id = 3", (passage(3003),))
        app_conn.execute("DELETE FROM docs WHERE id = 4")
    steps = [("run", "p1", "--no-progress"), ("index", "p1", "--no-progress"), ("verify", "p1", "--no-source"),
             ("cutover", "p1"), ("rollback", "p1"), ("verify", "p1", "--no-source"), ("cutover", "p1"),
             ("cleanup", "p1", "--yes")]
    for step in steps:
        res = run_cli(*step)
        assert res.exit_code == 0, (step, res.output)
    assert_nothing_lost(conn, "p1")
    assert conn.execute("SELECT phase FROM reembed.plans WHERE name = 'p1'").fetchone()[0] == "cleaned_up"
    with psycopg.connect(_dsn_as(database.dsn, app), autocommit=True) as app_conn:
        assert app_conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone()[0] == 200
    super_rights = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
                                (migrator,)).fetchone()
    assert super_rights == (False, False, False)
    record("7 privileges", f"plan→run→index→verify→cutover→rollback→cutover→cleanup as the table's owner; "
           f"schema reembed {schema}", "completed; app role without rights on reembed kept writing; nothing lost",
           steps=len(steps) + 2)


def test_a_role_that_does_not_own_the_table_is_refused_in_one_line_and_nothing_changes(  # type: ignore[no-untyped-def]
        conn, database, run_cli, gemini, roles, monkeypatch) -> None:
    migrator, app = roles
    _setup(conn, migrator, app, schema="CREATE on database")
    monkeypatch.setenv("DATABASE_URL", _dsn_as(database.dsn, migrator))
    assert run_cli("init").exit_code == 0  # the migrator creates schema reembed and its tables
    # The application's role tries to migrate its table: it may read and write rows, not alter it.
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA reembed TO {}").format(sql.Identifier(app)))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA reembed TO {}").format(
        sql.Identifier(app)))
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA reembed TO {}").format(sql.Identifier(app)))
    monkeypatch.setenv("DATABASE_URL", _dsn_as(database.dsn, app))
    columns = conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 "
                           "AND NOT attisdropped").fetchone()[0]
    # Refused at plan (issue 12.9), before anything is paid for, naming the owner to run as.
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "p1", "--offline")
    assert result.exit_code == 2
    assert f"ownership of table public.docs, owned by {migrator}" in result.stderr \
        and len(error_lines(result.stderr)) == 1, result.stderr
    assert conn.execute("SELECT count(*) FROM reembed.plans").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 "
                        "AND NOT attisdropped").fetchone()[0] == columns
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal"
                        ).fetchone()[0] == 0
    record("7 privileges", "`plan` by a role that may write rows but does not own the table",
           f"refused, exit {result.exit_code}, one line: {result.stderr.strip()[len('reembed: error: '):][:70]}; "
           "nothing changed")
