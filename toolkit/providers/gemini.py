"""Gemini embeddings through google-genai (`client.models.embed_content`, Developer API).

What we send, and why:
* documents: task_type RETRIEVAL_DOCUMENT with the row's title; queries: RETRIEVAL_QUERY
  (asymmetric retrieval). output_dimensionality is always sent, so the answer's size is
  never the model's default by accident. Vectors are normalized here: below 3072 dims
  gemini-embedding-001 does not return unit vectors.
* one request per text. The SDK folds a plain list of strings into ONE Content with many
  parts for multimodal models (gemini-embedding-2), which returns one aggregated vector for
  the whole list; so for them we write the body's requests ourselves (below, as for titles).
  Other models get plain strings, which the SDK turns into one request each at half the CPU
  of Content objects (it validates Content objects passed in all over again: ~40 ms per 100).
* at most 100 texts per request (the batchEmbedContents limit), fewer under a small --rpm.
* the SDK's own retry stays off (its default); RateLimiter does retries: it honours
  RetryInfo.retryDelay, which the SDK's retry ignores.

Titles: EmbedContentConfig has ONE title, copied by the SDK into every request of the
batch. The REST body itself carries a title per request, and HttpOptions.extra_body (a
public, per-call SDK option) replaces the body's `requests` list: so a batch of texts
with different titles goes out as one HTTP request whose requests we build ourselves.
Measured on the emulator (1,000 documents, every title distinct, 20 ms added latency per
call, real SDK): one call per distinct title made 1,000 calls in 24.8 s; per-text titles
in one batch made 10 calls in 1.8 s (1.7 s with no titles at all), same vectors. Quota
cost is equal on the free tier (it counts texts), so we batch. `title_mode="group"` keeps
the plain-SDK path (one call per distinct title per chunk) as a fallback should a future
SDK stop honouring extra_body; the title tests would catch that, since vectors would
stop depending on the title.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Literal, Sequence

import numpy as np
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from toolkit.config import scrub
from toolkit.errors import BadInput, MalformedResponse, ProviderError, ProviderUnreachable
from toolkit.providers.base import EMPTY_TEXT, EmbedBatch, ModelRef, validated_vectors
from toolkit.providers.models import RETIRED, model_info
from toolkit.providers.settings import ProviderSettings, Secret
from toolkit.providers.transport import CONNECT_ERRORS, TIMEOUTS, TRANSPORT_ERRORS, UNUSABLE_URL
from toolkit.providers.tokens import estimate_tokens, fit_text
from toolkit.ratelimit import Failure, FailureKind, RateLimiter, run_batches

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://generativelanguage.googleapis.com"
RETRIEVAL_DOCUMENT = "RETRIEVAL_DOCUMENT"
RETRIEVAL_QUERY = "RETRIEVAL_QUERY"


class GeminiEmbedder:
    def __init__(self, ref: ModelRef, dimensions: int, settings: ProviderSettings,
                 limiter: RateLimiter | None = None, *, title_mode: Literal["batch", "group"] = "batch") -> None:
        if ref.provider != "gemini":
            raise BadInput(f"{ref} is not a Gemini model")
        info = model_info(ref)  # BadInput for retired or unknown models
        low, high = info.limits.supported_dimensions
        if not low <= dimensions <= high:
            raise BadInput(f"{ref} supports {low} to {high} dimensions, not {dimensions}")
        if not settings.gemini_api_key:
            raise BadInput("no Gemini API key: set GOOGLE_API_KEY (or GEMINI_API_KEY)")
        self.ref = ref
        self.dimensions = dimensions
        self.limits = info.limits
        self.title_mode = title_mode
        self.endpoint = settings.gemini_base_url or DEFAULT_ENDPOINT
        self._timeout = settings.timeout
        self._limiter = limiter or RateLimiter(settings.rpm, settings.tpm, rpd=settings.rpd,
                                               concurrency=settings.concurrency, max_attempts=settings.max_attempts)
        self._reached = False  # a connection refused before any answer is a setup error, not a blip
        self._client = _client(settings.gemini_api_key, settings.gemini_base_url, int(settings.timeout * 1000))
        self._multimodal = _multimodal(ref.model)

    def __repr__(self) -> str:
        return f"GeminiEmbedder({self.ref}, dimensions={self.dimensions}, endpoint={self.endpoint!r})"

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    def embed_documents(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> EmbedBatch:
        if titles is not None and len(titles) != len(texts):
            raise BadInput(f"{len(titles)} titles for {len(texts)} texts")
        return self._embed(texts, RETRIEVAL_DOCUMENT, titles)

    def embed_queries(self, texts: Sequence[str]) -> EmbedBatch:
        return self._embed(texts, RETRIEVAL_QUERY, None)

    def ready(self) -> float:
        return 0.0  # built ready

    def close(self) -> None:
        """Nothing to release: the SDK client is shared by every embedder of this process."""

    # ---------------------------------------------------------------------------

    def _embed(self, texts: Sequence[str], task_type: str, titles: Sequence[str | None] | None) -> EmbedBatch:
        skipped: dict[int, str] = {}
        index: list[int] = []
        sent: list[str] = []
        sent_titles: list[str | None] = []
        truncated = 0
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                skipped[i] = EMPTY_TEXT  # the API answers 400 for an empty Part: never send one
                continue
            body, cut = fit_text(text, self.limits.max_input_tokens)
            truncated += cut
            title = titles[i] if titles is not None else None
            index.append(i)
            sent.append(body)
            sent_titles.append(title if title and title.strip() else None)

        vectors = np.empty((len(sent), self.dimensions), dtype=np.float32)
        retries = 0
        size = self._limiter.max_texts_per_request(self.limits.max_texts_per_request)
        send = lambda positions: self._request([sent[p] for p in positions],  # noqa: E731
                                               [sent_titles[p] for p in positions], task_type)
        for positions, result, tries in run_batches(self._groups(sent_titles), size, send):
            vectors[positions] = result
            retries += tries
        return EmbedBatch(vectors=vectors, index=index, skipped=skipped, truncated=truncated, retries=retries)

    def _groups(self, titles: list[str | None]) -> list[list[int]]:
        if self.title_mode == "batch":
            return [list(range(len(titles)))]
        by_title: dict[str | None, list[int]] = {}
        for position, title in enumerate(titles):
            by_title.setdefault(title, []).append(position)
        return list(by_title.values())

    def _request(self, texts: list[str], titles: list[str | None], task_type: str) -> tuple[np.ndarray, int]:
        # Plain strings cost the SDK half the CPU of Content objects, which it validates all over
        # again (~40 ms per 100 texts). A multimodal model would fold a plain list into ONE Content;
        # writing the requests ourselves (as for several titles) gives it one request per text.
        own_requests = len(set(titles)) > 1 or (self._multimodal and self.title_mode == "batch")
        contents: list[Any] = texts if own_requests or not self._multimodal else [
            types.Content(role="user", parts=[types.Part(text=t)]) for t in texts]
        if not own_requests:
            config = types.EmbedContentConfig(task_type=task_type, title=titles[0] if titles else None,
                                              output_dimensionality=self.dimensions)
        else:
            # Different titles in one batch: we write the body's requests list ourselves
            # (the SDK would copy a single title into every request). See module docstring.
            requests = [self._request_body(text, title, task_type) for text, title in zip(texts, titles)]
            config = types.EmbedContentConfig(task_type=task_type, output_dimensionality=self.dimensions,
                                              http_options=types.HttpOptions(extra_body={"requests": requests}))
        tokens = sum(estimate_tokens(t) + estimate_tokens(title or "") for t, title in zip(texts, titles))

        def call() -> types.EmbedContentResponse:
            response = self._client.models.embed_content(model=self.ref.model, contents=contents, config=config)
            self._reached = True
            return response

        response, retries = self._limiter.call(call, texts=len(texts), tokens=tokens, classify=self._classify)
        raw = None if response.embeddings is None else [e.values for e in response.embeddings]
        return validated_vectors(raw, len(texts), self.dimensions, f"Gemini ({self.ref.model})"), retries

    def _request_body(self, text: str, title: str | None, task_type: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": f"models/{self.ref.model}", "content": {"role": "user", "parts": [{"text": text}]},
                                "taskType": task_type, "outputDimensionality": self.dimensions}
        if title:
            body["title"] = title
        return body

    def _classify(self, exc: BaseException) -> Failure | None:
        """Map what google-genai / httpx raised to a retry decision and a clear error."""
        model = self.ref.model
        if isinstance(exc, genai_errors.APIError):
            self._reached = True
            code = exc.code or 0
            status = exc.status or ""
            message = scrub(str(exc.message or "")).strip()
            where = f"Gemini ({model}) answered {code} {status}".rstrip()
            if code == 429:
                daily = per_day_quota(exc)
                if daily:
                    # Its RetryInfo still says seconds: only the quota id tells that waiting is pointless.
                    return Failure(FailureKind.DAILY_QUOTA, ProviderError(
                        f"Gemini's daily quota for {model} is used up ({daily}):"))
                return Failure(FailureKind.RATE_LIMITED, ProviderError(f"{where}: {message}"), retry_delay(exc))
            if code == 408 or code >= 500:
                return Failure(FailureKind.TRANSIENT, ProviderUnreachable(f"{where}: {message}"))
            if code == 404:
                hint = RETIRED.get(str(self.ref), "check the model name")
                return Failure(FailureKind.PERMANENT, ProviderError(
                    f"model {model} is not available on the Gemini API at {self.endpoint} (404 {status}: {message}); "
                    f"{hint}"))
            if code in (401, 403) or _is_key_error(exc):
                return Failure(FailureKind.PERMANENT, ProviderError(
                    f"the Gemini API at {self.endpoint} refused the API key ({code} {status}: {message}); "
                    "check GOOGLE_API_KEY / GEMINI_API_KEY"))
            return Failure(FailureKind.PERMANENT, ProviderError(f"Gemini rejected the request: {code} {status}: {message}"))
        if isinstance(exc, TIMEOUTS):
            return Failure(FailureKind.TRANSIENT, ProviderUnreachable(
                f"Gemini API at {self.endpoint} did not answer within {self._timeout:g}s"))
        if isinstance(exc, CONNECT_ERRORS) and not self._reached:
            return Failure(FailureKind.PERMANENT, ProviderUnreachable(
                f"cannot connect to the Gemini API at {self.endpoint}: {scrub(str(exc))}"))
        if isinstance(exc, UNUSABLE_URL):
            return Failure(FailureKind.PERMANENT, BadInput(f"Gemini base URL {self.endpoint!r} is not usable: {exc}"))
        if isinstance(exc, TRANSPORT_ERRORS):
            return Failure(FailureKind.TRANSIENT, ProviderUnreachable(
                f"connection to the Gemini API at {self.endpoint} failed: {type(exc).__name__}: {scrub(str(exc))}"))
        if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError)):
            return Failure(FailureKind.PERMANENT, MalformedResponse(
                f"Gemini ({model}) answered with a body that is not a valid embedding response"))
        return None


_clients: dict[tuple[Secret, str | None, int], genai.Client] = {}
_clients_lock = threading.Lock()


def _client(key: Secret, base_url: str | None, timeout_ms: int) -> genai.Client:
    """One SDK client per key, endpoint and timeout, for the whole process.

    Building a genai.Client costs 0.2-0.4 s (it sets up sync and async HTTP clients with
    their TLS contexts); verify, preflight and the backfill threads all make embedders,
    so they share clients. httpx clients are safe to use from several threads.
    """
    with _clients_lock:
        client = _clients.get((key, base_url, timeout_ms))
        if client is None:
            client = _clients[(key, base_url, timeout_ms)] = genai.Client(
                vertexai=False,  # never let GOOGLE_GENAI_USE_VERTEXAI switch us to another API
                api_key=key.reveal(),
                http_options=types.HttpOptions(
                    base_url=base_url,  # None: the SDK default
                    timeout=timeout_ms,  # HttpOptions.timeout is in milliseconds
                ),
            )
        return client


def _error_details(exc: genai_errors.APIError) -> list[Any]:
    details: Any = exc.details
    if isinstance(details, list) and len(details) == 1 and isinstance(details[0], dict) and "error" in details[0]:
        details = details[0]  # some transports wrap the error object in a list
    if isinstance(details, dict):
        details = details.get("error", details).get("details", [])
    return details if isinstance(details, list) else []


def per_day_quota(exc: genai_errors.APIError) -> str | None:
    """The quota id (with its limit) of a 429 whose google.rpc.QuotaFailure names a per-day quota
    (`...RequestsPerDayPerProjectPerModel-FreeTier`), else None."""
    for item in _error_details(exc):
        if not (isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.QuotaFailure")):
            continue
        for violation in item.get("violations") or []:
            if not isinstance(violation, dict):
                continue
            quota_id = str(violation.get("quotaId") or "")
            if "perday" in quota_id.lower():
                limit = violation.get("quotaValue")
                return f"{quota_id}, limit {limit}" if limit else quota_id
    return None


def retry_delay(exc: genai_errors.APIError) -> float | None:
    """Seconds from google.rpc.RetryInfo.retryDelay in the error details, else Retry-After."""
    for item in _error_details(exc):
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            seconds = parse_duration(item.get("retryDelay"))
            if seconds is not None:
                return seconds
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        value = headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None
    return None


def parse_duration(value: Any) -> float | None:
    """A protobuf Duration as JSON ("37s", "0.250s") or as {"seconds": .., "nanos": ..}."""
    try:
        if isinstance(value, str) and value.endswith("s"):
            return max(0.0, float(value[:-1]))
        if isinstance(value, dict):
            return max(0.0, float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9)
    except (TypeError, ValueError):
        return None
    return None


def _multimodal(model: str) -> bool:
    """gemini-embedding-2 and later: the SDK folds a plain list of strings into ONE Content for them
    (google-genai's t_is_multimodal_embedding_model, which older versions lack)."""
    return "gemini" in model and not model.startswith(("gemini-embedding-001", "gemini-embedding-exp"))


def _is_key_error(exc: genai_errors.APIError) -> bool:
    """A bad key is a 400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID on the real API."""
    text = json.dumps(exc.details, default=str) if exc.details is not None else ""
    return "API_KEY_INVALID" in text or "API key not valid" in (exc.message or "")
