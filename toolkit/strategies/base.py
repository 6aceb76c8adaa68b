"""The seam between the lifecycle and where the new vectors live.

Every phase asks the plan's strategy, never `if strategy == ...`: where each model's vectors
are in a phase (`places`), what the plan cannot carry (`check_plan`), how the place for the new
vectors is made and unmade (prepare, abandon), how a batch is written there, which indexes to
build, how the swap and its reverse are done, and what cleanup drops. The ledger, leases,
providers, the write guard, verify and its gates, planning and locking are shared and know
nothing of strategies.

Each operation keeps pgroll's shape: a check that refuses before anything is touched, the
action (idempotent: a crash anywhere is finished by running it again), and its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from toolkit.catalog import TableInfo
    from toolkit.phases.swap import SwapOutcome
    from toolkit.plan import Plan
    from toolkit.state import PlanRecord

# Phases in which the new vectors carry the application's names (the swap happened).
SWAPPED_PHASES = ("cut_over", "cleaned_up")


@dataclass(frozen=True)
class Place:
    """Where one model's vectors are in one phase: a table, its column, and the names of the
    vector indexes on that column, aligned with `plan.indexes` (None: that index is not there)."""

    schema: str
    table: str
    column: str
    indexes: tuple[str | None, ...] = ()

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    @property
    def index_names(self) -> list[str]:
        return [name for name in self.indexes if name is not None]


@dataclass(frozen=True)
class Places:
    """The answer to "which table and column holds which model now" for one plan and phase.

    `read` is what the application reads (always its own table and column names); `new` holds
    the target model's vectors, `old` the source model's (gone after cleanup)."""

    read: Place
    new: Place
    old: Place

    @property
    def reads_new(self) -> bool:
        """True when the application's table and column hold the target model's vectors."""
        return (self.new.schema, self.new.table, self.new.column) == (self.read.schema, self.read.table,
                                                                      self.read.column)


@dataclass(frozen=True)
class IndexTarget:
    """One index the index phase builds (CONCURRENTLY) on the new vectors' table."""

    name: str  # its name until cutover
    schema: str
    table: sql.Identifier  # the relation it is built on
    statement: sql.Composed
    vector: bool  # a vector index (verify checks it) or one the copy carries over (key, btree, ...)
    # For a partitioned table (built ON ONLY it, then per partition): the same index's statement on
    # another relation (`only`: CREATE INDEX ... ON ONLY, no build), the original index whose
    # partitions' indexes name the new ones, and the name a partition's index gets from its original's.
    for_relation: Callable[[sql.Composable, str, bool], sql.Composed] | None = None
    original: str | None = None
    partition_name: Callable[[str], str] | None = None


@dataclass(frozen=True)
class Write:
    """A guarded write of a staged batch: `statement`, and what runs around it in the same
    transaction (`before`, `after`), e.g. keeping the application's triggers from firing."""

    statement: sql.Composed
    before: tuple[sql.Composable, ...] = ()
    after: tuple[sql.Composable, ...] = ()


@dataclass
class DropResult:
    """What cleanup or abandon dropped, and how much disk that returns (now or after a rewrite)."""

    phase: str
    column: str  # what was dropped: the column (column strategy) or the table (copy strategy)
    column_existed: bool
    index: str | None
    index_bytes: int = 0
    column_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)  # the indexes that existed and were dropped
    already_done: bool = False  # a rerun: the plan was in this final phase already, nothing was touched

    @property
    def dropped_anything(self) -> bool:
        return self.column_existed or bool(self.indexes)
    what: str = "column"  # the kind of `column`: column | table

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "dropped_anything": self.dropped_anything}


@dataclass(frozen=True)
class Reconciled:
    """Rows change tracking did not see, found by a swap's check and repaired (copy strategy)."""

    changed: int = 0  # text or title changed: the mirror's vector cleared, the row pending
    inserted: int = 0  # missing from the mirror: copied, pending
    deleted: int = 0  # gone from the application's table: removed from the mirror and the ledger
    repaired: int = 0  # other columns only: copied, the vector kept

    @property
    def requeued(self) -> int:
        return self.changed + self.inserted

    @property
    def found(self) -> bool:
        return bool(self.requeued or self.deleted or self.repaired)


