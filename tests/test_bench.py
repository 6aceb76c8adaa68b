"""A quick smoke of `reembed bench` at tiny size: it runs end to end and reports every figure."""

from __future__ import annotations

import json

from toolkit.bench import BenchResult, SwapFigure, render


def test_bench_reports_every_figure(run_cli, conn) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("bench", "--rows", "400", "--small-rows", "50", "--quota", "1200", "--quota-rows", "60",
                     "--latency-ms", "20", "--strategy-rows", "200", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    labels = [w["label"] for w in report["write"]]
    assert len(labels) == 3 and "page-striped" in labels[0] and "primary-key" in labels[1]
    striped, naive = report["write"][0], report["write"][1]
    for figure in report["write"]:
        assert figure["rows_per_second"] > 0 and figure["write_rows_per_second"] > 0
        assert figure["updates"] >= figure["rows"] and 0 < figure["peak_rss_mb"] < 1000
    # The point of the ledger's order: most updates HOT on the HNSW-indexed table, unlike key order.
    assert striped["hot_share"] > 0.6 > naive["hot_share"]
    quota = report["quota"][0]
    assert quota["quota_texts_per_minute"] == 1200 and quota["texts_per_minute"] > 0
    assert quota["rate_limited_429"] >= 0
    assert report["memory"]["peak_rss_mb_small"] > 0
    # (d) the swap's lock time, per round and direction, printed (the figure no test may bound).
    swap = report["swap"]
    assert swap["rows"] == 400 and len(swap["cutover_lock_ms"]) == len(swap["rollback_lock_ms"]) == swap["rounds"]
    assert min(swap["cutover_lock_ms"] + swap["rollback_lock_ms"]) > 0 and swap["attempts"] >= 2 * swap["rounds"]
    figure = SwapFigure(**swap)
    text = render(BenchResult(rows=400, dims=768, hnsw_m=16, swap=figure))
    assert "(d) lock held by the swap" in text and f"cutover median {figure.medians[0]:.1f} ms" in text
    # (e) both strategies, each a whole migration with its lock times.
    cases = {(f["strategy"], f["rows"]): f for f in report["strategies"]}
    assert set(cases) == {("column", 200), ("copy", 200)}
    for figure in cases.values():
        assert figure["rows_per_second"] > 0 and figure["index_seconds"] >= 0
        assert figure["cutover_lock_ms"] > 0 and figure["rollback_lock_ms"] > 0
    # The scratch database is gone.
    names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'reembed_bench_%'")]
    assert names == []


def test_bench_rejects_nonsense_sizes(run_cli) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("bench", "--rows", "5").exit_code == 2
