"""`reembed cutover`: one short transaction that swaps the new vectors in under the column's name,
so the application's unchanged SQL reads them, through the new index, with everything that was
bound to the column (views, functions, policies, grants, ...) following it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql

from backfill_support import TARGET, gemini  # noqa: F401 (fixture)
from reliability_support import reembed_process, wait_for
from swap_support import PLAN, backfilled, columns, indexes, plan_row, swap_record, vector_of
from tables import passage
from toolkit.emulators import expected_vector

APP_QUERY = "SELECT id FROM docs ORDER BY embedding <=> %s LIMIT 5"


@pytest.fixture()
def reader(conn: psycopg.Connection) -> Iterator[str]:
    """A cluster-wide role for column grants, dropped with what it owns after the test."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        # Seen once in CI: DROP OWNED deadlocked with a backend that held a lock on docs and waited for
        # DROP OWNED's transaction; most likely an autovacuum ANALYZE (PostgreSQL 18's in-place catalog
        # updates wait for the row DROP OWNED's REVOKE updated). Not reembed's: the next try passes.
        for attempt in range(5):
            try:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.5)
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _dependents(role: str):  # type: ignore[no-untyped-def]
    def create(conn: psycopg.Connection) -> None:
        r = sql.Identifier(role)
        conn.execute("CREATE VIEW docs_v AS SELECT id, title, embedding FROM docs WHERE embedding IS NOT NULL")
        conn.execute(sql.SQL("GRANT SELECT (id, title, embedding) ON docs TO {}").format(r))
        conn.execute(sql.SQL("GRANT SELECT ON docs_v TO {}").format(r))
        conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
        conn.execute(sql.SQL("CREATE POLICY has_vector ON docs FOR SELECT TO {} USING (embedding IS NOT NULL)").format(r))
        conn.execute("""CREATE FUNCTION nearest(q vector) RETURNS SETOF bigint LANGUAGE sql STABLE
                        BEGIN ATOMIC SELECT id FROM docs ORDER BY embedding <=> q LIMIT 5; END""")
        conn.execute("ALTER TABLE docs ADD CONSTRAINT dims_ok CHECK (vector_dims(embedding) = 768)")
        conn.execute("COMMENT ON COLUMN docs.embedding IS 'document vectors, cosine'")
        conn.execute("ALTER TABLE docs ALTER COLUMN embedding SET STATISTICS 321")
        conn.execute("ALTER TABLE docs ALTER COLUMN embedding SET NOT NULL")
        conn.execute("SET client_min_messages = error")  # "wal_level is insufficient" warning
        conn.execute("CREATE PUBLICATION docs_pub FOR TABLE docs (id, embedding)")
    return create


def _snapshot(conn: psycopg.Connection, role: str) -> dict[str, object]:
    """The SQL text of everything bound to the column, as an administrator would read it."""
    one = lambda q, *a: conn.execute(q, a).fetchone()[0]  # noqa: E731
    return {
        "view": one("SELECT pg_get_viewdef('docs_v'::regclass)"),
        "policy": one("SELECT qual FROM pg_policies WHERE policyname = 'has_vector'"),
        "function": one("SELECT pg_get_functiondef('nearest(vector)'::regprocedure)"),
        "check": one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'dims_ok'"),
        "comment": one("SELECT col_description('docs'::regclass, attnum) FROM pg_attribute "
                       "WHERE attrelid = 'docs'::regclass AND attname = 'embedding'"),
        "stats": one("SELECT attstattarget FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'embedding'"),
        "publication": one("SELECT attnames FROM pg_publication_tables WHERE pubname = 'docs_pub'"),
        "grant": one("SELECT has_column_privilege(%s, 'docs', 'embedding', 'SELECT')", role),
        "not_null": one("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'embedding'"),
    }


def _bound_to(conn: psycopg.Connection, column: str) -> list[str]:
    """Objects other than indexes that depend on `column` by number."""
    return [r[0] for r in conn.execute(
        """SELECT d.classid::regclass::text FROM pg_depend d JOIN pg_attribute a
             ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
           WHERE d.refobjid = 'docs'::regclass AND a.attname = %s AND d.classid <> 'pg_class'::regclass
             AND d.deptype = 'n'""", (column,))]


