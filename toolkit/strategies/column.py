"""The column strategy: a shadow column in the application's own table, renamed in at cutover.

Prepare adds `<column>__<target tag>` (catalog-only, tagged by a JSON comment) and a tracking
trigger; the backfill UPDATEs it (page-striped, so most updates stay HOT); each vector index is
rebuilt on it CONCURRENTLY; the swap renames the two columns and their indexes in one short
transaction and re-creates what binds to the column by number (toolkit.phases.swap,
toolkit.phases.dependents); cleanup drops the old column. The application sees the extra
column from prepare to cleanup (`SELECT *`, prepared statements, its own UPDATE triggers fire
on every backfilled row): see DESIGN.md, "Two strategies".
"""

from __future__ import annotations

import json
from typing import Callable

import psycopg
from psycopg import sql

from toolkit import column_tag
from toolkit.catalog import TableInfo
from toolkit.errors import BadInput, GateFailed
from toolkit.indexes import IndexSpec, prefixed_identifier
from toolkit.phases import dependents, swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import run_locked
from toolkit.phases.prepare import (column_comment, key_columns, key_json, key_match, key_record, new_column_type,
                                    tracking_names, with_lock_timeout)
from toolkit.plan import Plan
from toolkit.providers.models import model_tag
from toolkit.state import PlanRecord, log_event
from toolkit.strategies.base import (SWAPPED_PHASES, DropResult, IndexTarget, Place, Places, Reconciled, Retry,
                                     Write)

_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}
HNSW_GRAPH_OVERHEAD = 1.3


