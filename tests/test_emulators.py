"""The emulators as HTTP servers: the wire format, errors, faults, stats, the CLI and expected_vector()."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from emulator_fixtures import TEST_API_KEY

from toolkit.emulators import expected_vector, start_gemini, start_ollama
from toolkit.emulators.vectors import gemini_values

HEADERS = {"x-goog-api-key": TEST_API_KEY}
HTTP = httpx.Client(timeout=120)  # one client: building one per call costs ~0.1 s (TLS setup)


def gemini_batch(base: str, texts: list, model: str = "gemini-embedding-001", version: str = "v1",
                 headers: dict | None = None, **fields) -> httpx.Response:
    requests = [{"model": f"models/{model}", "content": {"parts": [{"text": t}]}, **fields} for t in texts]
    return HTTP.post(f"{base}/{version}/models/{model}:batchEmbedContents", json={"requests": requests},
                      headers=HEADERS if headers is None else headers)


# -- Gemini wire format -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_gemini_batch_and_single_endpoints_on_both_versions(gemini_emulator, version):
    answer = gemini_batch(gemini_emulator.base_url, ["a", "b"], version=version, outputDimensionality=256)
    assert answer.status_code == 200
    assert [len(e["values"]) for e in answer.json()["embeddings"]] == [256, 256]
    single = HTTP.post(f"{gemini_emulator.base_url}/{version}/models/gemini-embedding-001:embedContent",
                        json={"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 256}, headers=HEADERS)
    assert single.status_code == 200
    np.testing.assert_allclose(single.json()["embedding"]["values"], answer.json()["embeddings"][0]["values"])


def test_gemini_default_size_is_3072_and_unit_only_there(gemini_emulator):
    full = gemini_batch(gemini_emulator.base_url, ["hello"]).json()["embeddings"][0]["values"]
    assert len(full) == 3072 and np.isclose(np.linalg.norm(full), 1.0, atol=1e-6)
    short = gemini_batch(gemini_emulator.base_url, ["hello"], outputDimensionality=768).json()["embeddings"][0]
    assert not np.isclose(np.linalg.norm(short["values"]), 1.0, atol=1e-2)
    # Matryoshka: the 768-dim vector points like the first 768 dims of the 3072-dim one.
    a, b = np.asarray(short["values"]), np.asarray(full[:768])
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_gemini_task_type_as_string_or_integer_enum(gemini_emulator):
    by_name = gemini_batch(gemini_emulator.base_url, ["x"], taskType="RETRIEVAL_QUERY", outputDimensionality=64)
    by_number = gemini_batch(gemini_emulator.base_url, ["x"], taskType=1, outputDimensionality=64)
    assert by_name.json() == by_number.json()
    other = gemini_batch(gemini_emulator.base_url, ["x"], taskType="RETRIEVAL_DOCUMENT", outputDimensionality=64)
    assert other.json() != by_name.json()
    assert gemini_batch(gemini_emulator.base_url, ["x"], taskType="NOPE").status_code == 400
    assert gemini_batch(gemini_emulator.base_url, ["x"], taskType=99).status_code == 400


def test_gemini_title_only_for_documents(gemini_emulator):
    base = gemini_emulator.base_url
    plain = gemini_batch(base, ["x"], taskType="RETRIEVAL_DOCUMENT", outputDimensionality=64).json()
    titled = gemini_batch(base, ["x"], taskType="RETRIEVAL_DOCUMENT", title="T", outputDimensionality=64).json()
    assert plain != titled
    assert gemini_batch(base, ["x"], taskType="RETRIEVAL_QUERY", title="T").status_code == 400


def test_gemini_rejections_use_the_real_status_and_wording(gemini_emulator):
    base = gemini_emulator.base_url
    too_many = gemini_batch(base, [f"t{i}" for i in range(101)])
    assert too_many.status_code == 400 and "at most 100 requests" in too_many.json()["error"]["message"]
    empty = gemini_batch(base, ["fine", ""])
    assert empty.status_code == 400 and "requests[1].content.parts[0].data" in empty.json()["error"]["message"]
    for model in ("text-embedding-004", "no-such-model"):
        missing = gemini_batch(base, ["x"], model=model)
        assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert gemini_batch(base, ["x"], headers={}).status_code == 401
    wrong = gemini_batch(base, ["x"], headers={"x-goog-api-key": "wrong"})
    assert wrong.status_code == 400 and "API_KEY_INVALID" in wrong.text
    assert gemini_batch(base, ["x"], outputDimensionality=4096).status_code == 400
    assert gemini_emulator.stats.embed_requests >= 3 and gemini_emulator.stats.ok == 0


def test_gemini_embedding_2_folds_the_parts_of_one_content(gemini_emulator):
    body = {"requests": [{"model": "models/gemini-embedding-2",
                          "content": {"parts": [{"text": "alpha"}, {"text": "beta"}]}, "outputDimensionality": 64}]}
    answer = HTTP.post(f"{gemini_emulator.base_url}/v1/models/gemini-embedding-2:batchEmbedContents", json=body,
                        headers=HEADERS).json()
    assert len(answer["embeddings"]) == 1


def test_gemini_quota_answers_429_with_retry_info(gemini_emulator):
    gemini_emulator.configure(quota_texts_per_minute=3, quota_window=0.4)
    assert gemini_batch(gemini_emulator.base_url, ["a", "b", "c"]).status_code == 200
    refused = gemini_batch(gemini_emulator.base_url, ["d"])
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    (retry,) = [d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    delay = float(retry["retryDelay"].rstrip("s"))
    assert 0 < delay <= 0.4
    time.sleep(delay)
    assert gemini_batch(gemini_emulator.base_url, ["d"]).status_code == 200
    assert gemini_emulator.stats.rate_limited == 1


# -- Ollama wire format -------------------------------------------------------------------------------

def test_ollama_embed_tags_version_and_404(ollama_emulator):
    base = ollama_emulator.base_url
    answer = HTTP.post(f"{base}/api/embed", json={"model": "nomic-embed-text:latest", "input": ["a", "b"]}).json()
    assert len(answer["embeddings"]) == 2
    np.testing.assert_allclose(np.linalg.norm(answer["embeddings"], axis=1), 1.0, atol=1e-6)
    single = HTTP.post(f"{base}/api/embed", json={"model": "nomic-embed-text", "input": "b"}).json()
    np.testing.assert_allclose(single["embeddings"][0], answer["embeddings"][1])
    names = [m["name"] for m in HTTP.get(f"{base}/api/tags").json()["models"]]
    assert "nomic-embed-text:latest" in names
    assert "version" in HTTP.get(f"{base}/api/version").json()
    missing = HTTP.post(f"{base}/api/embed", json={"model": "llama9", "input": ["a"]})
    assert missing.status_code == 404 and missing.json()["error"] == 'model "llama9" not found, try pulling it first'


# -- faults and stats ---------------------------------------------------------------------------------

def test_faults_are_deterministic_with_a_seed():
    def outcomes() -> list[int]:
        with start_gemini(error_rate=0.3, malformed_rate=0.2, malformed_kind="nan", seed=7) as server:
            codes = [gemini_batch(server.base_url, ["x"], outputDimensionality=8).status_code for _ in range(20)]
            return codes + [server.stats.malformed]

    first, second = outcomes(), outcomes()
    assert first == second and 503 in first[:20] and first[-1] > 0


def test_configure_changes_faults_at_run_time_and_resets_drop_the_connection(ollama_emulator):
    base = ollama_emulator.base_url
    ollama_emulator.configure(script=["reset", "500", "count"])
    with pytest.raises(httpx.TransportError):
        HTTP.post(f"{base}/api/embed", json={"model": "nomic-embed-text", "input": ["a"]})
    assert HTTP.post(f"{base}/api/embed", json={"model": "nomic-embed-text", "input": ["a"]}).status_code == 500
    short = HTTP.post(f"{base}/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]}).json()
    assert len(short["embeddings"]) == 1
    ollama_emulator.configure(latency=0.2)
    started = time.monotonic()
    HTTP.post(f"{base}/api/embed", json={"model": "nomic-embed-text", "input": ["a"]})
    assert time.monotonic() - started >= 0.2
    stats = ollama_emulator.stats
    assert (stats.resets, stats.server_errors, stats.malformed, stats.ok) == (1, 1, 1, 2)


def test_the_command_line_serves_until_killed():
    process = subprocess.Popen([sys.executable, "-m", "toolkit.emulators", "ollama", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        base = process.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:")
        assert HTTP.get(f"{base}/api/version").status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=600) == 0


# -- expected_vector ----------------------------------------------------------------------------------

def test_expected_vector_is_deterministic_unit_and_keeps_lexical_meaning():
    doc = expected_vector("gemini:gemini-embedding-001", "how to bake sourdough bread", task_type="RETRIEVAL_DOCUMENT",
                          dimensions=768)
    other = expected_vector("gemini:gemini-embedding-001", "fixing a flat bicycle tire",
                            task_type="RETRIEVAL_DOCUMENT", dimensions=768)
    query = expected_vector("gemini-embedding-001", "sourdough bread", task_type="RETRIEVAL_QUERY", dimensions=768)
    assert doc.dtype == np.float32 and np.isclose(np.linalg.norm(doc), 1.0, atol=1e-6)
    assert np.array_equal(doc, expected_vector("gemini:gemini-embedding-001", "how to bake sourdough bread",
                                               task_type="RETRIEVAL_DOCUMENT", dimensions=768))
    assert doc @ query > 0.4 > abs(other @ query)
    other_model = expected_vector("ollama:nomic-embed-text", "how to bake sourdough bread", dimensions=768)
    assert abs(doc @ other_model) < 0.2  # two models' vectors are unrelated


def test_expected_vector_matches_what_the_server_sends_normalized():
    raw = gemini_values("gemini-embedding-001", "abc def", task_type="RETRIEVAL_DOCUMENT", title="T", dims=128)
    want = expected_vector("gemini:gemini-embedding-001", "abc def", task_type="RETRIEVAL_DOCUMENT", title="T",
                           dimensions=128)
    np.testing.assert_allclose(raw / np.linalg.norm(raw), want, atol=1e-7)
