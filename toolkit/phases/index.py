"""`reembed index`: build on the new vectors every index the plan's strategy names (for each
vector index of the original column, the same kind), one after the other.

Check: the backfill has finished (building the graph earlier would turn every backfill write
into an index insert and stop HOT updates), and the strategy can build what was planned.
Action: CREATE INDEX CONCURRENTLY with maintenance_work_mem sized to the graph and parallel
maintenance workers; progress from pg_stat_progress_create_index. A valid index of that name is
kept; an INVALID leftover of an interrupted build is dropped (CONCURRENTLY) and rebuilt.
Inverse: drop the new indexes (`drop_new_indexes`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from toolkit.db import Database
from toolkit.errors import BadInput, GateFailed
from toolkit.phases.ddl import template
from toolkit.indexes import bounded_identifier
from toolkit.phases.locking import blocking_sessions
from toolkit.phases.prepare import with_lock_timeout
from toolkit.plan import Plan
from toolkit.progress import progress as show_progress
from toolkit.state import PlanRecord, log_event, set_phase
from toolkit.strategies import IndexTarget, strategy_for

log = logging.getLogger(__name__)

# Phases in which the shadow column is complete enough to index (see module docstring).
INDEXABLE_PHASES = ("backfilled", "indexed", "verified", "rolled_back")
DEFAULT_MEMORY_CAP = "1GB"
GRAPH_OVERHEAD = 1.3  # HNSW graph: neighbour lists and element headers on top of the vectors
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}


def parse_size(text: str) -> int:
    """'512MB', '2GB', '65536kB' or plain bytes -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise BadInput(f"size {text!r} must be a number with an optional unit (kB, MB, GB), e.g. 2GB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").lower()])


def graph_memory(rows: int, dims: int, element_bytes: int = 4) -> int:
    """Bytes the HNSW build wants in memory: rows x (4*dims + 8) x 1.3 (2*dims for halfvec)."""
    return int(rows * (element_bytes * dims + 8) * GRAPH_OVERHEAD)


@dataclass
class BuildSettings:
    maintenance_work_mem: int  # bytes
    workers: int
    rows: int
    wanted: int  # bytes the graph wants, before the cap


@dataclass
class IndexBuilt:
    """What happened to one index."""

    index: str
    action: str  # built | kept
    dropped_invalid: bool = False
    seconds: float = 0.0
    size_bytes: int = 0


@dataclass
class IndexResult:
    """The whole phase; `index`, `dropped_invalid`, `seconds` and `size_bytes` describe all
    indexes together (the first one's name), `indexes` each one."""

    action: str  # built (at least one was) | kept (all were there) | none_planned
    index: str | None
    dropped_invalid: bool = False
    seconds: float = 0.0
    size_bytes: int = 0
    settings: BuildSettings | None = None
    notes: list[str] = field(default_factory=list)
    indexes: list[IndexBuilt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("settings", "indexes")}
        out["settings"] = self.settings.__dict__ if self.settings else None
        out["indexes"] = [i.__dict__ for i in self.indexes]
        return out


