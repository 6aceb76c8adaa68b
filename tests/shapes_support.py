"""Helpers of the shape tests: the whole lifecycle through the real commands, and the checks that
every row's vector is exactly the target's and that nothing changed when a plan was refused."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from backfill_support import TARGET, vector_problem
from toolkit.emulators import expected_vector


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return result


def lifecycle(run_cli, name: str, table: str, *plan_args: str, verify: bool = True) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """plan, run, index, verify, cutover through the CLI, each expected to succeed; the verify report."""
    ok(run_cli("plan", table, "--strategy", "column", "--name", name, "--offline", *plan_args))
    ok(run_cli("run", name, "--no-progress"))
    ok(run_cli("index", name, "--no-progress"))
    report: dict[str, Any] = {}
    if verify:
        result = run_cli("verify", name, "--json")
        report = json.loads(result.stdout)
        assert result.exit_code == 0, [c for c in report["checks"] if not c["passed"]]
    ok(run_cli("cutover", name, *(() if verify else ("--force",))))
    return report


def vector_mismatches(conn: psycopg.Connection, table: str, key: str, text: str, column: str, *,
                      title: str | None = None, dims: int = 768) -> list[str]:
    """Rows whose vector in `column` is not the target's RETRIEVAL_DOCUMENT vector of their text."""
    rows = conn.execute(sql.SQL("SELECT {}, {}::text, {}, {} FROM {} ORDER BY 1").format(
        sql.Identifier(key), sql.Identifier(text), sql.SQL("NULL") if title is None else sql.Identifier(title),
        sql.Identifier(column), sql.Identifier(*table.split(".")))).fetchall()
    return [problem for k, t, h, v in rows
            if (problem := vector_problem(k, t, v, lambda: expected_vector(
                TARGET, t, task_type="RETRIEVAL_DOCUMENT", title=h, dimensions=dims)))]


def table_state(conn: psycopg.Connection) -> tuple[Any, ...]:
    """Everything a refused plan must leave alone: columns and their types, triggers, indexes,
    every row (by its version), and the plans registered."""
    columns = conn.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'reembed') ORDER BY 1, 2, 3").fetchall()
    triggers = conn.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal "
                            "ORDER BY 1, 2").fetchall()
    index_names = conn.execute("SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c "
                               "ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                               "WHERE n.nspname NOT IN ('pg_catalog', 'reembed', 'pg_toast') ORDER BY 1").fetchall()
    plans = conn.execute("SELECT name FROM reembed.plans ORDER BY 1").fetchall()
    return columns, triggers, index_names, plans


def column_type(conn: psycopg.Connection, table: str, column: str) -> str | None:
    row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                       "AND attname = %s AND NOT attisdropped", (table, column)).fetchone()
    return row[0] if row else None
