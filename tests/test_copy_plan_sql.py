"""Copy strategy, `--sql`: at plan, the swap names by kind everything it will carry over from the
application's table; once the copy exists, the swap's statements are the exact ones the swap would
run now, read from the catalog the way the swap reads it."""

from __future__ import annotations

from backfill_support import gemini  # noqa: F401 (fixture)
from copy_support import PLAN, create_app_table, plan_copy
from toolkit.phases import cutover
from toolkit.plan import load


def test_plan_sql_names_what_the_swap_carries_and_run_makes_it_exact(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_app_table(conn, 30)
    conn.execute("CREATE VIEW recent_docs AS SELECT id, title FROM docs WHERE id > 10")
    result = run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                     "--name", PLAN, "--offline", "--strategy", "copy", "--sql")
    assert result.exit_code == 0, result.output
    assert "-- carry over trigger: docs_outbox, docs_touch" in result.output
    assert "-- carry over view: public.recent_docs" in result.output
    assert "-- carry over foreign key: " in result.output and "comments." in result.output
    plan, _ = load(conn, PLAN)
    assert run_cli("run", PLAN, "--no-progress").exit_code == 0
    exact = [s.as_string(conn) for s in cutover.planned_sql(plan, conn)]
    assert exact[0] == "BEGIN" and exact[-2] == "COMMIT"
    assert any(s.startswith("CREATE TRIGGER") and "docs_touch" in s for s in exact), exact
    assert "-- re-create view on the swapped-in table: public.recent_docs" in exact
    assert not any(s.startswith("-- carry over") for s in exact)
    # Reading them changed nothing: the copy is still the copy, the plan still backfilled.
    assert load(conn, PLAN)[1].phase == "backfilled"
    assert run_cli("index", PLAN, "--no-progress").exit_code == 0
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    assert conn.execute("SELECT count(*) FROM recent_docs").fetchone()[0] == 20
    assert "FROM docs" in conn.execute("SELECT pg_get_viewdef('recent_docs'::regclass)").fetchone()[0]
