"""An emulator of Ollama's HTTP API, the parts the `ollama` client uses for embeddings.

POST /api/embed (a string or a list; L2-normalized vectors in input order; `dimensions`
truncates and renormalizes), the legacy POST /api/embeddings, GET /api/tags,
GET /api/version and GET / ("Ollama is running"). An unknown model is a 404 with Ollama's
own wording. Overload (quota or injected 503) answers like a full Ollama queue.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import numpy as np

from toolkit.emulators.server import App, Faults, Request, Response
from toolkit.emulators.vectors import ollama_values
from toolkit.providers.tokens import estimate_tokens

NATIVE_DIMS = {"nomic-embed-text": 768, "mxbai-embed-large": 1024, "all-minilm": 384, "bge-m3": 1024}
VERSION = "0.12.6"


def base_name(name: str) -> str:
    return name[: -len(":latest")] if name.endswith(":latest") else name


class OllamaApp(App):
    def __init__(self, faults: Faults, models: Iterable[str] | Mapping[str, int] = ("nomic-embed-text",)) -> None:
        super().__init__(faults)
        if isinstance(models, Mapping):
            self.models = {base_name(m): int(d) for m, d in models.items()}
        else:
            self.models = {base_name(m): NATIVE_DIMS.get(base_name(m), 768) for m in models}

    def bad_json(self) -> Response:
        self.count("client_errors")
        return Response(400, {"error": "invalid character in request body"})

    def handle(self, request: Request) -> Response:
        route = (request.method, request.path.rstrip("/") or "/")
        if route in (("GET", "/"), ("HEAD", "/")):
            return Response(200, "Ollama is running")
        if route == ("GET", "/api/version"):
            return Response(200, {"version": VERSION})
        if route == ("GET", "/api/tags"):
            return Response(200, {"models": [
                {"name": f"{m}:latest", "model": f"{m}:latest", "size": 274302450, "digest": "0" * 64,
                 "details": {"family": "emulated", "embedding_length": d}} for m, d in self.models.items()]})
        if route == ("POST", "/api/embed"):
            return self._embed(request.body, legacy=False)
        if route == ("POST", "/api/embeddings"):
            return self._embed(request.body, legacy=True)
        self.count("client_errors")
        return Response(404, "404 page not found")

    def _embed(self, body: Any, legacy: bool) -> Response:
        if not isinstance(body, dict):
            self.count("client_errors")
            return Response(400, {"error": "invalid request"})
        self.bodies.append(("/api/embeddings" if legacy else "/api/embed", body))
        name = str(body.get("model") or "")
        if base_name(name) not in self.models:
            self.count("client_errors")
            return Response(404, {"error": f'model "{name}" not found, try pulling it first'})
        model = base_name(name)
        self.count("embed_requests")
        raw_input = body.get("prompt", "") if legacy else body.get("input", "")
        texts = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            self.count("client_errors")
            return Response(400, {"error": "invalid input type"})
        if not legacy and any(t == "" for t in texts):
            self.count("client_errors")
            return Response(400, {"error": "input cannot be empty"})
        native = self.models[model]
        dims = body.get("dimensions") or native
        if not isinstance(dims, int) or not 1 <= dims <= native:
            self.count("client_errors")
            return Response(400, {"error": f"dimensions must be between 1 and {native}"})

        if self.take_quota(len(texts), sum(estimate_tokens(t) for t in texts)) is not None:
            self.count("server_errors")
            return Response(503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
        fault = self.next_fault()
        if fault == "reset":
            self.count("resets")
            return Response(0, reset=True)
        if fault and fault.isdigit():
            status = int(fault)
            self.count("server_errors" if status >= 500 else "client_errors")
            return Response(status, {"error": "llama runner process has terminated: exit status 2"})

        started = time.perf_counter_ns()
        vectors = [np.round(ollama_values(model, t, dims=dims), 9).tolist() for t in texts]
        if fault:
            self.count("malformed")
            vectors = self.corrupt(vectors, fault)
        self.count("ok")
        self.count("texts", len(texts))
        if legacy:
            return Response(200, {"embedding": vectors[0] if vectors else []})
        elapsed = time.perf_counter_ns() - started
        return Response(200, {"model": name, "embeddings": vectors, "total_duration": elapsed,
                              "load_duration": 0, "prompt_eval_count": sum(estimate_tokens(t) for t in texts)})
