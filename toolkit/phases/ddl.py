"""SQL templates of the index, cutover and cleanup phases, read from sql/*.sql.

The files are what a reviewer reads; here they become psycopg `sql.SQL` objects whose
`{placeholders}` are filled only with `sql.Identifier` / `sql.Literal` / catalog-deparsed SQL,
never with strings typed by a user.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from psycopg import sql

from toolkit.resources import sql_dir


@lru_cache(maxsize=None)
def _text(name: str) -> str:
    lines = (sql_dir() / f"{name}.sql").read_text().splitlines()
    # Leading `--` lines document the file; they are not sent (a `{` in prose would be a placeholder).
    body = [line for line in lines if not line.lstrip().startswith("--")]
    return "\n".join(body).strip().rstrip(";")


def template(name: str, **parts: Any) -> sql.Composed:
    """The statement in sql/<name>.sql with its placeholders filled by `parts`."""
    return sql.SQL(_text(name)).format(**parts)


def options_clause(options: dict[str, Any]) -> sql.Composable:
    """`WITH (m = 24, ef_construction = 64)` for an index, or nothing."""
    if not options:
        return sql.SQL("")
    items = [sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in sorted(options.items())]
    return sql.SQL("WITH ({})").format(sql.SQL(", ").join(items))


class _Recorder:
    """Stands in for a connection where code only executes statements: keeps them instead."""

    def __init__(self) -> None:
        self.statements: list[sql.Composable] = []

    def execute(self, query: sql.Composable | str, params: Any = None) -> "_Recorder":
        assert params is None, "a recorded statement must be complete, with no parameters"
        self.statements.append(query if isinstance(query, sql.Composable) else sql.SQL(query))
        return self


def recorded(action: Callable[..., Any], *args: Any, **kwargs: Any) -> list[sql.Composable]:
    """The statements `action(conn, *args)` would execute, for `reembed plan --sql`: the same code
    that runs them renders them, so what is shown is what will run."""
    recorder = _Recorder()
    action(recorder, *args, **kwargs)
    return recorder.statements