def _query_vector(text: str) -> np.ndarray:
    return expected_vector(TARGET, text, task_type="RETRIEVAL_QUERY", dimensions=768)


def test_cutover_keeps_the_sql_and_repoints_everything_bound_to_the_column(conn, run_cli, gemini, reader) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, before_run=_dependents(reader))
    _, shadow, old = plan_row(conn)
    before = _snapshot(conn, reader)
    q = _query_vector(passage(7))
    before_ids = [r[0] for r in conn.execute(APP_QUERY, (q,))]
    new_vector_7 = vector_of(conn, shadow, 7)

    result = run_cli("cutover", PLAN, "--force")
    assert result.exit_code == 0, result.output
    assert "lock held" in result.output and "without a table scan" in result.output

    # Same SQL text of every dependent; NOT NULL and the grant still in force.
    assert _snapshot(conn, reader) == before
    assert before["not_null"] is True
    assert columns(conn)[-2:] == [old, "embedding"]
    # Nothing but its own index binds to the old vectors any more.
    assert _bound_to(conn, old) == []
    assert set(_bound_to(conn, "embedding")) >= {"pg_rewrite", "pg_proc", "pg_policy", "pg_constraint"}
    # The unchanged application query reads the new vectors, through the index with the original name.
    after_ids = [r[0] for r in conn.execute(APP_QUERY, (q,))]
    assert after_ids[0] == 7 and after_ids != before_ids
    assert indexes(conn)["docs_embedding_idx"].startswith(
        "CREATE INDEX docs_embedding_idx ON public.docs USING hnsw (embedding vector_cosine_ops)")
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan_text = "\n".join(r[0] for r in conn.execute("EXPLAIN " + APP_QUERY, (q,)))
    assert "Index Scan using docs_embedding_idx on docs" in plan_text
    # The view and the SQL-body function return the new vectors; the reader still may read them.
    np.testing.assert_array_equal(vector_of(conn, "embedding", 7), new_vector_7)
    view_7 = conn.execute("SELECT embedding FROM docs_v WHERE id = 7").fetchone()[0]
    np.testing.assert_array_equal(view_7.to_numpy(), new_vector_7)
    assert [r[0] for r in conn.execute("SELECT nearest(%s)", (q,))] == after_ids
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(reader)))
        seen = conn.execute("SELECT count(*), count(embedding) FROM docs").fetchone()
    assert seen == (300, 300)
    # The CHECK was re-created NOT VALID inside the lock and validated after it.
    assert conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'dims_ok'").fetchone()[0] is True
    # The swap is recorded with its lock time: held, at the first try, and released.
    swap_record(conn, "cutover")
    captured = conn.execute("SELECT captured FROM reembed.swaps WHERE direction = 'cutover'").fetchone()[0]
    assert {"view", "function", "policy", "check_constraint", "grant", "publication"} <= set(
        k for k, v in json.loads(json.dumps(captured))["dependents"].items() if v) | {
        "view", "function", "policy", "check_constraint", "grant", "publication"}
    assert plan_row(conn)[0] == "cut_over"


