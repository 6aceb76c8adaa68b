"""What an application sees during a copy-strategy migration: a reader in another process whose
`SELECT *` was prepared before `run` queries continuously through run, index, verify, cutover,
rollback, cutover and cleanup, and never notices anything but the model behind the column."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from psycopg import sql

from backfill_support import TARGET, gemini  # noqa: F401 (fixture)
from copy_support import PLAN, plan_copy
from reliability_support import TESTS, wait_for
from tables import passage
from test_copy_swap import ollama  # noqa: F401 (fixture)
from toolkit.emulators import expected_vector

SOURCE = "ollama:nomic-embed-text"
ROWS = 150
PROBES = (3, 40, 77, 120)


def _vector(model: str, i: int) -> list[float]:
    return expected_vector(model, passage(i), task_type="RETRIEVAL_DOCUMENT", title=f"title {i}",
                           dimensions=768).tolist()


def test_a_prepared_select_star_reader_never_notices_the_migration(conn, run_cli, gemini, ollama, tmp_path,  # type: ignore[no-untyped-def]
                                                                    database) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, content text, embedding vector(768), "
                 "views int DEFAULT 0)")
    with conn.cursor().copy("COPY docs (id, title, content, embedding) FROM STDIN") as copy:
        for i in range(ROWS):
            copy.write_row((i, f"title {i}", passage(i), np.asarray(_vector(SOURCE, i), dtype=np.float32)))
    conn.execute("CREATE INDEX docs_embedding_idx ON docs USING hnsw (embedding vector_cosine_ops)")
    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps([{"id": i, "source": _vector(SOURCE, i), "target": _vector(TARGET, i)}
                                  for i in PROBES]))
    plan_copy(run_cli)
    out, stop = tmp_path / "reader.jsonl", tmp_path / "reader.stop"
    reader = subprocess.Popen([sys.executable, str(TESTS / "prepared_reader.py"), "--dsn", database.dsn,
                               "--plan", PLAN, "--probes", str(probes), "--out", str(out), "--stop-file", str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def lines() -> list[dict]:
            return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

        def seen_phases(count: int) -> None:  # the reader has queried at least `count` times since now
            start = len(lines())
            wait_for(lambda: len(lines()) >= start + count or reader.poll() is not None, timeout=120,
                     what="the reader to query")

        wait_for(lambda: any(r.get("prepared") for r in lines()) or reader.poll() is not None, timeout=120,
                 what="the reader's statement to be prepared")
        steps = [("run", PLAN, "--no-progress"), ("index", PLAN, "--no-progress"),
                 ("verify", PLAN, "--no-source", "--sample", "20"), ("cutover", PLAN), ("rollback", PLAN),
                 ("verify", PLAN, "--no-source", "--sample", "20"), ("cutover", PLAN), ("cleanup", PLAN, "--yes")]
        for step in steps:
            result = run_cli(*step)
            assert result.exit_code == 0, (step, result.output)
            seen_phases(10)
    finally:
        stop.touch()
        _, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r["error"] for r in records if "error" in r]
    assert errors == []
    columns = {tuple(r["columns"]) for r in records}
    assert columns == {("id", "title", "content", "embedding", "views", "distance")}
    assert all(r["prepared"] for r in records[10:])
    judged = [r for r in records if r["same_phase"]]
    wrong = [r for r in judged if r["top"] != r["probe"] or r["distance"] > 1e-4]
    assert wrong == [], wrong[:5]
    sides = {(r["phase"], r["side"]) for r in judged}
    assert {("planned", "source"), ("verified", "source"), ("cut_over", "target"), ("rolled_back", "source"),
            ("cleaned_up", "target")} <= sides, sides
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("docs"))).fetchone()[0] == ROWS
