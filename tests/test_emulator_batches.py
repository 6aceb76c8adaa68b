"""The Gemini emulator's Batch and Files APIs, driven by the real google-genai client: job states
over time, results (inlined and as a downloaded file) equal to the online endpoint's vectors,
per-request errors, failed and expired jobs, list / cancel / delete, the request size limit."""

from __future__ import annotations

import io
import json
import time
import warnings

import numpy as np
import pytest
from emulator_fixtures import TEST_API_KEY
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from toolkit.emulators import start_gemini

MODEL = "gemini-embedding-001"


@pytest.fixture
def client(gemini_emulator):
    return genai.Client(api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=gemini_emulator.base_url))


@pytest.fixture(autouse=True)
def _no_experimental_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_embeddings() warns that it is experimental
        yield


def inline_job(client, texts, *, dims=16, task="RETRIEVAL_DOCUMENT"):
    return client.batches.create_embeddings(
        model=MODEL,
        src=types.EmbeddingsBatchJobSource(inlined_requests=types.EmbedContentBatch(
            contents=list(texts), config=types.EmbedContentConfig(task_type=task, output_dimensionality=dims))),
        config=types.CreateEmbeddingsBatchJobConfig(display_name="test"))


def online(client, texts, *, dims=16, task="RETRIEVAL_DOCUMENT"):
    answer = client.models.embed_content(model=MODEL, contents=list(texts),
                                         config=types.EmbedContentConfig(task_type=task, output_dimensionality=dims))
    return [e.values for e in answer.embeddings]


def state(job) -> str:
    """The job's state by the SDK's newer names (before 2.x some came through as BATCH_STATE_*)."""
    return job.state.name.replace("BATCH_STATE_", "JOB_STATE_")


ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def wait_done(client, name, timeout=600.0):
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if state(job) in ENDED:
            return job
        assert time.monotonic() < deadline, f"job {name} still {job.state}"
        time.sleep(0.05)


def test_a_job_goes_pending_running_succeeded_and_answers_the_online_vectors(gemini_emulator, client):
    gemini_emulator.configure(batch_pending_seconds=0.4, batch_running_seconds=0.4)
    texts = ["the first passage", "a second one", "and a third"]
    job = inline_job(client, texts)
    assert job.name.startswith("batches/") and state(job) == "JOB_STATE_PENDING"
    assert gemini_emulator.stats.batch_jobs == 1 and gemini_emulator.stats.batch_requests == 3
    seen = {state(job)}
    done = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = client.batches.get(name=job.name)
        seen.add(state(done))
        if state(done) in ENDED:
            break
        time.sleep(0.05)
    assert seen == {"JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"}
    answers = done.dest.inlined_embed_content_responses
    assert [a.error for a in answers] == [None, None, None]
    assert [a.response.embedding.values for a in answers] == online(client, texts)
    assert gemini_emulator.stats.batch_jobs == 1  # polling creates nothing


def test_requests_built_by_hand_keep_their_own_title_and_metadata(gemini_emulator, client):
    requests = [{"request": {"model": f"models/{MODEL}", "content": {"parts": [{"text": t}]},
                             "taskType": "RETRIEVAL_DOCUMENT", "title": title, "outputDimensionality": 16},
                 "metadata": {"row": i}} for i, (t, title) in enumerate([("x y", "one"), ("x y", "two")])]
    job = client.batches.create_embeddings(
        model=MODEL, src=types.EmbeddingsBatchJobSource(inlined_requests=types.EmbedContentBatch(contents=["x y"] * 2)),
        config=types.CreateEmbeddingsBatchJobConfig(
            http_options=types.HttpOptions(extra_body={"batch": {"inputConfig": {"requests": {"requests": requests}}}})))
    answers = wait_done(client, job.name).dest.inlined_embed_content_responses
    if hasattr(answers[0], "metadata"):  # google-genai 1.x does not read it
        assert [a.metadata for a in answers] == [{"row": 0}, {"row": 1}]
    first, second = (np.asarray(a.response.embedding.values) for a in answers)
    assert not np.allclose(first, second)  # the title counts, per request
    titled = client.models.embed_content(model=MODEL, contents=["x y"], config=types.EmbedContentConfig(
        task_type="RETRIEVAL_DOCUMENT", title="two", output_dimensionality=16)).embeddings[0].values
    assert list(second) == titled


def test_per_request_errors_inside_a_succeeded_job(gemini_emulator, client):
    gemini_emulator.configure(batch_script=["errors=1,3"])
    job = wait_done(client, inline_job(client, ["a", "b", "c", "d", "e"]).name)
    assert state(job) == "JOB_STATE_SUCCEEDED"
    answers = job.dest.inlined_embed_content_responses
    assert [i for i, a in enumerate(answers) if a.error is not None] == [1, 3]
    assert all(answers[i].response.embedding.values for i in (0, 2, 4))
    assert answers[1].error.code == 500 and answers[1].error.message


