"""Issue 13, point 10: the application's query-model switch, as the README shows it, reads the
model from the live column's tag with the application's own driver and a role that has no
rights on schema reembed; cutover sets it, rollback puts back what was there, and a comment the
user wrote is never replaced."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
from psycopg import sql

from backfill_support import gemini  # noqa: F401 (fixture)
from swap_support import PLAN, backfilled

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_switch() -> Callable[[psycopg.Connection, str, str], dict[str, Any]]:
    block = re.search(r"<!-- query-model-switch[^>]*-->\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "the README's query-model switch block is missing"
    scope: dict[str, Any] = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # the README's code, exactly as printed
    return scope["live_embedding_model"]


@pytest.fixture
def reader(conn: psycopg.Connection):  # type: ignore[no-untyped-def]
    """The application's connection: a role that may read docs and nothing in schema reembed."""
    role = sql.Identifier(f"reader_{conn.info.dbname}")  # roles are per server: one per test database
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(role))
    app = psycopg.connect(psycopg.conninfo.make_conninfo(conn.info.dsn, user=role.as_string(conn).strip('"')),
                          autocommit=True)
    try:
        yield app
    finally:
        app.close()
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


@pytest.mark.parametrize("strategy", ["column", "copy"])
def test_the_readme_switch_follows_cutover_and_rollback(conn, reader, run_cli, gemini, strategy: str) -> None:  # type: ignore[no-untyped-def]
    live_model = _readme_switch()
    backfilled(conn, run_cli, plan_args=("--strategy", strategy))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader.execute("SELECT phase FROM reembed.plans")
    assert live_model(reader, "docs", "embedding")["model"] == "nomic-embed-text"

    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    assert live_model(reader, "docs", "embedding") == {"model": "gemini-embedding-001",
                                                       "task_type": "RETRIEVAL_QUERY", "dimensions": 768}
    assert run_cli("rollback", PLAN).exit_code == 0
    assert live_model(reader, "docs", "embedding")["model"] == "nomic-embed-text"
    assert conn.execute("SELECT col_description('docs'::regclass, attnum) FROM pg_attribute "
                        "WHERE attrelid = 'docs'::regclass AND attname = 'embedding'").fetchone()[0] is None
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    assert run_cli("cleanup", PLAN, "--yes").exit_code == 0
    assert live_model(reader, "docs", "embedding")["model"] == "gemini-embedding-001"  # stays after cleanup


@pytest.mark.parametrize("strategy", ["column", "copy"])
def test_a_comment_of_the_users_own_is_never_replaced(conn, reader, run_cli, gemini, strategy: str) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, plan_args=("--strategy", strategy),
               before_run=lambda c: c.execute("COMMENT ON COLUMN docs.embedding IS 'passage vectors'"))
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    comment = conn.execute("SELECT col_description('docs'::regclass, attnum) FROM pg_attribute "
                           "WHERE attrelid = 'docs'::regclass AND attname = 'embedding'").fetchone()[0]
    assert comment == "passage vectors"
    assert _readme_switch()(reader, "docs", "embedding")["model"] == "nomic-embed-text"  # falls back, as documented
