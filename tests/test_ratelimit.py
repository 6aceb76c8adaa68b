"""RateLimiter on its own (no HTTP): caps, the shared 429 window, AIMD, bounded retries; token estimates."""

from __future__ import annotations

import threading
import time

import pytest

from toolkit.errors import ProviderError, ProviderUnreachable, QuotaExhausted
from toolkit.providers.tokens import estimate_tokens, fit_text, truncate_to_tokens
from toolkit.ratelimit import BatchTooLarge, Failure, FailureKind, RateLimiter, run_batches


class Boom(Exception):
    def __init__(self, kind: FailureKind, retry_after: float | None = None) -> None:
        super().__init__(kind.value)
        self.kind, self.retry_after = kind, retry_after


def classify(exc: BaseException) -> Failure | None:
    if isinstance(exc, Boom):
        error = ProviderError("bad request") if exc.kind is FailureKind.PERMANENT else ProviderUnreachable("503")
        return Failure(exc.kind, error, exc.retry_after)
    return None


def run_threads(n: int, target) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)


def max_in_any_window(events: list[tuple[float, int]], window: float) -> int:
    events = sorted(events)
    return max(sum(n for t, n in events if start <= t < start + window) for start, _ in events)


def admissions(limiter: RateLimiter) -> list[tuple[float, int]]:
    """(moment, cost) of every request the limiter lets start, on its own clock: a thread that a
    loaded machine schedules late after its admission must not look like a burst."""
    admitted: list[tuple[float, int]] = []
    acquire = limiter.acquire

    def recording(texts: int, tokens: int):  # type: ignore[no-untyped-def]
        entry = acquire(texts, tokens)
        admitted.append((entry[0], tokens if limiter.tpm else texts))
        return entry

    limiter.acquire = recording  # type: ignore[method-assign]
    return admitted


# -- hard caps ----------------------------------------------------------------------------------------

def test_hard_rpm_cap_holds_in_every_window_across_threads():
    limiter = RateLimiter(rpm=20, window=1.0, concurrency=4)
    starts = admissions(limiter)

    def worker(_: int) -> None:
        for _ in range(5):
            limiter.call(lambda: None, texts=2, tokens=10, classify=classify)

    began = time.monotonic()
    run_threads(4, worker)
    assert sum(n for _, n in starts) == 40
    assert max_in_any_window(starts, 1.0) <= 20
    assert time.monotonic() - began >= 1.0  # 40 texts at 20 per window cannot take less
    assert limiter.snapshot().waits > 0


def test_hard_tpm_cap_holds_in_every_window():
    limiter = RateLimiter(tpm=100, window=0.5)
    starts = admissions(limiter)
    for _ in range(8):
        limiter.call(lambda: None, texts=1, tokens=25, classify=classify)
    assert sum(n for _, n in starts) == 200
    assert max_in_any_window(starts, 0.5) <= 100


def test_batches_never_exceed_the_hard_text_cap():
    assert RateLimiter(rpm=30).max_texts_per_request(100) == 30
    assert RateLimiter().max_texts_per_request(100) == 100


# -- 429 ----------------------------------------------------------------------------------------------

def test_a_429_retry_delay_is_a_window_every_thread_waits_out():
    limiter = RateLimiter(concurrency=4)
    hit = threading.Event()
    first_429_at: list[float] = []
    later_starts: list[float] = []
    calls = {"n": 0}
    lock = threading.Lock()

    def fn() -> str:
        with lock:
            calls["n"] += 1
            first = calls["n"] == 1
        if first:
            first_429_at.append(time.monotonic())
            hit.set()
            raise Boom(FailureKind.RATE_LIMITED, retry_after=0.5)
        return "ok"

    def worker(i: int) -> None:
        if i:
            hit.wait()
            time.sleep(0.05)
            limiter.call(lambda: (later_starts.append(time.monotonic()), fn())[1], texts=1, tokens=1,
                         classify=classify)
        else:
            limiter.call(fn, texts=1, tokens=1, classify=classify)

    run_threads(4, worker)
    assert len(later_starts) == 3
    assert min(later_starts) >= first_429_at[0] + 0.5
    stats = limiter.snapshot()
    assert stats.rate_limited == 1 and stats.retries == 1 and stats.succeeded == 4


def test_aimd_halves_requests_in_flight_once_per_burst_and_recovers():
    limiter = RateLimiter(concurrency=8)
    entries = [limiter.acquire(1, 1) for _ in range(3)]  # three requests in flight...
    for entry in entries:  # ...all refused: one burst, one decrease
        limiter.release(success=False)
        limiter._on_rate_limited(0.05, entry)
    assert limiter.snapshot().allowed_in_flight == 4
    time.sleep(0.06)
    entry = limiter.acquire(1, 1)
    limiter.release(success=False)
    limiter._on_rate_limited(0.0, entry)
    assert limiter.snapshot().allowed_in_flight == 2
    for _ in range(2 + 3):  # one more slot per `allowed` successes
        limiter.call(lambda: None, texts=1, tokens=1, classify=classify)
    assert limiter.snapshot().allowed_in_flight == 4


