"""The Python API drives the whole lifecycle with the CLI's options and returns typed results,
as an Airflow or Dagster task would use it."""

from __future__ import annotations

import pytest

from backfill_support import gemini  # noqa: F401 (fixture)
from tables import create_docs
from toolkit import api
from toolkit.errors import BadInput, GateFailed


def test_the_lifecycle_from_python(conn, database, gemini, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 120)
    planned = api.plan("docs", column="embedding", text=["content"], title="title", name="nightly", offline=True,
                       output=tmp_path / "nightly.toml")
    assert isinstance(planned, api.PlanResult) and planned.plan.name == "nightly" and planned.path.exists()
    summary = api.run("nightly", batch_size=50, concurrency=2)
    assert isinstance(summary, api.RunSummary)
    assert summary.phase == "backfilled" and summary.progress.rows_pending == 0
    assert api.run("nightly").counters.rows_written == 0  # a rerun does nothing twice
    built = api.index("nightly")
    assert isinstance(built, api.IndexResult) and built.action == "built" and built.size_bytes > 0
    with pytest.raises(GateFailed, match="not been verified"):
        api.cutover("nightly")
    verdict = api.verify("nightly", no_source=True, sample=20)
    assert isinstance(verdict, api.VerifyResult) and verdict.passed
    swapped = api.cutover("nightly", lock_timeout_ms=200)
    assert isinstance(swapped, api.CutoverResult) and swapped.swap is not None
    [now] = api.status("nightly")
    assert isinstance(now, api.PlanStatus) and now.phase == "cut_over" and now.reads == now.new_vectors
    back = api.rollback("nightly")
    assert isinstance(back, api.RollbackResult) and back.swap is not None
    assert api.status("nightly")[0].phase == "rolled_back"
    dropped = api.abandon("nightly")
    assert isinstance(dropped, api.DropResult) and dropped.dropped_anything
    assert api.abandon("nightly").already_done
    assert api.status() == []  # no live plan left


def test_errors_are_the_cli_exceptions_with_their_exit_codes(database) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInput) as info:
        api.run("no-such-plan")
    assert info.value.exit_code == 2
