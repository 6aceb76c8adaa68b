"""The copy strategy: re-embed into a copy of the table and swap the tables' names at cutover.

The application's table is only read until the swap: prepare makes a copy with exactly the same
columns (copy_table.py) and triggers that mirror every application write into it in the same
transaction (propagation.py); the backfill reads the original and writes whole rows with their
new vectors into the copy (sql/copy_write.sql); every index of the original is built on the copy
CONCURRENTLY; verify reads the copy; the swap renames the two tables and carries over what binds
to the table by OID (table_swap.py). The application then sees a table with exactly the shape it
had: a `SELECT *` prepared before keeps its result type, its triggers fire only for its own
writes, and nothing is left over in its table after cleanup (the old table is dropped whole).
"""

from __future__ import annotations

from typing import Callable

import psycopg
from psycopg import sql

from toolkit.catalog import TableInfo
from toolkit.errors import BadInput, GateFailed
from toolkit.indexes import CarriedIndex, bounded_identifier
from toolkit.phases import swap as column_swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import run_locked
from toolkit.phases.prepare import key_columns, key_json, key_match, key_record, with_lock_timeout
from toolkit.plan import CopySpec, Plan
from toolkit.providers.models import model_tag
from toolkit.state import PlanRecord, log_event, set_phase
from toolkit.strategies import copy_reconcile, propagation, table_swap
from toolkit.strategies.base import (SWAPPED_PHASES, DropResult, IndexTarget, Place, Places, Reconciled, Retry,
                                     Write)
from toolkit.strategies.column import fill_update, refuse_what_names_the_old_dimension, update_statement
from toolkit.strategies.copy_table import (carried_indexes, columns, copy_tag, create_statements, refusals, shape,
                                           writable)

QUIET_LOCK_TIMEOUT_MS = 200