def test_concurrency_bound_is_respected():
    limiter = RateLimiter(concurrency=3)
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def fn() -> None:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.02)
        with lock:
            active["now"] -= 1

    run_threads(8, lambda i: limiter.call(fn, texts=1, tokens=1, classify=classify))
    assert active["max"] <= 3


def test_a_daily_quota_is_reported_not_slept_through():
    limiter = RateLimiter(max_server_delay=60)

    calls = {"n": 0}

    def fn() -> None:
        calls["n"] += 1
        raise Boom(FailureKind.RATE_LIMITED, retry_after=3600)

    with pytest.raises(QuotaExhausted, match="asks to wait 3600s"):
        limiter.call(fn, texts=1, tokens=1, classify=classify)
    stats = limiter.snapshot()  # asked once, then reported: no retry, no wait
    assert calls["n"] == 1 and (stats.retries, stats.waits, stats.wait_seconds, stats.in_flight) == (0, 0, 0.0, 0)


def test_429s_are_bounded_and_a_refused_batch_is_split():
    limiter = RateLimiter(max_rate_limited=3, split_after=2)
    with pytest.raises(QuotaExhausted, match="after 3 attempts"):
        limiter.call(lambda: (_ for _ in ()).throw(Boom(FailureKind.RATE_LIMITED, 0.01)), texts=1, tokens=1,
                     classify=classify)
    with pytest.raises(BatchTooLarge):
        limiter.call(lambda: (_ for _ in ()).throw(Boom(FailureKind.RATE_LIMITED, 0.01)), texts=8, tokens=8,
                     classify=classify)


def test_run_batches_splits_what_the_limiter_hands_back():
    sent: list[list[int]] = []

    def send(batch: list[int]) -> tuple[str, int]:
        if len(batch) > 3:
            raise BatchTooLarge(len(batch))
        sent.append(batch)
        return "ok", 0

    results = list(run_batches([list(range(10))], 8, send))
    assert [b for b, _, _ in results] == sent
    assert sum(sent, []) == list(range(10)) and max(len(b) for b in sent) <= 3


# -- transient and permanent failures ----------------------------------------------------------------

def test_transient_failures_retry_with_backoff_and_are_bounded():
    limiter = RateLimiter(max_attempts=4, base_delay=0.01)
    attempts = {"n": 0}

    def fn() -> None:
        attempts["n"] += 1
        raise Boom(FailureKind.TRANSIENT)

    with pytest.raises(ProviderUnreachable, match="gave up after 4 attempts"):
        limiter.call(fn, texts=1, tokens=1, classify=classify)
    assert attempts["n"] == 4
    stats = limiter.snapshot()
    assert stats.transient_errors == 3 and stats.retries == 3 and stats.requests == 4


def test_permanent_errors_raise_at_once_and_unknown_errors_pass_through():
    limiter = RateLimiter()
    attempts = {"n": 0}

    def permanent() -> None:
        attempts["n"] += 1
        raise Boom(FailureKind.PERMANENT)

    with pytest.raises(ProviderError, match="bad request"):
        limiter.call(permanent, texts=1, tokens=1, classify=classify)
    assert attempts["n"] == 1 and limiter.snapshot().permanent_errors == 1
    with pytest.raises(KeyError):
        limiter.call(lambda: {}["missing"], texts=1, tokens=1, classify=classify)
    assert limiter.snapshot().in_flight == 0


def test_an_outage_does_not_become_a_retry_storm():
    """8 threads against a server down for 0.6 s: the shared, growing backoff window keeps the
    number of attempts small (each thread alone, retrying every ~base_delay, would make ~100)."""
    limiter = RateLimiter(concurrency=8, max_attempts=30, base_delay=0.05, seed=1)
    down_until = time.monotonic() + 0.6
    attempts = {"n": 0}
    lock = threading.Lock()

    def fn() -> None:
        with lock:
            attempts["n"] += 1
        if time.monotonic() < down_until:
            raise Boom(FailureKind.TRANSIENT)

    run_threads(8, lambda i: limiter.call(fn, texts=1, tokens=1, classify=classify))
    assert limiter.snapshot().succeeded == 8
    assert attempts["n"] <= 24  # measured: 13-14


# -- token estimates ---------------------------------------------------------------------------------

def test_token_estimates_and_cuts():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("日本語のテキスト") == 8  # non-ASCII: one token per character, never under-counted
    text, cut = truncate_to_tokens("word " * 100, 10)
    assert cut and estimate_tokens(text) <= 10 and text.endswith("word")
    assert truncate_to_tokens("short", 10) == ("short", False)
    text, cut = truncate_to_tokens("日本語" * 100, 50)
    assert cut and estimate_tokens(text) <= 50
    sent, cut = fit_text("x" * 100, 10, prefix="search_query: ")
    assert cut and sent.startswith("search_query: ") and estimate_tokens(sent) <= 10
