"""Issue 12, points 2, 3 and 10: the column shapes real clients create. langchain's unsized `vector`
migrates and keeps its declared type through cutover, rollback and cleanup; a column holding
several dimensions is refused at plan with the counts; text typed as a domain or varchar(n) is
accepted, a NOT NULL domain too; a DSN that names no port is bad input."""

from __future__ import annotations

import pytest

from cli_support import error_lines
from client_tables import create_docs_with_text_type, create_langchain
from shapes_support import column_type, lifecycle, ok, table_state, vector_mismatches
from verify_support import verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")
LANGCHAIN = ("--strategy", "column", "--column", "embedding", "--text", "document")


def test_langchain_unsized_vector_keeps_its_type_through_the_whole_lifecycle(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_langchain(conn, 200)
    lifecycle(run_cli, "lc", "langchain_pg_embedding", *LANGCHAIN)
    assert column_type(conn, "langchain_pg_embedding", "embedding") == "vector"  # as the application declared it
    assert vector_mismatches(conn, "langchain_pg_embedding", "uuid", "document", "embedding") == []
    # Nothing reembed did itself reads as a change of the user's table: every later command works.
    ok(run_cli("status", "lc"))
    ok(run_cli("rollback", "lc"))
    assert column_type(conn, "langchain_pg_embedding", "embedding") == "vector"
    ok(run_cli("verify", "lc"))
    ok(run_cli("cutover", "lc"))
    ok(run_cli("cleanup", "lc", "--yes"))
    assert column_type(conn, "langchain_pg_embedding", "embedding") == "vector"
    assert vector_mismatches(conn, "langchain_pg_embedding", "uuid", "document", "embedding") == []


def test_a_column_holding_several_dimensions_is_refused_at_plan_with_the_counts(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_langchain(conn, 30, dims=(384, 768))
    before = table_state(conn)
    result = run_cli("plan", "langchain_pg_embedding", *LANGCHAIN, "--offline")
    assert result.exit_code == 2
    assert "15 rows of 384 dims, 15 rows of 768 dims" in result.stderr
    assert len(error_lines(result.stderr)) == 1
    assert table_state(conn) == before


@pytest.mark.parametrize("text_type", ["varchar(2000)", "doc_text"])
def test_text_typed_as_varchar_or_a_domain_over_text_is_embedded(conn, run_cli, text_type: str) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE DOMAIN doc_text AS text CHECK (length(VALUE) < 100000)")
    create_docs_with_text_type(conn, 60, text_type)
    lifecycle(run_cli, "dom", "docs", "--column", "embedding", "--text", "content")
    assert vector_mismatches(conn, "docs", "id", "content", "embedding") == []


@pytest.mark.parametrize("strategy", ["column", "copy"])
def test_a_table_with_a_not_null_domain_column_migrates(conn, run_cli, strategy: str) -> None:  # type: ignore[no-untyped-def]
    """The ledger key is typed back into the key columns alone: typing it into a whole row of the
    table gave every other column NULL, which a NOT NULL domain refuses (no row could be claimed)."""
    conn.execute("CREATE DOMAIN required_text AS text NOT NULL")
    create_docs_with_text_type(conn, 60, "required_text")
    lifecycle(run_cli, "nn", "docs", "--column", "embedding", "--text", "content", "--strategy", strategy)
    assert vector_mismatches(conn, "docs", "id", "content", "embedding") == []
    conn.execute("UPDATE docs SET content = content || ' (edited)' WHERE id < 5")  # tracked after cutover
    ok(run_cli("run", "nn", "--no-progress"))
    assert vector_mismatches(conn, "docs", "id", "content", "embedding") == []


def test_citext_is_accepted_where_the_extension_exists(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'citext'").fetchone() is None:
        pytest.skip("citext is not available on this server")
    conn.execute("CREATE EXTENSION citext")
    create_docs_with_text_type(conn, 30, "citext")
    ok(run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "ci", "--offline"))
    ok(run_cli("run", "ci", "--no-progress"))
    assert vector_mismatches(conn, "docs", "id", "content", "embedding__gemini_embedding_001") == []


@pytest.mark.parametrize("dsn", ["postgresql://app:s3cret-pw@localhost:99999/app", "host=localhost port=99999"])
def test_a_port_out_of_range_is_one_line_of_bad_input(run_cli, dsn: str) -> None:  # type: ignore[no-untyped-def]
    for command in (("inspect", "docs"), ("plans",), ("run", "p1")):
        result = run_cli(*command, "--dsn", dsn)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "port 99999" in result.stderr
        assert "s3cret-pw" not in result.output


@pytest.mark.parametrize("contents", [[], ["", "   ", None, "\n"]], ids=["no rows", "only blank texts"])
def test_a_table_with_nothing_to_embed_passes_verify_with_checks_not_applicable(conn, run_cli,  # type: ignore[no-untyped-def]
                                                                                 contents: list) -> None:
    create_docs_with_text_type(conn, 0, "text")
    for i, text in enumerate(contents):
        conn.execute("INSERT INTO docs (id, content) VALUES (%s, %s)", (i, text))
    report = lifecycle(run_cli, "empty", "docs", "--column", "embedding", "--text", "content")
    verdicts = {c["name"]: c for c in report["checks"]}
    needs_rows = [name for name, c in verdicts.items() if "not applicable" in c["summary"]]
    assert needs_rows, verdicts  # the checks that need rows say so instead of failing or passing vacuously
    assert all(c["passed"] for c in verdicts.values())
    assert column_type(conn, "docs", "embedding") == "vector(768)"
