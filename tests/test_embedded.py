"""The embedded default: no DSN given, reembed starts its own PostgreSQL and later commands reuse it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from db_fixtures import short_temp_dir


def _reembed(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REEMBED_TEST_DSN")}
    env["REEMBED_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    with short_temp_dir("reembed-emb-") as path:  # the stopped server's pgdata, ~40 MB, goes with it
        try:
            yield path
        finally:
            _reembed("db", "stop", data_dir=path)


def test_embedded_server_starts_on_demand_and_is_reused(data_dir: Path) -> None:
    assert json.loads(_reembed("db", "status", "--json", data_dir=data_dir).stdout)["running"] is False
    init = _reembed("init", data_dir=data_dir)
    assert init.returncode == 0, init.stderr
    assert "embedded PostgreSQL" in init.stdout
    # No library warnings on the user's terminal: only the line naming the database acted on.
    assert init.stderr.splitlines() == [init.stderr.splitlines()[0]]
    assert init.stderr.startswith("reembed: acting on ") and "(the embedded PostgreSQL)" in init.stderr
    status = json.loads(_reembed("db", "status", "--json", data_dir=data_dir).stdout)
    assert (status["running"], status["data_dir"]) == (True, str(data_dir / "pgdata"))
    url = _reembed("db", "url", data_dir=data_dir).stdout.strip()
    assert url.startswith("postgresql://") and str(data_dir) in url
    # A later command finds the same server and the schema already there.
    plans = _reembed("plans", "--json", data_dir=data_dir)
    assert plans.returncode == 0 and json.loads(plans.stdout)["plans"] == []
    assert _reembed("db", "stop", data_dir=data_dir).stdout.strip() == "stopped"
    assert json.loads(_reembed("db", "status", "--json", data_dir=data_dir).stdout)["running"] is False


def test_unreachable_database_exits_3_without_the_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    dsn = "postgresql://app:Sup3rSecretPw@127.0.0.1:1/appdb"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "inspect", "docs", "--dsn", dsn],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 3
    assert "Sup3rSecretPw" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("reembed: error: cannot connect to 127.0.0.1:1/appdb")
