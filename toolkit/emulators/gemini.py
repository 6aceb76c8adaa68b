"""An emulator of the Gemini API's embedding endpoints (generativelanguage.googleapis.com).

Speaks what google-genai sends: POST /{v1,v1beta}/models/{model}:batchEmbedContents and
:embedContent, camelCase JSON, the key in `x-goog-api-key` (or `?key=`). Mirrors the
real service's answers where our code depends on them: at most 100 requests per batch,
400 for an empty Part, 404 for unknown and retired models, 429 RESOURCE_EXHAUSTED with
google.rpc.RetryInfo (a per-day quota id in QuotaFailure once the daily quota is used up),
vectors below 3072 dims not unit length, and gemini-embedding-2 folding the parts of one
Content into one vector. The Batch and Files APIs live in gemini_batches.py.

Answers are pre-serialised: the JSON of each embedding is cached by (model, text, task type,
title, dimensions) up to `answer_cache_bytes`, so a benchmark that embeds the same table
again (or warms the cache first) measures reembed, not the emulator's float formatting.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np

from toolkit.emulators.gemini_batches import BatchService
from toolkit.emulators.server import App, Faults, Request, Response
from toolkit.emulators.vectors import TASK_TYPES, gemini_values
from toolkit.providers.tokens import estimate_tokens

MODELS = {"gemini-embedding-001": 3072, "gemini-embedding-2": 3072}
RETIRED = ("text-embedding-004", "embedding-001", "embedding-gecko-001")
MAX_BATCH = 100
ANSWER_CACHE_BYTES = 64 * 1024 * 1024
DAILY_RETRY_SECONDS = 20.0  # the real API's RetryInfo for a per-day quota is seconds, not the day's end
_ROUTE = re.compile(r"^/(v1|v1beta)/models/([^/:]+):(batchEmbedContents|embedContent)$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_MESSAGES = {500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
             503: "The model is overloaded. Please try again later."}


class BadRequest(Exception):
    pass


def error(code: int, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}
    if details:
        body["details"] = details
    return Response(code, {"error": body})


class GeminiApp(App):
    def __init__(self, faults: Faults, api_keys: Iterable[str] | None = None,
                 forbidden_keys: Iterable[str] = (), models: dict[str, int] | None = None,
                 answer_cache_bytes: int = ANSWER_CACHE_BYTES) -> None:
        super().__init__(faults)
        self.api_keys = set(api_keys) if api_keys is not None else None  # None: any key works
        self.forbidden_keys = set(forbidden_keys)
        self.models = dict(models or MODELS)
        self.batches = BatchService(self)
        self.texts_today = 0
        self._answers: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._answer_bytes = 0
        self._answer_budget = answer_cache_bytes
        self._answers_lock = threading.Lock()

    def reset_state(self) -> None:
        self.texts_today = 0
        self.batches.reset()

    def takes_raw_body(self, path: str) -> bool:
        return self.batches.takes_raw_body(path)

    def embedding_json(self, model: str, text: str, task: str | None, title: str | None, dims: int | None) -> bytes:
        """`{"values": [...]}` of one embedding, serialised once (nine decimals, like the real API's short
        floats: half the JSON of float32 reprs, far below float32 resolution once normalized)."""
        native = self.models[model]
        key = (model, text, task, title, dims or native)
        with self._answers_lock:
            cached = self._answers.get(key)
            if cached is not None:
                self._answers.move_to_end(key)
                return cached
        # Nine decimals written as integers with an exponent ("12345678e-9" is 0.012345678 in JSON): the
        # same numbers as the floats rounded to nine places, formatted by int's repr in about half the time.
        nanos = np.rint(gemini_values(model, text, task_type=task, title=title, dims=dims or native,
                                      native=native) * 1e9).astype(np.int64).tolist()
        answer = b'{"values": [' + "e-9, ".join(map(str, nanos)).encode() + b"e-9]}"
        with self._answers_lock:
            if key not in self._answers and len(answer) <= self._answer_budget:
                self._answers[key] = answer
                self._answer_bytes += len(answer)
                while self._answer_bytes > self._answer_budget:
                    _, dropped = self._answers.popitem(last=False)
                    self._answer_bytes -= len(dropped)
        return answer

    def warm(self, model: str, items: Iterable[tuple[str, str | None, str | None, int | None]]) -> int:
        """Serialise these answers ahead (text, task type, title, dims); returns how many are cached."""
        for text, task, title, dims in items:
            self.embedding_json(model, text, task, title or None, dims)
        with self._answers_lock:
            return len(self._answers)

    def bad_json(self) -> Response:
        self.count("client_errors")
        return error(400, "Invalid JSON payload received.")

    def handle(self, request: Request) -> Response:
        batch_handler = self.batches.route(request)
        if batch_handler is not None:
            # An upload session's URL is its own credential (the real one carries upload_id too).
            denied = None if "upload_id" in request.query else self._check_key(request)
            if denied:
                self.count("client_errors")
                return denied
            return batch_handler()
        match = _ROUTE.match(request.path)
        if request.method != "POST" or not match:
            self.count("client_errors")
            return error(404, f"Method not found: {request.method} {request.path}")
        version, model, method = match.groups()
        denied = self._check_key(request)
        if denied:
            self.count("client_errors")
            return denied
        if model not in self.models:
            self.count("client_errors")
            return error(404, f"models/{model} is not found for API version {version}, or is not supported for "
                              f"{method}. Call ListModels to see the list of available models and their supported "
                              "methods.")
        self.count("embed_requests")
        try:
            items = self._parse(model, method, request.body)
        except BadRequest as exc:
            self.count("client_errors")
            return error(400, str(exc))

        texts = [text for text, _, _, _ in items]
        if not self._take_daily(len(texts)):
            self.count("rate_limited")
            self.count("daily_limited")
            return self._daily_error(model)
        wait = self.take_quota(len(texts), sum(estimate_tokens(t) for t in texts))
        if wait is not None:
            self._give_back_daily(len(texts))
            self.count("rate_limited")
            return self._quota_error(model, wait)

        fault = self.next_fault()
        if fault == "reset":
            self.count("resets")
            return Response(0, reset=True)
        if fault == "429":
            self.count("rate_limited")
            return self._quota_error(model, self.faults.retry_delay if self.faults.retry_delay is not None else 1.0)
        if fault and fault.isdigit():
            status = int(fault)
            self.count("server_errors" if status >= 500 else "client_errors")
            return error(status, _MESSAGES.get(status, "error"))

        answers = [self.embedding_json(model, text, task, title, dims) for text, task, title, dims in items]
        if fault:  # a malformed kind
            self.count("malformed")
            vectors = self.corrupt([json.loads(a)["values"] for a in answers], fault)
            answers = [json.dumps({"values": v}).encode() for v in vectors]
        self.count("ok")
        self.count("texts", len(texts))
        if method == "embedContent":
            return Response(200, b'{"embedding": ' + answers[0] + b"}")
        return Response(200, b'{"embeddings": [' + b", ".join(answers) + b"]}")

    # ---------------------------------------------------------------------------

    def _check_key(self, request: Request) -> Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return error(401, "Method doesn't allow unregistered callers (callers without established identity). "
                              "Please use API Key or other form of API consumer identity to call this API.")
        if key in self.forbidden_keys:
            return error(403, "Permission denied: Consumer has been suspended or the API is not enabled for this "
                              "project.")
        if self.api_keys is not None and key not in self.api_keys:
            return error(400, "API key not valid. Please pass a valid API key.", [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
        return None

    def _parse(self, model: str, method: str, body: Any) -> list[tuple[str, str | None, str | None, int | None]]:
        """(text, task type, title, output dims) per request, or BadRequest with the real API's wording."""
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON payload received. Expected an object.")
        self.bodies.append((f"models/{model}:{method}", body))
        if method == "embedContent":
            return [self.parse_request(model, body, "")]
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise BadRequest("* BatchEmbedContentsRequest.requests: contents is not specified")
        if len(requests) > MAX_BATCH:
            raise BadRequest(f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one batch")
        return [self.parse_request(model, r, f"requests[{i}].") for i, r in enumerate(requests)]

    def parse_request(self, model: str, request: Any, where: str) -> tuple[str, str | None, str | None, int | None]:
        if not isinstance(request, dict):
            raise BadRequest(f"Invalid value at '{where or 'request'}'")
        if where and request.get("model") not in (f"models/{model}", None):
            raise BadRequest(f"Model in the request ({request.get('model')}) does not match the model in the URL "
                             f"(models/{model}).")
        content = request.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise BadRequest(f"* BatchEmbedContentsRequest.{where}content.parts: contents.parts must not be empty.")
        texts = []
        for j, part in enumerate(parts):
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str) or text == "":
                raise BadRequest(f"* BatchEmbedContentsRequest.{where}content.parts[{j}].data: required oneof field "
                                 "'data' must have one initialized field")
            texts.append(text)
        # gemini-embedding-2 embeds one Content (all its parts) into one vector; a plain
        # list of strings sent through the SDK arrives here as one Content with many parts.
        text = " ".join(texts)

        task = request.get("taskType")
        if isinstance(task, int) and not isinstance(task, bool):
            if not 0 <= task < len(TASK_TYPES):
                raise BadRequest(f"Invalid value at '{where}task_type' (type.googleapis.com/google.ai.generativelanguage"
                                 f".v1.TaskType), {task}")
            task = TASK_TYPES[task]
        elif task is not None and task not in TASK_TYPES:
            raise BadRequest(f"Invalid value at '{where}task_type' (type.googleapis.com/google.ai.generativelanguage"
                             f".v1.TaskType), \"{task}\"")
        title = request.get("title")
        if title is not None and not isinstance(title, str):
            raise BadRequest(f"Invalid value at '{where}title'")
        if title and task != "RETRIEVAL_DOCUMENT":
            raise BadRequest("Setting title is only supported for the RETRIEVAL_DOCUMENT task type.")
        dims = request.get("outputDimensionality")
        if dims is not None:
            if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= self.models[model]:
                raise BadRequest(f"* BatchEmbedContentsRequest.{where}output_dimensionality: must be between 1 and "
                                 f"{self.models[model]}")
        return text, task, title or None, dims

    def _take_daily(self, texts: int) -> bool:
        with self.lock:
            cap = self.faults.quota_texts_per_day
            if cap is not None and self.texts_today + texts > cap:
                return False
            self.texts_today += texts
            return True

    def _give_back_daily(self, texts: int) -> None:
        with self.lock:
            self.texts_today -= texts

    def _daily_error(self, model: str) -> Response:
        """What the real API answers once a per-day quota is used up: the QuotaFailure names a per-day
        quota id; its RetryInfo still says seconds, so only the id tells a client not to retry."""
        limit = self.faults.quota_texts_per_day
        delay = self.faults.retry_delay if self.faults.retry_delay is not None else DAILY_RETRY_SECONDS
        metric = "generativelanguage.googleapis.com/embed_content_free_tier_requests"
        return error(429, "You exceeded your current quota, please check your plan and billing details. "
                          f"* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\n"
                          f"Please retry in {delay:.6f}s.", [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": metric, "quotaId": "EmbedContentRequestsPerDayPerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": model}, "quotaValue": str(limit)}]},
            {"@type": "type.googleapis.com/google.rpc.Help",
             "links": [{"description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay:.0f}s"},
        ])

    def _quota_error(self, model: str, wait: float) -> Response:
        limit = self.faults.quota_texts_per_minute
        return error(429, "You exceeded your current quota, please check your plan and billing details. "
                          f"* Quota exceeded for metric: generativelanguage.googleapis.com/embed_content_free_tier_"
                          f"requests, limit: {limit}, model: {model}\nPlease retry in {wait:.6f}s.", [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/embed_content_free_tier_requests",
                "quotaId": "EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": model}, "quotaValue": str(limit)}]},
            {"@type": "type.googleapis.com/google.rpc.Help",
             "links": [{"description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{math.ceil(max(wait, 0.0) * 1000) / 1000:.3f}s"},
        ])