Retry = Callable[[int, float, float], None]


class Strategy(Protocol):
    """What differs between strategies. Implementations: column.ColumnStrategy (the shadow column
    in the application's table, renamed at the swap)."""

    name: str

    # -- where things are -------------------------------------------------------------------
    def places(self, plan: "Plan", phase: str) -> Places: ...

    # -- plan ---------------------------------------------------------------------------------
    def check_plan(self, conn: psycopg.Connection, plan: "Plan", info: "TableInfo") -> None:
        """Refuse (BadInput, naming it) whatever this strategy could not carry to cutover."""

    disk_label: str  # what `disk_bytes` measures, in words
    seed_order: sql.Composable  # ORDER BY of the ledger seed over the original (alias t): the write order

    def disk_bytes(self, plan: "Plan", rows: int, info: "TableInfo") -> tuple[int, int]:
        """(data, indexes) the new vectors need until cleanup."""

    # -- prepare ↔ abandon ------------------------------------------------------------------
    def check_prepare(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord") -> None: ...

    def is_prepared(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord") -> bool: ...

    def prepare(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", *, lock_timeout_ms: int,
                retries: int) -> str:
        """Make the place for the new vectors and start tracking changes; idempotent. Returns what
        was made, in words. The shared prepare phase seeds the ledger afterwards."""

    def prepare_sql(self, plan: "Plan", plan_id: int, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
        """What prepare will run (some of it read from the live catalog when `conn` is given)."""

    def describe(self, plan: "Plan") -> list[str]:
        """What each phase will do to the application's table, in words, for `reembed plan`."""

    def drop_tracking(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", *, lock_timeout_ms: int,
                      retries: int) -> None:
        """The inverse of the tracking part of prepare (idempotent); cleanup and abandon call it."""

    # -- backfill ---------------------------------------------------------------------------
    def write_statement(self, conn: psycopg.Connection, plan: "Plan", phase: str, stage: sql.Identifier,
                        plan_id: int, owner: str) -> Write:
        """The guarded write of one staged batch into `places(phase).new`, marking the ledger."""

    def fill_statement(self, conn: psycopg.Connection, plan: "Plan", phase: str, stage: sql.Identifier) -> Write:
        """The guarded write of staged source-model vectors into `places(phase).old` (rollback fill):
        only rows whose text still hashes to the staged hash; a staged NULL clears the vector.
        RETURNING the staged `pk` of every row written (the fill marks them fresh in the ledger)."""

    # -- index ------------------------------------------------------------------------------
    def check_index(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord") -> None: ...

    def index_targets(self, plan: "Plan", phase: str) -> list[IndexTarget]: ...

    # -- cutover ↔ rollback -----------------------------------------------------------------
    def reconcile(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord") -> Reconciled:
        """Before a swap's checks: find and repair what the new or old place misses of the
        application's rows because change tracking did not see it (one scan); what was done."""

    def check_swap(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", direction: str, *,
                   refresh_matviews: bool) -> dict[str, list[str]]:
        """Refuse what the swap in `direction` (cutover | rollback) cannot do; returns what it will carry."""

    def swap(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", direction: str, *,
             recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int,
             refresh_matviews: bool, on_retry: Retry | None) -> "SwapOutcome": ...

    def finish_swap(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", *, lock_timeout_ms: int,
                    retries: int) -> list[str]:
        """After the lock: what needs a scan (VALIDATE, NOT NULL). Idempotent; returns notes."""

    def swap_sql(self, plan: "Plan", direction: str, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
        """The swap's statements; with `conn`, the dependents as they are now, with their definitions."""

    # -- cleanup / abandon ------------------------------------------------------------------
    def cleanup(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", *,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
        """Drop the old vectors and the tracking. The last step (what ends the tracking, and the phase)
        runs in one `run_locked(plan_id=...)` transaction that calls `recheck` first (it refuses while
        rows are pending), so no change of the application falls between the check and the drop."""

    def abandon(self, conn: psycopg.Connection, plan: "Plan", record: "PlanRecord", *,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
        """Drop the new vectors and the tracking; the last step as for cleanup, after `recheck`."""

    def cleanup_sql(self, plan: "Plan", plan_id: int = 0) -> list[sql.Composable]: ...
