"""Connections: psycopg 3 with pgvector registered, to --dsn/DATABASE_URL, the PG* variables, or the
embedded server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from pgvector.psycopg import register_vector

from toolkit import embedded
from toolkit.config import conninfo_target, describe_target, register_secret, resolve_dsn, scrub
from toolkit.errors import Unreachable

log = logging.getLogger(__name__)

APPLICATION_NAME = "reembed"


@dataclass(frozen=True)
class Database:
    """Where to connect. `dsn` None means the embedded PostgreSQL; "" libpq's own resolution (PG*)."""

    dsn: str | None = None

    @classmethod
    def from_flag(cls, dsn_flag: str | None) -> "Database":
        return cls(resolve_dsn(dsn_flag))

    @property
    def is_embedded(self) -> bool:
        return self.dsn is None

    def conninfo(self) -> str:
        return self.dsn if self.dsn is not None else embedded.url()

    def describe(self) -> str:
        """Where it will connect, for messages: `host:port/dbname` (never the password)."""
        return "embedded PostgreSQL" if self.dsn is None else conninfo_target(self.dsn)

    def connect(self, *, autocommit: bool = True, application_name: str = APPLICATION_NAME) -> psycopg.Connection:
        """A new connection with pgvector's types registered (the extension is created if missing)."""
        try:
            conn = psycopg.connect(self.conninfo(), autocommit=autocommit, application_name=application_name,
                                   connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise Unreachable(f"cannot connect to {self.describe()}: {scrub(str(exc)).strip().splitlines()[0]}") from None
        # A password libpq read from a service file or ~/.pgpass is as secret as one in the DSN.
        register_secret(conn.info.password)
        log.debug("connected to %s as %s (server %s)", connected_target(conn), conn.info.user, conn.info.server_version)
        try:
            ensure_vector_extension(conn)
            register_vector(conn)
        except BaseException:
            conn.close()
            raise
        return conn


def connected_target(conn: psycopg.Connection) -> str:
    """`host:port/dbname` of an open connection, as libpq resolved it."""
    return describe_target(conn.info.host, conn.info.port, conn.info.dbname)


def ensure_vector_extension(conn: psycopg.Connection) -> None:
    """pgvector must be there to read a vector column at all; create it when we may."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise Unreachable("the pgvector extension is not installed and this role may not create it") from exc
