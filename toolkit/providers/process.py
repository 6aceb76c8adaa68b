"""An Embedder whose provider client runs in a process of its own.

In one process the provider path's Python (the SDK building requests and parsing each answer's
JSON, the vector checks) and the writer's round trips take turns on one GIL: a write waits for
an embedding thread to let go of it (README, "Writes beside their floors": with the client here,
a copy run went from 0.59-0.68 of the slower floor to 0.89-0.93 while the machine was slow, and
stayed where it was once the machine ran faster). Here the real embedder (`make_embedder`, with
the same settings and rate limiter) runs in a child process, up to `concurrency` calls at a time
on its threads; the parent's threads block on their call exactly as they would on the client,
and an answer crosses the pipe as one pickled `EmbedBatch` (a numpy array, copied once).

The child lives as long as the pipe: it ignores SIGINT and SIGTERM (the parent decides when a
run stops, and still collects the answers in flight while it does), and it exits as soon as the
parent closes the pipe or dies, `kill -9` included. A child that dies fails every call waiting on
it with ProviderUnreachable; nothing is written for those rows and their leases are released, as
after any provider failure. Where Python cannot start a child at all (a main module read from
standard input), the client runs in this process instead, with a warning: the same answers, at
the in-process speed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import count
from multiprocessing.connection import Connection
from typing import Any, Sequence

from toolkit.errors import ProviderError, ProviderUnreachable, ReembedError
from toolkit.memory import peak_rss_mb
from toolkit.providers.base import EmbedBatch, ModelRef, ProviderLimits
from toolkit.providers.settings import ProviderSettings

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 120.0  # a spawned interpreter importing the SDK, on a loaded machine


class ProcessEmbedder:
    """The Embedder protocol, answered by the real embedder in a child process, started by
    `start()` or else at the first call (a run with nothing to embed starts none)."""

    def __init__(self, ref: ModelRef, dimensions: int, settings: ProviderSettings) -> None:
        from toolkit.providers.models import model_info

        self.ref, self.dimensions = ref, dimensions
        self.limits: ProviderLimits = model_info(ref).limits  # BadInput here, for a model nobody serves
        self._settings = settings
        self._process: Any = None
        self._pipe: Connection | None = None  # from the child's start
        self._ready = False  # the child said it can take calls
        self._spawned_at = 0.0
        self._start_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._calls: dict[int, Future[EmbedBatch]] = {}
        self._calls_lock = threading.Lock()
        self._ids = count()
        self._closed = False
        self._ended: str | None = None  # how the child ended, for the calls after
        self._start_error: BaseException | None = None
        self._here: Any = None  # the in-process embedder, when no child could be started
        self.child_peak_rss_mb = 0.0  # read at close: what the run's memory figure must count too

    def start(self) -> None:
        """Begin starting the child, without waiting for it: its interpreter imports the SDK while
        the caller gets on with its own setup. A no-op once begun."""
        with self._start_lock:
            self._spawn()

    def ready(self) -> float:
        """Wait for a child that `start()` began to be able to take calls; the seconds waited. Starts
        nothing: without `start()` the child starts at the first call (a run with nothing to
        embed starts none)."""
        with self._start_lock:
            begun = self._process is not None and not self._ready and self._here is None
        if not begun:
            return 0.0
        waited = time.monotonic()
        self._started()
        return time.monotonic() - waited

    def _spawn(self) -> None:
        """Start the child process (the caller holds the start lock); its "ready" is read later."""
        if self._process is not None or self._here is not None or self._start_error is not None or self._closed:
            return
        context = multiprocessing.get_context("spawn")  # no inherited threads, locks or connections
        pipe, child_end = context.Pipe(duplex=True)
        self._process = context.Process(target=serve, name="reembed-embedder", daemon=False,
                                        args=(child_end, str(self.ref), self.dimensions, self._settings,
                                              _verbosity()))
        self._process.start()
        child_end.close()
        self._pipe, self._spawned_at = pipe, time.monotonic()

    def _started(self) -> Connection | None:
        """The pipe to the child, started on the first call if not before; None when embedding here instead."""
        with self._start_lock:
            if self._here is not None:
                return None
            if self._ready:
                return self._pipe
            if self._start_error is not None:
                raise self._start_error  # every call hears why, as a client that failed to build
            if self._closed:
                raise ProviderUnreachable("the embedding process is closed")
            self._spawn()
            pipe = self._pipe
            assert pipe is not None
            try:
                left = START_TIMEOUT_SECONDS - (time.monotonic() - self._spawned_at)
                if not pipe.poll(max(0.0, left)):
                    self._stop(pipe)
                    return self._embed_here(f"the embedding process did not start within "
                                            f"{START_TIMEOUT_SECONDS:.0f} s")
                kind, payload = pipe.recv()
            except (EOFError, OSError):
                # Python could not start it (a main module read from stdin, say): same answers here.
                self._stop(pipe)
                return self._embed_here(self._died("while starting"))
            except BaseException:
                self._stop(pipe)
                raise
            if kind != "ready":
                self._stop(pipe)
                self._start_error = _as_exception(payload)
                raise self._start_error
            self._ready = True
            threading.Thread(target=self._read_answers, args=(pipe,), name="reembed-embedder-answers",
                             daemon=True).start()
            return pipe

    def embed_documents(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> EmbedBatch:
        return self._call("embed_documents", list(texts), list(titles) if titles is not None else None)

    def embed_queries(self, texts: Sequence[str]) -> EmbedBatch:
        return self._call("embed_queries", list(texts))

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            if self._here is not None:
                self._here.close()
            if self._process is None:
                return
            self.child_peak_rss_mb = peak_rss_mb(self._process.pid) or self.child_peak_rss_mb
            if self._pipe is not None:
                self._stop(self._pipe)

    def _embed_here(self, why: str) -> None:
        from toolkit.providers import make_embedder

        log.warning("%s: embedding in this process instead", why)
        self._process = None
        try:
            self._here = make_embedder(self.ref, self.dimensions, self._settings)
        except BaseException as exc:
            self._start_error = exc
            raise

    def _call(self, method: str, *args: Any) -> EmbedBatch:
        pipe = self._started()
        if pipe is None:
            return getattr(self._here, method)(*args)  # type: ignore[no-any-return]
        future: Future[EmbedBatch] = Future()
        with self._calls_lock:
            if self._closed:
                raise ProviderUnreachable(self._ended or "the embedding process is closed")
            call_id = next(self._ids)
            self._calls[call_id] = future
        try:
            with self._send_lock:
                pipe.send((call_id, method, args))
        except (OSError, ValueError):
            with self._calls_lock:
                self._calls.pop(call_id, None)
            raise ProviderUnreachable(self._died("before the call was sent")) from None
        return future.result()

    def _read_answers(self, pipe: Connection) -> None:
        """Hand each answer to the call waiting for it; when the pipe ends, fail every call left."""
        while True:
            try:
                call_id, ok, payload = pipe.recv()
            except (EOFError, OSError):
                break
            with self._calls_lock:
                future = self._calls.pop(call_id, None)
            if future is None:
                continue
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(_as_exception(payload))
        if self._closed:  # the end close() asked for
            return
        ended = self._died("with a call in flight" if self._calls else "between calls")
        with self._calls_lock:
            left = list(self._calls.values())
            self._calls.clear()
            self._closed = True
            self._ended = ended
        for future in left:
            future.set_exception(ProviderUnreachable(ended))

    def _died(self, when: str) -> str:
        with self._reap_lock:  # one thread at a time waits for the child: two would race to reap it
            self._process.join(timeout=1.0)
            code = self._process.exitcode
        return f"the embedding process ended {when} (exit code {code if code is not None else 'unknown'})"

    def _stop(self, pipe: Connection) -> None:
        # Said, not just closed: closing a socket that the answer reader is blocked on does not
        # end the read, so the child would never see the end of the pipe.
        try:
            with self._send_lock:
                pipe.send(None)
        except (OSError, ValueError):
            pass
        with self._reap_lock:
            self._process.join(timeout=10.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=10.0)
        try:
            pipe.close()
        except OSError:
            pass


def serve(pipe: Connection, ref: str, dimensions: int, settings: ProviderSettings, verbosity: int) -> None:
    """The child: build the real embedder, answer calls on `concurrency` threads until the pipe ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from toolkit.config import configure_logging, register_environment_secrets
    from toolkit.providers import make_embedder

    register_environment_secrets()
    configure_logging(verbosity)
    try:
        embedder = make_embedder(ModelRef.parse(ref), dimensions, settings)
    except BaseException as exc:  # noqa: BLE001 - the parent raises it as its own
        pipe.send(("error", _portable(exc)))
        os._exit(0)
    pipe.send(("ready", (embedder.ref, embedder.dimensions, embedder.limits)))
    send_lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=max(1, settings.concurrency), thread_name_prefix="reembed-embed")

    def answer(call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            reply: tuple[int, bool, Any] = (call_id, True, getattr(embedder, method)(*args))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the call that caused it
            reply = (call_id, False, _portable(exc))
        try:
            with send_lock:
                pipe.send(reply)
        except (OSError, ValueError):
            pass  # the parent is gone; the main loop is ending too

    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            break
        if message is None:  # the parent's close
            break
        call_id, method, args = message
        if method in ("embed_documents", "embed_queries"):
            pool.submit(answer, call_id, method, args)
    # The parent closed the pipe or died: nobody waits for the calls in flight.
    os._exit(0)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (every ReembedError does), else one that says it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return ProviderError(f"{type(exc).__name__}: {exc}")


def _as_exception(payload: Any) -> BaseException:
    return payload if isinstance(payload, BaseException) else ReembedError(str(payload))


def _verbosity() -> int:
    """This process's -v / -vv, for the child's logging."""
    if logging.getLogger().level == logging.DEBUG:
        return 2
    return 1 if logging.getLogger("toolkit").level == logging.DEBUG else 0
