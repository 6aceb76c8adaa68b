"""reembed as a library: the lifecycle from Python, for Airflow, Dagster or a script.

Each function is one CLI command with the same options (as keyword arguments, same defaults) and
returns the same typed result the command renders. Errors are the exceptions of
`toolkit.errors`, each with the CLI's `exit_code`: `BadInput` (2), `GateFailed` (1),
`Unreachable` (3). Every function opens its own connection (`dsn`: a libpq DSN; None resolves
as the CLI does: DATABASE_URL, then the PG* variables, then the embedded PostgreSQL) and is safe
to run again: a rerun of finished work returns without doing it twice.

    from toolkit import api

    api.plan("public.docs", column="embedding", text=["content"], title="title", name="docs-gemini")
    api.run("docs-gemini", rpm=3000)
    api.index("docs-gemini")
    if api.verify("docs-gemini").passed:
        api.cutover("docs-gemini")

Irreversible steps (`cleanup`, `abandon`) never ask: calling them is the confirmation. Provider
settings (keys, endpoints, timeouts) come from the environment, as for the CLI.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import psycopg

from toolkit.db import Database
from toolkit.phases.backfill import DEFAULT_BATCH_SIZE, DEFAULT_LEASE_SECONDS, RunOptions, RunSummary
from toolkit.phases.cleanup import DropResult
from toolkit.phases.cutover import DEFAULT_CATCH_UP_ROWS, CutoverOptions, CutoverResult
from toolkit.phases.index import DEFAULT_MEMORY_CAP, IndexResult, parse_size
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES
from toolkit.phases.planning import PlanRequest, PlanResult
from toolkit.phases.rollback import RollbackResult
from toolkit.phases.status import PlanStatus
from toolkit.phases.verification.options import VerifyOptions
from toolkit.phases.verify import VerifyResult
from toolkit.plan import DEFAULT_SOURCE, DEFAULT_TARGET
from toolkit.providers.settings import DEFAULT_CONCURRENCY

__all__ = ["CutoverResult", "DropResult", "IndexResult", "PlanResult", "PlanStatus", "RollbackResult", "RunSummary",
           "VerifyOptions", "VerifyResult", "abandon", "cleanup", "cutover", "index", "plan", "rollback", "run",
           "status", "verify"]


@contextmanager
def _connected(dsn: str | None) -> Iterator[tuple[Database, psycopg.Connection]]:
    from toolkit.migrations import ensure_schema

    db = Database.from_flag(dsn)
    conn = db.connect()
    try:
        ensure_schema(conn, db.conninfo())
        yield db, conn
    finally:
        conn.close()


def plan(table: str, *, column: str, text: Sequence[str], title: str | None = None, to: str = DEFAULT_TARGET,
         source: str = DEFAULT_SOURCE, dimensions: int | None = None, name: str | None = None,
         output: str | Path | None = None, rpm: int | None = None, tpm: int | None = None, index: str | None = None,
         offline: bool = False, dsn: str | None = None) -> PlanResult:
    """`reembed plan`: validate against the live table, estimate, register, write the plan file."""
    from toolkit.phases.planning import make_plan

    request = PlanRequest(table=table, column=column, text_columns=list(text), title_column=title, target=to,
                          source=source, dimensions=dimensions, name=name,
                          output=Path(output) if output is not None else None, rpm=rpm, tpm=tpm, offline=offline,
                          index=index)
    with _connected(dsn) as (db, conn):
        return make_plan(db, conn, request)


def run(plan: str, *, batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int = DEFAULT_CONCURRENCY, workers: int = 1,
        rpm: int | None = None, tpm: int | None = None, max_rows_per_second: float | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS, rollback_fill: bool = False, embed_process: bool = True,
        dsn: str | None = None) -> RunSummary:
    """`reembed run`: prepare when needed, then embed until no row is pending (no progress bar)."""
    from toolkit.phases.backfill import rollback_fill as fill_old
    from toolkit.phases.backfill import run as run_backfill

    options = RunOptions(batch_size=batch_size, concurrency=concurrency, workers=workers, rpm=rpm, tpm=tpm,
                         max_rows_per_second=max_rows_per_second, lease_seconds=lease_seconds, progress=False,
                         embed_process=embed_process)
    with _connected(dsn) as (db, _conn):
        return fill_old(db, plan, options) if rollback_fill else run_backfill(db, plan, options)


def index(plan: str, *, maintenance_work_mem: str = DEFAULT_MEMORY_CAP, workers: int | None = None,
          dsn: str | None = None) -> IndexResult:
    """`reembed index`: build (or keep) the same kind of index on the new vectors, CONCURRENTLY."""
    from toolkit.phases.index import build
    from toolkit.plan import load

    with _connected(dsn) as (db, conn):
        the_plan, record = load(conn, plan)
        return build(db, conn, the_plan, record, max_memory=parse_size(maintenance_work_mem), workers=workers,
                     progress=False)


def verify(plan: str, *, options: VerifyOptions | None = None, dsn: str | None = None,
           **thresholds: Any) -> VerifyResult:
    """`reembed verify`: every check with its value and verdict; `.passed` is the gate cutover uses.
    Thresholds are VerifyOptions' fields (sample, k, min_recall, margin, no_source, ...)."""
    from toolkit.phases.verify import run_verify
    from toolkit.plan import load

    chosen = options or VerifyOptions(**{"progress": False, **thresholds})
    with _connected(dsn) as (db, conn):
        the_plan, record = load(conn, plan)
        return run_verify(db, conn, the_plan, record, chosen)