class CopyStrategy:
    name = "copy"
    disk_label = "copy of the table"
    # Physical order: each batch reads a few neighbouring pages of the original, and the copy is
    # laid out as the original was (HOT does not matter: the copy's rows are inserted).
    seed_order = sql.SQL("t.ctid")

    # -- where things are -------------------------------------------------------------------
    def places(self, plan: Plan, phase: str) -> Places:
        copy = _spec(plan)
        schema, table = plan.table_schema, plan.table_name
        read = Place(schema, table, plan.column, tuple(i.original_name for i in plan.indexes))
        if phase in SWAPPED_PHASES:
            new = Place(schema, table, plan.column, tuple(i.original_name or i.shadow_name for i in plan.indexes))
            old = Place(schema, copy.old_table, plan.column,
                        tuple(i.old_name if i.original_name else None for i in plan.indexes))
        else:
            new = Place(schema, copy.table, plan.column, tuple(i.shadow_name for i in plan.indexes))
            old = read
        return Places(read=read, new=new, old=old)

    # -- plan ---------------------------------------------------------------------------------
    def check_plan(self, conn: psycopg.Connection, plan: Plan, info: TableInfo) -> None:
        """Name the copy and the old table, list every index to carry; refuse what cannot be carried."""
        refuse_what_names_the_old_dimension(conn, plan, info)
        tag, source_tag = model_tag(plan.target_ref), model_tag(plan.source_ref)
        plan.copy = CopySpec(table=bounded_identifier(info.name, tag),
                             old_table=bounded_identifier(info.name, "old_" + source_tag),
                             indexes=carried_indexes(conn, info.oid, tag, source_tag))
        problems = refusals(conn, info.oid, plan.copy.table, plan.copy.old_table, info.schema)
        # What binds to the table and the swap could not re-create is named now, not at cutover.
        problems += [f"{what} depend(s) on it and the swap cannot carry them to the copy"
                     for what in table_swap.capture(conn, info.oid).unsupported]
        if problems:
            raise BadInput(f"the copy strategy cannot carry {info.qualified}: {'; '.join(problems)} "
                           "(plan --strategy column to re-embed in place)")

    def disk_bytes(self, plan: Plan, rows: int, info: TableInfo) -> tuple[int, int]:
        # The whole table again (heap, TOAST, every index) until cleanup, from the original's size;
        # a vector column changing dimensions changes the rows and the vector indexes with it.
        old = info.column(plan.column)
        grow = rows * 4 * (plan.dimensions - (old.dimensions or plan.dimensions)) if old else 0
        vector_indexes = sum(i.size_bytes for i in info.indexes if i.column == plan.column)
        ratio = plan.dimensions / old.dimensions if old and old.dimensions else 1.0
        return (max(0, info.heap_bytes + info.toast_bytes + grow),
                max(0, int(info.index_bytes + vector_indexes * (ratio - 1))))

    # -- prepare ↔ abandon ------------------------------------------------------------------
    def check_prepare(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
        tag = copy_tag(conn, plan)
        if tag is not None and tag.get("plan") != plan.name:
            raise GateFailed(f"table {plan.table_schema}.{_spec(plan).table} already exists and was not created by "
                             f"plan {plan.name!r}: drop or rename it, or plan another target")
        if tag is not None and shape(conn, _copy_ident(plan), plan.column) != shape(conn, plan.table, plan.column):
            raise GateFailed(f"the copy {plan.table_schema}.{_spec(plan).table} no longer has the columns of "
                             f"{plan.table_display} (the table was altered): `reembed abandon {plan.name}` and plan "
                             "again")

    def is_prepared(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> bool:
        return propagation.installed(conn, record.id, "forward", plan.table)

    def prepare(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                retries: int) -> str:
        copy = _copy_ident(plan)
        if copy_tag(conn, plan) is None:
            statements = create_statements(conn, plan)

            def create(c: psycopg.Connection) -> None:
                for statement in statements:
                    c.execute(statement)

            with_lock_timeout(conn, create, what=f"creating the copy {copy.as_string(conn)}",
                              lock_timeout_ms=lock_timeout_ms, retries=retries)
            log_event(conn, record.id, "copy", f"copy {copy.as_string(conn)} created",
                      {"copy": _spec(plan).table, "columns": [c[0] for c in shape(conn, copy)]}, phase=record.phase)

        def install(c: psycopg.Connection) -> None:
            for statement in propagation.install(c, plan, record.id, "forward", plan.table, copy):
                c.execute(statement)

        with_lock_timeout(conn, install, what="installing change propagation", lock_timeout_ms=lock_timeout_ms,
                          retries=retries)
        return f"copy {copy.as_string(conn)} created, change propagation installed"

    def prepare_sql(self, plan: Plan, plan_id: int, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
        if conn is None:
            return [sql.SQL("-- CREATE TABLE {} (LIKE {} ...), its primary key, the propagation triggers").format(
                _copy_ident(plan), plan.table)]
        return create_statements(conn, plan) + propagation.install(conn, plan, plan_id, "forward", plan.table,
                                                                    _copy_ident(plan))

    def drop_tracking(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                      retries: int) -> None:
        tables = [plan.table, _copy_ident(plan), _old_ident(plan)]

        def drop(c: psycopg.Connection) -> None:
            present = [t for t in tables if c.execute("SELECT to_regclass(%s)", (t.as_string(c),)).fetchone()[0]]
            for statement in _propagation_removal(record.id, present):
                c.execute(statement)

        with_lock_timeout(conn, drop, what="dropping change propagation", lock_timeout_ms=lock_timeout_ms,
                          retries=retries)
        log_event(conn, record.id, "tracking", "change propagation dropped")

    def describe(self, plan: Plan) -> list[str]:
        copy = _spec(plan)
        vector_names = {v.original_name for v in plan.indexes}
        others = [i.original_name for i in copy.indexes if i.original_name not in vector_names]
        return [
            f"1. prepare   create {plan.table_schema}.{copy.table}, a copy of {plan.table_display} with the same "
            f"columns, and triggers that mirror every write into it in the same transaction",
            f"2. run       embed every row with {plan.target} (RETRIEVAL_DOCUMENT), writing whole rows into the copy "
            f"({plan.table_display} is only read; none of its triggers fire)",
            "3. index     on the copy, CONCURRENTLY: " + "; ".join(
                [f"{i.method} ({i.opclass}) as {i.shadow_name}" for i in plan.indexes]
                + ([f"and {', '.join(others)}"] if others else [])),
            "4. verify    on the copy: coverage, freshness, sanity, index, recall, old-vs-new agreement",
            f"5. cutover   one short transaction: {plan.table_name} -> {copy.old_table}, {copy.table} -> "
            f"{plan.table_name}; triggers, policies, grants, foreign keys, views, publications follow",
            f"6. cleanup   drop {copy.old_table} (rollback possible until then; its space returns at once)",
        ]

    # -- backfill ---------------------------------------------------------------------------
    def write_statement(self, conn: psycopg.Connection, plan: Plan, phase: str, stage: sql.Identifier,
                        plan_id: int, owner: str) -> Write:
        new = self.places(plan, phase).new
        if phase in SWAPPED_PHASES:  # the new vectors are in the application's table now
            return _quietly(conn, new.ident, update_statement(conn, plan, new, stage, plan_id, owner))
        copied = writable(columns(conn, plan.table), plan.column)
        copy_row = propagation.row_of("c", copied)
        fresh = sql.SQL("md5({}::text) IS NOT DISTINCT FROM (SELECT w.h FROM seen AS w WHERE w.pk = {})").format(
            copy_row, key_json(plan, "c"))
        refresh = sql.SQL("").join(
            sql.SQL(", {c} = CASE WHEN {fresh} THEN EXCLUDED.{c} ELSE c.{c} END").format(c=sql.Identifier(c),
                                                                                         fresh=fresh)
            for c in copied if c not in plan.primary_key)
        return Write(template(
            "copy_write", plan_id=sql.Literal(plan_id), owner=sql.Literal(owner), stage=stage, copy=new.ident,
            copy_match=key_match(plan, "c", "s"), copy_row=copy_row, refresh=refresh,
            columns=sql.SQL(", ").join(map(sql.Identifier, copied)), vector=sql.Identifier(plan.column),
            values=sql.SQL(", ").join(sql.Identifier("t", c) for c in copied), original=plan.table,
            match=key_match(plan, "t", "s"),
            hash=plan.text_hash_expression("t"), key=sql.SQL(", ").join(map(sql.Identifier, plan.primary_key)),
            copy_key=key_json(plan, "c"), claimed_key=key_columns(plan, "k"), claimed_match=key_match(plan, "k", "s"),
            written_key=key_columns(plan, "c"), written_match=key_match(plan, "w", "s"),
            key_record=key_record(conn, plan)))

    def fill_statement(self, conn: psycopg.Connection, plan: Plan, phase: str, stage: sql.Identifier) -> Write:
        from toolkit.state import get_plan

        old = self.places(plan, phase).old
        write = _quietly(conn, old.ident, fill_update(plan, old, stage))
        if phase not in SWAPPED_PHASES:
            return write  # the application's own table: its row first, then the ledger, as its writes
        # The old vectors are in the mirror, which the propagation writes after the ledger row.
        lock = template("copy_lock_ledger_rows", plan_id=sql.Literal(get_plan(conn, plan.name).id),
                        keys=sql.SQL("SELECT pk FROM {}").format(stage))
        return Write(write.statement, before=(lock, *write.before), after=write.after)

    # -- index ------------------------------------------------------------------------------
    def check_index(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
        if copy_tag(conn, plan) is None:
            raise GateFailed(f"the copy {plan.table_schema}.{_spec(plan).table} is missing: `reembed run {plan.name}`")
        now = {r[0] for r in conn.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                          "WHERE i.indrelid = to_regclass(%s)", (plan.table.as_string(conn),))}
        planned = {i.original_name for i in _spec(plan).indexes}
        if now != planned:
            raise GateFailed(f"the indexes of {plan.table_display} changed since plan {plan.name!r} was made "
                             f"(planned {sorted(planned)}, now {sorted(now)}): `reembed abandon {plan.name}` and "
                             "plan again")

    def index_targets(self, plan: Plan, phase: str) -> list[IndexTarget]:
        copy = self.places(plan, "backfilled").new
        vector_specs = {i.original_name: i for i in plan.indexes if i.original_name}
        retyped = plan.new_column_type != plan.column_type

        def statement(i: CarriedIndex) -> sql.Composed:
            # A new type (--dimensions) needs the plan's retyped opclass and casts, not the original's.
            if retyped and i.original_name in vector_specs:
                return vector_specs[i.original_name].retarget(copy.ident, i.shadow_name)
            return i.create(copy.ident, i.shadow_name)

        targets = [IndexTarget(name=i.shadow_name, schema=copy.schema, table=copy.ident, statement=statement(i),
                               vector=i.original_name in vector_specs)
                   for i in _spec(plan).indexes]
        # An index asked for with --index has no original to copy: built from its parts.
        targets += [IndexTarget(name=i.shadow_name, schema=copy.schema, table=copy.ident,
                                statement=i.render(copy.ident, plan.column, i.shadow_name), vector=True)
                    for i in plan.indexes if i.original_name is None]
        return targets

    # -- cutover ↔ rollback -----------------------------------------------------------------
    def reconcile(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> Reconciled:
        """The application's table against the table the swap would put in front of it (the copy
        before cutover, the old table before a rollback): what the propagation missed, repaired."""
        places = self.places(plan, record.phase)
        mirror = places.old if record.phase in SWAPPED_PHASES else places.new
        if conn.execute("SELECT to_regclass(%s) IS NULL", (mirror.ident.as_string(conn),)).fetchone()[0]:
            return Reconciled()  # nothing to swap in; the swap's own check names it
        done = copy_reconcile.reconcile(conn, plan, record.id, plan.table, mirror.ident)
        if done.found:
            log_event(conn, record.id, "reconcile",
                      f"{mirror.ident.as_string(conn)}: {done.changed} rows changed, {done.inserted} inserted, "
                      f"{done.deleted} deleted, {done.repaired} repaired behind change propagation's back",
                      done.__dict__, phase=record.phase)
        return done

    def check_swap(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, direction: str, *,
                   refresh_matviews: bool) -> dict[str, list[str]]:
        return table_swap.check(conn, plan, record, direction, self.index_targets(plan, "backfilled"),
                                refresh_matviews=refresh_matviews)

    def swap(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, direction: str, *,
             recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int,
             refresh_matviews: bool, on_retry: Retry | None) -> column_swap.SwapOutcome:
        return table_swap.perform(conn, plan, record, direction, recheck=recheck, lock_timeout_ms=lock_timeout_ms,
                                  retries=retries, refresh_matviews=refresh_matviews, on_retry=on_retry)

    def finish_swap(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                    retries: int) -> list[str]:
        return table_swap.finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)

    def swap_sql(self, plan: Plan, direction: str, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
        return table_swap.statements(plan, direction, conn)

    # -- cleanup / abandon ------------------------------------------------------------------
    def cleanup(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
        return _drop_table(conn, plan, record, _old_ident(plan), "cleaned_up", recheck, lock_timeout_ms, retries)

    def abandon(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
        return _drop_table(conn, plan, record, _copy_ident(plan), "abandoned", recheck, lock_timeout_ms, retries)

    def cleanup_sql(self, plan: Plan, plan_id: int = 0) -> list[sql.Composable]:
        # After cutover the propagation runs back, from the application's table to the old one.
        return (propagation.remove(plan_id, "back", plan.table) + propagation.remove(plan_id, "forward", None)
                + [template("copy_drop_table", table=_old_ident(plan))])


def _spec(plan: Plan) -> CopySpec:
    if plan.copy is None:
        raise BadInput(f"plan {plan.name!r} uses the copy strategy but records no copy: plan it again")
    return plan.copy


def _copy_ident(plan: Plan) -> sql.Identifier:
    return sql.Identifier(plan.table_schema, _spec(plan).table)


def _old_ident(plan: Plan) -> sql.Identifier:
    return sql.Identifier(plan.table_schema, _spec(plan).old_table)


def application_triggers(conn: psycopg.Connection, table: sql.Identifier) -> list[tuple[str, str]]:
    """(name, tgenabled) of the enabled triggers on `table` that are neither internal (foreign keys)
    nor reembed's own."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal "
        "AND tgenabled <> 'D' AND tgname NOT LIKE 'reembed\\_%%' ORDER BY tgname", (table.as_string(conn),))]


def _quietly(conn: psycopg.Connection, table: sql.Identifier, statement: sql.Composed) -> Write:
    """`statement` on a table the application uses, with its triggers switched off inside the write's
    own transaction only: other sessions never see them disabled (the catalog change is undone before
    commit), and the short SHARE ROW EXCLUSIVE lock it takes waits at most QUIET_LOCK_TIMEOUT_MS."""
    triggers = application_triggers(conn, table)
    if not triggers:
        return Write(statement)
    enable = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}
    off = sql.SQL("ALTER TABLE {} {}").format(table, sql.SQL(", ").join(
        sql.SQL("DISABLE TRIGGER {}").format(sql.Identifier(name)) for name, _ in triggers))
    on = sql.SQL("ALTER TABLE {} {}").format(table, sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.SQL(enable[state]), sql.Identifier(name)) for name, state in triggers))
    timeout = template("prepare_lock_timeout", timeout=sql.Literal(f"{QUIET_LOCK_TIMEOUT_MS}ms"))
    return Write(statement, before=(timeout, off), after=(on,))


def _drop_table(conn: psycopg.Connection, plan: Plan, record: PlanRecord, table: sql.Identifier, phase: str,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
    """Drop the propagation and `table` (the old one after cutover, the copy before), without
    CASCADE, in one transaction under the plan's row lock and the tables' locks, after `recheck`:
    no writer is in flight, no change of the application falls between the last check and the
    drop, and a refusal leaves everything in place. The disk `table` held is returned at once."""
    from toolkit.state import set_phase

    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),)).fetchone()[0]
    name = table.as_string(conn)
    result = DropResult(phase=phase, column=name, column_existed=bool(exists), index=None, what="table")
    if exists:
        blockers = table_swap.bound_elsewhere(conn, table)
        if blockers:
            raise GateFailed(f"{'; '.join(blockers)} still use(s) {name}: drop or re-point them first (reembed drops "
                             "without CASCADE); nothing was dropped")
        sizes = conn.execute("SELECT pg_total_relation_size(to_regclass(%s)), pg_indexes_size(to_regclass(%s))",
                             (name, name)).fetchone()
        result.column_bytes, result.index_bytes = int(sizes[0]), int(sizes[1])
        result.indexes = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = "
            "to_regclass(%s) ORDER BY 1", (name,))]
    present = [t for t in (plan.table, _copy_ident(plan), _old_ident(plan))
               if conn.execute("SELECT to_regclass(%s)", (t.as_string(conn),)).fetchone()[0]]

    def drop(c: psycopg.Connection) -> None:
        recheck(c)
        for statement in _propagation_removal(record.id, present):
            c.execute(statement)
        if exists:
            c.execute(template("copy_drop_table", table=table))
        set_phase(c, record.id, phase, f"{phase}: dropped {name} and the change propagation" if exists
                  else f"{phase}: dropped the change propagation", result.to_json())

    try:
        run_locked(conn, present, drop, lock_timeout_ms=lock_timeout_ms, retries=retries,
                   what=f"dropping {name}", plan_id=record.id)
    except psycopg.errors.DependentObjectsStillExist as exc:
        detail = (exc.diag.message_detail or "").replace("\n", "; ")
        raise GateFailed(f"{name} is still used: {detail}; drop or re-point that first (reembed drops without "
                         "CASCADE)") from None
    if exists:
        result.notes.append(f"dropping {name} returned {result.column_bytes / 2**20:.1f} MB to the file system "
                            f"at once ({result.index_bytes / 2**20:.1f} MB of it indexes)")
    record.phase = phase
    return result


def _propagation_removal(plan_id: int, present: list[sql.Identifier]) -> list[sql.Composable]:
    """Both directions' triggers on whichever of the plan's tables exist, then their functions."""
    out: list[sql.Composable] = []
    for direction in propagation.DIRECTIONS:
        for table in present:
            out += propagation.remove(plan_id, direction, table)[:2]
        out += propagation.remove(plan_id, direction, None)
    return out
