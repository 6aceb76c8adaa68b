"""The batch writer's single round trip: the write (BEGIN, staging, the strategy's guarded statement,
releases, COMMIT) and the claim of the next batch go down one psycopg pipeline. What must hold
whatever fails in it: a row is `done` only in the transaction that wrote its vector, no lease is
left behind by a failed write, a failed claim after a committed write loses nothing, and a write
built for a phase the plan has left writes nothing (its first statement, the place check, refuses)."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from backfill_support import make_plan, shadow_column
from reliability_support import wait_for
from tables import create_docs
from toolkit.phases import ledger
from toolkit.phases.prepare import prepare
from toolkit.errors import PlanMoved
from toolkit.phases.write_guard import PlaceGuard
from toolkit.phases.writer import PLACE_MOVED, BatchWriter, Claim
from toolkit.plan import load

ROWS = 60


def _unit(n: int) -> dict[int, np.ndarray]:
    vectors = np.random.default_rng(3).standard_normal((n, 768)).astype(np.float32)
    return dict(enumerate(vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))


def _writer(conn: psycopg.Connection, run_cli) -> tuple[BatchWriter, int, str]:  # type: ignore[no-untyped-def]
    create_docs(conn, ROWS, index="hnsw")
    name = make_plan(run_cli)
    plan, record = load(conn, name)
    prepare(conn, plan, record)
    owner = ledger.owner_id()
    return BatchWriter(conn, plan, record.id, owner, "backfilling"), record.id, owner


def _states(conn: psycopg.Connection) -> dict[str, int]:
    """Ledger rows per state, and how many are leased."""
    counts = {state: n for state, n in conn.execute("SELECT state, count(*) FROM reembed.ledger GROUP BY state")}
    counts["leased"] = conn.execute("SELECT count(*) FROM reembed.ledger WHERE lease_owner IS NOT NULL").fetchone()[0]
    return counts


def test_one_round_trip_writes_and_claims_the_next_batch(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    first = writer.claim(Claim(20, 300))
    assert len(first.rows) == 20 and not first.gone
    outcome, claimed = writer.write_then_claim(first.rows, _unit(20), {}, Claim(20, 300))
    assert outcome.written == 20 and outcome.rejected == 0
    assert claimed is not None and len(claimed.rows) == 20
    assert {r.key["id"] for r in claimed.rows}.isdisjoint(r.key["id"] for r in first.rows)
    assert _states(conn) == {"done": 20, "pending": 40, "leased": 20}
    column = shadow_column(conn, "p1")
    assert conn.execute(sql.SQL("SELECT count({}) FROM docs").format(sql.Identifier(column))).fetchone()[0] == 20
    # The session is back in autocommit, idle, nothing left open.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_failed_write_commits_nothing_and_claims_nothing(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    victim = batch.rows[7].key["id"]
    # An application trigger that refuses one row's update: the whole batch's write fails.
    conn.execute(sql.SQL("""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.id = {} THEN RAISE EXCEPTION 'refused by the application'; END IF; RETURN NEW; END $$""")
                 .format(sql.Literal(victim)))
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION refuse()")
    with pytest.raises(psycopg.errors.RaiseException):
        writer.write_then_claim(batch.rows, _unit(20), {}, Claim(20, 300))
    # Nothing written, nothing marked, and no next batch leased by the failed pipeline.
    assert _states(conn) == {"pending": 60, "leased": 20}
    column = shadow_column(conn, "p1")
    assert conn.execute(sql.SQL("SELECT count({}) FROM docs").format(sql.Identifier(column))).fetchone()[0] == 0
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # The connection goes on: without the trigger the same batch is written.
    conn.execute("DROP TRIGGER refuse ON docs")
    outcome, claimed = writer.write_then_claim(batch.rows, _unit(20), {}, Claim(20, 300))
    assert outcome.written == 20 and claimed is not None and len(claimed.rows) == 20


def test_a_failed_claim_after_a_committed_write_loses_nothing(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    # A claim fails after the write committed (here: a trigger on the ledger refusing new leases).
    conn.execute("""
        CREATE FUNCTION reembed.no_new_leases() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF OLD.lease_owner IS NULL AND NEW.lease_owner IS NOT NULL THEN
            RAISE EXCEPTION 'no new leases'; END IF; RETURN NEW; END $$""")
    conn.execute("CREATE TRIGGER no_new_leases BEFORE UPDATE ON reembed.ledger FOR EACH ROW "
                 "EXECUTE FUNCTION reembed.no_new_leases()")
    outcome, claimed = writer.write_then_claim(batch.rows, _unit(20), {}, Claim(20, 300))
    assert outcome.written == 20 and claimed is None  # the write counts; the claim is simply made again
    assert _states(conn) == {"done": 20, "pending": 40, "leased": 0}
    conn.execute("DROP TRIGGER no_new_leases ON reembed.ledger")
    assert len(writer.claim(Claim(20, 300)).rows) == 20


def test_rows_the_guard_rejects_and_rows_not_sent_are_released(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    changed = batch.rows[3].key["id"]
    conn.execute("UPDATE docs SET content = content || ' (edited)' WHERE id = %s", (changed,))
    vectors = {i: v for i, v in _unit(20).items() if i != 5}  # row 5 not answered by the provider
    outcome, _ = writer.write_then_claim(batch.rows, vectors, {}, None)
    assert outcome.written == 18 and outcome.rejected == 1
    leased = [r[0] for r in conn.execute("SELECT pk->>'id' FROM reembed.ledger WHERE lease_owner IS NOT NULL")]
    assert leased == []  # the edited row and the unanswered one are pending and claimable at once
    pending = {int(r[0]) for r in conn.execute("SELECT pk->>'id' FROM reembed.ledger WHERE state = 'pending'")}
    assert {changed, batch.rows[5].key["id"]} <= pending


def test_a_row_deleted_after_its_claim_comes_back_as_gone(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    first_key = conn.execute("SELECT pk FROM reembed.ledger ORDER BY seq LIMIT 1").fetchone()[0]
    # Tracking is bypassed (as a TRUNCATE or a session with triggers off would): the ledger still has it.
    conn.execute("SET session_replication_role = replica")
    conn.execute("DELETE FROM docs WHERE id = %s", (first_key["id"],))
    conn.execute("SET session_replication_role = origin")
    claimed = writer.claim(Claim(20, 300))
    assert claimed.gone == [first_key] and len(claimed.rows) == 19
    assert writer.forget_missing(claimed.gone) == 1


def test_a_write_built_for_another_phase_writes_nothing_then_follows_the_plan(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    # Another command moves the plan on behind the writer (here without moving its place).
    conn.execute("UPDATE reembed.plans SET phase = 'backfilled' WHERE id = %s", (plan_id,))
    outcome, claimed = writer.write_then_claim(batch.rows, _unit(20), {}, Claim(20, 300))
    # The place check refused the first round trip; the second, built for the phase now, wrote.
    assert outcome.written == 20 and claimed is not None and len(claimed.rows) == 20
    assert writer.guard.phase == "backfilled" and writer.guard.moves == 0
    assert _states(conn) == {"done": 20, "pending": 40, "leased": 20}
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_the_place_check_refuses_inside_the_pipeline_with_its_own_sqlstate(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    conn.execute("UPDATE reembed.plans SET phase = 'backfilling' WHERE id = %s", (plan_id,))
    conn.execute("SELECT reembed.guard_write(%s, 'backfilling')", (plan_id,))  # the phase it is in: passes
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT reembed.guard_write(%s, 'cut_over')", (plan_id,))
    assert refused.value.sqlstate == PLACE_MOVED
    with pytest.raises(psycopg.Error) as gone:
        conn.execute("SELECT reembed.guard_write(%s, 'backfilling')", (plan_id + 1000,))
    assert gone.value.sqlstate == PLACE_MOVED and "no longer registered" in str(gone.value)


def test_a_write_waits_for_a_phase_change_in_flight_and_follows_it(conn, run_cli, database) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    mover = database.connect()
    result: dict[str, object] = {}
    writing = threading.Thread(target=lambda: result.update(
        done=writer.write_then_claim(batch.rows, _unit(20), {}, None)))
    try:
        # A swap's transaction: the plan's row locked first, the phase recorded at its end.
        mover.autocommit = False
        mover.execute("SELECT phase FROM reembed.plans WHERE id = %s FOR NO KEY UPDATE", (plan_id,))
        writing.start()
        # This writer's own session waits for a lock (the server's other sessions may be other tests').
        wait_for(lambda: mover.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND NOT granted)",
                                       (conn.info.backend_pid,)).fetchone()[0],
                 timeout=120, what="the write to wait for the plan's row")
        assert mover.execute(sql.SQL("SELECT count({}) FROM docs").format(
            sql.Identifier(shadow_column(mover, "p1")))).fetchone()[0] == 0  # nothing written meanwhile
        mover.execute("UPDATE reembed.plans SET phase = 'backfilled' WHERE id = %s", (plan_id,))
        mover.commit()
    finally:
        mover.close()  # releases the row whatever happened, so the writer ends before `conn` is closed
        if writing.ident is not None:
            writing.join(timeout=120)
    assert not writing.is_alive()
    outcome, _ = result["done"]  # type: ignore[misc]
    assert outcome.written == 20 and writer.guard.phase == "backfilled"


@pytest.mark.parametrize("final", ["cleaned_up", "abandoned"])
def test_a_write_after_cleanup_or_abandon_writes_nothing_and_says_so(conn, run_cli, final) -> None:  # type: ignore[no-untyped-def]
    writer, plan_id, owner = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    conn.execute("UPDATE reembed.plans SET phase = %s WHERE id = %s", (final, plan_id))
    with pytest.raises(PlanMoved) as stopped:
        writer.write_then_claim(batch.rows, _unit(20), {}, Claim(20, 300))
    assert stopped.value.phase == final
    # Nothing written, nothing marked, no next batch claimed; the caller releases what it holds.
    assert _states(conn) == {"pending": 60, "leased": 20}
    column = shadow_column(conn, "p1")
    assert conn.execute(sql.SQL("SELECT count({}) FROM docs").format(sql.Identifier(column))).fetchone()[0] == 0
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _relations_scanned_whole(plan: object) -> set[str]:
    """Every relation a plan (EXPLAIN FORMAT JSON) reads with a sequential scan."""
    found: set[str] = set()
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan":
            found.add(plan.get("Relation Name", ""))
        for value in plan.values():
            found |= _relations_scanned_whole(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _relations_scanned_whole(value)
    return found


@pytest.mark.parametrize("strategy", ["column", "copy"])
def test_a_batch_write_reaches_the_ledger_and_the_table_by_key(  # type: ignore[no-untyped-def]
        conn, run_cli, strategy) -> None:
    """A batch's guarded write finds its leases and its rows by key: a plan that reads the whole
    ledger (or the whole table, or the whole copy) once per batch makes a migration quadratic in
    the table's size. The ledger's statistics are as autovacuum leaves them: they have never seen
    this lease owner, which is what led the planner to scan it. Asked mid-migration, with two
    thirds of the rows written (the copy's statistics then know it is not empty)."""
    create_docs(conn, 3000, index=None)
    result = run_cli("plan", "docs", "--strategy", strategy, "--column", "embedding", "--text", "content",
                     "--title", "title", "--name", "p1", "--offline")
    assert result.exit_code == 0, result.output
    plan, record = load(conn, "p1")
    prepare(conn, plan, record)
    writer = BatchWriter(conn, plan, record.id, ledger.owner_id(), "backfilling")
    for _ in range(20):
        batch = writer.claim(Claim(100, 300))
        assert writer.write(batch.rows, _unit(len(batch.rows)), {}).written == len(batch.rows)
    conn.execute("ANALYZE")
    batch = writer.claim(Claim(100, 300))
    vectors = _unit(len(batch.rows))
    conn.execute("BEGIN")
    try:
        conn.execute(writer._stage_rows, {  # what the pipeline stages before the write
            "pks": [Jsonb(r.key) for r in batch.rows], "hashes": [r.hash for r in batch.rows],
            "vectors": [vectors[i] for i in range(len(batch.rows))], "reasons": [None] * len(batch.rows)})
        write = writer.guard.built
        for statement in write.before:
            conn.execute(statement)
        explained = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + write.statement).fetchone()[0]
    finally:
        conn.execute("ROLLBACK")
    scanned = _relations_scanned_whole(explained) - {writer.stage.as_string(conn).strip('"')}
    assert not scanned, f"the {strategy} write reads {sorted(scanned)} whole, once per batch: {explained}"


def test_a_backfill_write_waits_for_a_rollback_fill_write_in_flight(conn, database, run_cli) -> None:  # type: ignore[no-untyped-def]
    """The backfill and the rollback fill can write the same rows (after a rollback), each locking them
    in the order its join yields: they deadlocked. A write of one waits for a write of the other that
    is in flight, instead of taking row locks beside it."""
    writer, plan_id, _ = _writer(conn, run_cli)
    batch = writer.claim(Claim(20, 300))
    plan, _ = load(conn, "p1")
    fill = PlaceGuard(plan, plan_id, "backfilling", "old", lambda phase: None)
    with database.connect() as filling, database.connect() as watching:
        filling.execute("BEGIN")
        fill.current(filling)  # what a rollback-fill write does first in its transaction
        done: dict[str, object] = {}
        thread = threading.Thread(target=lambda: done.update(outcome=writer.write(batch.rows, _unit(20), {})))
        thread.start()
        try:
            wait_for(lambda: watching.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ).fetchone()[0] == 1, timeout=120, what="the backfill write to wait")
            assert "outcome" not in done
        finally:
            filling.execute("COMMIT")
            thread.join(timeout=120)
    assert done["outcome"].written == 20  # type: ignore[attr-defined]
