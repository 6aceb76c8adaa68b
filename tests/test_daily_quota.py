"""Daily quotas: --rpd in the limiter and the estimate, and a 429 whose quota is a per-day one,
which stops the run (exit 1, leases released, the time it resets) instead of retrying into it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from backfill_support import gemini, make_plan, mismatches, reembed_subprocess, shadow_column  # noqa: F401
from cli_support import error_lines
from tables import create_docs

from toolkit.errors import DailyQuotaExhausted
from toolkit.providers import make_embedder
from toolkit.providers.base import ModelRef
from toolkit.ratelimit import RateLimiter, quota_day_end, quota_day_start

GEMINI = ModelRef.parse("gemini:gemini-embedding-001")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def test_the_quota_day_runs_from_midnight_pacific_through_daylight_saving() -> None:
    winter = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)  # 01:30 PST
    assert quota_day_start(winter).astimezone(timezone.utc) == datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    assert quota_day_end(winter).astimezone(timezone.utc) == datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)
    summer = datetime(2026, 7, 1, 6, 59, tzinfo=timezone.utc)  # 23:59 PDT on June 30
    assert quota_day_end(summer).astimezone(timezone.utc) == datetime(2026, 7, 1, 7, 0, tzinfo=timezone.utc)
    spring = datetime(2026, 3, 8, 12, 0, tzinfo=timezone.utc)  # 04:00 PDT: the 23-hour day (DST starts)
    utc = timezone.utc
    assert quota_day_end(spring).astimezone(utc) - quota_day_start(spring).astimezone(utc) == timedelta(hours=23)


def test_rpd_counts_texts_closes_at_the_cap_and_opens_the_next_quota_day() -> None:
    clock = Clock(datetime(2026, 12, 1, 18, 0, tzinfo=timezone.utc))
    limiter = RateLimiter(rpd=250, now=clock)
    for _ in range(2):
        assert limiter.max_texts_per_request(100) == 100
        limiter.acquire(100, 0)
        limiter.release()
    assert limiter.max_texts_per_request(100) == 50  # the rest of the day's budget is still used
    with pytest.raises(DailyQuotaExhausted) as stopped:
        limiter.acquire(100, 0)
    message = str(stopped.value)
    assert "--rpd 250" in message and "resets at midnight Pacific time, in 14h 00m (2026-12-02 08:00 UTC)" in message
    assert stopped.value.exit_code == 1
    with pytest.raises(DailyQuotaExhausted):
        limiter.acquire(1, 0)  # closed: even what would fit is refused until the day ends
    assert limiter.snapshot().texts_today == 200
    clock.at = datetime(2026, 12, 2, 8, 0, 1, tzinfo=timezone.utc)
    limiter.acquire(100, 0)
    limiter.release()
    assert limiter.snapshot().texts_today == 100


def test_a_per_day_429_stops_at_once_and_nothing_more_is_sent(gemini_emulator, provider_settings) -> None:
    gemini_emulator.configure(quota_texts_per_day=150)
    limiter = RateLimiter(concurrency=2, max_attempts=3)  # its own: a closed limiter must not outlive the test
    embedder = make_embedder(GEMINI, 128, provider_settings, limiter=limiter)
    embedder.embed_documents([f"text {i}" for i in range(100)])
    with pytest.raises(DailyQuotaExhausted) as stopped:
        embedder.embed_documents([f"more {i}" for i in range(100)])
    message = str(stopped.value)
    assert "EmbedContentRequestsPerDayPerProjectPerModel-FreeTier, limit 150" in message
    assert "resets at midnight Pacific time, in" in message
    # One refused request, no retry: the RetryInfo says seconds, only the quota id tells it apart.
    assert gemini_emulator.stats.daily_limited == 1 and gemini_emulator.stats.embed_requests == 2
    with pytest.raises(DailyQuotaExhausted):
        embedder.embed_documents(["x"])
    assert gemini_emulator.stats.embed_requests == 2


def test_a_per_minute_429_is_still_waited_out(gemini_emulator, provider_settings) -> None:
    gemini_emulator.configure(script=["429"], retry_delay=0.05)
    embedder = make_embedder(GEMINI, 128, provider_settings, limiter=RateLimiter(concurrency=2))
    result = embedder.embed_documents(["a", "b"])
    assert result.retries == 1 and gemini_emulator.stats.daily_limited == 0


@pytest.mark.parametrize("how", ["provider", "rpd"])
def test_the_run_stops_cleanly_on_the_daily_quota_and_the_next_day_finishes(conn, run_cli, gemini, tmp_path,
                                                                           how) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 450, index=None)
    name = make_plan(run_cli)
    args = ["run", name, "--no-progress", "--batch-size", "50", "--concurrency", "2"]
    if how == "provider":
        gemini.configure(quota_texts_per_day=200, retry_delay=30)  # a retry would wait 30 s per attempt
        proc = reembed_subprocess(*args, cwd=tmp_path)
    else:
        proc = reembed_subprocess(*args, "--rpd", "200", cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "resets at midnight Pacific time, in" in err and "Traceback" not in err
    assert len(error_lines(err)) == 1  # one line
    done, leased = conn.execute("SELECT count(*) FILTER (WHERE state = 'done'), count(lease_owner) "
                                "FROM reembed.ledger").fetchone()
    assert 0 < done <= 200 and leased == 0  # nothing past the quota, every lease given back
    if how == "provider":
        assert gemini.stats.texts <= 200
    gemini.reset()  # a new quota day
    again = reembed_subprocess("run", name, "--no-progress", "--json", cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert json.loads(out)["rows_written"] == 450 - done
    assert mismatches(conn, shadow_column(conn, name)) == []


def test_the_estimate_counts_days_when_the_daily_cap_binds(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 300, index=None)
    free = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--name", "free",
                   "--json", "-o", "free.toml")
    assert free.exit_code == 0, free.output
    estimate = json.loads(free.stdout)["spec"]["estimate"]
    assert (estimate["rpd"], estimate["days_at_quota"]) == (1000, 0.0)  # 300 rows fit in one quota day
    conn.execute("DELETE FROM reembed.plans")
    capped = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--name", "capped",
                     "--rpd", "100", "-o", "capped.toml")
    assert capped.exit_code == 0, capped.output
    assert "~3 days at 100 texts/day (the daily cap binds" in capped.stdout
    assert "with --batch-api (1 batch jobs" in capped.stdout
