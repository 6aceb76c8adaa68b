"""GeminiEmbedder through the real google-genai client, over HTTP, against the Gemini emulator."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from emulator_fixtures import TEST_API_KEY

from toolkit.emulators import EmulatorServer, expected_vector, start_gemini
from toolkit.errors import BadInput, MalformedResponse, ProviderError, ProviderUnreachable, ReembedError
from toolkit.providers import make_embedder
from toolkit.providers.base import ModelRef
from toolkit.providers.gemini import GeminiEmbedder, parse_duration
from toolkit.providers.settings import ProviderSettings
from toolkit.providers.tokens import estimate_tokens
from toolkit.ratelimit import RateLimiter

G1 = "gemini:gemini-embedding-001"
G2 = "gemini:gemini-embedding-2"


def embedder(settings: ProviderSettings, model: str = G1, dims: int = 768, **limiter: object) -> GeminiEmbedder:
    options = {"base_delay": 0.01, "max_attempts": 3, **limiter}
    return GeminiEmbedder(ModelRef.parse(model), dims, settings, RateLimiter(**options))  # type: ignore[arg-type]


def expected(texts: list[str], task: str, titles: list[str | None] | None = None, model: str = G1,
             dims: int = 768) -> np.ndarray:
    titles = titles or [None] * len(texts)
    return np.stack([expected_vector(model, t, task_type=task, title=title, dimensions=dims)
                     for t, title in zip(texts, titles)])


def batch_bodies(server: EmulatorServer) -> list[dict]:
    return [body for path, body in server.app.bodies if path.endswith(":batchEmbedContents")]


DOCS = ["sourdough bread needs a starter", "fixing a flat bicycle tire", "python list comprehensions",
        "the history of the roman empire"]


# -- what is sent and what comes back ---------------------------------------------------------------

def test_documents_are_normalized_in_order_and_match_the_emulator(provider_settings, gemini_emulator):
    batch = embedder(provider_settings).embed_documents(DOCS)
    assert batch.index == [0, 1, 2, 3] and batch.skipped == {} and batch.truncated == 0
    assert batch.vectors.dtype == np.float32 and batch.vectors.shape == (4, 768)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(batch.vectors, expected(DOCS, "RETRIEVAL_DOCUMENT"), atol=1e-6)


def test_the_api_answer_below_3072_dims_is_not_unit_length_so_we_normalize(gemini_emulator):
    import httpx

    body = {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]},
                          "outputDimensionality": 768}]}
    answer = httpx.post(f"{gemini_emulator.base_url}/v1/models/gemini-embedding-001:batchEmbedContents",
                        json=body, headers={"x-goog-api-key": TEST_API_KEY}).json()
    assert not np.isclose(np.linalg.norm(answer["embeddings"][0]["values"]), 1.0, atol=1e-3)


def test_request_shape_one_content_per_text_task_type_and_dimensions_always_sent(provider_settings,
                                                                                 gemini_emulator):
    embedder(provider_settings, dims=1536).embed_queries(["a question", "another one"])
    (body,) = batch_bodies(gemini_emulator)
    assert len(body["requests"]) == 2
    for request, text in zip(body["requests"], ["a question", "another one"]):
        assert request["content"]["parts"] == [{"text": text}]
        assert request["taskType"] == "RETRIEVAL_QUERY"
        assert request["outputDimensionality"] == 1536
        assert "title" not in request


def test_more_than_100_texts_are_split_into_requests_of_at_most_100(provider_settings, gemini_emulator):
    texts = [f"text number {i} about {i % 7}" for i in range(250)]
    batch = embedder(provider_settings).embed_documents(texts)
    sizes = [len(b["requests"]) for b in batch_bodies(gemini_emulator)]
    assert sizes == [100, 100, 50]
    np.testing.assert_allclose(batch.vectors, expected(texts, "RETRIEVAL_DOCUMENT"), atol=1e-6)


def test_gemini_embedding_2_gives_one_vector_per_text(provider_settings, gemini_emulator):
    texts = ["first text", "second text", "third text"]
    batch = embedder(provider_settings, G2).embed_documents(texts)
    assert batch.vectors.shape == (3, 768)
    np.testing.assert_allclose(batch.vectors, expected(texts, "RETRIEVAL_DOCUMENT", model=G2), atol=1e-6)
    # One request per text, whatever the SDK version does with a plain list for this model (from 2.x on:
    # one Content, one aggregated vector; google-genai 1.x: one request per string).
    _, body = gemini_emulator.app.bodies[-1]
    assert [r["content"]["parts"] for r in body["requests"]] == [[{"text": t}] for t in texts]
    from google import genai
    from google.genai import _transformers

    if hasattr(_transformers, "t_is_multimodal_embedding_model"):
        client = genai.Client(api_key=TEST_API_KEY, http_options={"base_url": gemini_emulator.base_url})
        plain = client.models.embed_content(model="gemini-embedding-2", contents=texts)
        assert len(plain.embeddings) == 1


def test_queries_and_documents_differ_but_a_query_lands_near_its_document(provider_settings, gemini_emulator):
    e = embedder(provider_settings)
    docs = e.embed_documents(DOCS).vectors
    same_text_query = e.embed_queries([DOCS[0]]).vectors[0]
    assert not np.allclose(docs[0], same_text_query, atol=1e-3)
    query = e.embed_queries(["how do I fix a bicycle tire"]).vectors[0]
    assert int(np.argmax(docs @ query)) == 1


def test_titles_change_document_vectors_and_go_per_text_in_one_request(provider_settings, gemini_emulator):
    e = embedder(provider_settings)
    texts = ["the same body text"] * 3
    titles = ["Baking", "Cycling", None]
    batch = e.embed_documents(texts, titles)
    assert len(batch_bodies(gemini_emulator)) == 1  # one HTTP request, three different titles
    requests = batch_bodies(gemini_emulator)[0]["requests"]
    assert [r.get("title") for r in requests] == ["Baking", "Cycling", None]
    assert not np.allclose(batch.vectors[0], batch.vectors[1], atol=1e-3)
    assert not np.allclose(batch.vectors[0], batch.vectors[2], atol=1e-3)
    np.testing.assert_allclose(batch.vectors, expected(texts, "RETRIEVAL_DOCUMENT", titles), atol=1e-6)


def test_title_grouping_fallback_gives_the_same_vectors(provider_settings, gemini_emulator):
    texts = [f"body {i}" for i in range(6)]
    titles = ["A", "B", "A", None, "B", "A"]
    grouped = GeminiEmbedder(ModelRef.parse(G1), 768, provider_settings, title_mode="group").embed_documents(
        texts, titles)
    assert len(batch_bodies(gemini_emulator)) == 3
    np.testing.assert_allclose(grouped.vectors, expected(texts, "RETRIEVAL_DOCUMENT", titles), atol=1e-6)


def test_empty_and_whitespace_texts_are_skipped_never_sent(provider_settings, gemini_emulator):
    batch = embedder(provider_settings).embed_documents(["real text", "", "   \n\t", "more text"])
    assert batch.index == [0, 3]
    assert batch.skipped == {1: "empty text", 2: "empty text"}
    assert batch.vectors.shape == (2, 768)
    sent = [r["content"]["parts"][0]["text"] for r in batch_bodies(gemini_emulator)[0]["requests"]]
    assert sent == ["real text", "more text"]
    nothing = embedder(provider_settings).embed_documents(["", " "])
    assert nothing.vectors.shape == (0, 768) and nothing.index == [] and len(nothing.skipped) == 2
    assert gemini_emulator.stats.embed_requests == 1


def test_long_text_is_cut_to_the_model_limit_and_counted(provider_settings, gemini_emulator):
    long_text = "word " * 3000  # ~3750 estimated tokens, limit 2048
    batch = embedder(provider_settings).embed_documents([long_text, "short"])
    assert batch.truncated == 1 and batch.index == [0, 1]
    sent = batch_bodies(gemini_emulator)[0]["requests"][0]["content"]["parts"][0]["text"]
    assert estimate_tokens(sent) <= 2048 < estimate_tokens(long_text)
    np.testing.assert_allclose(batch.vectors[0], expected_vector(G1, long_text, task_type="RETRIEVAL_DOCUMENT",
                                                                 dimensions=768), atol=1e-6)


# -- quotas and failures ------------------------------------------------------------------------------

def test_a_429_waits_the_servers_retry_delay(provider_settings, gemini_emulator):
    gemini_emulator.configure(script=["429"], retry_delay=0.6)
    e = embedder(provider_settings)
    started = time.monotonic()
    batch = e.embed_documents(["hello there"])
    elapsed = time.monotonic() - started
    assert elapsed >= 0.6
    assert batch.retries == 1 and batch.vectors.shape == (1, 768)
    stats = e.limiter.snapshot()
    assert stats.rate_limited == 1 and stats.retries == 1 and stats.wait_seconds >= 0.6
    assert gemini_emulator.stats.rate_limited == 1


def test_retry_delay_parsing():
    assert parse_duration("37s") == 37.0
    assert parse_duration("0.250s") == 0.25
    assert parse_duration({"seconds": "2", "nanos": 500_000_000}) == 2.5
    assert parse_duration("soon") is None


def test_quota_window_429s_are_absorbed_and_every_text_arrives():
    # A quota below one batch (60 texts per 0.3 s window, batches of 100): the batch is split.
    with start_gemini(api_keys=[TEST_API_KEY], quota_texts_per_minute=60, quota_window=0.3) as server:
        settings = ProviderSettings.from_env({}, gemini_api_key=TEST_API_KEY, gemini_base_url=server.base_url)
        e = embedder(settings, max_rate_limited=20, split_after=1)
        texts = [f"row {i}" for i in range(100)]
        batch = e.embed_documents(texts)
        assert batch.vectors.shape == (100, 768)
        assert server.stats.rate_limited >= 1 and server.stats.texts == 100
        np.testing.assert_allclose(batch.vectors, expected(texts, "RETRIEVAL_DOCUMENT"), atol=1e-6)


@pytest.mark.parametrize("fault", ["503", "500", "reset"])
def test_5xx_and_resets_are_retried(provider_settings, gemini_emulator, fault):
    gemini_emulator.configure(script=[fault, fault])
    e = embedder(provider_settings)
    batch = e.embed_documents(["retry me"])
    assert batch.retries == 2 and batch.vectors.shape == (1, 768)
    assert e.limiter.snapshot().transient_errors == 2


def test_retries_are_bounded(provider_settings, gemini_emulator):
    gemini_emulator.configure(error_rate=1.0)
    with pytest.raises(ProviderUnreachable, match="gave up after 3 attempts"):
        embedder(provider_settings).embed_documents(["never works"])
    assert gemini_emulator.stats.server_errors == 3


def test_a_timeout_is_retried_then_reported(gemini_emulator):
    gemini_emulator.configure(latency=1.5)
    settings = ProviderSettings.from_env({}, gemini_api_key=TEST_API_KEY, gemini_base_url=gemini_emulator.base_url,
                                         timeout=0.3)
    with pytest.raises(ProviderUnreachable, match="did not answer within 0.3s"):
        embedder(settings, max_attempts=2).embed_documents(["slow"])


@pytest.mark.parametrize("kind", ["count", "dimension", "nan", "zero"])
def test_a_malformed_answer_raises_and_is_never_returned(provider_settings, gemini_emulator, kind):
    gemini_emulator.configure(script=[kind])
    e = embedder(provider_settings)
    result = None
    with pytest.raises(MalformedResponse):
        result = e.embed_documents(["one text", "two text", "three text"])
    assert result is None
    assert gemini_emulator.stats.malformed == 1
    assert e.embed_documents(["one text"]).vectors.shape == (1, 768)  # the next answer is fine again


def test_unknown_model_on_the_server_is_a_clear_404(gemini_emulator):
    with start_gemini(api_keys=[TEST_API_KEY], models={"gemini-embedding-001": 3072}) as server:
        settings = ProviderSettings.from_env({}, gemini_api_key=TEST_API_KEY, gemini_base_url=server.base_url)
        with pytest.raises(ProviderError, match="model gemini-embedding-2 is not available on the Gemini API") as info:
            embedder(settings, G2).embed_documents(["x"])
        assert "404" in str(info.value)
        assert server.stats.embed_requests == 0 and server.stats.client_errors == 1


def test_retired_and_unknown_models_are_refused_before_any_call(provider_settings):
    with pytest.raises(BadInput, match="shut down"):
        make_embedder(ModelRef.parse("gemini:text-embedding-004"), 768, provider_settings)
    with pytest.raises(BadInput, match="supports 128 to 3072"):
        make_embedder(ModelRef.parse(G1), 4096, provider_settings)


def test_missing_key_is_bad_input(gemini_emulator):
    settings = ProviderSettings.from_env({}, gemini_base_url=gemini_emulator.base_url)
    with pytest.raises(BadInput, match="GOOGLE_API_KEY"):
        make_embedder(ModelRef.parse(G1), 768, settings)


@pytest.mark.parametrize("setup, status", [({"api_keys": ["another-key"]}, "400"),
                                           ({"forbidden_keys": [TEST_API_KEY]}, "403")])
def test_a_refused_key_is_a_clear_permanent_error_without_the_key(setup, status, caplog):
    caplog.set_level(logging.DEBUG)
    with start_gemini(**setup) as server:
        settings = ProviderSettings.from_env({}, gemini_api_key=TEST_API_KEY, gemini_base_url=server.base_url)
        with pytest.raises(ProviderError, match="refused the API key") as info:
            embedder(settings).embed_documents(["x"])
        assert status in str(info.value) and "GOOGLE_API_KEY" in str(info.value)
        assert server.stats.embed_requests == 0 and server.stats.client_errors == 1  # not retried
    assert TEST_API_KEY not in _everything_about(info.value) + caplog.text


def test_401_without_a_key_and_the_message_we_give(gemini_emulator, caplog):
    import httpx

    caplog.set_level(logging.DEBUG)
    answer = httpx.post(f"{gemini_emulator.base_url}/v1/models/gemini-embedding-001:batchEmbedContents", json={})
    assert answer.status_code == 401 and answer.json()["error"]["status"] == "UNAUTHENTICATED"
    gemini_emulator.configure(script=["401"])  # the same answer to the SDK, which always sends a key
    e = embedder(ProviderSettings.from_env({}, gemini_api_key=TEST_API_KEY, gemini_base_url=gemini_emulator.base_url))
    with pytest.raises(ProviderError, match=r"refused the API key \(401 UNAUTHENTICATED") as info:
        e.embed_documents(["x"])
    assert gemini_emulator.stats.client_errors == 2
    assert TEST_API_KEY not in _everything_about(info.value) + caplog.text


def test_connection_refused_is_unreachable_at_once():
    settings = ProviderSettings.from_env({}, gemini_api_key=TEST_API_KEY, gemini_base_url="http://127.0.0.1:9")
    e = embedder(settings)
    with pytest.raises(ProviderUnreachable, match="cannot connect to the Gemini API at http://127.0.0.1:9"):
        e.embed_documents(["x"])
    stats = e.limiter.snapshot()  # one attempt, no retry, no backoff
    assert (stats.requests, stats.retries, stats.transient_errors, stats.permanent_errors) == (1, 0, 0, 1)


# -- the key never shows ------------------------------------------------------------------------------

def test_the_api_key_never_appears_in_reprs_errors_or_logs(provider_settings, gemini_emulator, caplog):
    caplog.set_level(logging.DEBUG)
    e = make_embedder(ModelRef.parse(G1), 768, provider_settings, RateLimiter(base_delay=0.01, max_attempts=2))
    seen = [repr(provider_settings), str(provider_settings), repr(e), str(provider_settings.public_dict())]
    e.embed_documents(["a fine request"])
    for fault in (["503", "503"], ["429"], ["nan"]):
        gemini_emulator.configure(script=fault, retry_delay=0.05)
        with pytest.raises(ReembedError) as info:
            if fault == ["429"]:  # a 429 alone is retried: give up at the first one
                make_embedder(ModelRef.parse(G1), 768, provider_settings,
                              RateLimiter(max_rate_limited=1)).embed_documents(["x"])
            else:
                e.embed_documents(["x"])
        seen.append(_everything_about(info.value))
    assert TEST_API_KEY not in "\n".join(seen) + caplog.text
    assert "test-key" not in "\n".join(seen)


def test_settings_from_env_precedence(monkeypatch):
    env = {"GOOGLE_API_KEY": "google-key-1", "GEMINI_API_KEY": "gemini-key-2",
           "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:1", "REEMBED_GEMINI_BASE_URL": "http://127.0.0.1:2",
           "OLLAMA_HOST": "localhost", "REEMBED_RPM": "100"}
    s = ProviderSettings.from_env(env)
    assert s.gemini_api_key is not None and s.gemini_api_key.reveal() == "google-key-1"
    assert s.gemini_base_url == "http://127.0.0.1:2" and s.rpm == 100
    assert s.ollama_base_url == "http://localhost:11434"
    s = ProviderSettings.from_env({"GEMINI_API_KEY": "gemini-key-2", "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:1"},
                                  rpm=None, gemini_base_url=None)
    assert s.gemini_api_key.reveal() == "gemini-key-2" and s.gemini_base_url == "http://127.0.0.1:1"
    s = ProviderSettings.from_env({"GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:1"}, gemini_base_url="http://127.0.0.1:3")
    assert s.gemini_base_url == "http://127.0.0.1:3" and s.gemini_api_key is None and s.timeout == 60.0
    assert "google-key-1" not in repr(ProviderSettings.from_env(env))
    with pytest.raises(BadInput):
        ProviderSettings.from_env({"REEMBED_RPM": "lots"})
    with pytest.raises(BadInput):
        ProviderSettings.from_env({}, gemini_base_url="ftp://nope")


def test_make_embedder_shares_one_limiter_per_model_and_endpoint(provider_settings, gemini_emulator):
    a = make_embedder(ModelRef.parse(G1), 768, provider_settings)
    b = make_embedder(ModelRef.parse(G1), 768, provider_settings)
    c = make_embedder(ModelRef.parse(G2), 768, provider_settings)
    assert a.limiter is b.limiter and a.limiter is not c.limiter  # type: ignore[attr-defined]


# -- helpers ------------------------------------------------------------------------------------------

def _everything_about(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "args", ""))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


