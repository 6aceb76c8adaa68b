"""verify at the size DESIGN.md measures (20k rows, 768 dims): how long each check takes and the
index-versus-exact recall figure at the default and a starved hnsw.ef_search. A soak: run with
`pytest -m soak tests/test_verify_scale.py -s`."""

from __future__ import annotations

import time

import pytest

from toolkit.db import Database
from toolkit.phases.verification.options import VerifyOptions
from toolkit.phases.verify import run_verify
from verify_support import migrated, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("verify_env")]


def test_verify_20k_rows(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    m = migrated(conn, run_cli, rows=20_000)
    print(f"\nbuilt a 20k-row migration (vectors, ledger, HNSW m=24) in {time.perf_counter() - started:.1f} s")
    for ef in (None, 10):
        started = time.perf_counter()
        m.reload()
        result = run_verify(Database(), conn, m.plan, m.record, VerifyOptions(progress=False, ef_search=ef))
        print(f"verify (ef_search {ef or 'session default'}): {'PASSED' if result.passed else 'FAILED'} "
              f"in {time.perf_counter() - started:.1f} s")
        for c in result.checks:
            print(f"  {c.name:<15} {c.evidence['seconds']:>7.2f} s  {'pass' if c.passed else 'FAIL'}  {c.summary}")
        recall = next(c for c in result.checks if c.name == "ann_recall")
        if ef is None:
            assert result.passed and recall.value >= 0.95
        assert recall.evidence["exact_plan_uses"] == [] and recall.evidence["index_plan_uses"]
