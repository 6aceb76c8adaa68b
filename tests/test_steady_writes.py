"""verify → cutover while the application keeps writing: a second process inserts rows, rewrites
text and titles and deletes rows at a steady rate far above 1% of the table per minute, from
before `reembed run` until after the cutover. The cutover goes through without --force (its own
catch-up embeds what changed since verify, before the lock), and every row ends with exactly the
target model's vector of its final text and title. (A row changed in the instant before the lock
makes cutover refuse, changing nothing; it is run again, a bounded number of times.)"""

from __future__ import annotations

import json

from backfill_support import gemini  # noqa: F401 (fixture)
from reliability_support import AppLoad, assert_nothing_lost, cutover_under_writes, reembed_process
from swap_support import PLAN, plan_row
from tables import create_docs

ROWS = 600
WRITES_PER_SECOND = 1.5  # every write tracked: 90 rows a minute, 15% of the table


def test_cutover_without_force_under_steady_writes(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, ROWS, index="hnsw")
    assert run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                   "--name", PLAN, "--offline").exit_code == 0
    gemini.configure(latency=0.02)
    app = AppLoad(database.dsn, tmp_path / "app.json", write_rate=WRITES_PER_SECOND, query_rate=5, max_id=ROWS,
                  weights="insert=1,text=3,title=1,delete=1").start()
    try:
        run = reembed_process("run", PLAN, "--no-progress", "--batch-size", "50", cwd=tmp_path)
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        assert run_cli("index", PLAN, "--no-progress").exit_code == 0
        verified = run_cli("verify", PLAN, "--no-source", "--json")
        verdict = json.loads(verified.stdout)
        failed = [(c["name"], c["summary"]) for c in verdict["checks"] if not c["passed"]]
        assert verified.exit_code == 0, failed
        # Verify saw the application write, and judged only rows embedded from their current text.
        assert verdict["live_writes"]["rows_changed"] > 0, verdict["live_writes"]
        cut, runs = cutover_under_writes(run_cli, PLAN, "--json")
        assert cut.exit_code == 0, (runs, cut.output)
        assert plan_row(conn)[0] == "cut_over"
        assert "verified" in json.loads(cut.stdout)["check"]["verify"]
    finally:
        report = app.stop(after_every=("insert", "text", "title", "delete"))
    assert report.error_count == 0, report.errors
    assert min(report.ops.get(op, 0) for op in ("insert", "text", "title", "delete")) > 0, report.ops
    # What the application changed after the swap is embedded by the next run, into the live column.
    final = run_cli("run", PLAN, "--no-progress", "--json")
    assert final.exit_code == 0, final.output
    assert json.loads(final.stdout)["rows_pending"] == 0
    assert_nothing_lost(conn, PLAN)
