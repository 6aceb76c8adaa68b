"""`reembed verify` as a reviewer and a script meet it: the table, the labelled side-by-side,
--json, exit codes, an unreachable source, read-only-ness, and the gate cutover relies on."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from cli_support import error_lines
from tables import passage
from toolkit.phases.verify import state_token, verification_gate
from toolkit.plan import load
from verify_support import migrated, table_checksum, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")
PLAN = "docs-embedding-gemini_embedding_001"


def labelled_queries(path: Path, ids: range, words: int = 16) -> Path:
    """Queries made of a few words of a passage, each labelled with that passage's row."""
    lines = [json.dumps({"query": " ".join(passage(i).split(": ", 1)[1].split()[:words]), "relevant": [i]}) for i in ids]
    lines.append(json.dumps({"query": "river mountain forest"}))  # unlabelled: counts for overlap only
    path.write_text("\n".join(lines) + "\n")
    return path


def test_human_report_has_the_table_distribution_and_labelled_side_by_side(conn, run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    migrated(conn, run_cli)
    before = table_checksum(conn)
    result = run_cli("verify", PLAN, "--queries", str(labelled_queries(tmp_path / "q.jsonl", range(0, 200, 10))))
    print(result.stdout)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"verify {PLAN}: PASSED")
    header = next(line for line in out.splitlines() if line.startswith("check"))
    assert header.split() == ["check", "value", "threshold", "verdict"]
    for name in ("coverage", "freshness", "sanity", "outliers", "index", "ann_recall", "fidelity", "self_retrieval",
                 "agreement"):
        assert any(line.startswith(name) and line.rstrip().endswith("pass") for line in out.splitlines()), name
    assert "agreement: overlap@10 of old and new top-10, per query (21 queries from --queries file)" in out
    assert "labelled queries (20); the new model may trail by at most 0.05:" in out
    side = out.split("labelled queries")[1].splitlines()
    assert side[1].split()[:5] == ["metric", "old", "(ollama:nomic-embed-text)", "new", "(gemini:gemini-embedding-001)"]
    assert side[3].split()[0] == "recall@10" and side[4].split()[0] == "MRR"
    assert "phase: verified" in out
    assert table_checksum(conn) == before  # read-only on the user's table


def test_json_contract_and_exit_code_one_on_failure(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, opclass="vector_l2_ops")
    result = run_cli("verify", PLAN, "--json", "--sample", "20")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False
    for c in data["checks"]:
        assert {"name", "passed", "value", "threshold"} <= set(c)
    assert {c["name"] for c in data["checks"] if not c["passed"]} == {"index", "ann_recall"}
    stored = conn.execute("SELECT passed, result FROM reembed.verifications WHERE plan_id = %s",
                          (m.record.id,)).fetchone()
    assert stored[0] is False and stored[1]["checks"][4]["name"] == "index"
    assert load(conn, PLAN)[1].phase == "indexed"


def test_unreachable_source_fails_agreement_unless_no_source(conn, run_cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    migrated(conn, run_cli, rows=300)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("REEMBED_TIMEOUT", "2")
    result = run_cli("verify", PLAN, "--json", "--sample", "20")
    assert result.exit_code == 1
    agreement = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "agreement")
    assert not agreement["passed"] and "unreachable" in agreement["summary"] and "--no-source" in agreement["summary"]
    result = run_cli("verify", PLAN, "--json", "--sample", "20", "--no-source")
    assert result.exit_code == 0, result.stdout
    agreement = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "agreement")
    assert agreement["summary"].startswith("old model not compared (--no-source)")
    assert agreement["labelled"]["new"]["recall"] == 1.0


