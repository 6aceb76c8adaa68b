"""One limiter per process (per provider endpoint and model), shared by all request threads.

What it decides, for every HTTP request an embedder makes:

* **Hard caps** (`rpm`, `tpm`, when given): two budgets per window (a minute): texts (the
  Gemini free tier counts every text of a batch as one request) and estimated tokens.
  Requests are spaced evenly at the cap *and* a sliding-window log guarantees that no
  window ever holds more, so a cap never turns into a burst at the top of the minute.
* **Adaptive pace** (always on; the only pace when no cap is given): AIMD on the number
  of requests in flight, like TCP's congestion window. It starts at `concurrency`; a 429
  halves it (once per burst of 429s, not once per thread), and every `allowed`
  successful requests give it back one slot. Unlike a rate estimate this needs no
  guess of the quota: the server's retryDelay decides *when*, the window decides *how
  many at once*.
* **429**: the server's RetryInfo.retryDelay (the provider module parses it) opens a
  *shared* backoff window: every thread waits until it closes, not only the one that got
  the 429. A refused request is taken out of the cap's log (it used no quota). A batch
  refused `split_after` times in a row is handed back to be split (BatchTooLarge): a
  quota smaller than one batch would otherwise refuse it forever.
* **5xx, resets, timeouts**: exponential backoff with full jitter through the same shared
  window (the exponent grows with consecutive failures across all threads and resets on
  the first success), bounded by `max_attempts` per request. Shared windows plus the
  in-flight bound are what keep us from a retry storm.
* **Permanent errors** (400, 401/403, 404...) are raised at once.
* **Daily quotas** (`rpd`, and a 429 whose quota is a per-day one): nothing to wait for within a
  run. The texts sent since the quota's day began (midnight Pacific time, when Gemini's daily
  quotas reset) are counted; a request that would pass `rpd`, or a provider's per-day 429,
  closes the limiter: that request and every later one raise DailyQuotaExhausted, which says
  when the quota resets, instead of retrying into it.

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
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Hashable, Iterator, TypeVar

from toolkit.errors import DailyQuotaExhausted, QuotaExhausted, ReembedError

log = logging.getLogger(__name__)

T = TypeVar("T")
Entry = tuple[float, int, int]  # (start time, texts, tokens) of one attempt


class BatchTooLarge(Exception):
    """Internal signal from RateLimiter.call: split this request and send the halves."""


class FailureKind(Enum):
    RATE_LIMITED = "rate_limited"  # 429: wait retry_after (shared), slow down, retry
    TRANSIENT = "transient"  # 5xx, reset, timeout: back off with jitter, retry (bounded)
    PERMANENT = "permanent"  # bad request, auth, unknown model: raise now
    DAILY_QUOTA = "daily_quota"  # a per-day quota is used up: stop everything until it resets


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
    retries: int  # attempts beyond the first, over all requests (splits included)
    permanent_errors: int
    waits: int  # times a request had to wait before starting
    wait_seconds: float  # total time requests spent waiting to start
    in_flight: int
    allowed_in_flight: int | None  # the adaptive window; None = unbounded
    rpm: int | None  # the hard caps
    tpm: int | None
    rpd: int | None = None
    texts_today: int = 0  # texts sent since the daily quota's day began


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
        split_after: int = 3,
        max_server_delay: float = 900.0,
        window: float = 60.0,
        seed: int | None = None,
        rpd: int | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """rpm/tpm: hard caps per window (None: no cap). concurrency: requests in flight at most.

        max_attempts bounds attempts per request for transient failures; max_rate_limited
        bounds 429s of one request; a retryDelay above max_server_delay (a daily quota,
        typically) raises QuotaExhausted instead of sleeping for hours. `window` is the
        quota period in seconds (60: per minute); tests shorten it. rpd: texts per day, counted
        from the last midnight Pacific time; `now` (aware datetimes) is the clock for that day.
        """
        self.rpm = rpm
        self.tpm = tpm
        self.rpd = rpd
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._day_began = quota_day_start(self._now())
        self._day_texts = 0
        self._closed: str | None = None  # why, once a daily quota is used up
        self.concurrency = concurrency
        self.max_attempts = max(1, max_attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_rate_limited = max(1, max_rate_limited)
        self.split_after = max(1, split_after)
        self.max_server_delay = max_server_delay
        self.window = window
        self._rng = random.Random(seed)
        self._cond = threading.Condition(threading.Lock())

        self._blocked_until = 0.0  # the shared backoff window
        self._no_decrease_until = 0.0  # one multiplicative decrease per burst of 429s
        self._allowed: int | None = concurrency  # the AIMD window on requests in flight
        self._ai_credit = 0
        self._next_text_slot = 0.0
        self._next_token_slot = 0.0
        self._log: deque[Entry] = deque()  # attempts in the current window (hard caps)
        self._win_texts = 0
        self._win_tokens = 0
        self._consecutive_transient = 0
        self._consecutive_429 = 0
        self._in_flight = 0

        self._requests = self._texts = self._tokens = self._succeeded = 0
        self._rate_limited = self._transient = self._retries = self._permanent = 0
        self._waits = 0
        self._wait_seconds = 0.0

    # ----------------------------------------------------------------- public API

    def call(self, fn: Callable[[], T], *, texts: int, tokens: int, classify: Classifier) -> tuple[T, int]:
        """Run fn under the budgets, retrying as described above. Returns (result, retries).

        Raises the Failure's error (permanent, or retries exhausted), QuotaExhausted, or
        BatchTooLarge (the caller splits the batch and sends the halves).
        """
        attempts = 0  # transient failures of this request
        limited = 0  # 429s of this request
        retries = 0
        while True:
            entry = self.acquire(texts, tokens)
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
                if failure.kind is FailureKind.DAILY_QUOTA:
                    raise self._close(failure.error, entry) from None
                if failure.kind is FailureKind.RATE_LIMITED:
                    limited += 1
                    delay = self._on_rate_limited(failure.retry_after, entry)
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
                    log.info("rate limited (429); everyone waits %.2fs, fewer requests in flight", delay)
                    if texts > 1 and limited % self.split_after == 0:
                        with self._cond:
                            self._retries += 1
                        raise BatchTooLarge(texts) from None
                else:
                    attempts += 1
                    if attempts >= self.max_attempts:
                        raise type(failure.error)(f"{failure.error} (gave up after {attempts} attempts)") from None
                    delay = self._on_transient()
                    log.info("transient failure (%s); retrying in %.2fs", failure.error, delay)
                retries += 1
                with self._cond:
                    self._retries += 1
                continue
            self._release(success=True)
            return result, retries

    def acquire(self, texts: int, tokens: int) -> Entry:
        """Block until a request of this size may start, then count it as started.

        Callers other than call() must pair it with release().
        """
        texts, tokens = max(0, texts), max(0, tokens)
        waited_from: float | None = None
        with self._cond:
            while True:
                self._check_day(texts)
                now = time.monotonic()
                self._expire(now)
                ready = self._ready_at(texts, tokens, now)
                slot_free = self._allowed is None or self._in_flight < self._allowed
                if ready <= now and slot_free:
                    break
                if waited_from is None:
                    waited_from = now
                self._cond.wait(ready - now if ready > now else None)
            entry = self._start(now, texts, tokens)
            if waited_from is not None:
                self._waits += 1
                self._wait_seconds += now - waited_from
            return entry

    def release(self, success: bool = True) -> None:
        self._release(success)

    def snapshot(self) -> LimiterStats:
        with self._cond:
            return LimiterStats(
                requests=self._requests, texts=self._texts, tokens=self._tokens, succeeded=self._succeeded,
                rate_limited=self._rate_limited, transient_errors=self._transient, retries=self._retries,
                permanent_errors=self._permanent, waits=self._waits, wait_seconds=self._wait_seconds,
                in_flight=self._in_flight, allowed_in_flight=self._allowed, rpm=self.rpm, tpm=self.tpm,
                rpd=self.rpd, texts_today=self._day_texts,
            )

    def max_texts_per_request(self, model_limit: int) -> int:
        """Largest batch worth sending: one above the hard text cap could never fit a window, and
        none above what is left of the day's --rpd (the rest of the day's budget is still used)."""
        size = max(1, min(model_limit, self.rpm)) if self.rpm else model_limit
        if self.rpd:
            with self._cond:
                self._roll_day()
                left = self.rpd - self._day_texts
            size = max(1, min(size, left)) if left > 0 else size
        return size

    # ----------------------------------------------------------------- the day

    def _roll_day(self) -> None:
        began = quota_day_start(self._now())
        if began > self._day_began:  # a new quota day: the count starts again and a closed limiter opens
            self._day_began, self._day_texts, self._closed = began, 0, None

    def _check_day(self, texts: int) -> None:
        """Raise when the limiter is closed, or when `texts` more would pass --rpd today (lock held)."""
        self._roll_day()
        if self._closed is None and self.rpd and self._day_texts + texts > self.rpd:
            # Counted by this process: texts sent earlier today by other runs are the provider's to count.
            self._closed = (f"--rpd {self.rpd} reached: this run sent {self._day_texts} texts since midnight "
                            f"Pacific time and {texts} more would pass it; {resets_in(self._now())}. Finished "
                            "rows stay done: run again then.")
            self._cond.notify_all()
        if self._closed is not None:
            raise DailyQuotaExhausted(self._closed)  # a new one per raise: threads raise it at once

    def _close(self, error: ReembedError, entry: Entry) -> ReembedError:
        """A provider's per-day 429: every request of this limiter stops now, with the reset time."""
        with self._cond:
            self._rate_limited += 1
            self._day_texts = max(0, self._day_texts - entry[1])  # refused: it used no quota
            if self._closed is None:
                self._closed = (f"{error} {resets_in(self._now())}. Finished rows stay done: run again then, or "
                                "raise the quota.")
            self._cond.notify_all()
            return DailyQuotaExhausted(self._closed)

    # ----------------------------------------------------------------- internals

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

    def _start(self, now: float, texts: int, tokens: int) -> Entry:
        entry = (now, texts, tokens)
        self._day_texts += texts
        if self.rpm or self.tpm:
            self._log.append(entry)
            self._win_texts += texts
            self._win_tokens += tokens
        # Even spacing at the cap: the next request starts once this one's share of the
        # window has passed.
        if self.rpm:
            self._next_text_slot = now + texts * self.window / self.rpm
        if self.tpm:
            self._next_token_slot = now + tokens * self.window / self.tpm
        self._in_flight += 1
        self._requests += 1
        self._texts += texts
        self._tokens += tokens
        return entry

    def _release(self, success: bool = False) -> None:
        with self._cond:
            self._in_flight -= 1
            if success:
                self._succeeded += 1
                self._consecutive_transient = 0
                self._consecutive_429 = 0
                if self._allowed is not None and (self.concurrency is None or self._allowed < self.concurrency):
                    # Additive increase: one more slot per `allowed` successes (one "round").
                    self._ai_credit += 1
                    if self._ai_credit >= self._allowed:
                        self._ai_credit = 0
                        self._allowed += 1
                        if self.concurrency is None and self._allowed > 64:
                            self._allowed = None  # back to unbounded
            self._cond.notify_all()

    def _on_rate_limited(self, retry_after: float | None, entry: Entry) -> float:
        with self._cond:
            now = time.monotonic()
            self._rate_limited += 1
            self._consecutive_429 += 1
            self._day_texts = max(0, self._day_texts - entry[1])
            try:  # a refused request used no quota: take it out of the caps' window
                self._log.remove(entry)
                self._win_texts -= entry[1]
                self._win_tokens -= entry[2]
            except ValueError:
                pass
            if retry_after is None:
                # No RetryInfo: exponential with "equal jitter" (never ~0, a 429 needs a pause).
                d = min(self.max_delay, max(1.0, self.base_delay) * 2 ** (self._consecutive_429 - 1))
                delay = d / 2 + self._rng.uniform(0, d / 2)
            else:
                delay = max(0.0, retry_after)
            self._blocked_until = max(self._blocked_until, now + delay)
            if now >= self._no_decrease_until:
                # Multiplicative decrease, once per burst: the other requests of this burst
                # are being refused too and must not halve the window again.
                current = self._allowed if self._allowed is not None else self._in_flight + 1
                self._allowed = max(1, current // 2)
                self._ai_credit = 0
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


try:
    from zoneinfo import ZoneInfo

    _PACIFIC: Any = ZoneInfo("America/Los_Angeles")
except Exception:  # noqa: BLE001 - no tz database: Pacific standard time all year (at most an hour off)
    _PACIFIC = timezone(timedelta(hours=-8), "PST")


def quota_day_start(moment: datetime) -> datetime:
    """When the daily quota's current day began: the last midnight Pacific time (Gemini's reset)."""
    local = moment.astimezone(_PACIFIC)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def quota_day_end(moment: datetime) -> datetime:
    """The next midnight Pacific time, as an aware datetime (DST-safe: midnight of the next date)."""
    local = moment.astimezone(_PACIFIC)
    next_date = (local.replace(hour=12) + timedelta(days=1)).date()
    return datetime(next_date.year, next_date.month, next_date.day, tzinfo=_PACIFIC)


def resets_in(moment: datetime) -> str:
    """`the daily quota resets at midnight Pacific time, in 7h 03m (2026-12-02 08:00 UTC)`."""
    end = quota_day_end(moment)
    left = max(0, int((end - moment).total_seconds()))
    at = end.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"the daily quota resets at midnight Pacific time, in {left // 3600}h {left % 3600 // 60:02d}m ({at})"


_shared: dict[Hashable, RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(key: Hashable, factory: Callable[[], RateLimiter]) -> RateLimiter:
    """The process-wide limiter for key (e.g. provider, endpoint, model, caps), created once."""
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            limiter = _shared[key] = factory()
        return limiter


def run_batches(groups: list[list[int]], size: int,
                send: Callable[[list[int]], tuple[T, int]]) -> Iterator[tuple[list[int], T, int]]:
    """Send positions in batches of at most `size` (per group); yields (batch, result, retries).

    A batch the limiter hands back as BatchTooLarge is split in halves, sent in order.
    """
    queue: deque[list[int]] = deque(g[i:i + size] for g in groups for i in range(0, len(g), size))
    while queue:
        batch = queue.popleft()
        try:
            result, retries = send(batch)
        except BatchTooLarge:
            half = (len(batch) + 1) // 2
            queue.appendleft(batch[half:])
            queue.appendleft(batch[:half])
            continue
        yield batch, result, retries
