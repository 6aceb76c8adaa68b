"""An emulator of the Gemini API's embedding endpoints (generativelanguage.googleapis.com).

Speaks what google-genai sends: POST /{v1,v1beta}/models/{model}:batchEmbedContents and
:embedContent, camelCase JSON, the key in `x-goog-api-key` (or `?key=`). Mirrors the
real service's answers where our code depends on them: at most 100 requests per batch,
400 for an empty Part, 404 for unknown and retired models, 429 RESOURCE_EXHAUSTED with
google.rpc.RetryInfo, vectors below 3072 dims not unit length, and gemini-embedding-2
folding the parts of one Content into one vector.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np

from toolkit.emulators.server import App, Faults, Request, Response
from toolkit.emulators.vectors import TASK_TYPES, gemini_values
from toolkit.providers.tokens import estimate_tokens

MODELS = {"gemini-embedding-001": 3072, "gemini-embedding-2": 3072}
RETIRED = ("text-embedding-004", "embedding-001", "embedding-gecko-001")
MAX_BATCH = 100
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
                 forbidden_keys: Iterable[str] = (), models: dict[str, int] | None = None) -> None:
        super().__init__(faults)
        self.api_keys = set(api_keys) if api_keys is not None else None  # None: any key works
        self.forbidden_keys = set(forbidden_keys)
        self.models = dict(models or MODELS)

    def bad_json(self) -> Response:
        self.count("client_errors")
        return error(400, "Invalid JSON payload received.")

    def handle(self, request: Request) -> Response:
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
        wait = self.take_quota(len(texts), sum(estimate_tokens(t) for t in texts))
        if wait is not None:
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

        native = self.models[model]
        # Nine decimals, like the real API's short floats: half the JSON of float32 reprs,
        # and far below float32 resolution once normalized.
        vectors = [
            np.round(gemini_values(model, text, task_type=task, title=title, dims=dims or native, native=native),
                     9).tolist()
            for text, task, title, dims in items
        ]
        if fault:  # a malformed kind
            self.count("malformed")
            vectors = self.corrupt(vectors, fault)
        self.count("ok")
        self.count("texts", len(texts))
        if method == "embedContent":
            return Response(200, {"embedding": {"values": vectors[0]}})
        return Response(200, {"embeddings": [{"values": v} for v in vectors]})

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
            return [self._parse_one(model, body, "")]
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise BadRequest("* BatchEmbedContentsRequest.requests: contents is not specified")
        if len(requests) > MAX_BATCH:
            raise BadRequest(f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one batch")
        return [self._parse_one(model, r, f"requests[{i}].") for i, r in enumerate(requests)]

    def _parse_one(self, model: str, request: Any, where: str) -> tuple[str, str | None, str | None, int | None]:
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