def planned_sql(plan: Plan, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
    """The session settings and the builds; with `conn`, the memory worked out for the table's rows
    now, with the default cap (`reembed index` works it out again when it runs)."""
    targets = strategy_for(plan).index_targets(plan, "backfilled")
    if not targets:
        return []
    if conn is not None:
        settings = build_settings(conn, plan, parse_size(DEFAULT_MEMORY_CAP), None)
        session = _session(settings)
    else:
        session = sql.SQL("SELECT set_config('maintenance_work_mem', {}, false)").format(
            sql.Literal("<rows x (4*dims+8) x 1.3, capped by --maintenance-work-mem>"))
    return [session] + [t.statement for t in targets]


def _session(settings: BuildSettings) -> sql.Composed:
    return template("index_session", memory=sql.Literal(f"{settings.maintenance_work_mem // 1024}kB"),
                    workers=sql.Literal(str(settings.workers)))


def _index_state(conn: psycopg.Connection, target: IndexTarget) -> tuple[bool, bool, str] | None:
    """(valid, ready, definition) of the index `target.name` in its schema, or None."""
    row = conn.execute(
        """SELECT i.indisvalid, i.indisready, pg_get_indexdef(i.indexrelid), i.indrelid = to_regclass(%s)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s""",
        (target.table.as_string(conn), target.schema, target.name)).fetchone()
    if row is None:
        return None
    if not row[3]:
        raise GateFailed(f"an index named {target.name} exists on another table: rename or drop it first")
    return row[0], row[1], row[2]


def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
    """Refuse (before touching anything) when the new vectors are not ready to be indexed."""
    if record.phase not in INDEXABLE_PHASES:
        hint = ("run `reembed run " + plan.name + "` to completion first"
                if record.phase in ("planned", "prepared", "backfilling") else f"the plan is {record.phase}")
        raise GateFailed(f"cannot index plan {plan.name!r} in phase {record.phase}: {hint}")
    strategy_for(plan).check_index(conn, plan, record)


def build_settings(conn: psycopg.Connection, plan: Plan, max_memory: int, workers: int | None,
                   table: sql.Identifier | None = None) -> BuildSettings:
    table = table or plan.table
    rows = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                        (table.as_string(conn),)).fetchone()[0]  # type: ignore[index]
    if rows == 0:  # never analyzed: count (cheap next to building a graph over the same rows)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]  # type: ignore[index]
    wanted = graph_memory(int(rows), plan.dimensions, 2 if plan.new_vector_base == "halfvec" else 4)
    current = conn.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0]  # type: ignore[index]
    memory = min(max(wanted, int(current)), max_memory)
    if workers is None:
        server_max = conn.execute("SELECT current_setting('max_parallel_workers')::int").fetchone()[0]  # type: ignore[index]
        workers = max(0, min(2, int(server_max)))
    return BuildSettings(maintenance_work_mem=memory, workers=workers, rows=int(rows), wanted=wanted)


def build(db: Database, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
          max_memory: int = parse_size(DEFAULT_MEMORY_CAP), workers: int | None = None,
          progress: bool = True) -> IndexResult:
    """Build (or keep, or rebuild) every index the strategy names on the new vectors."""
    check(conn, plan, record)
    targets = strategy_for(plan).index_targets(plan, record.phase)
    if not targets:
        if record.phase == "backfilled":
            set_phase(conn, record.id, "indexed", "no vector index planned: the original column has none",
                      expect=("backfilled",))
        return IndexResult(action="none_planned", index=None,
                           notes=["the original column has no vector index, so none is built "
                                  "(plan with --index hnsw:cosine to get one)"])
    result = IndexResult(action="kept", index=targets[0].name)
    for target in targets:
        built = _build_one(db, conn, plan, record, target, result, max_memory, workers, progress)
        result.indexes.append(built)
        result.dropped_invalid |= built.dropped_invalid
        result.seconds += built.seconds
        result.size_bytes += built.size_bytes
        if built.action == "built":
            result.action = "built"
    _finish(conn, record, result)
    return result


def _build_one(db: Database, conn: psycopg.Connection, plan: Plan, record: PlanRecord, target: IndexTarget,
               result: IndexResult, max_memory: int, workers: int | None, progress: bool) -> IndexBuilt:
    if is_partitioned(conn, target.table):
        return _build_partitioned(db, conn, plan, record, target, result, max_memory, workers, progress)
    built = IndexBuilt(index=target.name, action="built")
    state = _index_state(conn, target)
    if state is not None:
        valid, ready, _definition = state
        if valid and ready:
            built.action = "kept"
            result.notes.append(f"index {target.name} already exists and is valid")
            built.size_bytes = index_bytes(conn, sql.Identifier(target.schema, target.name))
            return built
        # An interrupted CONCURRENTLY build leaves an INVALID index that still slows every write.
        conn.execute(template("index_drop", index=sql.Identifier(target.schema, target.name)))
        built.dropped_invalid = True
        log_event(conn, record.id, "index", f"dropped INVALID leftover index {target.name}", phase=record.phase)
    settings = build_settings(conn, plan, max_memory, workers, target.table)
    result.settings = settings
    if target.vector and settings.wanted > settings.maintenance_work_mem:
        result.notes.append(f"the graph wants {settings.wanted // 2**20} MB but maintenance_work_mem is capped at "
                            f"{settings.maintenance_work_mem // 2**20} MB: the build will be slower "
                            "(raise --maintenance-work-mem)")
    started = time.monotonic()
    _build_with_progress(db, plan, target, settings, progress, result.notes)
    built.seconds = time.monotonic() - started
    state = _index_state(conn, target)
    if state is None or not (state[0] and state[1]):
        raise GateFailed(f"index {target.name} was built but is not valid; run `reembed index {plan.name}` again")
    built.size_bytes = index_bytes(conn, sql.Identifier(target.schema, target.name))
    return built