def test_cutover_refuses_an_incomplete_backfill_and_changes_nothing(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    conn.execute("UPDATE docs SET content = 'rewritten after the backfill' WHERE id = 3")  # tracking: pending
    before = (columns(conn), indexes(conn))
    result = run_cli("cutover", PLAN, "--force", "--catch-up-rows", "0")
    assert result.exit_code == 1
    assert "1 rows are pending" in result.stderr and f"reembed run {PLAN}" in result.stderr
    assert (columns(conn), indexes(conn)) == before and plan_row(conn)[0] == "indexed"
    # By default cutover embeds the few rows a live application changed, before taking the lock.
    result = run_cli("cutover", PLAN, "--force")
    assert result.exit_code == 0, result.stderr
    assert "embedded 1 rows the application changed since the last run, before the lock" in result.stdout
    want = expected_vector(TARGET, "rewritten after the backfill", task_type="RETRIEVAL_DOCUMENT",
                           title="title 3", dimensions=768)
    np.testing.assert_allclose(vector_of(conn, "embedding", 3), want, atol=1e-6)


def test_cutover_refuses_without_index_or_before_it(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli, build_index=False)
    result = run_cli("cutover", PLAN, "--force")
    assert result.exit_code == 1 and f"reembed index {PLAN}" in result.stderr


def test_cutover_needs_a_passing_verify_unless_forced(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    refused = run_cli("cutover", PLAN)
    assert refused.exit_code == 1
    assert "has not been verified" in refused.stderr and "--force" in refused.stderr
    assert plan_row(conn)[0] == "indexed"
    verified = run_cli("verify", PLAN, "--no-source")
    assert verified.exit_code == 0, verified.output + verified.stderr
    result = run_cli("cutover", PLAN)
    assert result.exit_code == 0, result.stderr
    assert "verified" in result.output and plan_row(conn)[0] == "cut_over"


def test_materialized_view_refuses_unless_asked_to_refresh(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    def matview(c: psycopg.Connection) -> None:
        c.execute("CREATE MATERIALIZED VIEW docs_mv AS SELECT id, embedding FROM docs")
        c.execute("CREATE UNIQUE INDEX docs_mv_id ON docs_mv (id)")
    backfilled(conn, run_cli, before_run=matview)
    shadow = plan_row(conn)[1]
    refused = run_cli("cutover", PLAN, "--force")
    assert refused.exit_code == 1 and "docs_mv" in refused.stderr and "--refresh-matviews" in refused.stderr
    result = run_cli("cutover", PLAN, "--force", "--refresh-matviews")
    assert result.exit_code == 0, result.stderr
    assert "materialized view: public.docs_mv" in result.output
    got = conn.execute("SELECT embedding FROM docs_mv WHERE id = 5").fetchone()[0].to_numpy()
    np.testing.assert_array_equal(got, vector_of(conn, "embedding", 5))
    assert "docs_mv_id" in [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'docs_mv'")]
    assert shadow not in columns(conn)


def test_a_long_transaction_bounds_each_try_and_never_blocks_readers(conn, run_cli, gemini, database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reader that queues behind a waiting try gets its answer when that try gives up, while the long
    transaction still holds the table: what frees it is the swap's lock_timeout, not the holder."""
    backfilled(conn, run_cli)
    holder = database.connect(autocommit=False)
    # Bounds this test if lock_timeout ever failed: the holder ends, and the cutover would then succeed.
    holder.execute("SET idle_in_transaction_session_timeout = '600s'")
    holder.execute("SELECT count(*) FROM docs")  # ACCESS SHARE until it ends: the swap cannot get its lock
    reader = database.connect()
    reader_pid = reader.info.backend_pid
    answered = [0]
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            reader.execute("SELECT id FROM docs WHERE id < 10").fetchall()
            answered[0] += 1
            time.sleep(0.005)

    thread = threading.Thread(target=read)
    thread.start()
    proc = reembed_process("cutover", PLAN, "--force", "--lock-timeout", "500", "--retries", "2", cwd=tmp_path)
    queued_at: list[int] = []  # reads answered when the reader was seen queued behind the swap's try
    try:
        while proc.poll() is None:
            blocked_by = conn.execute("SELECT pg_blocking_pids(%s)", (reader_pid,)).fetchone()[0]
            if any(pid != holder.info.backend_pid for pid in blocked_by):
                queued_at.append(answered[0])
            time.sleep(0.01)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop.set()
        thread.join(timeout=600)
    assert not thread.is_alive()
    assert proc.returncode == 1, out + err
    assert "within 500 ms in 3 tries" in err and f"pid {holder.info.backend_pid}" in err
    waits = [float(line.split("within ")[1].split(" ms")[0]) for line in err.splitlines() if "not granted within" in line]
    assert len(waits) == 2 and all(w >= 500 for w in waits), waits  # each try waited its whole lock_timeout
    # The reader did queue behind a try, and got its answer after it, all while the holder held the table.
    assert queued_at, "the reader was never seen waiting behind the swap"
    assert answered[0] > queued_at[0]
    assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert plan_row(conn)[0] == "indexed" and "embedding" in columns(conn)
    holder.rollback()
    holder.close()
    reader.close()
    result = run_cli("cutover", PLAN, "--force", "--lock-timeout", "150")
    assert result.exit_code == 0, result.stderr


def test_text_changed_after_cutover_is_reembedded_into_the_swapped_in_column(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    assert run_cli("cutover", PLAN, "--force").exit_code == 0
    conn.execute("UPDATE docs SET content = 'a brand new text about harbor cranes' WHERE id = 11")
    assert conn.execute("SELECT state FROM reembed.ledger WHERE pk = '{\"id\": 11}'").fetchone()[0] == "pending"
    result = run_cli("run", PLAN, "--no-progress")
    assert result.exit_code == 0, result.output
    want = expected_vector(TARGET, "a brand new text about harbor cranes", task_type="RETRIEVAL_DOCUMENT",
                           title="title 11", dimensions=768)
    np.testing.assert_allclose(vector_of(conn, "embedding", 11), want, atol=1e-6)


def test_cutover_json_and_planned_sql(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    backfilled(conn, run_cli)
    result = run_cli("cutover", PLAN, "--force", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["swap"]["direction"] == "cutover" and data["swap"]["attempts"] == 1
    assert data["swap"]["lock_ms"] == pytest.approx(swap_record(conn, "cutover")[0], abs=0.01)
    assert data["check"]["backfill"] == {"pending": 0, "stale": 0, "uncovered": 0, "without_vector": 0}
    again = run_cli("cutover", PLAN, "--force")
    assert again.exit_code == 0 and "already cut over" in again.output


def test_plan_sql_shows_index_cutover_and_cleanup_statements(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    from tables import create_docs

    create_docs(conn, 20)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--sql")
    assert result.exit_code == 0, result.output
    out = result.output
    # The original's own definition (PostgreSQL's deparse), on the new column.
    assert "CREATE INDEX CONCURRENTLY \"gemini_embedding_001__docs_embedding_idx\" ON \"public\".\"docs\" USING " \
           "hnsw (\"embedding__gemini_embedding_001\" vector_cosine_ops) WITH (m='24')" in out
    assert 'ALTER TABLE "public"."docs" RENAME COLUMN "embedding" TO "embedding__old_nomic_embed_text"' in out
    assert 'ALTER INDEX "public"."gemini_embedding_001__docs_embedding_idx" RENAME TO "docs_embedding_idx"' in out
    assert 'ALTER TABLE "public"."docs" DROP COLUMN "embedding__old_nomic_embed_text"' in out


def test_dependents_token_sees_a_change(conn) -> None:  # type: ignore[no-untyped-def]
    from tables import create_docs
    from toolkit.phases import dependents

    create_docs(conn, 5, index=None)
    conn.execute("CREATE VIEW v AS SELECT id, embedding FROM docs")
    oid = dependents.table_oid(conn, sql.Identifier("public", "docs"))
    first = dependents.token(conn, oid, "embedding")
    assert dependents.token(conn, oid, "embedding") == first
    conn.execute("CREATE OR REPLACE VIEW v AS SELECT id, embedding FROM docs WHERE id > 1")
    second = dependents.token(conn, oid, "embedding")
    conn.execute("COMMENT ON COLUMN docs.embedding IS 'x'")
    assert len({first, second, dependents.token(conn, oid, "embedding")}) == 3


def _filled_without_provider(conn: psycopg.Connection, run_cli, rows: int) -> None:  # type: ignore[no-untyped-def]
    """A large backfilled plan without a provider round trip per row: prepare for real, then fill the
    shadow column with SQL and mark the ledger done with the rows' real text hashes."""
    from tables import create_docs
    from toolkit.phases.prepare import key_json, prepare
    from toolkit.plan import load
    from toolkit.state import set_phase

    create_docs(conn, rows, m=8)  # a small m only to keep two 100k-row graph builds short
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title",
                   "--name", PLAN, "--offline").exit_code == 0
    plan, record = load(conn, PLAN)
    prepare(conn, plan, record)
    shadow = sql.Identifier(plan.shadow_column)
    # Every update would also insert into the original's HNSW graph (DESIGN.md: ~300 rows/s):
    # fill without it, then build it again under the same name.
    conn.execute("DROP INDEX docs_embedding_idx")
    conn.execute(sql.SQL("UPDATE docs SET {} = embedding").format(shadow))
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops) WITH (m = 8)")
    conn.execute(sql.SQL("UPDATE reembed.ledger l SET state = 'done', text_hash = {} FROM docs t "
                         "WHERE l.plan_id = %s AND l.pk = {}").format(plan.text_hash_expression("t"),
                                                                       key_json(plan, "t")), (record.id,))
    set_phase(conn, record.id, "backfilled", "filled by the benchmark")
    conn.execute("ANALYZE docs")
    assert run_cli("index", PLAN, "--no-progress", "--maintenance-work-mem", "2GB").exit_code == 0


@pytest.mark.soak
@pytest.mark.parametrize("rows", [10_000, 100_000])
def test_swaps_stay_catalog_only_at_scale(conn, run_cli, rows) -> None:  # type: ignore[no-untyped-def]
    """Soak: five cutovers and rollbacks of a large table, each in one try, none leaving a lock or a
    rewrite behind (the table's file stays the same: the swap is catalog-only). How long the lock is
    held is printed here and measured by `reembed bench`."""
    started = time.monotonic()
    _filled_without_provider(conn, run_cli, rows)
    setup_s = time.monotonic() - started
    relfilenode = conn.execute("SELECT relfilenode FROM pg_class WHERE oid = 'docs'::regclass").fetchone()[0]
    for _ in range(5):
        assert run_cli("cutover", PLAN, "--force").exit_code == 0
        assert run_cli("rollback", PLAN).exit_code == 0
    figures = conn.execute("SELECT direction, lock_ms, attempts FROM reembed.swaps ORDER BY id").fetchall()
    assert len(figures) == 10 and all(attempts == 1 for _, _, attempts in figures), figures
    assert conn.execute("SELECT relfilenode FROM pg_class WHERE oid = 'docs'::regclass").fetchone()[0] == relfilenode
    cut = sorted(ms for d, ms, _ in figures if d == "cutover")
    back = sorted(ms for d, ms, _ in figures if d == "rollback")
    print(f"\nLOCK {rows} rows (setup {setup_s:.0f}s): cutover median {cut[2]:.1f} ms max {cut[-1]:.1f} ms; "
          f"rollback median {back[2]:.1f} ms max {back[-1]:.1f} ms")


def test_triggers_and_statistics_on_the_column_follow_it(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    def create(c: psycopg.Connection) -> None:
        c.execute("CREATE TABLE vector_audit (id bigint, at timestamptz DEFAULT now())")
        c.execute("""CREATE FUNCTION audit_vector() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN INSERT INTO vector_audit (id) VALUES (NEW.id); RETURN NEW; END $$""")
        c.execute("CREATE TRIGGER audit_vector AFTER UPDATE OF embedding ON docs FOR EACH ROW "
                  "WHEN (OLD.embedding IS DISTINCT FROM NEW.embedding) EXECUTE FUNCTION audit_vector()")
        c.execute("CREATE TRIGGER audit_off AFTER UPDATE OF embedding ON docs FOR EACH ROW "
                  "EXECUTE FUNCTION audit_vector()")
        c.execute("ALTER TABLE docs DISABLE TRIGGER audit_off")
        c.execute("CREATE STATISTICS docs_title_vec (ndistinct) ON title, embedding FROM docs")
    backfilled(conn, run_cli, before_run=create)
    defs = lambda: conn.execute(  # noqa: E731
        "SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger WHERE tgrelid = 'docs'::regclass "
        "AND tgname LIKE 'audit%%' ORDER BY 1").fetchall()
    stats = lambda: conn.execute(  # noqa: E731
        "SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxname = 'docs_title_vec'").fetchone()[0]
    before = (defs(), stats())
    result = run_cli("cutover", PLAN, "--force")
    assert result.exit_code == 0, result.stderr
    assert (defs(), stats()) == before and before[0][0][2] == "D"
    old = plan_row(conn)[2]
    assert _bound_to(conn, old) == []
    # The trigger fires on the swapped-in column (and not on the old one).
    conn.execute(sql.SQL("UPDATE docs SET {} = NULL WHERE id = 1").format(sql.Identifier(old)))
    assert conn.execute("SELECT count(*) FROM vector_audit").fetchone()[0] == 0
    conn.execute("UPDATE docs SET embedding = (SELECT embedding FROM docs WHERE id = 3) WHERE id = 2")
    assert [r[0] for r in conn.execute("SELECT id FROM vector_audit")] == [2]