@pytest.mark.parametrize("outcome,ended", [("failed", "JOB_STATE_FAILED"), ("expired", "JOB_STATE_EXPIRED")])
def test_failed_and_expired_jobs_have_no_output(gemini_emulator, client, outcome, ended):
    gemini_emulator.configure(batch_script=[outcome])
    job = wait_done(client, inline_job(client, ["a", "b"]).name)
    assert state(job) == ended and job.dest is None
    assert state(wait_done(client, inline_job(client, ["c"]).name)) == "JOB_STATE_SUCCEEDED"  # back to normal


def test_a_file_job_uploads_jsonl_and_its_results_come_back_as_a_file(gemini_emulator, client):
    gemini_emulator.configure(batch_script=["errors=2"])
    texts = [f"text number {i}" for i in range(5)]
    lines = [json.dumps({"key": f"row-{i}", "request": {"content": {"parts": [{"text": t}]},
                                                         "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 16}})
             for i, t in enumerate(texts)]
    data = ("\n".join(lines) + "\n").encode()
    uploaded = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(
        mime_type="application/jsonl", display_name="rows"))
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == len(data)
    assert gemini_emulator.stats.files_uploaded == 1
    job = client.batches.create_embeddings(model=MODEL, src=types.EmbeddingsBatchJobSource(file_name=uploaded.name))
    done = wait_done(client, job.name)
    assert done.dest.file_name and not done.dest.inlined_embed_content_responses
    results = [json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]
    assert [r["key"] for r in results] == [f"row-{i}" for i in range(5)]
    assert "error" in results[2] and "response" not in results[2]
    want = online(client, texts)
    assert [r["response"]["embedding"]["values"] for r in results if "response" in r] == [want[i] for i in (0, 1, 3, 4)]


def test_an_uploaded_file_cannot_be_downloaded_and_unknown_names_are_404(gemini_emulator, client):
    uploaded = client.files.upload(file=io.BytesIO(b"{}\n"), config=types.UploadFileConfig(mime_type="application/jsonl"))
    with pytest.raises(genai_errors.ClientError) as refused:
        client.files.download(file=uploaded.name)
    assert refused.value.code == 400
    with pytest.raises(genai_errors.ClientError) as missing:
        client.batches.get(name="batches/nope")
    assert missing.value.code == 404


def test_list_cancel_delete(gemini_emulator, client):
    gemini_emulator.configure(batch_pending_seconds=60)
    names = [inline_job(client, [f"t{i}"]).name for i in range(3)]
    listed = [j.name for j in client.batches.list(config=types.ListBatchJobsConfig(page_size=2))]
    assert sorted(listed) == sorted(names)  # the pager follows nextPageToken
    client.batches.cancel(name=names[0])
    assert state(client.batches.get(name=names[0])) == "JOB_STATE_CANCELLED"
    assert state(client.batches.get(name=names[1])) == "JOB_STATE_PENDING"
    client.batches.delete(name=names[1])
    with pytest.raises(genai_errors.ClientError):
        client.batches.get(name=names[1])


def test_an_inlined_job_above_the_request_size_limit_is_refused(gemini_emulator, client):
    gemini_emulator.configure(batch_inline_limit_bytes=2000)
    with pytest.raises(genai_errors.ClientError) as refused:
        inline_job(client, ["some words " * 20] * 10)
    assert refused.value.code == 400 and "size exceeds the limit" in refused.value.message
    assert gemini_emulator.stats.batch_jobs == 0


def test_bad_requests_in_a_job_are_refused_whole(gemini_emulator, client):
    with pytest.raises(genai_errors.ClientError) as refused:
        inline_job(client, ["fine", ""])  # an empty Part, like the online endpoint
    assert refused.value.code == 400
    assert gemini_emulator.stats.batch_jobs == 0


def test_the_key_is_checked_on_batch_endpoints(gemini_emulator):
    stranger = genai.Client(api_key="not-the-key", http_options=types.HttpOptions(base_url=gemini_emulator.base_url))
    with pytest.raises(genai_errors.ClientError) as refused:
        inline_job(stranger, ["a"])
    assert refused.value.code == 400 and "API key not valid" in refused.value.message


def test_answers_are_serialised_once_and_equal_fresh_ones():
    with start_gemini(answer_cache_bytes=10_000_000) as cached, start_gemini(answer_cache_bytes=0) as fresh:
        assert cached.app.warm(MODEL, [("warm me", "RETRIEVAL_DOCUMENT", None, 32)]) == 1
        a = cached.app.embedding_json(MODEL, "warm me", "RETRIEVAL_DOCUMENT", None, 32)
        assert a is cached.app.embedding_json(MODEL, "warm me", "RETRIEVAL_DOCUMENT", None, 32)
        assert a == fresh.app.embedding_json(MODEL, "warm me", "RETRIEVAL_DOCUMENT", None, 32)
        assert fresh.app.warm(MODEL, [("x", None, None, 8)]) == 0  # a zero budget keeps nothing
