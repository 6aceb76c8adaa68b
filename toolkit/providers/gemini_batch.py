"""Gemini's Batch API for embeddings, through google-genai: submit a job, find it again, poll it,
read its results. Half the list price, no per-minute quota, results within 24 hours.

What we send, and why (read from google-genai 1.34-3.x, which have `batches.create_embeddings`):
* the same EmbedContentRequest per text as the online path (task type, per-row title, output
  dimensionality), written by us: the SDK's own config carries one title for all, and 1.34
  puts the task type beside the request instead of in it. Inlined, they go through
  HttpOptions.extra_body (the public per-call option the online path uses for titles) while
  the body stays under the API's request size limit; beyond it, as an uploaded JSONL file
  (`{"key": position, "request": ...}` per line, the resumable upload of `files.upload`).
* a display name unique to the job recorded in our schema: a crash between "create" and
  recording the job's name is resolved by finding the job by that name, never by creating it
  again (each job is paid for).
* results: per request a vector (validated and normalized like the online path's) or the
  error the job answered for that request; inlined results come with the job, file results
  are downloaded (`files.download`) and parsed line by line, matched by key.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from google.genai import types

from toolkit.errors import BadInput, MalformedResponse
from toolkit.providers.base import ModelRef, validated_vectors
from toolkit.providers.gemini import RETRIEVAL_DOCUMENT, GeminiEmbedder
from toolkit.providers.models import BATCH_INLINE_LIMIT_BYTES
from toolkit.providers.settings import ProviderSettings
from toolkit.providers.tokens import fit_text
from toolkit.ratelimit import RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

# The SDK's JobState names, by what they mean for the rows.
PENDING, RUNNING, SUCCEEDED, FAILED, EXPIRED, CANCELLED = (
    "pending", "running", "succeeded", "failed", "expired", "cancelled")
_STATES = {"JOB_STATE_PENDING": PENDING, "JOB_STATE_QUEUED": PENDING, "JOB_STATE_RUNNING": RUNNING,
           "JOB_STATE_SUCCEEDED": SUCCEEDED, "JOB_STATE_PARTIALLY_SUCCEEDED": SUCCEEDED,
           "JOB_STATE_FAILED": FAILED, "JOB_STATE_EXPIRED": EXPIRED, "JOB_STATE_CANCELLED": CANCELLED,
           "JOB_STATE_CANCELLING": RUNNING, "JOB_STATE_UNSPECIFIED": PENDING}
# google-genai before 2.x passes some states through with the API's own names (BATCH_STATE_RUNNING,
# BATCH_STATE_EXPIRED): both spellings mean the same.
_STATES.update({name.replace("JOB_STATE_", "BATCH_STATE_"): state for name, state in list(_STATES.items())})
TERMINAL = (SUCCEEDED, FAILED, EXPIRED, CANCELLED)
_SEARCH_JOBS = 2000


@dataclass(frozen=True)
class Submitted:
    name: str  # batches/{id}
    input_file: str | None  # files/{id} when the requests went as a file


@dataclass(frozen=True)
class JobStatus:
    name: str
    state: str  # pending | running | succeeded | failed | expired | cancelled
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@dataclass
class JobResults:
    """Per request of the job, in submission order: a unit float32 vector, or None with its error."""

    vectors: list[np.ndarray | None]
    errors: dict[int, str]


class GeminiBatchClient:
    def __init__(self, ref: ModelRef, dimensions: int, settings: ProviderSettings, *,
                 inline_limit_bytes: int = BATCH_INLINE_LIMIT_BYTES) -> None:
        # Its own limiter: the few calls a job needs must not wait behind (or count against)
        # the online quota; it still retries 5xx and honours a 429's RetryInfo.
        limiter = RateLimiter(concurrency=1, max_attempts=settings.max_attempts)
        self._online = GeminiEmbedder(ref, dimensions, settings, limiter)  # key, client, error mapping
        self.ref, self.dimensions, self.limits = ref, dimensions, self._online.limits
        self._client = self._online._client
        self._limiter = limiter
        self.inline_limit_bytes = inline_limit_bytes
        if not hasattr(self._client.batches, "create_embeddings"):
            from google.genai import version

            raise BadInput("--batch-api needs google-genai 1.34 or later (batches.create_embeddings); installed "
                           f"{getattr(version, '__version__', 'an older version')}")

    # ----------------------------------------------------------------------------- submit

    def requests(self, texts: Sequence[str], titles: Sequence[str | None]) -> tuple[list[dict[str, Any]], int]:
        """The EmbedContentRequests of a job (texts cut to the model's input limit), and how many were cut."""
        out, cut = [], 0
        for text, title in zip(texts, titles):
            body, truncated = fit_text(text, self.limits.max_input_tokens)
            cut += truncated
            out.append(self._online._request_body(body, title if title and title.strip() else None,
                                                  RETRIEVAL_DOCUMENT))
        return out, cut

    def submit(self, display_name: str, requests: list[dict[str, Any]]) -> Submitted:
        """Create one job for these requests: inlined below the request size limit, else as a file."""
        inlined = [{"request": r, "metadata": {"key": str(i)}} for i, r in enumerate(requests)]
        size = len(json.dumps({"batch": {"displayName": display_name,
                                         "inputConfig": {"requests": {"requests": inlined}}}}))
        config = types.CreateEmbeddingsBatchJobConfig(display_name=display_name)
        if size <= self.inline_limit_bytes:
            src = types.EmbeddingsBatchJobSource(inlined_requests=types.EmbedContentBatch(
                contents=[r["content"]["parts"][0]["text"] for r in requests]))  # replaced by extra_body
            config = types.CreateEmbeddingsBatchJobConfig(display_name=display_name, http_options=types.HttpOptions(
                extra_body={"batch": {"inputConfig": {"requests": {"requests": inlined}}}}))
            input_file = None
        else:
            lines = b"".join(json.dumps({"key": str(i), "request": r}).encode() + b"\n"
                             for i, r in enumerate(requests))
            uploaded = self._call(lambda: self._client.files.upload(
                file=io.BytesIO(lines), config=types.UploadFileConfig(mime_type="application/jsonl",
                                                                      display_name=display_name)))
            input_file = uploaded.name
            src = types.EmbeddingsBatchJobSource(file_name=input_file)
        job = self._call(lambda: _quiet(lambda: self._client.batches.create_embeddings(
            model=self.ref.model, src=src, config=config)))
        if not job.name:
            raise MalformedResponse("Gemini created a batch job without a name")
        return Submitted(job.name, input_file)

    def find(self, display_name: str) -> str | None:
        """The name of the job created with this display name, if the provider has one (jobs are
        listed newest first: one created moments ago is on the first page; we look at a few)."""
        def search() -> str | None:
            pager = self._client.batches.list(config=types.ListBatchJobsConfig(page_size=100))
            for seen, job in enumerate(pager):
                if job.display_name == display_name and job.name:
                    return str(job.name)
                if seen >= _SEARCH_JOBS:
                    break
            return None

        return self._call(search)

    # ----------------------------------------------------------------------------- poll, read

    def status(self, name: str) -> tuple[JobStatus, Any]:
        job = self._call(lambda: self._client.batches.get(name=name))
        state = getattr(job.state, "name", None) or str(job.state or "JOB_STATE_UNSPECIFIED")
        error = getattr(job, "error", None)
        message = getattr(error, "message", None) if error is not None else None
        return JobStatus(name, _STATES.get(state, PENDING), message), job

    def results(self, job: Any, count: int) -> JobResults:
        """The job's answers for its `count` requests; a missing or unusable answer is an error of that
        request (its row goes back to pending), never a vector."""
        dest = getattr(job, "dest", None)
        answers: list[tuple[Any, Any]] = []  # (vector values or None, error message or None) per position
        if dest is not None and dest.inlined_embed_content_responses:
            for item in dest.inlined_embed_content_responses:
                values = item.response.embedding.values if item.response and item.response.embedding else None
                answers.append((values, _error_text(item.error)))
        elif dest is not None and dest.file_name:
            data = self._call(lambda: self._client.files.download(file=dest.file_name))
            answers = _file_answers(data, count)
        else:
            raise MalformedResponse(f"Gemini batch job {job.name} succeeded without results")
        if len(answers) != count:
            raise MalformedResponse(f"Gemini batch job {job.name} answered {len(answers)} of {count} requests")
        vectors: list[np.ndarray | None] = []
        errors: dict[int, str] = {}
        for position, (values, error) in enumerate(answers):
            if values is None:
                errors[position] = error or "no embedding in the answer"
                vectors.append(None)
                continue
            try:
                vectors.append(validated_vectors([values], 1, self.dimensions, f"Gemini batch ({self.ref.model})")[0])
            except MalformedResponse as exc:
                errors[position] = str(exc)
                vectors.append(None)
        return JobResults(vectors, errors)

    def delete_input(self, input_file: str | None) -> None:
        """Uploaded requests are kept 48 hours by the API; nothing needs them once the job ended."""
        if input_file:
            try:
                self._call(lambda: self._client.files.delete(name=input_file))
            except Exception as exc:  # noqa: BLE001 - housekeeping only
                log.info("could not delete %s: %s", input_file, exc)

    def _call(self, fn: Callable[[], T]) -> T:
        result, _ = self._limiter.call(fn, texts=0, tokens=0, classify=self._online._classify)
        return result


def _quiet(fn: Callable[[], T]) -> T:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_embeddings() warns that it is experimental
        return fn()


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    return f"{code or ''} {message or ''}".strip() or "error"


def _file_answers(data: bytes, count: int) -> list[tuple[Any, Any]]:
    """A results file: one JSON object per line, `key` (our position) with `response` or `error`."""
    answers: list[tuple[Any, Any] | None] = [None] * count
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise MalformedResponse(f"line {number + 1} of a Gemini batch results file is not JSON") from None
        key = entry.get("key")
        position = int(key) if isinstance(key, (str, int)) and str(key).isdigit() else number
        if not 0 <= position < count:
            raise MalformedResponse(f"a Gemini batch results file answers request {position} of {count}")
        response = entry.get("response") or {}
        values = (response.get("embedding") or {}).get("values") if isinstance(response, dict) else None
        error = entry.get("error")
        answers[position] = (values, None if error is None else
                             f"{error.get('code', '')} {error.get('message', '')}".strip() if isinstance(error, dict)
                             else str(error))
    return [a if a is not None else (None, "no answer for this request") for a in answers]
