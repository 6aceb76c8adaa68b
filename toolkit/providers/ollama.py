"""Ollama embeddings through the `ollama` client (`client.embed`, i.e. POST /api/embed).

* an explicit timeout: the client's default is none, and a stuck model load would hang a
  backfill forever;
* document / query prefixes (nomic-embed-text expects `search_document: ` and
  `search_query: `), from models.py unless the settings override them; Ollama models take
  no title, so titles are accepted and ignored;
* `dimensions` is only sent to ask a Matryoshka model for fewer than its native dims;
* texts are cut to the model's input limit here (prefix included) and counted, rather
  than left to the server's silent truncation.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import ollama
import pydantic

from toolkit.config import scrub
from toolkit.errors import BadInput, MalformedResponse, ProviderError, ProviderUnreachable
from toolkit.providers.base import EMPTY_TEXT, EmbedBatch, ModelRef, validated_vectors
from toolkit.providers.models import model_info
from toolkit.providers.settings import ProviderSettings
from toolkit.providers.transport import TIMEOUTS, TRANSPORT_ERRORS
from toolkit.providers.tokens import estimate_tokens, fit_text
from toolkit.ratelimit import Failure, FailureKind, RateLimiter, run_batches


class OllamaEmbedder:
    def __init__(self, ref: ModelRef, dimensions: int, settings: ProviderSettings,
                 limiter: RateLimiter | None = None) -> None:
        if ref.provider != "ollama":
            raise BadInput(f"{ref} is not an Ollama model")
        info = model_info(ref)
        native = info.limits.native_dimensions
        low, high = info.limits.supported_dimensions
        if not low <= dimensions <= high or (native and dimensions > native):
            raise BadInput(f"{ref} supports {low} to {native or high} dimensions, not {dimensions}")
        self.ref = ref
        self.dimensions = dimensions
        self.limits = info.limits
        self.host = settings.ollama_base_url
        self.doc_prefix = info.doc_prefix if settings.doc_prefix is None else settings.doc_prefix
        self.query_prefix = info.query_prefix if settings.query_prefix is None else settings.query_prefix
        self._send_dimensions = dimensions if native and dimensions < native else None
        self._timeout = settings.timeout
        self._limiter = limiter or RateLimiter(settings.rpm, settings.tpm, rpd=settings.rpd,
                                               concurrency=settings.concurrency, max_attempts=settings.max_attempts)
        self._reached = False
        self._client = ollama.Client(host=self.host, timeout=settings.timeout)

    def __repr__(self) -> str:
        return f"OllamaEmbedder({self.ref}, dimensions={self.dimensions}, host={self.host!r})"

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    def embed_documents(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> EmbedBatch:
        return self._embed(texts, self.doc_prefix)

    def embed_queries(self, texts: Sequence[str]) -> EmbedBatch:
        return self._embed(texts, self.query_prefix)

    def ready(self) -> float:
        return 0.0  # built ready

    def close(self) -> None:
        self._client._client.close()  # the ollama Client exposes no close(); its httpx client does

    # ---------------------------------------------------------------------------

    def _embed(self, texts: Sequence[str], prefix: str) -> EmbedBatch:
        skipped: dict[int, str] = {}
        index: list[int] = []
        sent: list[str] = []
        truncated = 0
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                skipped[i] = EMPTY_TEXT
                continue
            body, cut = fit_text(text, self.limits.max_input_tokens, prefix)
            truncated += cut
            index.append(i)
            sent.append(body)
        vectors = np.empty((len(sent), self.dimensions), dtype=np.float32)
        retries = 0
        size = self._limiter.max_texts_per_request(self.limits.max_texts_per_request)
        send = lambda positions: self._request([sent[p] for p in positions])  # noqa: E731
        for positions, result, tries in run_batches([list(range(len(sent)))], size, send):
            vectors[positions] = result
            retries += tries
        return EmbedBatch(vectors=vectors, index=index, skipped=skipped, truncated=truncated, retries=retries)

    def _request(self, texts: list[str]) -> tuple[np.ndarray, int]:
        def call() -> ollama.EmbedResponse:
            response = self._client.embed(model=self.ref.model, input=texts, dimensions=self._send_dimensions)
            self._reached = True
            return response

        tokens = sum(estimate_tokens(t) for t in texts)
        response, retries = self._limiter.call(call, texts=len(texts), tokens=tokens, classify=self._classify)
        raw = None if response.embeddings is None else list(response.embeddings)
        return validated_vectors(raw, len(texts), self.dimensions, f"Ollama ({self.ref.model})"), retries

    def _classify(self, exc: BaseException) -> Failure | None:
        model = self.ref.model
        if isinstance(exc, ollama.ResponseError):
            self._reached = True
            code = exc.status_code
            message = scrub(str(exc.error)).strip()
            if code == 404:
                return Failure(FailureKind.PERMANENT, ProviderError(
                    f"model {model} is not available on {self.host}: run `ollama pull {model}`"))
            if code in (408, 429) or code >= 500:
                return Failure(FailureKind.TRANSIENT, ProviderUnreachable(f"Ollama at {self.host} answered {code}: {message}"))
            return Failure(FailureKind.PERMANENT, ProviderError(f"Ollama at {self.host} rejected the request ({code}): {message}"))
        if type(exc) is ConnectionError:
            # The ollama client turns httpx.ConnectError into a plain builtin ConnectionError.
            error = ProviderUnreachable(f"cannot connect to Ollama at {self.host}: is `ollama serve` running? "
                                        "(the host comes from OLLAMA_HOST)")
            return Failure(FailureKind.TRANSIENT if self._reached else FailureKind.PERMANENT, error)
        if isinstance(exc, TIMEOUTS):
            return Failure(FailureKind.TRANSIENT, ProviderUnreachable(
                f"Ollama at {self.host} did not answer within {self._timeout:g}s"))
        if isinstance(exc, TRANSPORT_ERRORS + (ConnectionError,)):
            return Failure(FailureKind.TRANSIENT, ProviderUnreachable(
                f"connection to Ollama at {self.host} failed: {type(exc).__name__}: {scrub(str(exc))}"))
        if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError)):
            return Failure(FailureKind.PERMANENT, MalformedResponse(
                f"Ollama ({model}) answered with a body that is not a valid embedding response"))
        return None