def index_bytes(conn: psycopg.Connection, index: sql.Identifier) -> int:
    """An index's size on disk; a partitioned index's is the sum of its partitions'."""
    row = conn.execute(
        """SELECT CASE c.relkind WHEN 'I' THEN (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)
                                               FROM pg_partition_tree(c.oid) t)
                                 ELSE pg_relation_size(c.oid) END
           FROM pg_class c WHERE c.oid = to_regclass(%s)""", (index.as_string(conn),)).fetchone()
    return int(row[0]) if row else 0


def is_partitioned(conn: psycopg.Connection, relation: sql.Composable) -> bool:
    """A partitioned table or a partitioned index (relkind p or I)."""
    row = conn.execute("SELECT relkind IN ('p', 'I') FROM pg_class WHERE oid = to_regclass(%s)",
                       (relation.as_string(conn),)).fetchone()
    return bool(row and row[0])


def _build_partitioned(db: Database, conn: psycopg.Connection, plan: Plan, record: PlanRecord, target: IndexTarget,
                       result: IndexResult, max_memory: int, workers: int | None, progress: bool) -> IndexBuilt:
    """CREATE INDEX CONCURRENTLY cannot build a partitioned table's index. It is created ON ONLY the
    table (no build; not valid yet), each partition's index is built CONCURRENTLY and attached to it
    (a sub-partitioned partition the same way), and it turns valid once every partition has one.
    A partition created later gets its own copy from PostgreSQL. Each step is idempotent."""
    if target.for_relation is None:
        raise GateFailed(f"index {target.name} is on a partitioned table and its strategy gives no per-partition "
                         "statement")
    built = IndexBuilt(index=target.name, action="kept")
    state = _index_state(conn, target)
    if state is not None and state[0] and state[1]:
        result.notes.append(f"index {target.name} already exists and is valid")
        return built
    if state is None:
        with_lock_timeout(conn, lambda c: c.execute(target.for_relation(target.table, target.name, True)),  # type: ignore[misc]
                          what=f"creating index {target.name} on the partitioned table")
        built.action = "built"
    parent = sql.Identifier(target.schema, target.name)
    for schema, table, original_child in _unindexed_partitions(conn, target):
        name = (target.partition_name(original_child) if target.partition_name and original_child
                else bounded_identifier(target.name, table))
        child = IndexTarget(name=name, schema=schema, table=sql.Identifier(schema, table),
                            statement=target.for_relation(sql.Identifier(schema, table), name, False),
                            vector=target.vector, for_relation=target.for_relation, original=original_child,
                            partition_name=target.partition_name)
        done = _build_one(db, conn, plan, record, child, result, max_memory, workers, progress)
        with_lock_timeout(conn, lambda c: c.execute(template("index_attach", index=parent,
                                                             partition=sql.Identifier(schema, name))),
                          what=f"attaching index {name} to {target.name}")
        built.action = "built"
        built.seconds += done.seconds
        built.size_bytes += done.size_bytes
        built.dropped_invalid |= done.dropped_invalid
    state = _index_state(conn, target)
    if state is None or not (state[0] and state[1]):
        raise GateFailed(f"index {target.name} is not valid after every partition's index was attached; run "
                         f"`reembed index {plan.name}` again")
    return built


