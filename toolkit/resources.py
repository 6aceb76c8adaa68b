"""Files shipped beside the code: the SQL templates and the Alembic scripts.

In a wheel they sit inside the package (toolkit/sql, toolkit/alembic); in a source checkout
they sit at the top of the repository, where reviewers read them.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"reembed is installed without its {name!r} files")


def sql_dir() -> Path:
    return _find("sql")


def alembic_dir() -> Path:
    return _find("alembic")
