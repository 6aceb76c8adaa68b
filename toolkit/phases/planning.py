"""`reembed plan`: validate against the live table, estimate, preflight, register, write the file.

Planning never touches the user's table: it only reads the catalog and writes reembed.plans.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from toolkit import access, catalog, surroundings
from toolkit.catalog import TableInfo
from toolkit.db import Database
from toolkit.errors import BadInput, ProviderError, ReembedError, Unreachable
from toolkit.estimate import estimate
from toolkit.phases import SQL_PHASES
from toolkit.plan import DEFAULT_SOURCE, DEFAULT_TARGET, Plan, build
from toolkit.state import register_plan

log = logging.getLogger(__name__)


@dataclass
class PlanRequest:
    table: str
    column: str
    text_columns: list[str]
    title_column: str | None = None
    target: str = DEFAULT_TARGET
    source: str = DEFAULT_SOURCE
    dimensions: int | None = None
    name: str | None = None
    output: Path | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    offline: bool = False
    index: str | None = None
    strategy: str | None = None  # None: the recommended one


@dataclass
class PlanResult:
    plan: Plan
    plan_id: int
    path: Path
    preflight: str  # what the preflight call found, in words
    triggers: list[str]  # the application's triggers and whether the migration fires them
    subscribers: surroundings.SubscriberAdvice  # what logical-replication subscribers need, in order


@dataclass
class Inspection:
    info: TableInfo
    surroundings: surroundings.Surroundings

    def to_json(self) -> dict:
        return {**self.info.to_json(), **self.surroundings.to_json()}


def inspection(conn: psycopg.Connection, table: str) -> Inspection:
    """The table and what reacts to a migration of it. Read-only."""
    info = catalog.inspect_table(conn, table)
    return Inspection(info=info, surroundings=surroundings.load(conn, info.oid))


def make_plan(db: Database, conn: psycopg.Connection, request: PlanRequest) -> PlanResult:
    plan, info = build(conn, table=request.table, column=request.column, text_columns=request.text_columns,
                       title_column=request.title_column, target=request.target, source=request.source,
                       dimensions=request.dimensions, name=request.name, index_request=request.index,
                       strategy=request.strategy)
    access.refuse_missing_privileges(conn, info, plan.column)
    path = request.output or Path(f"reembed-{plan.name}.toml")
    if path.exists() and not path.is_file():
        raise BadInput(f"--output {path} is not a file")
    plan.estimate = estimate(conn, plan, info, rpm=request.rpm, tpm=request.tpm, rpd=request.rpd)
    preflight = "skipped (--offline)" if request.offline else preflight_target(plan)
    with conn.transaction():  # a plan file that cannot be written leaves no registered plan behind
        record = register_plan(conn, plan.to_spec(), plan.table_fingerprint)
        try:
            plan.write(path)
        except OSError as exc:
            raise BadInput(f"cannot write plan file {path}: {exc.strerror}") from None
    around = surroundings.load(conn, info.oid)
    return PlanResult(plan=plan, plan_id=record.id, path=path, preflight=preflight,
                      triggers=surroundings.trigger_notes(around, plan.strategy),
                      subscribers=surroundings.subscriber_advice(plan, around))


def preflight_target(plan: Plan) -> str:
    """Embed one probe text with the target and check the dimension. Unreachable is a note, not a failure;
    a wrong dimension or a permanent provider error (unknown model, bad key) refuses the plan."""
    from toolkit.providers import make_embedder
    from toolkit.providers.settings import ProviderSettings

    settings = ProviderSettings.from_env(max_attempts=2, timeout=10.0)
    try:
        embedder = make_embedder(plan.target_ref, plan.dimensions, settings)
    except ReembedError as exc:
        return f"not run: {exc}"
    try:
        batch = embedder.embed_documents(["reembed preflight probe"])
    except Unreachable as exc:
        return f"target not reachable, not checked: {exc}"
    except ProviderError as exc:
        raise BadInput(f"preflight: {plan.target} refused the probe: {exc}") from None
    finally:
        embedder.close()
    got = batch.vectors.shape[1] if batch.vectors.ndim == 2 and len(batch.vectors) else 0
    if got != plan.dimensions:
        raise BadInput(f"preflight: {plan.target} answered {got} dimensions, the plan needs {plan.dimensions}")
    norm = float(np.linalg.norm(batch.vectors[0]))
    return f"ok: {plan.target} answered a {got}-dim vector (norm {norm:.3f} after normalization)"


def planned_sql(conn: psycopg.Connection, plan: Plan, plan_id: int | None = None) -> dict[str, list[str]]:
    """The exact statements each phase will run, rendered for review (with the registered plan's id
    where a phase's objects are named after it)."""
    out: dict[str, list[str]] = {}
    for phase in SQL_PHASES:
        try:
            module = importlib.import_module(f"toolkit.phases.{phase}")
        except ModuleNotFoundError:
            continue
        statements = getattr(module, "planned_sql", None)
        if statements is None:
            continue
        parameters = inspect.signature(statements).parameters
        extra = {k: v for k, v in (("plan_id", plan_id), ("conn", conn)) if k in parameters}
        composed = statements(plan, **extra)
        out[phase] = [s.as_string(conn) for s in composed]
    return out
