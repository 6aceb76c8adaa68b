"""One limiter per process (per provider endpoint and model), shared by all request threads.

What it decides, for every HTTP request an embedder makes:

* **Pace.** Two per-minute budgets: texts (the Gemini free tier counts every text of a
  batch as one request) and estimated tokens. Given caps (`rpm`, `tpm`) are hard: requests
  are spaced evenly at the cap *and* a sliding 60 s log guarantees that no window of 60 s
  ever holds more. Without caps there is no fixed pace: the first 429 sets one at half the
  rate we were actually achieving (multiplicative decrease), successes raise it slowly
  (additive increase, +25% of that level per minute), and once it has grown far past what
  we really send it is dropped again (AIMD, like TCP).
* **429.** The server's RetryInfo.retryDelay (the provider module parses it) opens a
  *shared* backoff window: every thread waits until it closes, not just the one that got
  the 429, and one burst of concurrent 429s decreases the pace once, not once per thread.
* **5xx, resets, timeouts.** Exponential backoff with full jitter, also through the shared
  window (its exponent grows with consecutive failures across all threads and resets on
  the first success), bounded by `max_attempts` per request. Together with the
  concurrency bound this is what keeps us from a retry storm.
* **Permanent errors** (400, 401/403, 404...) are raised at once.

The limiter knows nothing about SDK exception types: the caller passes a `classify`
function that turns an exception into a `Failure` (kind + the ReembedError to raise).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Hashable, TypeVar

from toolkit.errors import QuotaExhausted, ReembedError

log = logging.getLogger(__name__)

T = TypeVar("T")


class FailureKind(Enum):
    RATE_LIMITED = "rate_limited"  # 429: wait retry_after (shared), slow down, retry
    TRANSIENT = "transient"  # 5xx, reset, timeout: back off with jitter, retry (bounded)
    PERMANENT = "permanent"  # bad request, auth, unknown model: raise now


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    error: ReembedError  # raised when the failure is permanent or retries run out
    retry_after: float | None = None  # seconds, from the server (RetryInfo / Retry-After)


Classifier = Callable[[BaseException], "Failure | None"]  # None: not a provider failure, re-raise


@dataclass(frozen=True)
class LimiterStats:
    """A consistent snapshot of the counters (for progress bars and benchmarks)."""

    requests: int  # HTTP attempts started
    texts: int  # texts in those attempts
    tokens: int  # estimated tokens in those attempts
    succeeded: int
    rate_limited: int  # 429s seen
    transient_errors: int  # 5xx, resets, timeouts seen
    retries: int  # attempts beyond the first, over all requests
    permanent_errors: int
    waits: int  # times a request had to wait before starting
    wait_seconds: float  # total time requests spent waiting to start
    in_flight: int
    texts_per_minute_limit: float | None  # current pace (cap or adaptive); None = unlimited
    tokens_per_minute_limit: float | None


class RateLimiter:
    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        concurrency: int | None = None,
        max_attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        max_rate_limited: int = 50,
        max_server_delay: float = 900.0,
        window: float = 60.0,
        min_rate: float = 1.0,
        seed: int | None = None,
    ) -> None:
        """rpm/tpm: hard caps per minute (None: adaptive). concurrency: requests in flight.

        `window` is the quota period in seconds (60: rpm and tpm are per minute); tests
        shorten it so a "minute" passes in a second.

        max_attempts bounds attempts per request for transient failures; max_rate_limited
        bounds consecutive 429s of one request; a retryDelay above max_server_delay (a daily
        quota, typically) is raised as QuotaExhausted instead of sleeping for hours.
        """
        self.rpm = rpm
        self.tpm = tpm
        self.concurrency = concurrency
        self.max_attempts = max(1, max_attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_rate_limited = max_rate_limited
        self.max_server_delay = max_server_delay
        self.window = window
        self.min_rate = min_rate
        self._rng = random.Random(seed)
        self._cond = threading.Condition(threading.Lock())

        self._blocked_until = 0.0  # the shared backoff window
        self._no_decrease_until = 0.0  # one multiplicative decrease per burst of 429s
        self._next_text_slot = 0.0
        self._next_token_slot = 0.0
        self._log: deque[tuple[float, int, int]] = deque()  # (start, texts, tokens) in the window
        self._win_texts = 0
        self._win_tokens = 0
        self._first_start: float | None = None
        self._adaptive_tpm_texts: float | None = None  # adaptive pace, texts per minute
        self._adaptive_tpm_tokens: float | None = None
        self._ai_step_texts = 0.0  # additive increase per minute
        self._ai_step_tokens = 0.0
        self._consecutive_transient = 0
        self._consecutive_429 = 0
        self._in_flight = 0

        self._requests = self._texts = self._tokens = self._succeeded = 0
        self._rate_limited = self._transient = self._retries = self._permanent = 0
        self._waits = 0
        self._wait_seconds = 0.0

    # ----------------------------------------------------------------- public API

    def call(self, fn: Callable[[], T], *, texts: int, tokens: int, classify: Classifier) -> tuple[T, int]:
        """Run fn under the budgets, retrying as described above. Returns (result, retries)."""
        attempts = 0  # transient failures of this request
        limited = 0  # 429s of this request
        retries = 0
        while True:
            self.acquire(texts, tokens)
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - classify decides; unknown ones re-raise
                self._release()
                failure = classify(exc)
                if failure is None:
                    raise
                if failure.kind is FailureKind.PERMANENT:
                    with self._cond:
                        self._permanent += 1
                    raise failure.error from None
                if failure.kind is FailureKind.RATE_LIMITED:
                    limited += 1
                    delay = self._on_rate_limited(failure.retry_after)
                    if failure.retry_after is not None and failure.retry_after > self.max_server_delay:
                        raise QuotaExhausted(
                            f"{failure.error} The server asks to wait {failure.retry_after:.0f}s, longer than "
                            f"{self.max_server_delay:.0f}s: the quota is probably daily; try again later or "
                            "raise the quota."
                        ) from None
                    if limited >= self.max_rate_limited:
                        raise QuotaExhausted(
                            f"{failure.error} Still rate limited after {limited} attempts; lower --rpm/--tpm "
                            "or raise the quota."
                        ) from None
                    log.info("rate limited (429); everyone waits %.2fs and the pace slows", delay)
                else:
                    attempts += 1
                    if attempts >= self.max_attempts:
                        raise type(failure.error)(
                            f"{failure.error} (gave up after {attempts} attempts)"
                        ) from None
                    delay = self._on_transient()
                    log.info("transient failure (%s); retrying in %.2fs", failure.error, delay)
                retries += 1
                with self._cond:
                    self._retries += 1
                continue
            self._release(success=True, texts=texts)
            return result, retries

    def acquire(self, texts: int, tokens: int) -> None:
        """Block until a request of this size may start, then count it as started."""
        texts, tokens = max(0, texts), max(0, tokens)
        waited_from: float | None = None
        with self._cond:
            while True:
                now = time.monotonic()
                self._expire(now)
                ready = self._ready_at(texts, tokens, now)
                slot_free = self.concurrency is None or self._in_flight < self.concurrency
                if ready <= now and slot_free:
                    break
                if waited_from is None:
                    waited_from = now
                self._cond.wait(ready - now if ready > now else None)
            self._start(now, texts, tokens)
            if waited_from is not None:
                self._waits += 1
                self._wait_seconds += now - waited_from

    def snapshot(self) -> LimiterStats:
        with self._cond:
            return LimiterStats(
                requests=self._requests, texts=self._texts, tokens=self._tokens, succeeded=self._succeeded,
                rate_limited=self._rate_limited, transient_errors=self._transient, retries=self._retries,
                permanent_errors=self._permanent, waits=self._waits, wait_seconds=self._wait_seconds,
                in_flight=self._in_flight, texts_per_minute_limit=self._limit(self.rpm, self._adaptive_tpm_texts),
                tokens_per_minute_limit=self._limit(self.tpm, self._adaptive_tpm_tokens),
            )

    def max_texts_per_request(self, model_limit: int) -> int:
        """Largest batch worth sending: a batch above the hard text cap could never fit a window."""
        return max(1, min(model_limit, self.rpm)) if self.rpm else model_limit

    # ----------------------------------------------------------------- internals (lock held)

    @staticmethod
    def _limit(cap: float | None, adaptive: float | None) -> float | None:
        values = [v for v in (cap, adaptive) if v is not None]
        return min(values) if values else None

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._log and self._log[0][0] <= horizon:
            _, n, t = self._log.popleft()
            self._win_texts -= n
            self._win_tokens -= t

    def _window_ready(self, cap: int | None, cost: int, index: int, in_window: int, now: float) -> float:
        """When a request of `cost` fits the hard cap's sliding window."""
        if cap is None or in_window + cost <= cap:
            return now
        if cost > cap:  # can never fit: allow it alone, once the window is empty
            return self._log[-1][0] + self.window if self._log else now
        excess = in_window + cost - cap
        for entry in self._log:
            excess -= entry[index]
            if excess <= 0:
                return entry[0] + self.window
        return now

    def _ready_at(self, texts: int, tokens: int, now: float) -> float:
        return max(
            self._blocked_until,
            self._next_text_slot,
            self._next_token_slot,
            self._window_ready(self.rpm, texts, 1, self._win_texts, now),
            self._window_ready(self.tpm, tokens, 2, self._win_tokens, now),
        )

    def _start(self, now: float, texts: int, tokens: int) -> None:
        if self._first_start is None:
            self._first_start = now
        self._log.append((now, texts, tokens))
        self._win_texts += texts
        self._win_tokens += tokens
        # Even spacing at the current pace: the next request starts once this one's share
        # of the minute has passed, so a cap never turns into a burst at the minute mark.
        text_rate = self._limit(self.rpm, self._adaptive_tpm_texts)
        if text_rate:
            self._next_text_slot = now + texts * self.window / text_rate
        token_rate = self._limit(self.tpm, self._adaptive_tpm_tokens)
        if token_rate:
            self._next_token_slot = now + tokens * self.window / token_rate
        self._in_flight += 1
        self._requests += 1
        self._texts += texts
        self._tokens += tokens

    def _release(self, success: bool = False, texts: int = 0) -> None:
        with self._cond:
            self._in_flight -= 1
            if success:
                self._succeeded += 1
                self._consecutive_transient = 0
                self._consecutive_429 = 0
                self._additive_increase(texts)
            self._cond.notify_all()

    def _additive_increase(self, texts: int) -> None:
        if self._adaptive_tpm_texts is not None and texts:
            # +ai_step texts/min per minute of traffic: a request of n texts is n/rate minutes.
            self._adaptive_tpm_texts += self._ai_step_texts * texts / self._adaptive_tpm_texts
            if self._adaptive_tpm_tokens is not None:
                self._adaptive_tpm_tokens += self._ai_step_tokens * texts / self._adaptive_tpm_texts
            # Far above what we really achieve: the limit no longer constrains anything, drop it.
            if self._adaptive_tpm_texts > 4 * max(self._observed_per_minute(time.monotonic())[0], 1.0):
                self._adaptive_tpm_texts = self._adaptive_tpm_tokens = None

    def _observed_per_minute(self, now: float) -> tuple[float, float]:
        if self._first_start is None:
            return 0.0, 0.0
        span = min(self.window, max(now - self._first_start, self.window / 60))
        return self._win_texts * self.window / span, self._win_tokens * self.window / span

    def _on_rate_limited(self, retry_after: float | None) -> float:
        with self._cond:
            now = time.monotonic()
            self._rate_limited += 1
            self._consecutive_429 += 1
            if retry_after is None:
                # No RetryInfo: exponential with "equal jitter" (never ~0, a 429 needs a pause).
                d = min(self.max_delay, max(1.0, self.base_delay) * 2 ** (self._consecutive_429 - 1))
                delay = d / 2 + self._rng.uniform(0, d / 2)
            else:
                delay = max(0.0, retry_after)
            self._blocked_until = max(self._blocked_until, now + delay)
            if now >= self._no_decrease_until:
                self._expire(now)
                texts_pm, tokens_pm = self._observed_per_minute(now)
                current = self._limit(self.rpm, self._adaptive_tpm_texts)
                base = texts_pm if current is None else min(current, texts_pm or current)
                # Never below the largest recent request: a pace slower than one batch per
                # window would stall a batch longer than the quota period itself.
                largest = max((entry[1] for entry in self._log), default=0)
                self._adaptive_tpm_texts = max(self.min_rate, largest, base / 2)
                self._ai_step_texts = self._adaptive_tpm_texts / 4
                current_tok = self._limit(self.tpm, self._adaptive_tpm_tokens)
                base_tok = tokens_pm if current_tok is None else min(current_tok, tokens_pm or current_tok)
                self._adaptive_tpm_tokens = max(self.min_rate, base_tok / 2) if base_tok else None
                self._ai_step_tokens = (self._adaptive_tpm_tokens or 0.0) / 4
                # Other requests of the same burst are answered 429 too: decrease once.
                self._no_decrease_until = self._blocked_until
            self._cond.notify_all()
            return delay

    def _on_transient(self) -> float:
        with self._cond:
            now = time.monotonic()
            self._transient += 1
            self._consecutive_transient += 1
            cap = min(self.max_delay, self.base_delay * 2 ** (self._consecutive_transient - 1))
            delay = self._rng.uniform(0, cap)  # full jitter
            self._blocked_until = max(self._blocked_until, now + delay)
            self._cond.notify_all()
            return max(delay, self._blocked_until - now)


_shared: dict[Hashable, RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(key: Hashable, factory: Callable[[], RateLimiter]) -> RateLimiter:
    """The process-wide limiter for key (e.g. provider, endpoint, model, caps), created once."""
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            limiter = _shared[key] = factory()
        return limiter
