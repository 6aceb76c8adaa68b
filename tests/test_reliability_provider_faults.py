"""Item 3, provider faults through the Gemini emulator and the real google-genai client: 10% 5xx,
a 429 storm from a quota far below the demand, latency spikes longer than the client timeout,
malformed answers (wrong count, wrong dimension, NaN, zero vector) and connection resets.
The run completes, no malformed vector is written (every stored vector is exactly the target's
vector of its row), and the retries are bounded and reported in the run's summary.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from backfill_support import gemini, make_plan  # noqa: F401 (fixture)
from reliability_support import assert_nothing_lost, ledger, record
from tables import create_docs

ROWS = 400
BATCH = 25
MAX_ATTEMPTS = 6  # ProviderSettings.DEFAULT_MAX_ATTEMPTS: transient failures per request


def _spike(server, seconds: float) -> threading.Timer:  # type: ignore[no-untyped-def]
    """Answers slower than the client's timeout for `seconds`, then normal again."""
    server.configure(latency=2.0)
    timer = threading.Timer(seconds, lambda: server.configure(latency=0.0))
    timer.start()
    return timer


SCENARIOS: dict[str, dict[str, Any]] = {
    "10% 5xx": {"faults": {"error_rate": 0.10, "error_status": 503}},
    # Below the three batches (3 x 25 texts) a run puts in flight at once: they exceed it however
    # slowly a loaded machine sends them.
    "429 storm (quota 60 texts/s)": {"faults": {"quota_texts_per_minute": 60, "quota_window": 1.0}},
    "latency spikes > 1 s timeout": {"spike": 3.0, "env": {"REEMBED_TIMEOUT": "1"}},
    "8% malformed (count/dimension/NaN/zero)": {"faults": {"malformed_rate": 0.08, "malformed_kind": "mixed"}},
    "10% connection resets": {"faults": {"reset_rate": 0.10}},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_provider_faults_run_completes_and_writes_nothing_malformed(conn, run_cli, gemini, monkeypatch,  # type: ignore[no-untyped-def]
                                                                     scenario: str) -> None:
    spec = SCENARIOS[scenario]
    create_docs(conn, ROWS, index=None)
    name = make_plan(run_cli)
    for var, value in spec.get("env", {}).items():
        monkeypatch.setenv(var, value)
    gemini.configure(seed=7, **spec.get("faults", {}))
    timer = _spike(gemini, spec["spike"]) if "spike" in spec else None
    runs = 0
    summaries = []
    try:
        # A provider that garbles three answers in a row stops the run (exit 1, nothing malformed
        # written); running it again continues. Count how often that was needed.
        while True:
            runs += 1
            result = run_cli("run", name, "--json", "--no-progress", "--batch-size", str(BATCH), "--concurrency", "3")
            if result.exit_code == 0:
                summaries.append(json.loads(result.stdout))
                break
            assert "malformed" in scenario and result.exit_code == 1, result.output
            assert "nothing malformed was written" in result.stderr, result.stderr
            assert runs < 5, result.stderr
    finally:
        if timer:
            timer.cancel()
    summary = summaries[-1]
    assert summary["rows_pending"] == 0 and summary["phase"] == "backfilled"
    assert_nothing_lost(conn, name)  # so no malformed vector was written
    stats = gemini.stats
    figures = ledger(conn, name)
    assert figures["rows_embedded_twice"] == 0
    requests = stats.embed_requests + stats.resets
    faults = stats.server_errors + stats.resets + stats.rate_limited + stats.malformed
    retries = summary["provider_retries"]
    batches = ROWS // BATCH
    # Bounded: never more than MAX_ATTEMPTS-1 transient retries per request; 429s are paced by
    # the server's RetryInfo, so a storm costs waiting, not a flood of requests.
    assert requests <= batches * MAX_ATTEMPTS * 2, (requests, stats)
    if "malformed" in scenario:
        assert stats.malformed > 0
    elif "latency" in scenario:
        assert retries > 0, summary  # the timed-out requests were retried
    else:
        assert faults > 0 and retries > 0, (stats, summary)
    record("3 provider faults", scenario, f"run completed ({runs} run{'s' if runs > 1 else ''}); "
           "no malformed vector written; nothing lost",
           http_requests=requests, faults_served=faults, status_429=stats.rate_limited,
           server_errors=stats.server_errors, resets=stats.resets, malformed_served=stats.malformed,
           provider_retries=retries, malformed_batches_refused=summary["malformed"], runs_needed=runs,
           texts_sent=stats.texts, seconds=round(summary["seconds"], 1))