def cutover(plan: str, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
            force: bool = False, refresh_matviews: bool = False, catch_up_rows: int = DEFAULT_CATCH_UP_ROWS,
            dsn: str | None = None) -> CutoverResult:
    """`reembed cutover`: swap the new vectors in under the column's name in one short transaction.
    From then on the application must embed its queries with the plan's target model."""
    from toolkit.phases.cutover import cutover as cutover_plan
    from toolkit.plan import load

    options = CutoverOptions(lock_timeout_ms=lock_timeout_ms, retries=retries, force=force,
                             refresh_matviews=refresh_matviews, catch_up_rows=catch_up_rows)
    with _connected(dsn) as (db, conn):
        the_plan, record = load(conn, plan)
        return cutover_plan(conn, the_plan, record, options, db=db)


def rollback(plan: str, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
             refresh_matviews: bool = False, dsn: str | None = None) -> RollbackResult:
    """`reembed rollback`: the exact reverse swap. Switch the application's query model back; a
    new cutover needs a new passing verify."""
    from toolkit.phases.rollback import rollback as rollback_plan
    from toolkit.plan import load

    with _connected(dsn) as (_db, conn):
        the_plan, record = load(conn, plan)
        return rollback_plan(conn, the_plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries,
                             refresh_matviews=refresh_matviews)


def cleanup(plan: str, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
            dsn: str | None = None) -> DropResult:
    """`reembed cleanup --yes`: drop the old vectors and the tracking. Final: no rollback after it."""
    from toolkit.phases.cleanup import cleanup as cleanup_plan
    from toolkit.plan import load

    with _connected(dsn) as (_db, conn):
        the_plan, record = load(conn, plan)
        return cleanup_plan(conn, the_plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)


def abandon(plan: str, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, retries: int = DEFAULT_RETRIES,
            dsn: str | None = None) -> DropResult:
    """`reembed abandon --yes`: drop the new vectors, the tracking and the ledger; frees the name."""
    from toolkit.phases.cleanup import abandon as abandon_plan
    from toolkit.plan import load

    with _connected(dsn) as (_db, conn):
        the_plan, record = load(conn, plan)
        return abandon_plan(conn, the_plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)


def status(plan: str | None = None, *, dsn: str | None = None) -> list[PlanStatus]:
    """`reembed status`: the named plan, or every live plan. Read-only."""
    from toolkit.migrations import current_revision
    from toolkit.phases.status import plan_status

    db = Database.from_flag(dsn)
    conn = db.connect()
    try:
        if current_revision(conn) is None:
            if plan:
                from toolkit.errors import BadInput

                raise BadInput(f"no plan named {plan!r}: this database has no schema reembed")
            return []
        return plan_status(conn, plan)
    finally:
        conn.close()