def test_bad_input_exits_two_and_unprepared_plan_exits_one(conn, run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tables import create_docs

    create_docs(conn, 20)
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline").exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "ok"}\n{"relevant": [1]}\n')
    result = run_cli("verify", PLAN, "--queries", str(bad))
    assert result.exit_code == 2 and f"{bad}:2" in result.stderr and len(error_lines(result.stderr)) == 1
    assert run_cli("verify", PLAN, "--k", "0").exit_code == 2
    result = run_cli("verify", PLAN)
    assert result.exit_code == 1 and "only planned" in result.stderr


def test_gate_holds_only_for_the_state_that_was_verified(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, rows=300)
    ok, reason = verification_gate(conn, m.plan, m.record)
    assert not ok and "has not been verified" in reason
    assert run_cli("verify", PLAN, "--sample", "20").exit_code == 0
    plan, record = load(conn, PLAN)
    ok, reason = verification_gate(conn, plan, record)
    assert ok, reason
    # A live application changing a few rows does not void the verification (cutover's own gate
    # still refuses rows left pending); a burst beyond what the write rate verify measured (none
    # here) explains does.
    conn.execute("UPDATE docs SET content = 'rewritten by the application' WHERE id = 5")  # tracked: back to pending
    ok, reason = verification_gate(conn, plan, record)
    assert ok and "1 rows changed since (within 20, none changed while verify ran)" in reason
    conn.execute("UPDATE docs SET content = content || ' again' WHERE id BETWEEN 10 AND 30")
    ok, reason = verification_gate(conn, plan, record)
    assert not ok and "22 rows changed since it was verified" in reason
    result = run_cli("verify", PLAN, "--sample", "20", "--json")
    assert result.exit_code == 1
    freshness = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "freshness")
    assert freshness["rows_pending"] == 22
    ok, reason = verification_gate(conn, plan, load(conn, PLAN)[1])
    assert not ok and "failed: freshness" in reason
    assert state_token(conn, plan, record)  # stable string, used by cutover


def test_new_model_trailing_the_old_beyond_the_margin_fails_agreement(conn, run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # With 8-word queries the emulated Gemini ranks the labelled row lower than the emulated
    # nomic-embed-text (its document vectors also carry the title): MRR trails by ~0.09.
    migrated(conn, run_cli)
    queries = str(labelled_queries(tmp_path / "q.jsonl", range(0, 200, 10), words=8))
    result = run_cli("verify", PLAN, "--queries", queries, "--json", "--sample", "20")
    assert result.exit_code == 1
    agreement = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "agreement")
    assert not agreement["passed"] and "MRR trails the old by" in agreement["summary"]
    assert agreement["labelled"]["delta"]["mrr"] < -0.05 and agreement["value"] == agreement["labelled"]["delta"]["mrr"]
    assert run_cli("verify", PLAN, "--queries", queries, "--sample", "20", "--margin", "0.15").exit_code == 0


def test_queries_file_keys_compare_as_postgres_prints_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from toolkit.phases.verification.queries import read_queries

    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "a", "relevant": [3, "doc-1", [1, "é"]]}\n\n{"query": "b"}\n')
    first, second = read_queries(path)
    assert first.relevant == ("3", "doc-1", '[1, "é"]')  # jsonb_build_array(1, 'é')::text
    assert second.relevant == ()


def test_invalid_index_fails_the_index_check(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, rows=300)
    # What an interrupted CREATE INDEX CONCURRENTLY leaves behind.
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
                 (m.plan.indexes[0].shadow_name,))
    result = run_cli("verify", PLAN, "--json", "--sample", "20")
    assert result.exit_code == 1
    index = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "index")
    assert index["value"] == "INVALID" and "interrupted CONCURRENTLY build" in index["summary"]


def test_live_tail_allowance_follows_the_write_rate_verify_measured() -> None:
    from toolkit.phases.ledger import live_tail_allowance

    assert live_tail_allowance(2000, 0.0, 600) == 20  # an idle application: only the floor
    assert live_tail_allowance(2000, 0.5, 60) == 60  # twice what 0.5 rows/s makes in a minute
    assert live_tail_allowance(2000, 10.0, 600) == 1000  # never more than half the rows
    assert live_tail_allowance(100_000, 0.0, 0) == 100  # the floor: 0.1% of the rows
