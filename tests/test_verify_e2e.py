"""verify inside the real lifecycle: `reembed run` and `reembed index` fill and index the new
column, verify passes and lets cutover through; after cutover verify judges the swapped
columns, keeps the phase, and sees the same state (the token does not depend on the phase)."""

from __future__ import annotations

import json

import pytest

from tables import create_docs
from toolkit.phases.verify import state_token
from toolkit.plan import load
from verify_support import old_vectors, table_checksum, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")
PLAN = "e2e"


def test_run_index_verify_cutover_verify(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 1500, vectors=old_vectors)
    conn.execute("UPDATE docs SET content = '   ' WHERE id = 9")
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--name", PLAN,
                   "--offline").exit_code == 0
    result = run_cli("cutover", PLAN)
    assert result.exit_code == 1
    for step in ("run", "index"):
        result = run_cli(step, PLAN, "--no-progress")
        assert result.exit_code == 0, result.output
    result = run_cli("cutover", PLAN)
    assert result.exit_code == 1 and "verif" in result.stderr  # the gate: no verification yet

    result = run_cli("verify", PLAN, "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0, [c for c in data["checks"] if not c["passed"]]
    assert data["phase"] == "verified"
    coverage = next(c for c in data["checks"] if c["name"] == "coverage")
    assert coverage["skipped"][0]["rows"] == 1 and coverage["rows_with_text"] == 1499
    recall = next(c for c in data["checks"] if c["name"] == "ann_recall")
    print("ann_recall", recall["value"], recall["setting"], recall["setting_value"], recall["summary"])
    plan, record = load(conn, PLAN)
    before = state_token(conn, plan, record)

    result = run_cli("cutover", PLAN)
    assert result.exit_code == 0, result.output
    plan, record = load(conn, PLAN)
    assert record.phase == "cut_over"
    assert state_token(conn, plan, record) == before  # same column and index, renamed

    checksum = table_checksum(conn)
    result = run_cli("verify", PLAN, "--json", "--sample", "50")
    data = json.loads(result.stdout)
    assert result.exit_code == 0, [c for c in data["checks"] if not c["passed"]]
    index = next(c for c in data["checks"] if c["name"] == "index")
    assert index["index"] == "docs_embedding_idx"  # the new index, now under the original's name
    agreement = next(c for c in data["checks"] if c["name"] == "agreement")
    assert agreement["labelled"]["old"]["recall"] > 0.9  # the old vectors, now in embedding__old_*
    assert data["phase"] == "cut_over" and load(conn, PLAN)[1].phase == "cut_over"  # never moved backwards
    assert table_checksum(conn) == checksum