def _unindexed_partitions(conn: psycopg.Connection, target: IndexTarget) -> list[tuple[str, str, str | None]]:
    """(schema, table, the original index's index on it) of each direct partition of the table
    whose index is not yet attached to `target`."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname,
                  (SELECT ci.relname FROM pg_inherits oi JOIN pg_index x ON x.indexrelid = oi.inhrelid
                   JOIN pg_class ci ON ci.oid = oi.inhrelid
                   WHERE oi.inhparent = to_regclass(%(original)s) AND x.indrelid = c.oid) AS original_child
           FROM pg_inherits p JOIN pg_class c ON c.oid = p.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE p.inhparent = to_regclass(%(table)s)
             AND NOT EXISTS (SELECT 1 FROM pg_inherits ai JOIN pg_index x ON x.indexrelid = ai.inhrelid
                             WHERE ai.inhparent = to_regclass(%(index)s) AND x.indrelid = c.oid)
           ORDER BY c.relname""",
        {"table": target.table.as_string(conn), "index": sql.Identifier(target.schema, target.name).as_string(conn),
         "original": sql.Identifier(target.schema, target.original).as_string(conn) if target.original else None}
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _finish(conn: psycopg.Connection, record: PlanRecord, result: IndexResult) -> None:
    details = result.to_json()
    if record.phase in ("backfilled", "verified", "indexed"):
        # A rebuilt index invalidates an earlier verify: verify again before cutover.
        # Compare and set: never move back a plan another command cut over or abandoned meanwhile.
        set_phase(conn, record.id, "indexed", f"index {result.index} {result.action}", details,
                  expect=("backfilled", "verified", "indexed"))
    else:
        log_event(conn, record.id, "index", f"index {result.index} {result.action}", details, phase=record.phase)


def _build_with_progress(db: Database, plan: Plan, target: IndexTarget, settings: BuildSettings,
                         progress: bool, notes: list[str]) -> None:
    """Run the build on its own connection; report pg_stat_progress_create_index meanwhile, and the
    sessions it waits for (added to `notes`)."""
    builder = db.connect()
    error: list[BaseException] = []
    pid = builder.info.backend_pid

    def run() -> None:
        try:
            builder.execute(_session(settings))
            builder.execute(target.statement)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=run, name="reembed-index-build", daemon=True)
    monitor = db.connect()
    name = target.name
    bar = show_progress(0, desc=f"index {name}", unit="tuples", enabled=progress, leave=False)
    reported = ""
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.25)
            row = monitor.execute(template("index_progress", pid=sql.Literal(pid))).fetchone()
            if row:
                # What pgvector reports: its phase ("loading tuples", "performing k-means", ...) and
                # tuples done of total; blocks only when a phase counts no tuples.
                phase, tuples_total, tuples_done, blocks_total, blocks_done = row
                total, done = (tuples_total, tuples_done) if tuples_total else (blocks_total, blocks_done)
                if total and bar.total != total:
                    bar.reset(total=total)
                bar.n = done or 0
                blockers = blocking_sessions(monitor, pid) if (phase or "").startswith("waiting") else ""
                if blockers and blockers.split(" (")[0] != reported.split(" (")[0]:
                    # CONCURRENTLY waits, without any timeout, for every transaction that may still
                    # see the table; an idle-in-transaction session stalls it for as long as it lives.
                    log.warning("index %s is %s, behind %s: the build goes on once that transaction ends "
                                "(commit it, or end the session: SELECT pg_terminate_backend(pid))",
                                name, phase, blockers)
                    notes.append(f"waited ({phase}) behind {blockers}")
                reported = blockers or reported
                bar.set_postfix_str((phase or "") + (f", waiting for {blockers}" if blockers else ""), refresh=False)
                bar.refresh()
    except KeyboardInterrupt:
        builder.cancel()  # leaves an INVALID index: the next `reembed index` drops and rebuilds it
        worker.join()
        raise
    finally:
        bar.close()
        monitor.close()
        builder.close()
    if error:
        exc = error[0]
        if isinstance(exc, psycopg.Error):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GateFailed(f"building index {name} failed: {first}; run `reembed index {plan.name}` again "
                             "(an INVALID leftover is dropped and rebuilt)") from None
        raise exc


def drop_new_indexes(conn: psycopg.Connection, plan: Plan, phase: str) -> list[str]:
    """The inverse: drop the indexes built on the new vectors (before cutover). Returns those dropped."""
    dropped = []
    for target in strategy_for(plan).index_targets(plan, phase):
        if _index_state(conn, target) is not None:
            dropped.append(target.name)
        drop_index(conn, sql.Identifier(target.schema, target.name))
    return dropped


def drop_index(conn: psycopg.Connection, index: sql.Identifier) -> None:
    """DROP INDEX CONCURRENTLY (no long lock); a partitioned index cannot be dropped so: it goes
    with its partitions' indexes in one short DROP under lock_timeout."""
    if not is_partitioned(conn, index):
        conn.execute(template("index_drop", index=index))
        return
    with_lock_timeout(conn, lambda c: c.execute(template("index_drop_partitioned", index=index)),
                      what=f"dropping index {index.as_string(conn)}")
