"""reembed's own schema: applied by Alembic, idempotent, never touching public.alembic_version."""

from __future__ import annotations

import psycopg

from toolkit.db import Database
from toolkit.migrations import current_revision, upgrade
from toolkit.resources import alembic_dir


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(alembic_dir())).get_current_head()
    assert head
    return head


def test_init_twice_is_harmless_and_keeps_the_version_table_in_schema_reembed(
        database: Database, conn: psycopg.Connection, run_cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
    conn.execute("INSERT INTO public.alembic_version VALUES ('the_apps_own_head')")
    first = run_cli("init")
    second = run_cli("init")
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr + second.stderr
    assert f"schema reembed is at revision {_head()}" in second.stdout
    assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [("the_apps_own_head",)]
    assert current_revision(conn) == _head()
    tables = {r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'reembed'")}
    assert {"plans", "ledger", "events", "verifications", "swaps", "alembic_version"} <= tables


def test_schema_is_created_on_an_empty_database(pg_admin_dsn: str) -> None:
    from psycopg import sql

    name = "reembed_empty_db_test"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(pg_admin_dsn)
    params["dbname"] = name
    dsn = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    try:
        with Database(dsn).connect() as conn:  # creates the vector extension on the way
            assert current_revision(conn) is None
            upgrade(dsn)
            upgrade(dsn)
            assert current_revision(conn) == _head()
            assert conn.execute("SELECT count(*) FROM reembed.plans").fetchone() == (0,)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
