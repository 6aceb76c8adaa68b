"""Copy strategy under a live application: inserts, text and title updates, other updates and
deletes throughout, one `kill -9` of `reembed run` and one of `reembed cutover`; afterwards every
row holds exactly the target model's vector of its final text and title, and the old table
mirrors the new one for a rollback. And after cleanup the table is no bigger than a freshly
loaded table of the same rows."""

from __future__ import annotations

import random
import time

import psycopg
import pytest
from psycopg import sql

from backfill_support import gemini  # noqa: F401 (fixture)
from copy_support import OLD, PLAN, plan_copy
from reliability_support import AppLoad, assert_nothing_lost, kill_9, ledger, record, reembed_process, wait_for
from tables import create_docs


def _mirrored(conn: psycopg.Connection, a: str, b: str) -> bool:
    q = "SELECT id, title, content, views FROM {} ORDER BY id"
    return conn.execute(sql.SQL(q).format(sql.Identifier(a))).fetchall() == \
        conn.execute(sql.SQL(q).format(sql.Identifier(b))).fetchall()


def _lifecycle_under_load(conn, run_cli, gemini, database, tmp_path, *, rows: int, write_rate: float) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(rows)
    create_docs(conn, rows, index="hnsw")
    conn.execute("ALTER TABLE docs ADD COLUMN views int NOT NULL DEFAULT 0")
    plan_copy(run_cli)
    # Writes that leave a row pending (inserts, text and title changes) at about one a second: the
    # cutover swaps only with nothing pending, so much more would make it wait for a quiet moment.
    app = AppLoad(dsn=database.dsn, out=tmp_path / "app.json", write_rate=write_rate, query_rate=10,
                  max_id=rows, weights="insert=1,text=1,title=1,other=5,delete=2").start()
    try:
        # One kill -9 of `reembed run` part-way through the backfill, then a resume to the end.
        gemini.configure(latency=0.02)
        proc = reembed_process("run", PLAN, "--batch-size", "50", "--no-progress", cwd=tmp_path)
        try:
            target = rng.randint(rows // 5, rows // 2)
            wait_for(lambda: proc.poll() is not None or (conn.execute("SELECT count(*) FROM reembed.ledger")
                                                         .fetchone()[0] and ledger(conn, PLAN)["done"] >= target),
                     timeout=600, what=f"{target} rows done")
            assert proc.poll() is None, proc.communicate()
        finally:
            kill_9(proc)
        killed_run_at = ledger(conn, PLAN)["done"]
        gemini.configure(latency=0.0)
        for step in (("run", PLAN, "--no-progress", "--batch-size", "100"), ("index", PLAN, "--no-progress")):
            result = run_cli(*step)
            assert result.exit_code == 0, (step, result.output)
        # One kill -9 of `reembed cutover` (it catches up, then swaps), then cutover to the end.
        proc = reembed_process("cutover", PLAN, "--force", cwd=tmp_path)
        time.sleep(rng.uniform(0.2, 1.5))
        kill_9(proc)
        swapped_by_killed = conn.execute("SELECT phase FROM reembed.plans WHERE name = %s", (PLAN,)).fetchone()[0]
        wait_for(lambda: not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reembed' AND datname = "
            "current_database() AND pid <> pg_backend_pid()").fetchone()[0], timeout=60, what="the killed backend")
        result = run_cli("cutover", PLAN, "--force")
        assert result.exit_code == 0, result.output
        time.sleep(1.0)  # the application goes on, on the swapped-in table
    finally:
        report = app.stop(after_every=("insert", "text", "title", "other", "delete"))
    assert report.error_count == 0, report.errors
    assert min(report.ops.get(op, 0) for op in ("insert", "text", "title", "other", "delete")) > 0, report.ops
    result = run_cli("run", PLAN, "--no-progress")  # what the application changed after the swap
    assert result.exit_code == 0, result.output
    checked = assert_nothing_lost(conn, PLAN)
    assert _mirrored(conn, "docs", OLD)
    record("copy strategy", f"{rows} rows, application writing {write_rate}/s, kill -9 of run and of cutover",
           "every row exact; the old table mirrors the new one", rows_checked=checked,
           run_killed_at_rows_done=killed_run_at, phase_after_killed_cutover=swapped_by_killed,
           app_ops=report.ops)


def test_copy_lifecycle_under_load_with_kills(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _lifecycle_under_load(conn, run_cli, gemini, database, tmp_path, rows=600, write_rate=4)


@pytest.mark.soak
def test_copy_lifecycle_under_load_with_kills_20k(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _lifecycle_under_load(conn, run_cli, gemini, database, tmp_path, rows=20000, write_rate=4)


def test_after_cleanup_the_table_is_the_size_of_a_freshly_loaded_one(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 1500, index="hnsw")
    plan_copy(run_cli)
    for step in (("run", PLAN, "--no-progress"), ("index", PLAN, "--no-progress"), ("cutover", PLAN, "--force"),
                 ("cleanup", PLAN, "--yes")):
        result = run_cli(*step)
        assert result.exit_code == 0, (step, result.output)
    conn.execute("CREATE TABLE fresh (LIKE docs INCLUDING ALL EXCLUDING INDEXES)")
    conn.execute("INSERT INTO fresh SELECT * FROM docs ORDER BY id")
    for (definition,) in conn.execute("SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                                      "WHERE indrelid = 'docs'::regclass").fetchall():
        conn.execute(definition.replace(" ON public.docs ", " ON public.fresh ").replace("CREATE INDEX ",
                     "CREATE INDEX fresh_", 1).replace("CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX fresh_", 1))
    conn.execute("VACUUM ANALYZE docs")
    conn.execute("VACUUM ANALYZE fresh")
    migrated, fresh = conn.execute("SELECT pg_total_relation_size('docs'), pg_total_relation_size('fresh')").fetchone()
    record("copy strategy", "table size after cleanup vs a freshly loaded table (1500 rows, HNSW)",
           "within 10%", migrated_bytes=migrated, fresh_bytes=fresh, ratio=round(migrated / fresh, 3))
    assert abs(migrated - fresh) <= 0.1 * fresh, (migrated, fresh)