class ColumnStrategy:
    name = "column"
    disk_label = "shadow column"
    # Page-striped: the k-th row of every heap page, then the (k+1)-th: most updates stay HOT.
    seed_order = sql.SQL("(t.ctid::text::point)[1], (t.ctid::text::point)[0]")

    # -- where things are -------------------------------------------------------------------
    def places(self, plan: Plan, phase: str) -> Places:
        schema, table = plan.table_schema, plan.table_name
        originals = tuple(i.original_name for i in plan.indexes)
        read = Place(schema, table, plan.column, originals)
        if phase in SWAPPED_PHASES:
            new = Place(schema, table, plan.column, tuple(i.original_name or i.shadow_name for i in plan.indexes))
            old = Place(schema, table, plan.old_column,
                        tuple(i.old_name if i.original_name else None for i in plan.indexes))
        else:
            new = Place(schema, table, plan.shadow_column, tuple(i.shadow_name for i in plan.indexes))
            old = read
        return Places(read=read, new=new, old=old)

    # -- plan ---------------------------------------------------------------------------------
    def check_plan(self, conn: psycopg.Connection, plan: Plan, info: TableInfo) -> None:
        for wanted in (plan.shadow_column, plan.old_column):
            if info.column(wanted) is not None:
                raise BadInput(f"column {wanted!r} already exists in {info.qualified}: drop it or plan another target")
        refuse_what_names_the_old_dimension(conn, plan, info)

    def disk_bytes(self, plan: Plan, rows: int, info: TableInfo) -> tuple[int, int]:
        vector_bytes = (2 if plan.new_vector_base == "halfvec" else 4) * plan.dimensions + 8
        data = rows * vector_bytes
        return data, int(data * HNSW_GRAPH_OVERHEAD) * len(plan.indexes)

    # -- prepare ↔ abandon ------------------------------------------------------------------
    def check_prepare(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
        state = _shadow_state(conn, plan)
        if state is None:
            return
        type_, comment = state
        if (comment or {}).get("plan") != plan.name:
            raise GateFailed(f"column {plan.shadow_column!r} already exists in {plan.table_display} and was not "
                             f"created by plan {plan.name!r}: drop or rename it, or plan another target")
        wanted = plan.new_column_type
        if type_ != wanted:
            raise GateFailed(f"column {plan.shadow_column!r} is {type_}, plan {plan.name!r} needs {wanted}")

    def is_prepared(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> bool:
        return _tracking_installed(conn, plan, record.id)

    def prepare(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                retries: int) -> str:
        storage = _original_storage(conn, plan)

        def add_column(c: psycopg.Connection) -> None:
            c.execute(_add_column(plan))
            if storage and storage != _default_storage(c, plan):
                c.execute(_set_storage(plan, storage))
            c.execute(_comment(plan))

        if _shadow_state(conn, plan) is None:
            with_lock_timeout(conn, add_column, what=f"adding column {plan.shadow_column}",
                              lock_timeout_ms=lock_timeout_ms, retries=retries)

        def install_tracking(c: psycopg.Connection) -> None:
            c.execute(_track_function(plan, record.id))
            c.execute(_track_trigger(plan, record.id))

        with_lock_timeout(conn, install_tracking, what="installing change tracking",
                          lock_timeout_ms=lock_timeout_ms, retries=retries)
        return f"shadow column {plan.shadow_column} added, tracking installed"

    def prepare_sql(self, plan: Plan, plan_id: int, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
        return [_add_column(plan), _comment(plan), _track_function(plan, plan_id), _track_trigger(plan, plan_id)]

    def drop_tracking(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                      retries: int) -> None:
        _drop_tracking(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)

    def describe(self, plan: Plan) -> list[str]:
        return [
            f"1. prepare   add column {plan.shadow_column} {plan.new_column_type} to {plan.table_display}, tag it, "
            f"track changes to {', '.join(plan.tracked_columns)}",
            f"2. run       embed every row with {plan.target} (RETRIEVAL_DOCUMENT) in checkpointed batches, "
            f"UPDATEing {plan.shadow_column} (the application's UPDATE triggers fire for every row)",
            "3. index     " + ("; ".join(f"build {i.method} ({i.opclass}, "
                                         + ", ".join(f"{k}={v}" for k, v in i.options.items())
                                         + f") CONCURRENTLY as {i.shadow_name}" for i in plan.indexes)
                               or "no vector index to rebuild"),
            "4. verify    coverage, freshness, sanity, index, recall, old-vs-new agreement",
            f"5. cutover   one short transaction: {plan.column} -> {plan.old_column}, {plan.shadow_column} -> "
            f"{plan.column}",
            f"6. cleanup   drop {plan.old_column} (rollback possible until then; its space returns on a rewrite)",
        ]

    # -- backfill ---------------------------------------------------------------------------
    def write_statement(self, conn: psycopg.Connection, plan: Plan, phase: str, stage: sql.Identifier,
                        plan_id: int, owner: str) -> Write:
        return Write(update_statement(conn, plan, self.places(plan, phase).new, stage, plan_id, owner))

    def fill_statement(self, conn: psycopg.Connection, plan: Plan, phase: str, stage: sql.Identifier) -> Write:
        return Write(fill_update(plan, self.places(plan, phase).old, stage))

    # -- index ------------------------------------------------------------------------------
    def check_index(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> None:
        new = self.places(plan, record.phase).new
        exists = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                              "AND NOT attisdropped", (new.ident.as_string(conn), new.column)).fetchone()
        if exists is None:
            raise GateFailed(f"the column {new.column} with the new vectors is missing from {plan.table_display}")

    def index_targets(self, plan: Plan, phase: str) -> list[IndexTarget]:
        new = self.places(plan, phase).new
        tag = model_tag(plan.target_ref)

        def for_relation(spec: IndexSpec) -> Callable[[sql.Composable, str, bool], sql.Composed]:
            return lambda table, name, only: spec.on_column(table, plan.column, new.column, name, only=only)

        return [IndexTarget(name=name, schema=new.schema, table=new.ident,
                            statement=spec.on_column(new.ident, plan.column, new.column, name),
                            vector=spec.orders_by_distance, for_relation=for_relation(spec), original=spec.original_name,
                            partition_name=lambda original: prefixed_identifier(tag, original))
                for spec, name in zip(plan.indexes, new.indexes) if name is not None]

    # -- cutover ↔ rollback -----------------------------------------------------------------
    def _exchange(self, plan: Plan, direction: str, shadow_comment: str | None = None,
                  comment_before_cutover: str | None = None) -> swap.Exchange:
        renames: list[tuple[str, str]] = []
        paired = [i for i in plan.indexes if i.original_name and i.old_name]
        if direction == "cutover":
            # Every original moves aside first, then every new index takes its name: no clash
            # even when one index's new name is another's old name.
            renames = [(i.original_name, i.old_name) for i in paired]  # type: ignore[misc]
            renames += [(i.shadow_name, i.original_name) for i in paired]  # type: ignore[misc]
            return swap.Exchange(direction="cutover", column=plan.column, incoming=plan.shadow_column,
                                 aside=plan.old_column, index_renames=renames,
                                 aside_comment=swap.aside_comment(plan, plan.source, "old vectors"),
                                 phase_after="cut_over", live_comment=column_tag.live_tag(plan))
        renames = [(i.original_name, i.shadow_name) for i in paired]  # type: ignore[misc]
        renames += [(i.old_name, i.original_name) for i in paired]  # type: ignore[misc]
        return swap.Exchange(direction="rollback", column=plan.column, incoming=plan.old_column,
                             aside=plan.shadow_column, index_renames=renames, aside_comment=shadow_comment,
                             phase_after="rolled_back", live_comment=comment_before_cutover)

    def reconcile(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord) -> Reconciled:
        # Both models' vectors sit in the application's own rows: there is nothing to fall behind
        # but the vectors, which cutover's gate compares with the ledger (ledger_requeue_stale).
        return Reconciled()

    def check_swap(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, direction: str, *,
                   refresh_matviews: bool) -> dict[str, list[str]]:
        oid = dependents.table_oid(conn, plan.table)
        if direction == "rollback":
            if swap.column_state(conn, oid, plan.old_column) is None:
                raise GateFailed(f"column {plan.old_column} with the old vectors is gone from {plan.table_display}")
            for name in self.places(plan, record.phase).old.index_names:
                row = conn.execute("SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON "
                                   "c.oid = i.indexrelid WHERE i.indrelid = %s AND c.relname = %s",
                                   (oid, name)).fetchone()
                if row is None or not row[0]:
                    raise GateFailed(f"index {name} on the old vectors is missing or INVALID")
            return {}
        captured = dependents.capture(conn, oid, plan.column)
        swap.refuse_unsupported(captured, refresh_matviews)
        if swap.column_state(conn, oid, plan.old_column) is not None:
            raise GateFailed(f"column {plan.old_column} already exists in {plan.table_display}: the old vectors "
                             "need that name")
        return captured.summary()

    def swap(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, direction: str, *,
             recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int,
             refresh_matviews: bool, on_retry: Retry | None) -> swap.SwapOutcome:
        shadow_comment = comment_before_cutover = None
        if direction == "rollback":
            cut = swap.last_swap(conn, record.id, "cutover")
            shadow_comment = cut["captured"].get("incoming_comment") if cut else None
            comment_before_cutover = cut["captured"]["dependents"].get("comment") if cut else None
        exchange = self._exchange(plan, direction, shadow_comment, comment_before_cutover)
        exchange.index_renames += _partition_index_renames(conn, plan, direction)
        return swap.perform(conn, plan, record, exchange, recheck=recheck, lock_timeout_ms=lock_timeout_ms,
                            retries=retries, refresh_matviews=refresh_matviews, on_retry=on_retry)

    def finish_swap(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                    retries: int) -> list[str]:
        return swap.finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)

    def swap_sql(self, plan: Plan, direction: str, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
        exchange = self._exchange(plan, direction)
        captured = None
        if conn is not None and conn.execute("SELECT to_regclass(%s)", (plan.table.as_string(conn),)).fetchone()[0]:
            captured = dependents.capture(conn, dependents.table_oid(conn, plan.table), exchange.column)
        return swap.statements(plan, exchange, captured)

    # -- cleanup / abandon ------------------------------------------------------------------
    def cleanup(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
        old = self.places(plan, record.phase).old
        return _drop(conn, plan, record, column=old.column, indexes=old.index_names, phase="cleaned_up",
                     recheck=recheck, lock_timeout_ms=lock_timeout_ms, retries=retries)

    def abandon(self, conn: psycopg.Connection, plan: Plan, record: PlanRecord, *,
                recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
        new = self.places(plan, record.phase).new
        return _drop(conn, plan, record, column=new.column, indexes=new.index_names, phase="abandoned",
                     recheck=recheck, lock_timeout_ms=lock_timeout_ms, retries=retries)

    def cleanup_sql(self, plan: Plan, plan_id: int = 0) -> list[sql.Composable]:
        old = self.places(plan, "cut_over").old
        names = tracking_names(plan_id)
        # As cleanup runs it: one locked transaction, so a refusal of its re-check drops nothing.
        out: list[sql.Composable] = [sql.SQL("BEGIN"), template("cutover_lock", relations=plan.table)]
        out += [template("cleanup_drop_index", index=sql.Identifier(plan.table_schema, name))
                for name in old.index_names]
        out.append(template("cleanup_drop_column", table=plan.table, column=sql.Identifier(old.column)))
        out.append(template("prepare_drop_trigger", trigger=sql.Identifier(names.trigger), table=plan.table))
        out.append(template("prepare_drop_function", function=names.function))
        out.append(sql.SQL("COMMIT"))
        return out


def refuse_what_names_the_old_dimension(conn: psycopg.Connection, plan: Plan, info: TableInfo) -> None:
    """Both strategies carry what binds to the column as it is (re-created at the swap, or copied
    with the table): a definition naming the old dimension would break on the new vectors."""
    if plan.dimensions == plan.source_dimensions:
        return
    named = dependents.naming_dimension(dependents.capture(conn, info.oid, plan.column), plan.source_dimensions)
    if named:
        raise BadInput(f"{', '.join(named)} name(s) the dimension {plan.source_dimensions} of "
                       f"{info.qualified}.{plan.column}: after the swap they would meet "
                       f"{plan.dimensions}-dimensional vectors ({plan.new_column_type}); change them to "
                       f"{plan.dimensions} or drop them, then plan again; nothing was changed")


# -- prepare's statements --------------------------------------------------------------------

def _add_column(plan: Plan) -> sql.Composable:
    return template("prepare_add_column", table=plan.table, shadow=sql.Identifier(plan.shadow_column),
                    type=new_column_type(plan))


def _comment(plan: Plan, created_at: str | None = None) -> sql.Composable:
    return template("prepare_comment", column=sql.Identifier(plan.table_schema, plan.table_name, plan.shadow_column),
                    comment=sql.Literal(column_comment(plan, created_at)))


def _set_storage(plan: Plan, storage: str) -> sql.Composable:
    return template("prepare_set_storage", table=plan.table, shadow=sql.Identifier(plan.shadow_column),
                    storage=sql.SQL(_STORAGE[storage]))


def _track_function(plan: Plan, plan_id: int) -> sql.Composable:
    unchanged = sql.SQL(" AND ").join(
        sql.SQL("OLD.{c} IS NOT DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c)) for c in plan.watched_columns)
    return template("prepare_track_function", function=tracking_names(plan_id).function, unchanged=unchanged,
                    vector=sql.Identifier(plan.column), old_key=key_json(plan, "OLD"), new_key=key_json(plan, "NEW"),
                    plan_id=sql.Literal(plan_id))


def _track_trigger(plan: Plan, plan_id: int) -> sql.Composable:
    names = tracking_names(plan_id)
    return template("prepare_track_trigger", trigger=sql.Identifier(names.trigger), table=plan.table,
                    function=names.function)


def _shadow_state(conn: psycopg.Connection, plan: Plan) -> tuple[str, dict | None] | None:
    """(type, JSON comment) of the shadow column, or None when it does not exist."""
    row = conn.execute(
        """SELECT format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum)
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped""",
        (plan.table.as_string(conn), plan.shadow_column)).fetchone()
    if row is None:
        return None
    try:
        comment = json.loads(row[1]) if row[1] else None
    except ValueError:
        comment = None
    return row[0], comment if isinstance(comment, dict) else None


def _tracking_installed(conn: psycopg.Connection, plan: Plan, plan_id: int) -> bool:
    row = conn.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
                       (plan.table.as_string(conn), tracking_names(plan_id).trigger)).fetchone()
    return row is not None


def _drop_tracking(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int,
                  retries: int) -> None:
    """Remove the plan's trigger and tracking function (idempotent). Leaves the ledger and the
    shadow column alone. `conn` must be in autocommit mode."""
    names = tracking_names(record.id)

    def drop(c: psycopg.Connection) -> None:
        if c.execute("SELECT to_regclass(%s)", (plan.table.as_string(c),)).fetchone()[0] is not None:
            c.execute(template("prepare_drop_trigger", trigger=sql.Identifier(names.trigger), table=plan.table))
        c.execute(template("prepare_drop_function", function=names.function))

    with_lock_timeout(conn, drop, what="dropping change tracking", lock_timeout_ms=lock_timeout_ms, retries=retries)
    log_event(conn, record.id, "tracking", f"change tracking dropped ({names.trigger}, {names.function_name})")


def _original_storage(conn: psycopg.Connection, plan: Plan) -> str | None:
    row = conn.execute(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
        (plan.table.as_string(conn), plan.column)).fetchone()
    return row[0] if row else None


def _default_storage(conn: psycopg.Connection, plan: Plan) -> str:
    row = conn.execute("SELECT typstorage FROM pg_type WHERE typname = %s", (plan.vector_base,)).fetchone()
    return row[0] if row else ""


def _partition_index_renames(conn: psycopg.Connection, plan: Plan, direction: str) -> list[tuple[str, str]]:
    """On a partitioned table each partition's indexes follow the same rule as the table's: on
    every partition the index of the one moving aside takes the aside prefix, and the index of
    the one coming in takes the name it had. Indexes in another schema than the table's keep
    their names."""
    if direction == "cutover":
        pairs = [(spec.original_name, spec.shadow_name) for spec in plan.indexes if spec.original_name and spec.old_name]
        prefix = f"old_{model_tag(plan.source_ref)}"
    else:
        pairs = [(spec.original_name, spec.old_name) for spec in plan.indexes if spec.original_name and spec.old_name]
        prefix = model_tag(plan.target_ref)
    if not pairs:
        return []
    # Every level of the tree (a sub-partitioned partition's partitions too), matched by the
    # partition each index is on.
    rows = conn.execute(
        """SELECT pair.n, ac.relname, ic.relname
           FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS pair (leaving, coming, n)
           JOIN LATERAL pg_partition_tree(to_regclass(pair.leaving)) a ON a.level > 0
           JOIN pg_index ax ON ax.indexrelid = a.relid
           JOIN LATERAL pg_partition_tree(to_regclass(pair.coming)) i ON i.level > 0
           JOIN pg_index ix ON ix.indexrelid = i.relid AND ix.indrelid = ax.indrelid
           JOIN pg_class ac ON ac.oid = a.relid
           JOIN pg_class ic ON ic.oid = i.relid
           WHERE ac.relnamespace = %s::regnamespace AND ic.relnamespace = ac.relnamespace
           ORDER BY 1, 2""",
        ([sql.Identifier(plan.table_schema, leaving).as_string(conn) for leaving, _ in pairs],
         [sql.Identifier(plan.table_schema, coming).as_string(conn) for _, coming in pairs],
         sql.Identifier(plan.table_schema).as_string(conn))).fetchall()
    return ([(leaving, prefixed_identifier(prefix, leaving)) for _, leaving, _ in rows]
            + [(coming, leaving) for _, leaving, coming in rows])


def update_statement(conn: psycopg.Connection, plan: Plan, place: Place, stage: sql.Identifier, plan_id: int,
                     owner: str) -> sql.Composed:
    """The guarded `UPDATE ... FROM stage` of `place` that also marks the ledger (sql/backfill_write.sql)."""
    return template("backfill_write", table=place.ident, target=sql.Identifier(place.column), stage=stage,
                    match=key_match(plan, "t", "s"), hash=plan.text_hash_expression("t"),
                    leased_key=key_columns(plan, "k"), leased_match=key_match(plan, "k", "s"),
                    key_record=key_record(conn, plan),
                    plan_id=sql.Literal(plan_id), owner=sql.Literal(owner))


def fill_update(plan: Plan, place: Place, stage: sql.Identifier) -> sql.Composed:
    """The guarded fill of source-model vectors into `place` (sql/rollback_fill_write.sql)."""
    return template("rollback_fill_write", table=place.ident, column=sql.Identifier(place.column), stage=stage,
                    match=key_match(plan, "t", "s"), hash=plan.text_hash_expression("t"))


# -- cleanup and abandon -------------------------------------------------------------------------

def _bound_elsewhere(conn: psycopg.Connection, oid: int, column: str, schema: str, own_indexes: set[str]) -> list[str]:
    captured = dependents.capture(conn, oid, column)
    found = [f"{kind} {', '.join(names)}" for kind, names in captured.summary().items()
             if kind not in ("comment", "grant", "statistics_target")]
    # Compare names quoted the same way capture() quotes them: parsing quoted names back breaks on
    # an index whose name holds a quote or a dot.
    own = {row[0] for row in conn.execute("SELECT format('%%I.%%I', %s::text, i) FROM unnest(%s::text[]) AS i",
                                          (schema, sorted(own_indexes)))}
    found += [f"index {i}" for i in captured.indexes if i not in own]
    found += captured.unsupported
    return found


def _drop(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, column: str, indexes: list[str], phase: str,
          recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int, retries: int) -> DropResult:
    from toolkit.state import set_phase

    oid = dependents.table_oid(conn, plan.table)
    exists = swap.column_state(conn, oid, column) is not None
    result = DropResult(phase=phase, column=column, column_existed=exists, index=indexes[0] if indexes else None,
                        what="column")
    if exists:
        blockers = _bound_elsewhere(conn, oid, column, plan.table_schema, set(indexes))
        if blockers:
            raise GateFailed(f"{'; '.join(blockers)} still use(s) column {column} of {plan.table_display}: "
                             "drop or re-point them first (reembed drops without CASCADE); nothing was dropped")
        result.column_bytes = conn.execute(template("cleanup_column_bytes", column=sql.Identifier(column),
                                                    table=plan.table)).fetchone()[0]  # type: ignore[index]
    freed = []
    from toolkit.phases.index import index_bytes

    for index in indexes:
        ident = sql.Identifier(plan.table_schema, index)
        present = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                               (ident.as_string(conn),)).fetchone()[0]  # type: ignore[index]
        size = index_bytes(conn, ident) if present else 0
        result.index_bytes += size
        if present:  # an empty index has 0 bytes
            result.indexes.append(index)
        if size:
            freed.append(index)
    names = tracking_names(record.id)

    def drop(c: psycopg.Connection) -> None:
        # Indexes, column, tracking and phase in one transaction, after the caller's re-check under
        # the locks (the plan's row first): no writer is in flight, none can start by the old names,
        # no change the application makes falls between the last check and the drop, and a refusal
        # leaves everything in place (a rollback stays possible). Only catalog work under the lock.
        recheck(c)
        for index in indexes:
            c.execute(template("cleanup_drop_index", index=sql.Identifier(plan.table_schema, index)))
        if swap.column_state(c, oid, column) is not None:
            c.execute(template("cleanup_drop_column", table=plan.table, column=sql.Identifier(column)))
        c.execute(template("prepare_drop_trigger", trigger=sql.Identifier(names.trigger), table=plan.table))
        c.execute(template("prepare_drop_function", function=names.function))
        set_phase(c, record.id, phase, f"{phase}: dropped {column}" + (f" and {', '.join(indexes)}" if indexes else "")
                  + f" and the change tracking ({names.trigger}, {names.function_name})", result.to_json())

    try:
        run_locked(conn, [plan.table], drop, lock_timeout_ms=lock_timeout_ms, retries=retries,
                   what=f"dropping column {column}", plan_id=record.id)
    except psycopg.errors.DependentObjectsStillExist as exc:
        detail = (exc.diag.message_detail or "").replace("\n", "; ")
        raise GateFailed(f"column {column} is still used: {detail}; drop or re-point that first "
                         "(reembed drops without CASCADE)") from None
    record.phase = phase
    if result.column_bytes:
        result.notes.append(
            f"{_mb(result.column_bytes)} of {column} stays in {plan.table_display}'s files until the table is "
            f"rewritten: `VACUUM FULL {plan.table.as_string(conn)}` (locks the table for the whole rewrite) or "
            f"`pg_repack --table {plan.table_display}` (online)")
    if result.index_bytes:
        result.notes.append(f"index {', '.join(freed)} freed {_mb(result.index_bytes)} at once")
    return result


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
