"""The HTTP plumbing shared by the emulators: a threaded server on 127.0.0.1, fault knobs, stats.

Each emulator is an `App` (handle(request) -> Response); EmulatorServer runs it in a
background thread of this process, so tests and `reembed demo` drive the real SDK clients
over real sockets without any external service.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

MALFORMED_KINDS = ("count", "dimension", "nan", "zero")


@dataclass
class Faults:
    """What can go wrong, set at start or at run time with EmulatorServer.configure()."""

    latency: float = 0.0  # seconds added to every answer
    quota_texts_per_minute: int | None = None  # texts accepted per window, beyond → 429
    quota_tokens_per_minute: int | None = None  # estimated tokens per window, beyond → 429
    quota_window: float = 60.0  # seconds; tests shorten it
    retry_delay: float | None = None  # reported RetryInfo; None = when the window has room
    error_rate: float = 0.0  # share of requests answered 5xx
    error_status: int = 503
    malformed_rate: float = 0.0  # share of successful answers corrupted
    malformed_kind: str = "mixed"  # count | dimension | nan | zero | mixed
    reset_rate: float = 0.0  # share of requests whose connection is reset without an answer
    seed: int = 0
    # A daily quota (texts per day); beyond it a 429 whose QuotaFailure names a per-day quota id.
    quota_texts_per_day: int | None = None
    # Batch jobs (Gemini): seconds a new job stays PENDING, then RUNNING, before it ends; the
    # outcomes of the next jobs, one consumed per job created: "succeeded", "failed", "expired",
    # or "errors=0,7" (succeeded, with those requests of the job answered by an error); and a
    # share of requests answered by an error inside any succeeded job.
    batch_pending_seconds: float = 0.0
    batch_running_seconds: float = 0.0
    batch_script: list[str] = field(default_factory=list)
    batch_request_error_rate: float = 0.0
    batch_inline_limit_bytes: int = 20 * 1024 * 1024  # the real API's request size limit
    # Forced outcomes for the next requests, one consumed per request, before the rates:
    # "429", "500", "503", "reset", "count", "dimension", "nan", "zero", "ok".
    script: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.malformed_kind not in MALFORMED_KINDS + ("mixed",):
            raise ValueError(f"malformed_kind must be one of {MALFORMED_KINDS + ('mixed',)}")


@dataclass(frozen=True)
class EmulatorStats:
    requests: int = 0  # HTTP requests received (any path)
    embed_requests: int = 0  # embedding calls received
    texts: int = 0  # texts in embedding calls answered 200
    ok: int = 0
    rate_limited: int = 0  # 429s served
    server_errors: int = 0  # 5xx served
    malformed: int = 0  # corrupted 200s served
    resets: int = 0  # connections reset
    client_errors: int = 0  # other 4xx served (bad request, auth, unknown model)
    daily_limited: int = 0  # 429s served for the daily quota
    batch_jobs: int = 0  # batch jobs created (each one is paid for on the real API)
    batch_requests: int = 0  # embedding requests inside the batch jobs created
    files_uploaded: int = 0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or None (also for a body that is not JSON, when the app takes raw bodies)
    raw: bytes = b""


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serializable, str for text/plain, or bytes sent as they are (pre-serialised JSON)
    reset: bool = False  # drop the connection with an RST instead of answering
    headers: dict[str, str] | None = None
    content_type: str | None = None  # for a bytes body; default application/json


class App:
    """Base of an emulator: fault state, quota window, stats, and a log of request bodies."""

    def __init__(self, faults: Faults) -> None:
        self.lock = threading.Lock()
        self.initial_faults = faults
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self._stats: dict[str, int] = {f.name: 0 for f in fields(EmulatorStats)}
        self._quota_log: deque[tuple[float, int, int]] = deque()
        self.bodies: deque[tuple[str, Any]] = deque(maxlen=500)  # (path, JSON body) for tests

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def reset_state(self) -> None:
        """Forget what the app keeps beyond faults and stats (jobs, files, daily counts); lock held."""

    def takes_raw_body(self, path: str) -> bool:
        """Paths whose body is not JSON (file uploads): handed over as Request.raw."""
        return False

    # Helpers for subclasses -------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self._stats[name] += n

    def stats(self) -> EmulatorStats:
        with self.lock:
            return EmulatorStats(**self._stats)

    def configure(self, **changes: Any) -> None:
        with self.lock:
            if "seed" in changes:
                self.rng = random.Random(changes["seed"])
            for name in ("script", "batch_script"):
                if name in changes:
                    changes[name] = list(changes[name])
            self.faults = replace(self.faults, **changes)

    def next_fault(self) -> str | None:
        """The forced or random outcome of this request: None (normal), '429'..., 'reset', a malformed kind."""
        with self.lock:
            f = self.faults
            if f.script:
                outcome = f.script.pop(0)
                return None if outcome == "ok" else outcome
            if f.reset_rate and self.rng.random() < f.reset_rate:
                return "reset"
            if f.error_rate and self.rng.random() < f.error_rate:
                return str(f.error_status)
            if f.malformed_rate and self.rng.random() < f.malformed_rate:
                return self.rng.choice(MALFORMED_KINDS) if f.malformed_kind == "mixed" else f.malformed_kind
            return None

    def take_quota(self, texts: int, tokens: int) -> float | None:
        """Record the use if it fits the quota window; else the seconds until it would fit."""
        with self.lock:
            f = self.faults
            if f.quota_texts_per_minute is None and f.quota_tokens_per_minute is None:
                return None
            now = time.monotonic()
            while self._quota_log and self._quota_log[0][0] <= now - f.quota_window:
                self._quota_log.popleft()
            waits = [0.0]
            for cap, cost, index in ((f.quota_texts_per_minute, texts, 1), (f.quota_tokens_per_minute, tokens, 2)):
                if cap is None:
                    continue
                used = sum(entry[index] for entry in self._quota_log)
                excess = used + cost - cap
                if excess > 0:
                    wait = f.quota_window
                    for entry in self._quota_log:
                        excess -= entry[index]
                        if excess <= 0:
                            wait = entry[0] + f.quota_window - now
                            break
                    waits.append(wait)
            if max(waits) > 0:
                return f.retry_delay if f.retry_delay is not None else max(waits)
            self._quota_log.append((now, texts, tokens))
            return None

    def corrupt(self, vectors: list[list[float]], kind: str) -> list[list[float]]:
        """A plausible-looking but wrong answer: one vector missing, one short, a NaN, a zero vector."""
        vectors = [list(v) for v in vectors]
        if kind == "count":
            return vectors[:-1] if len(vectors) > 1 else vectors + [list(vectors[0])]
        if kind == "dimension":
            vectors[-1] = vectors[-1][:-1]
        elif kind == "nan":
            vectors[-1][0] = float("nan")
        elif kind == "zero":
            vectors[-1] = [0.0] * len(vectors[-1])
        return vectors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services (httpx pools connections)
    timeout = 60  # a stuck client must not pin a thread forever
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path, _, query_string = self.path.partition("?")
        query = dict(part.partition("=")[::2] for part in query_string.split("&") if part)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        app = self.server.app
        app.count("requests")
        try:
            body = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None if app.takes_raw_body(path) else ...
        if body is ...:
            response = app.bad_json() if hasattr(app, "bad_json") else Response(400, {"error": "invalid JSON"})
        else:
            request = Request(method, path, query, {k.lower(): v for k, v in self.headers.items()}, body, raw)
            try:
                response = app.handle(request)
            except Exception:  # noqa: BLE001 - an emulator bug must show up as a 500, not a hang
                log.exception("emulator failed on %s %s", method, path)
                response = Response(500, {"error": "emulator failure"})
        latency = app.faults.latency
        if latency:
            time.sleep(latency)
        if response.reset:
            self._reset()
            return
        if isinstance(response.body, bytes):
            payload, ctype = response.body, response.content_type or "application/json; charset=UTF-8"
        elif isinstance(response.body, str):
            payload, ctype = response.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, ctype = json.dumps(response.body).encode(), "application/json; charset=UTF-8"
        self.send_response(response.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (response.headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send an RST: the client sees "connection reset by peer".
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket was reset on purpose

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: App

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("emulator connection error from %s", client_address, exc_info=True)


class EmulatorServer:
    """A running emulator. Use as a context manager, or call stop()."""

    def __init__(self, app: App, port: int = 0, host: str = "127.0.0.1") -> None:
        self.app = app
        self._server = _Server((host, port), _Handler)
        self._server.app = app
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"emulator-{type(app).__name__}-{self.port}", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self) -> EmulatorStats:
        return self.app.stats()

    @property
    def faults(self) -> Faults:
        return self.app.faults

    def configure(self, **faults: Any) -> None:
        """Change fault options at run time, e.g. configure(error_rate=0.2, script=["429"])."""
        self.app.configure(**faults)

    def reset_stats(self) -> None:
        with self.app.lock:
            for key in self.app._stats:
                self.app._stats[key] = 0
            self.app.bodies.clear()

    def reset(self) -> None:
        """Back to the state it started in: initial faults, empty quota window, zero stats."""
        with self.app.lock:
            self.app.faults = replace(self.app.initial_faults, script=list(self.app.initial_faults.script),
                                      batch_script=list(self.app.initial_faults.batch_script))
            self.app.rng = random.Random(self.app.faults.seed)
            self.app._quota_log.clear()
            self.app.reset_state()
        self.reset_stats()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "EmulatorServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self.app).__name__} emulator at {self.base_url}>"


def split_fault_options(options: Mapping[str, Any]) -> tuple[Faults, dict[str, Any]]:
    """Separate Faults fields from an emulator's own options (api_keys, models...)."""
    names = {f.name for f in fields(Faults)}
    fault_kwargs = {k: v for k, v in options.items() if k in names}
    rest = {k: v for k, v in options.items() if k not in names}
    return Faults(**fault_kwargs), rest


Starter = Callable[..., EmulatorServer]
