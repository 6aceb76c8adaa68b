"""Applies reembed's own schema with Alembic; the version table lives in schema `reembed`."""

from __future__ import annotations

import os

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from toolkit.errors import GateFailed
from toolkit.resources import alembic_dir

SCHEMA = "reembed"
VERSION_TABLE = "alembic_version"


def connectable_from_config(config: Config) -> Engine:
    """The engine alembic/env.py migrates with: ours when reembed runs it, else DATABASE_URL."""
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        raise SystemExit("set DATABASE_URL to the database to migrate")
    return _engine(dsn)


def _engine(conninfo: str) -> Engine:
    # psycopg parses the DSN in every form users write it (URL, key=value, socket host).
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool)


def _config(conninfo: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    config.attributes["engine"] = _engine(conninfo)
    return config


def upgrade(conninfo: str) -> None:
    """Create or upgrade schema `reembed` to the newest revision. Harmless to repeat."""
    try:
        command.upgrade(_config(conninfo), "head")
    except DBAPIError as exc:
        # Surface the database's own one-line reason (e.g. permission denied), not a SQLAlchemy trace.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise GateFailed(f"cannot create or upgrade schema {SCHEMA}: {reason}") from None


def current_revision(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT to_regclass('reembed.alembic_version') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return None
    version = conn.execute("SELECT version_num FROM reembed.alembic_version").fetchone()
    return version[0] if version else None


def ensure_schema(conn: psycopg.Connection, conninfo: str) -> None:
    """Apply migrations when the schema is missing or behind; cheap when it is current."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(alembic_dir())).get_current_head()
    if current_revision(conn) != head:
        upgrade(conninfo)
