"""OllamaEmbedder through the real `ollama` client, over HTTP, against the Ollama emulator."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.emulators import EmulatorServer, expected_vector
from toolkit.errors import BadInput, MalformedResponse, ProviderError, ProviderUnreachable
from toolkit.providers import make_embedder
from toolkit.providers.base import ModelRef
from toolkit.providers.ollama import OllamaEmbedder
from toolkit.providers.settings import ProviderSettings
from toolkit.providers.tokens import estimate_tokens
from toolkit.ratelimit import RateLimiter

NOMIC = "ollama:nomic-embed-text"


def embedder(settings: ProviderSettings, model: str = NOMIC, dims: int = 768, **limiter: object) -> OllamaEmbedder:
    options = {"base_delay": 0.01, "max_attempts": 3, **limiter}
    return OllamaEmbedder(ModelRef.parse(model), dims, settings, RateLimiter(**options))  # type: ignore[arg-type]


def sent_inputs(server: EmulatorServer) -> list[list[str]]:
    return [body["input"] for path, body in server.app.bodies if path == "/api/embed"]


DOCS = ["sourdough bread needs a starter", "fixing a flat bicycle tire", "python list comprehensions"]


def test_documents_get_the_document_prefix_and_match_the_emulator(provider_settings, ollama_emulator):
    batch = embedder(provider_settings).embed_documents(DOCS)
    assert sent_inputs(ollama_emulator) == [[f"search_document: {d}" for d in DOCS]]
    assert batch.vectors.dtype == np.float32 and batch.vectors.shape == (3, 768) and batch.index == [0, 1, 2]
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-6)
    want = np.stack([expected_vector(NOMIC, d, task_type="RETRIEVAL_DOCUMENT", dimensions=768) for d in DOCS])
    np.testing.assert_allclose(batch.vectors, want, atol=1e-6)


def test_queries_get_the_query_prefix_and_land_near_their_document(provider_settings, ollama_emulator):
    e = embedder(provider_settings)
    docs = e.embed_documents(DOCS).vectors
    query = e.embed_queries(["bicycle tire"])
    assert sent_inputs(ollama_emulator)[-1] == ["search_query: bicycle tire"]
    np.testing.assert_allclose(query.vectors[0], expected_vector(NOMIC, "bicycle tire", task_type="RETRIEVAL_QUERY",
                                                                 dimensions=768), atol=1e-6)
    assert int(np.argmax(docs @ query.vectors[0])) == 1


def test_prefixes_can_be_overridden_and_models_without_prefixes_get_none(provider_env, ollama_emulator):
    settings = ProviderSettings.from_env(doc_prefix="passage: ", query_prefix="")
    e = embedder(settings)
    e.embed_documents(["a"])
    e.embed_queries(["b"])
    other = embedder(ProviderSettings.from_env(), "ollama:all-minilm", 384)
    other.embed_documents(["c"])
    assert sent_inputs(ollama_emulator) == [["passage: a"], ["b"], ["c"]]


def test_batches_follow_the_model_limit(provider_settings, ollama_emulator):
    texts = [f"row {i}" for i in range(600)]
    batch = embedder(provider_settings).embed_documents(texts)
    assert [len(x) for x in sent_inputs(ollama_emulator)] == [256, 256, 88]
    assert batch.vectors.shape == (600, 768)


def test_fewer_dimensions_than_native_are_requested_from_the_server(provider_settings, ollama_emulator):
    batch = embedder(provider_settings, dims=256).embed_documents(["hello"])
    assert ollama_emulator.app.bodies[-1][1]["dimensions"] == 256
    assert batch.vectors.shape == (1, 256)
    embedder(provider_settings).embed_documents(["hello"])
    assert "dimensions" not in ollama_emulator.app.bodies[-1][1]
    with pytest.raises(BadInput):
        embedder(provider_settings, dims=1024)


def test_the_client_has_an_explicit_timeout(provider_env, ollama_emulator):
    e = embedder(ProviderSettings.from_env(timeout=7.5))
    assert e._client._client.timeout.read == 7.5
    ollama_emulator.configure(latency=1.0)
    slow = embedder(ProviderSettings.from_env(timeout=0.2), max_attempts=1)
    with pytest.raises(ProviderUnreachable, match="did not answer within 0.2s"):
        slow.embed_documents(["x"])


def test_empty_text_is_skipped_and_long_text_cut(provider_settings, ollama_emulator):
    long_text = "token " * 2000  # ~3000 estimated tokens, limit 2048 with the prefix
    batch = embedder(provider_settings).embed_documents(["", long_text, "  "])
    assert batch.index == [1] and batch.skipped == {0: "empty text", 2: "empty text"} and batch.truncated == 1
    (sent,) = sent_inputs(ollama_emulator)[0]
    assert sent.startswith("search_document: ") and estimate_tokens(sent) <= 2048
    np.testing.assert_allclose(batch.vectors[0], expected_vector(NOMIC, long_text, task_type="RETRIEVAL_DOCUMENT",
                                                                 dimensions=768), atol=1e-6)


def test_a_missing_model_says_how_to_pull_it(provider_settings, ollama_emulator):
    e = embedder(provider_settings, "ollama:mxbai-embed-large", 1024)
    with pytest.raises(ProviderError, match=r"model mxbai-embed-large is not available on http://127\.0\.0\.1:\d+: "
                                            r"run `ollama pull mxbai-embed-large`"):
        e.embed_documents(["x"])
    assert ollama_emulator.stats.client_errors == 1  # asked once, not retried


def test_connection_refused_is_unreachable():
    settings = ProviderSettings.from_env({}, ollama_host="127.0.0.1:9")
    with pytest.raises(ProviderUnreachable, match=r"cannot connect to Ollama at http://127\.0\.0\.1:9"):
        embedder(settings).embed_documents(["x"])


@pytest.mark.parametrize("fault", ["500", "503", "reset"])
def test_server_errors_and_resets_are_retried(provider_settings, ollama_emulator, fault):
    ollama_emulator.configure(script=[fault])
    batch = embedder(provider_settings).embed_documents(["again"])
    assert batch.retries == 1 and batch.vectors.shape == (1, 768)


@pytest.mark.parametrize("kind", ["count", "dimension", "nan", "zero"])
def test_a_malformed_answer_raises_and_is_never_returned(provider_settings, ollama_emulator, kind):
    ollama_emulator.configure(script=[kind])
    result = None
    with pytest.raises(MalformedResponse):
        result = embedder(provider_settings).embed_documents(["one", "two"])
    assert result is None


def test_make_embedder_builds_an_ollama_embedder_from_the_environment(provider_env, ollama_emulator):
    e = make_embedder(ModelRef.parse(NOMIC), 768, ProviderSettings.from_env())
    assert isinstance(e, OllamaEmbedder) and e.host == ollama_emulator.base_url
    assert e.embed_queries(["hi"]).vectors.shape == (1, 768)
    e.close()
