"""The Gemini emulator's Batch API and Files API: what google-genai calls for embedding batch jobs.

Read from google-genai's own code (batches.py, files.py, _api_client.py, 1.34 to 3.x):

* `client.batches.create_embeddings(model=, src=, config=)` → POST
  `/{v}/models/{model}:asyncBatchEmbedContent` with `{"batch": {"displayName": ..., "inputConfig":
  {"requests": {"requests": [{"request": EmbedContentRequest, "metadata": {...}}]}}}}` (inlined,
  up to the 20 MB request size limit) or `{"inputConfig": {"file_name": "files/…"}}` (a JSONL file,
  one `{"key": ..., "request": EmbedContentRequest}` per line; the SDK writes `file_name`
  in snake case, the API takes either). The answer is a long-running operation whose
  `metadata` is the batch: name `batches/{id}`, `state` BATCH_STATE_PENDING / RUNNING /
  SUCCEEDED / FAILED / CANCELLED / EXPIRED, and once succeeded `output`:
  `{"inlinedResponses": {"inlinedResponses": [{"response": {"embedding": {"values": [...]}}} |
  {"error": {"code", "message"}}, ...]}}` in request order, or `{"responsesFile": "files/…"}`.
* `client.batches.get(name="batches/{id}")` → GET `/{v}/batches/{id}`; `list` → GET
  `/{v}/batches?pageSize=&pageToken=` (`operations`, `nextPageToken`; we leave the inlined
  responses out of list pages); `cancel` → POST `/{v}/batches/{id}:cancel`; `delete` → DELETE.
* `client.files.upload(file=, config=)`: the resumable protocol. POST `/upload/{v}/files` with
  `X-Goog-Upload-Protocol: resumable`, `X-Goog-Upload-Command: start` and the size and type
  in `X-Goog-Upload-Header-*`; the answer's `X-Goog-Upload-URL` header is where the bytes go,
  in chunks, `X-Goog-Upload-Command: upload` (the last `upload, finalize`) with
  `X-Goog-Upload-Offset`; the final answer has `X-Goog-Upload-Status: final` and `{"file": File}`.
* `client.files.download(file="files/{id}")` → GET `/{v}/files/{id}:download?alt=media`, raw bytes.

A job moves PENDING → RUNNING → its outcome after the configured delays (Faults.batch_*),
measured from its creation, so a job's state only depends on the clock, like the real one's.
Vectors are exactly the online endpoint's (same function, same 9-decimal JSON).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from toolkit.emulators.server import Request, Response

if TYPE_CHECKING:
    from toolkit.emulators.gemini import GeminiApp

Item = tuple[str, str | None, str | None, int | None]  # text, task type, title, dims
_V = r"(?:v1|v1beta|v1alpha)"
_CREATE = re.compile(rf"^/{_V}/models/([^/:]+):asyncBatchEmbedContent$")
_BATCH = re.compile(rf"^/{_V}/batches/([^/:]+)(:cancel)?$")
_LIST = re.compile(rf"^/{_V}/batches$")
_UPLOAD = re.compile(rf"^(?:/{_V})?/upload/(?:{_V}/)?files$")
_FILE = re.compile(rf"^(?:/download)?/{_V}/files/([^/:]+)(:download)?$")
_METADATA_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentBatch"
_OUTPUT_MARK = "\u0000reembed-output\u0000"
TERMINAL = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pick(obj: Any, *names: str) -> Any:
    """A field by its camelCase or snake_case name (proto JSON accepts both)."""
    if not isinstance(obj, dict):
        return None
    for name in names:
        if name in obj:
            return obj[name]
    return None


@dataclass
class StoredFile:
    name: str  # files/{id}
    display_name: str
    mime_type: str
    size: int
    created: float
    data: bytearray = field(default_factory=bytearray)
    source: str = "UPLOADED"
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        file_id = self.name.split("/", 1)[1]
        body = {"name": self.name, "displayName": self.display_name, "mimeType": self.mime_type,
                "sizeBytes": str(len(self.data)), "createTime": _rfc3339(self.created),
                "updateTime": _rfc3339(self.created), "expirationTime": _rfc3339(self.created + 48 * 3600),
                "sha256Hash": hashlib.sha256(bytes(self.data)).hexdigest(), "state": "ACTIVE",
                "source": self.source, "uri": f"https://generativelanguage.googleapis.com/v1beta/{self.name}"}
        if self.source == "GENERATED":
            body["downloadUri"] = f"https://generativelanguage.googleapis.com/download/v1beta/files/{file_id}:download?alt=media"
        return body


@dataclass
class Job:
    id: str
    model: str
    display_name: str
    created: float  # time.time()
    items: list[Item]
    keys: list[Any]  # per request: the line's key (file input) or the request's metadata (inlined)
    from_file: bool
    outcome: str  # succeeded | failed | expired
    failing: set[int]  # requests answered by an error inside a succeeded job
    pending_seconds: float
    running_seconds: float
    cancelled_at: float | None = None
    output: bytes | None = None  # serialised inlinedResponses (inlined input), once computed
    responses_file: str | None = None

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    def state(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "BATCH_STATE_CANCELLED"
        elapsed = now - self.created
        if elapsed < self.pending_seconds:
            return "BATCH_STATE_PENDING"
        if elapsed < self.pending_seconds + self.running_seconds:
            return "BATCH_STATE_RUNNING"
        return f"BATCH_STATE_{self.outcome.upper()}"

    def ended_at(self) -> float:
        if self.cancelled_at is not None:
            return self.cancelled_at
        return self.created + self.pending_seconds + self.running_seconds


class BatchService:
    """Batch jobs and files of one GeminiApp; every method is called from handler threads."""

    def __init__(self, app: "GeminiApp") -> None:
        self.app = app
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, StoredFile] = {}  # upload id → file being uploaded

    def reset(self) -> None:
        with self.lock:
            self.jobs.clear()
            self.files.clear()
            self.uploads.clear()

    @staticmethod
    def takes_raw_body(path: str) -> bool:
        return bool(_UPLOAD.match(path))

    def route(self, request: Request) -> Callable[[], Response] | None:
        """The handler for a Batch or Files API request, or None when the path is not one of theirs."""
        path, method = request.path, request.method
        if method == "POST" and (m := _CREATE.match(path)):
            return lambda: self.create(request, m.group(1))
        if method in ("GET", "POST", "DELETE") and (m := _BATCH.match(path)):
            job_id, cancel = m.groups()
            if cancel and method == "POST":
                return lambda: self.cancel(job_id)
            if method == "GET" and not cancel:
                return lambda: self.get(job_id)
            if method == "DELETE" and not cancel:
                return lambda: self.delete(job_id)
            return None
        if method == "GET" and _LIST.match(path):
            return lambda: self.list(request)
        if method == "POST" and _UPLOAD.match(path):
            return lambda: self.upload(request)
        if method == "GET" and (m := _FILE.match(path)):
            file_id, download = m.groups()
            return (lambda: self.download(file_id)) if download else (lambda: self.file(file_id))
        return None

    # -- jobs -----------------------------------------------------------------------------------------

    def create(self, request: Request, model: str) -> Response:
        from toolkit.emulators.gemini import BadRequest, error

        if model not in self.app.models:
            self.app.count("client_errors")
            return error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                              "asyncBatchEmbedContent.")
        faults = self.app.faults
        if len(request.raw) > faults.batch_inline_limit_bytes:
            self.app.count("client_errors")
            return error(400, f"Request payload size exceeds the limit: {faults.batch_inline_limit_bytes} bytes.")
        self.app.bodies.append((f"models/{model}:asyncBatchEmbedContent", request.body))
        batch = _pick(request.body, "batch")
        config = _pick(batch, "inputConfig", "input_config")
        if not isinstance(config, dict):
            self.app.count("client_errors")
            return error(400, "* EmbedContentBatch.input_config: input_config is required")
        try:
            keys, requests, from_file = self._inputs(config)
            items = [self.app.parse_request(model, r, f"requests[{i}].") for i, r in enumerate(requests)]
        except BadRequest as exc:
            self.app.count("client_errors")
            return error(400, str(exc))
        if not items:
            self.app.count("client_errors")
            return error(400, "* EmbedContentBatch.input_config.requests: requests must not be empty")
        with self.app.lock:
            outcome = faults.batch_script.pop(0) if faults.batch_script else "succeeded"
            failing: set[int] = set()
            if outcome.startswith("errors="):
                failing = {int(i) for i in outcome.split("=", 1)[1].split(",") if i.strip()}
                outcome = "succeeded"
            if faults.batch_request_error_rate:
                failing |= {i for i in range(len(items)) if self.app.rng.random() < faults.batch_request_error_rate}
        if outcome not in ("succeeded", "failed", "expired"):
            raise ValueError(f"unknown batch outcome {outcome!r}")
        job = Job(id=uuid.uuid4().hex[:16], model=model, display_name=str(_pick(batch, "displayName", "display_name")
                                                                           or ""),
                  created=time.time(), items=items, keys=keys, from_file=from_file, outcome=outcome, failing=failing,
                  pending_seconds=faults.batch_pending_seconds, running_seconds=faults.batch_running_seconds)
        with self.lock:
            self.jobs[job.id] = job
        self.app.count("batch_jobs")
        self.app.count("batch_requests", len(items))
        return self._operation(job)

    def _inputs(self, config: dict[str, Any]) -> tuple[list[Any], list[Any], bool]:
        from toolkit.emulators.gemini import BadRequest

        file_name = _pick(config, "fileName", "file_name")
        inlined = _pick(config, "requests")
        if (file_name is None) == (inlined is None):
            raise BadRequest("* EmbedContentBatch.input_config: exactly one of file_name and requests must be set")
        if inlined is not None:
            entries = _pick(inlined, "requests")
            if not isinstance(entries, list):
                raise BadRequest("* EmbedContentBatch.input_config.requests.requests: must be a list")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                    raise BadRequest("* InlinedEmbedContentRequest.request: request is required")
            return [e.get("metadata") for e in entries], [e["request"] for e in entries], False
        stored = self.files.get(str(file_name).removeprefix("files/"))
        if stored is None or not stored.complete:
            raise BadRequest(f"File {file_name} not found or not ready.")
        keys, requests = [], []
        for number, line in enumerate(bytes(stored.data).decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise BadRequest(f"Invalid JSON in line {number} of {file_name}.") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                raise BadRequest(f"Line {number} of {file_name} has no request.")
            keys.append(entry.get("key"))
            requests.append(entry["request"])
        return keys, requests, True

    def get(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        return self._operation(job) if job else self._not_found()

    def list(self, request: Request) -> Response:
        size = max(1, min(int(request.query.get("pageSize") or 50), 1000))
        start = int(request.query.get("pageToken") or 0)
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)
        page = jobs[start:start + size]
        body: dict[str, Any] = {"operations": [self._operation_json(j, with_output=False) for j in page]}
        if start + size < len(jobs):
            body["nextPageToken"] = str(start + size)
        return Response(200, body)

    def cancel(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return self._not_found()
        with self.lock:
            if job.state(time.time()) not in TERMINAL:
                job.cancelled_at = time.time()
        return Response(200, {})

    def delete(self, job_id: str) -> Response:
        with self.lock:
            job = self.jobs.pop(job_id, None)
        return Response(200, {}) if job else self._not_found()

    def _not_found(self) -> Response:
        from toolkit.emulators.gemini import error

        self.app.count("client_errors")
        return error(404, "Requested entity was not found.")

    def _operation(self, job: Job) -> Response:
        return Response(200, self._operation_bytes(job))

    def _operation_json(self, job: Job, *, with_output: bool) -> dict[str, Any]:
        now = time.time()
        state = job.state(now)
        done = state in TERMINAL
        n = len(job.items)
        failed = len(job.failing) if state == "BATCH_STATE_SUCCEEDED" else (n if done else 0)
        stats = {"requestCount": str(n), "successfulRequestCount": str(n - failed if done else 0),
                 "failedRequestCount": str(failed), "pendingRequestCount": str(0 if done else n)}
        metadata: dict[str, Any] = {
            "@type": _METADATA_TYPE, "name": job.name, "model": f"models/{job.model}", "displayName": job.display_name,
            "createTime": _rfc3339(job.created), "updateTime": _rfc3339(min(now, job.ended_at()) if done else now),
            "batchStats": stats, "state": state}
        operation: dict[str, Any] = {"name": job.name, "metadata": metadata}
        if done:
            metadata["endTime"] = _rfc3339(job.ended_at())
            operation["done"] = True
            if state == "BATCH_STATE_FAILED":
                operation["error"] = {"code": 13, "message": "Batch failed: an internal error has occurred."}
            elif state == "BATCH_STATE_EXPIRED":
                operation["error"] = {"code": 4, "message": "Batch expired: it did not finish within 48 hours."}
            elif state == "BATCH_STATE_SUCCEEDED" and with_output:
                if job.from_file:
                    metadata["output"] = {"responsesFile": self._responses_file(job)}
                else:
                    metadata["output"] = _OUTPUT_MARK
        return operation

    def _operation_bytes(self, job: Job) -> bytes:
        text = json.dumps(self._operation_json(job, with_output=True))
        mark = json.dumps(_OUTPUT_MARK)
        if mark not in text:
            return text.encode()
        head, tail = text.split(mark, 1)
        return b"".join((head.encode(), b'{"inlinedResponses": {"inlinedResponses": [', self._inlined_output(job),
                         b"]}}", tail.encode()))

    def _answers(self, job: Job) -> list[bytes]:
        """One serialised answer per request: the response, or the per-request error."""
        answers = []
        for i, (text, task, title, dims) in enumerate(job.items):
            if i in job.failing:
                answers.append(b'{"code": 500, "message": "Internal error encountered while embedding this request."}')
            else:
                answers.append(self.app.embedding_json(job.model, text, task, title, dims))
        return answers

    def _inlined_output(self, job: Job) -> bytes:
        with self.lock:
            if job.output is None:
                parts = []
                for i, answer in enumerate(self._answers(job)):
                    kind = b'"error"' if i in job.failing else b'"response"'
                    inner = answer if i in job.failing else b'{"embedding": ' + answer + b"}"
                    metadata = job.keys[i]
                    extra = b', "metadata": ' + json.dumps(metadata).encode() if metadata is not None else b""
                    parts.append(b"{" + kind + b": " + inner + extra + b"}")
                job.output = b", ".join(parts)
            return job.output

    def _responses_file(self, job: Job) -> str:
        with self.lock:
            if job.responses_file is None:
                lines = []
                for i, answer in enumerate(self._answers(job)):
                    key = json.dumps(job.keys[i]).encode()
                    if i in job.failing:
                        lines.append(b'{"key": ' + key + b', "error": ' + answer + b"}")
                    else:
                        lines.append(b'{"key": ' + key + b', "response": {"embedding": ' + answer + b"}}")
                stored = StoredFile(name=f"files/batch-{job.id}", display_name=f"{job.name} responses",
                                    mime_type="application/jsonl", size=0, created=time.time(),
                                    data=bytearray(b"\n".join(lines) + b"\n"), source="GENERATED", complete=True)
                stored.size = len(stored.data)
                self.files[stored.name.split("/", 1)[1]] = stored
                job.responses_file = stored.name
            return job.responses_file

    # -- files ----------------------------------------------------------------------------------------

    def upload(self, request: Request) -> Response:
        from toolkit.emulators.gemini import error

        command = request.headers.get("x-goog-upload-command", "").replace(" ", "")
        if command == "start":
            file = _pick(request.body, "file") or {}
            file_id = str(file.get("name") or "").removeprefix("files/") or uuid.uuid4().hex[:12]
            stored = StoredFile(name=f"files/{file_id}", display_name=str(file.get("displayName") or ""),
                                mime_type=request.headers.get("x-goog-upload-header-content-type")
                                or str(file.get("mimeType") or "application/octet-stream"),
                                size=int(request.headers.get("x-goog-upload-header-content-length") or 0),
                                created=time.time())
            upload_id = uuid.uuid4().hex
            with self.lock:
                self.uploads[upload_id] = stored
            host = request.headers.get("host", "127.0.0.1")
            url = f"http://{host}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
            return Response(200, b"", headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active",
                                               "X-Goog-Upload-Chunk-Granularity": "8388608"})
        stored = self.uploads.get(request.query.get("upload_id", ""))
        if stored is None:
            self.app.count("client_errors")
            return error(404, "Upload session not found.")
        offset = int(request.headers.get("x-goog-upload-offset") or 0)
        if offset != len(stored.data):
            return Response(400, b"", headers={"X-Goog-Upload-Status": "active"})
        stored.data.extend(request.raw)
        if "finalize" not in command.split(","):
            return Response(200, b"", headers={"X-Goog-Upload-Status": "active"})
        with self.lock:
            self.uploads.pop(request.query.get("upload_id", ""), None)
            stored.complete = True
            self.files[stored.name.split("/", 1)[1]] = stored
        self.app.count("files_uploaded")
        return Response(200, {"file": stored.to_json()}, headers={"X-Goog-Upload-Status": "final"})

    def file(self, file_id: str) -> Response:
        stored = self.files.get(file_id)
        return Response(200, stored.to_json()) if stored else self._not_found()

    def download(self, file_id: str) -> Response:
        from toolkit.emulators.gemini import error

        stored = self.files.get(file_id)
        if stored is None:
            return self._not_found()
        if stored.source != "GENERATED":
            self.app.count("client_errors")
            return error(400, "Only generated files can be downloaded.")
        return Response(200, bytes(stored.data), content_type="application/octet-stream")
