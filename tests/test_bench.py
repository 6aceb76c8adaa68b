"""A quick smoke of `reembed bench` at tiny size: it runs end to end and reports every figure."""

from __future__ import annotations

import json

from toolkit.bench import BenchResult, FloorFigure, QuotaFigure, SwapFigure, render
from toolkit.strategies import STRATEGIES


def test_bench_reports_every_figure(run_cli, conn) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("bench", "--rows", "400", "--small-rows", "50", "--quota", "1200", "--quota-rows", "60",
                     "--latency-ms", "20", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # (a) every strategy end to end beside its two floors, measured in the same bench, and the ratio.
    assert [f["strategy"] for f in report["floors"]] == list(STRATEGIES)
    for floor in report["floors"]:
        slowest = min(floor["database_floor_rows_per_second"], floor["provider_floor_rows_per_second"])
        assert slowest > 0 and floor["end_to_end_rows_per_second"] > 0
        assert floor["ratio"] == round(floor["end_to_end_rows_per_second"] / slowest, 3)
        # Beside it, the same run with the provider client in the run's own process.
        assert floor["embed_here_ratio"] == round(floor["embed_here_rows_per_second"] / slowest, 3) > 0
        assert floor["slower_floor"] in ("database", "provider")
        # The embedded server runs here: its CPU is read from /proc.
        assert floor["end_to_end_server_cpu_ms_per_row"] > 0 and floor["database_floor_server_cpu_ms_per_row"] > 0
    # (b) the column strategy's write order: page-striped, primary-key order, no index.
    labels = [w["label"] for w in report["write"] if w["strategy"] == "column"]
    assert "page-striped" in labels[0] and "primary-key" in labels[1] and "no index" in labels[2]
    column = [w for w in report["write"] if w["strategy"] == "column"]
    striped, naive = column[0], column[1]
    for figure in report["write"]:
        assert figure["rows_per_second"] > 0 and figure["write_rows_per_second"] > 0
        assert 0 < figure["peak_rss_mb"] < 1000
    for figure in column:
        assert figure["updates"] >= figure["rows"]
    # The point of the ledger's order: most updates HOT on the HNSW-indexed table, unlike key order.
    assert striped["hot_share"] > 0.6 > naive["hot_share"]
    quota = report["quota"][0]
    assert quota["quota_texts_per_minute"] == 1200 and quota["texts_per_minute"] > 0
    assert quota["rate_limited_429"] >= 0
    # 60 texts under a 1200/min quota take seconds: the reading must not pass for a sustained rate.
    assert quota["seconds"] < 60 and "burst inside one minute's allowance" in QuotaFigure(**quota).reading()
    sustained = QuotaFigure(**{**quota, "seconds": 61.0, "texts_per_minute": 1150.0, "fraction_of_quota": 0.958})
    assert sustained.reading() == "1150 texts/min = 95.8% of quota"
    assert report["memory"]["peak_rss_mb_small"] > 0
    # (e) the swap's lock time, per strategy, round and direction, printed (the figure no test may bound).
    assert [s["strategy"] for s in report["swaps"]] == list(STRATEGIES)
    for swap in report["swaps"]:
        assert swap["rows"] == 400 and len(swap["cutover_lock_ms"]) == len(swap["rollback_lock_ms"]) == swap["rounds"]
        assert min(swap["cutover_lock_ms"] + swap["rollback_lock_ms"]) > 0 and swap["attempts"] >= 2 * swap["rounds"]
    figure = SwapFigure(**report["swaps"][0])
    floors = [FloorFigure(**f) for f in report["floors"]]
    text = render(BenchResult(rows=400, dims=768, hnsw_m=16, swaps=[figure], floors=floors))
    assert "(e) lock held by the swap" in text and f"cutover median {figure.medians[0]:.1f} ms" in text
    assert f"ratio {floors[0].ratio:.2f} of the {floors[0].slower_floor} floor" in text
    assert f"ratio {floors[0].embed_here_ratio:.2f} (the provider client in the run's process)" in text
    # The scratch databases are gone.
    names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'reembed_bench_%'")]
    assert names == []


def test_bench_rejects_nonsense_sizes(run_cli) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("bench", "--rows", "5").exit_code == 2
    assert run_cli("bench", "--lifecycle", "20000,abc").exit_code == 2
    assert run_cli("bench", "--lifecycle", "50").exit_code == 2


def test_lifecycle_reports_every_phase(run_cli, conn) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("bench", "--lifecycle", "300", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(f["strategy"], f["rows"]) for f in report["figures"]] == [(s, 300) for s in STRATEGIES]
    for figure in report["figures"]:
        assert figure["seed_seconds"] > 0 and figure["run_rows_per_second"] > 0 and figure["run_peak_rss_mb"] > 0
        assert figure["index_seconds"] > 0 and figure["verify_seconds"] > 0
        assert figure["cutover_lock_ms"] is not None and figure["cutover_lock_ms"] > 0
        # The embedded server runs here: its CPU and its WAL are read, per migrated row.
        assert figure["server_cpu_ms_per_row"] > 0
        assert figure["run_per_row"]["wal_bytes"] > 3072  # at least the new vector itself
    assert "shared_buffers" in report["settings"]
    # The clones and the size's template are gone (--keep-templates keeps the template).
    names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'reembed_soak_%'")]
    assert names == []
