"""Every vector write checks, in its own transaction, which physical place holds its model now.

A write statement names a table and a column; which model's vectors those names hold depends on
the plan's phase (a swap renames them, cleanup and abandon drop them). So each write transaction
first locks the plan's registry row FOR SHARE and reads the phase, and everything that changes
where the vectors are (swaps, drops) locks that row FOR NO KEY UPDATE before anything else and
records its new phase in the same transaction (`locking.run_locked(plan_id=...)`). A write is
therefore never in flight across such a change, and none after it uses the old names: a writer
whose place moved builds its statement again for where its model's vectors are now; a writer
whose place is gone (the plan is cleaned up or abandoned) stops with nothing written.

Shared by every strategy and by both writers: the backfill (target model, `places(...).new`) and
the rollback fill (source model, `places(...).old`). The backfill's one-round-trip pipeline cannot
read the phase and then choose its statement, so there the check is its first statement,
reembed.guard_write(plan, phase): it takes the same lock and fails with SQLSTATE RM001 when the phase
is not the one the statement was built for; the pipeline then writes nothing and the writer
`refresh`es and tries again.
"""

from __future__ import annotations

from typing import Callable, Generic, Literal, TypeVar

import psycopg

from toolkit.errors import PlanMoved
from toolkit.phases.locking import WRITE_ROLE_LOCK
from toolkit.plan import Plan
from toolkit.state import FINAL_PHASES, current_phase
from toolkit.strategies import Place, places

T = TypeVar("T")
Role = Literal["new", "old"]
# Marks the write transaction as reembed's own: the change tracking leaves alone what reembed writes
# into the application's column (a write by anyone else after the first cutover makes the row pending).
OWN_WRITE = "set_config('reembed.writing', 'on', true)"
# After a rollback both writers can write the same rows, the backfill the target model's place and the
# rollback fill the source model's, each locking a batch's rows in whatever order its join yields them:
# the two deadlocked (interleaving soak, column strategy). So no write of one role runs while a write of
# the other holds row locks: a backfill write takes the WRITE_ROLE_LOCK transaction lock shared (its
# processes never wait for each other), a fill write exclusively; each after the registry row (the order
# every writer and every swap takes them) and before its first row lock.


class PlaceGuard(Generic[T]):
    """What one writer writes with (`build(phase)`: its statement, or more), kept true to the phase."""

    def __init__(self, plan: Plan, plan_id: int, phase: str, role: Role, build: Callable[[str], T]) -> None:
        self.plan, self.plan_id, self.role, self.build = plan, plan_id, role, build
        self.phase = phase
        self.place = self._where(phase)
        self.built = build(phase)
        self.moves = 0  # how often the place moved under this writer (it followed each time)
        function = "pg_advisory_xact_lock_shared" if role == "new" else "pg_advisory_xact_lock"
        self.role_lock = f"SELECT {function}({WRITE_ROLE_LOCK}, %s)"  # its parameter: the plan's id

    def _where(self, phase: str) -> Place:
        return getattr(places(self.plan, phase), self.role)

    def current(self, conn: psycopg.Connection) -> T:
        """Inside the caller's write transaction: lock the plan's registry row until it ends and return
        what to write with for the phase the plan is in now. Raises PlanMoved when there is no
        longer a place for this writer's model."""
        conn.execute(f"SELECT {OWN_WRITE}")
        built = self.follow(current_phase(conn, self.plan_id, lock="SHARE"))
        conn.execute(self.role_lock, (self.plan_id,))
        return built

    def refresh(self, conn: psycopg.Connection) -> T:
        """After reembed.guard_write() refused a write (the plan left the phase it was built for):
        what to write with now. No lock: the next write's own check makes it true or refuses again."""
        return self.follow(current_phase(conn, self.plan_id))

    def follow(self, phase: str) -> T:
        """What to write with in `phase`, built again only when the place moved. Raises PlanMoved
        when there is no longer a place for this writer's model."""
        if phase in FINAL_PHASES:
            model = self.plan.target if self.role == "new" else self.plan.source
            raise PlanMoved(f"plan {self.plan.name!r} was {phase.replace('_', ' ')} by another command while this "
                            f"one was writing {model} vectors: stopped, nothing more written", phase)
        if phase != self.phase:
            place = self._where(phase)
            if (place.schema, place.table, place.column) != (self.place.schema, self.place.table, self.place.column):
                self.built = self.build(phase)
                self.moves += 1
            self.place, self.phase = place, phase
        return self.built
