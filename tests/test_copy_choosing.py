"""Choosing a strategy at `plan`: both shown side by side, one recommended with its reasons,
taken when --strategy is not given; and the statements that read or write by position."""

from __future__ import annotations

import json

from copy_support import create_app_table
from tables import create_docs
from toolkit.catalog import TableInfo
from toolkit.strategies.choice import classify_statements


def _plan(run_cli, table: str = "docs", *extra: str):  # type: ignore[no-untyped-def]
    return run_cli("plan", table, "--column", "embedding", "--text", "content", "--offline", *extra)


def test_a_table_with_an_updated_at_trigger_gets_copy_and_the_reason(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 20)
    result = _plan(run_cli)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "strategy: copy (recommendation)" in out
    assert "reembed took copy: the table has UPDATE triggers (docs_outbox, docs_touch)" in out
    assert "the column strategy's backfill would fire them for every row" in out
    assert "are inserted again into docs_embedding_idx: the database's CPU per row grows with that index" in out
    # Both strategies, side by side: what the application sees, the disk, the time.
    assert "column:" in out and "copy (recommended):" in out
    assert "cached plan must not change result type" in out and "its UPDATE triggers fire for every" in out
    assert "- no change: the same columns in the same order" in out
    assert out.count("disk: ") == 2 and out.count("time: ") == 2


def test_with_nothing_detected_copy_is_recommended_with_its_disk(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 50)
    result = _plan(run_cli, "docs", "--json")
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)["spec"]
    assert spec["strategy"] == "copy" and spec["choice"]["chosen_by"] == "recommendation"
    [reason] = spec["choice"]["reasons"]
    assert reason.startswith("nothing detected either way: copy is the strategy the application cannot notice")
    assert "of disk until cleanup" in reason
    conn.execute("CREATE TABLE bare (id int PRIMARY KEY, content text, embedding vector(768))")
    result = _plan(run_cli, "bare", "--json")
    assert result.exit_code == 0, result.output
    [column_view] = [v for v in json.loads(result.stdout)["spec"]["choice"]["views"] if v["name"] == "column"]
    assert not any("inserted again" in line for line in column_view["application_sees"])  # no vector index


def test_strategy_overrides_the_recommendation_and_a_refused_copy_points_to_column(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 10)
    result = _plan(run_cli, "docs", "--strategy", "column", "--json")
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)["spec"]
    assert spec["strategy"] == "column" and spec["choice"]["recommended"] == "copy"
    assert spec["choice"]["chosen_by"] == "--strategy"
    conn.execute("CREATE TABLE kids (id int PRIMARY KEY, content text, embedding vector(768))")
    conn.execute("CREATE RULE kids_gone AS ON DELETE TO kids DO ALSO NOTIFY kids")
    result = _plan(run_cli, "kids", "--json")
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)["spec"]
    assert spec["strategy"] == "column"
    assert "the copy strategy cannot carry this table: it has rules (CREATE RULE)" in spec["choice"]["reasons"][0]


def test_inspect_lists_triggers_publications_and_says_when_statements_cannot_be_read(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 5)
    conn.execute("CREATE PUBLICATION docs_pub FOR TABLE docs")
    result = run_cli("inspect", "docs")
    assert result.exit_code == 0, result.output
    assert "docs_touch: BEFORE UPDATE FOR EACH ROW" in result.output and "docs_pub: FOR TABLE" in result.output
    assert "pg_stat_statements is not installed" in result.output
    data = json.loads(run_cli("inspect", "docs", "--json").stdout)
    assert data["positional_statements"] == [] and "not installed" in data["statements_checked"]


def test_statements_that_depend_on_column_positions_are_recognised() -> None:
    info = TableInfo(oid=0, schema="public", name="docs", primary_key=[], columns=[], indexes=[], dependents=[],
                     rows_estimate=0, heap_bytes=0, toast_bytes=0, index_bytes=0)
    queries = [
        "SELECT * FROM docs WHERE id = $1",
        "select d.* from public.docs d order by embedding <=> $1 limit $2",
        "INSERT INTO docs VALUES ($1, $2, $3, $4)",
        "insert into \"public\".\"docs\" select * from staging",
        "UPDATE docs SET title = $1 WHERE id = $2 RETURNING *",
        "SELECT id, title FROM docs ORDER BY embedding <=> $1 LIMIT $2",  # names its columns
        "INSERT INTO docs (id, title) VALUES ($1, $2)",  # names its columns
        "SELECT * FROM docs_archive",  # another table
        "SELECT * FROM reembed.ledger WHERE pk = $1",  # reembed's own
    ]
    assert classify_statements(queries, info) == queries[:5]
