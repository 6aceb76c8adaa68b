"""`reembed run --batch-api`: the backfill through Gemini's Batch API (real google-genai client, the
emulator's batch endpoints): every vector exact, a kill -9 after the first job was submitted and
a resume that submits nothing twice, a text changed while its job ran, failed and expired jobs,
per-request errors, the file route, `reembed status`."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from backfill_support import (TARGET, gemini, make_plan, mismatches, reembed_subprocess,  # noqa: F401 (fixture)
                              shadow_column, status_json)
from tables import create_docs

from toolkit.emulators import expected_vector

FAST = ["--batch-poll-seconds", "0.05", "--no-progress"]


def batch_run(run_cli, name: str, *extra: str):  # type: ignore[no-untyped-def]
    result = run_cli("run", name, "--batch-api", *FAST, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def jobs(conn):  # type: ignore[no-untyped-def]
    return conn.execute("SELECT state, job_name, provider_state, rows, rows_written, rows_failed, rows_changed "
                        "FROM reembed.batch_jobs ORDER BY id").fetchall()


def wait_for(predicate, timeout: float = 600.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_batch_run_embeds_every_row_exactly_in_recorded_jobs(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 250, index="hnsw")
    conn.execute("UPDATE docs SET content = '' WHERE id = 5")
    name = make_plan(run_cli)
    gemini.configure(batch_running_seconds=0.1)
    summary = batch_run(run_cli, name, "--batch-job-rows", "100")
    assert summary["rows_written"] == 249 and summary["rows_skipped"] == 1 and summary["phase"] == "backfilled"
    assert mismatches(conn, shadow_column(conn, name)) == []
    assert gemini.stats.batch_jobs == 3 and gemini.stats.batch_requests == 249
    assert gemini.stats.embed_requests == 0 and gemini.stats.files_uploaded == 0  # nothing online, all inlined
    assert [(s, p, r, w) for s, _, p, r, w, _, _ in jobs(conn)] == [("collected", "succeeded", 100, 100),
                                                                    ("collected", "succeeded", 100, 100),
                                                                    ("collected", "succeeded", 49, 49)]
    # The requests carry each row's own title, the document task type and the planned dimensions.
    _, body = next(b for b in gemini.app.bodies if b[0].endswith("asyncBatchEmbedContent"))
    first = body["batch"]["inputConfig"]["requests"]["requests"][0]["request"]
    assert first["taskType"] == "RETRIEVAL_DOCUMENT" and first["outputDimensionality"] == 768 and first["title"]
    status = status_json(run_cli, name)
    assert [j["state"] for j in status["batch_jobs"]] == ["collected"] * 3
    listing = run_cli("status", name)
    assert listing.exit_code == 0 and "batch jobs (--batch-api):" in listing.stdout and "succeeded" in listing.stdout
    again = batch_run(run_cli, name)
    assert again["rows_written"] == 0 and gemini.stats.batch_jobs == 3  # nothing left: nothing submitted


def test_above_the_request_size_limit_the_requests_go_as_an_uploaded_file(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 120, index=None)
    name = make_plan(run_cli)
    summary = batch_run(run_cli, name, "--batch-job-rows", "60", "--batch-inline-limit-bytes", "5000")
    assert summary["rows_written"] == 120
    assert gemini.stats.batch_jobs == 2 and gemini.stats.files_uploaded == 2
    assert mismatches(conn, shadow_column(conn, name)) == []


@pytest.mark.parametrize("outcome", ["failed", "expired"])
def test_a_failed_or_expired_jobs_rows_are_done_by_the_next(conn, run_cli, gemini, outcome) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 150, index=None)
    name = make_plan(run_cli)
    gemini.configure(batch_script=["succeeded", outcome])
    summary = batch_run(run_cli, name, "--batch-job-rows", "100")
    assert summary["rows_written"] == 150
    assert mismatches(conn, shadow_column(conn, name)) == []
    states = jobs(conn)
    assert [(p, r, w, f) for _, _, p, r, w, f, _ in states] == [("succeeded", 100, 100, 0), (outcome, 50, 0, 50),
                                                                ("succeeded", 50, 50, 0)]
    assert gemini.stats.batch_jobs == 3


def test_requests_answered_with_an_error_are_put_back_and_done_by_the_next_job(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 80, index=None)
    name = make_plan(run_cli)
    gemini.configure(batch_script=["errors=3,41,79"])
    summary = batch_run(run_cli, name, "--batch-job-rows", "100")
    assert summary["rows_written"] == 80
    assert [(r, w, f) for _, _, _, r, w, f, _ in jobs(conn)] == [(80, 77, 3), (3, 3, 0)]
    assert mismatches(conn, shadow_column(conn, name)) == []


def test_a_text_changed_while_its_job_ran_ends_re_embedded(conn, run_cli, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 200, index=None)
    name = make_plan(run_cli)
    gemini.configure(batch_pending_seconds=1.5)
    proc = reembed_subprocess("run", name, "--batch-api", "--batch-job-rows", "200", *FAST, "--json", cwd=tmp_path)
    try:
        wait_for(lambda: conn.execute("SELECT count(*) FROM reembed.batch_jobs WHERE state = 'submitted'")
                 .fetchone()[0] == 1, what="the job to be submitted")
        conn.execute("UPDATE docs SET content = 'rewritten while the job ran ' || id WHERE id IN (3, 150)")
        conn.execute("UPDATE docs SET title = 'a new title' WHERE id = 77")
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert [(r, w, c) for _, _, _, r, w, _, c in jobs(conn)] == [(200, 197, 3), (3, 3, 0)]
    assert mismatches(conn, shadow_column(conn, name)) == []
    row = conn.execute("SELECT content, title, {} FROM docs WHERE id = 3".replace("{}", shadow_column(conn, name))
                       ).fetchone()
    assert row[0] == "rewritten while the job ran 3"
    assert json.loads(out)["rows_written"] == 200


@pytest.mark.parametrize("rows", [500, pytest.param(5000, marks=pytest.mark.soak)])
def test_kill_9_after_the_first_job_was_submitted_then_resume_submits_nothing_twice(
        conn, run_cli, gemini, tmp_path, rows: int) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, rows, index="hnsw")
    name = make_plan(run_cli)
    job_rows = rows // 5
    gemini.configure(batch_pending_seconds=30)  # the first run never sees a job finish
    proc = reembed_subprocess("run", name, "--batch-api", "--batch-job-rows", str(job_rows), *FAST, cwd=tmp_path)
    try:
        wait_for(lambda: gemini.stats.batch_jobs >= 1, what="the first job to be created")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    created_before = gemini.stats.batch_jobs
    assert 1 <= created_before <= 5
    recorded = conn.execute("SELECT count(*), count(job_name) FROM reembed.batch_jobs").fetchone()
    assert recorded[1] <= created_before <= recorded[1] + 1  # at most the one being created had no name yet
    gemini.configure(batch_pending_seconds=0.0)
    resumed = reembed_subprocess("run", name, "--batch-api", "--batch-job-rows", str(job_rows), *FAST, "--json",
                                 cwd=tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert gemini.stats.batch_jobs == 5  # each job created once, across the crash
    names = [n for _, n, *_ in jobs(conn)]
    assert len(names) == 5 and len(set(names)) == 5
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE state = 'done'").fetchone()[0] == rows
    assert mismatches(conn, shadow_column(conn, name)) == []
    assert conn.execute("SELECT count(*) FROM reembed.ledger WHERE embed_count <> 1").fetchone()[0] == 0


def test_a_job_created_before_its_name_was_recorded_is_found_not_created_again(conn, run_cli, gemini,
                                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 100, index=None)
    name = make_plan(run_cli)
    gemini.configure(batch_pending_seconds=30)
    proc = reembed_subprocess("run", name, "--batch-api", *FAST, cwd=tmp_path)
    try:
        wait_for(lambda: conn.execute("SELECT count(job_name) FROM reembed.batch_jobs").fetchone()[0] == 1,
                 what="the job to be recorded")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    online = run_cli("run", name, "--no-progress")  # its rows are the open job's: the online run says so
    assert online.exit_code == 1 and "100 rows of plan 'p1' are in 1 open batch jobs" in online.output
    # As if the crash came between the provider's answer and recording it.
    conn.execute("UPDATE reembed.batch_jobs SET state = 'submitting', job_name = NULL")
    gemini.configure(batch_pending_seconds=0.0)
    summary = batch_run(run_cli, name)
    assert summary["rows_written"] == 100 and gemini.stats.batch_jobs == 1
    assert mismatches(conn, shadow_column(conn, name)) == []


def test_the_batch_api_is_refused_for_a_model_that_is_not_gemini(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 10, index=None)
    result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--to", "ollama:nomic-embed-text",
                     "--from", TARGET, "--name", "o", "--offline")
    assert result.exit_code == 0, result.output
    refused = run_cli("run", "o", "--batch-api", *FAST)
    assert refused.exit_code == 2 and "not a Gemini model" in refused.output
    workers = run_cli("run", "o", "--batch-api", "--workers", "2", *FAST)
    assert workers.exit_code == 2 and "--workers does not apply to --batch-api" in workers.output
    assert conn.execute("SELECT count(*) FROM reembed.batch_jobs").fetchone()[0] == 0


def test_expected_vectors_are_the_online_ones(gemini) -> None:  # type: ignore[no-untyped-def]
    """The comparison above is meaningful: the batch answers are the online endpoint's vectors."""
    a = gemini.app.embedding_json("gemini-embedding-001", "x y z", "RETRIEVAL_DOCUMENT", "t", 768)
    values = json.loads(a)["values"]
    import numpy as np

    got = np.asarray(values, dtype=np.float64)
    got = (got / np.linalg.norm(got)).astype(np.float32)
    np.testing.assert_allclose(got, expected_vector(TARGET, "x y z", task_type="RETRIEVAL_DOCUMENT", title="t",
                                                    dimensions=768), atol=1e-6)
