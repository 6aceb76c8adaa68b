"""A non-editable install must carry the SQL templates and the Alembic scripts it needs at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_sql_and_alembic(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("reembed-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "toolkit/alembic/env.py" in names
    assert any(n.startswith("toolkit/alembic/versions/0001_") for n in names)
    assert "toolkit/alembic.ini" in names
    shipped_sql = {n for n in names if n.startswith("toolkit/sql/")}
    assert {f"toolkit/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")} <= shipped_sql
    assert "toolkit/emulators/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "reembed = toolkit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # A typed library, under the license pyproject.toml declares.
    assert "toolkit/py.typed" in names
    licenses = [n for n in names if ".dist-info/" in n and "LICENSE" in n]
    assert licenses and "Apache License" in zipfile.ZipFile(wheel).read(licenses[0]).decode()


def test_license_file_matches_pyproject_and_there_is_a_changelog() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert (declared.get("text") if isinstance(declared, dict) else declared) == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
