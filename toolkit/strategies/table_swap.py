"""The copy strategy's swap: two tables exchange names in one short transaction.

Cutover: the original becomes `<table>__old_<source tag>` and the copy `<table>`; rollback is the
same exchange the other way (the copy goes back to `<table>__<target tag>`). Whatever binds to a
table by OID would stay on the table moved aside, so it is captured from the outgoing table
before the lock (a one-query fingerprint proves under the lock that nothing changed) and carried
to the incoming one after the renames:

- its indexes' and identity sequences' names (renamed), serial sequences' ownership, the values
  of identity sequences; the application's triggers, in the state they had (created on the
  incoming table, dropped from the outgoing one); row security (enable, force) and policies;
  owner, table and column grants; table, column and index comments; publication membership
  (column lists, row filters) and replica identity;
- CHECK constraints, foreign keys from the table and foreign keys pointing at it (re-pointed),
  all added NOT VALID under the lock and validated after it; NOT NULL on the vector column as a
  NOT VALID check, then SET NOT NULL without a scan (as the column strategy does);
- views, materialized views (with --refresh-matviews), SQL-body functions and other tables'
  policies that read it, replayed from their definitions;
- the change propagation, turned round: the outgoing table keeps receiving every application
  write, so a rollback finds it current.

Nothing scans a table and no provider is called under the lock; the copy was ANALYZEd before it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from toolkit import column_tag
from toolkit.errors import GateFailed
from toolkit.indexes import bounded_identifier
from toolkit.phases import dependents
from toolkit.phases import swap as column_swap
from toolkit.phases.ddl import template
from toolkit.phases.locking import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES, run_locked
from toolkit.plan import Plan
from toolkit.providers.models import model_tag
from toolkit.state import PlanRecord, log_event, set_phase
from toolkit.strategies import propagation
from toolkit.strategies.base import IndexTarget
from toolkit.strategies.copy_table import shape, tag_comment

_ENABLE = {"O": "ENABLE TRIGGER", "D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}
_CMD = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


@dataclass
class Bindings:
    """What the application sees of a table beyond its columns, captured to be carried over."""

    owner: str
    comment: str | None
    column_comments: dict[str, str | None]
    index_comments: dict[str, str | None]  # by the index's name on the outgoing table
    grants: list[list[Any]]  # [grantee, privilege, grantable]
    column_grants: list[list[Any]]  # [column, grantee, privilege, grantable]
    row_security: list[bool]  # [enabled, forced]
    policies: list[dict[str, Any]]
    triggers: list[dependents.TriggerDef]
    replica_identity: list[Any]  # [kind d|n|f|i, index name or None]
    publications: list[dict[str, Any]]  # {"name", "columns", "row_filter"}
    checks: list[dict[str, Any]]  # {"name", "definition", "validated"}
    foreign_keys: list[dict[str, Any]]  # from this table: {"name", "definition", "validated"}
    referencing: list[dict[str, Any]]  # pointing at it: {"schema", "table", "name", "definition", "validated"}
    sequences: list[dict[str, Any]]  # {"column", "schema", "name", "identity"}
    views: list[dependents.ViewDef] = field(default_factory=list)
    functions: list[dict[str, str]] = field(default_factory=list)
    policies_elsewhere: list[dependents.PolicyDef] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}

        def add(kind: str, names: list[str]) -> None:
            if names:
                out[kind] = names
        add("view", [f"{v.schema}.{v.name}" for v in self.views if v.kind == "view"])
        add("materialized_view", [f"{v.schema}.{v.name}" for v in self.views if v.kind == "materialized_view"])
        add("function", [f["name"] for f in self.functions])
        add("policy", [p["name"] for p in self.policies] + [p.name for p in self.policies_elsewhere])
        add("trigger", [t.name for t in self.triggers])
        add("check_constraint", [c["name"] for c in self.checks])
        add("foreign_key", [f["name"] for f in self.foreign_keys]
            + [f"{r['table']}.{r['name']}" for r in self.referencing])
        add("publication", [p["name"] for p in self.publications])
        add("grant", sorted({f"{g[1]} to {g[0]}" for g in self.grants}
                            | {f"{g[2]} ({g[0]}) to {g[1]}" for g in self.column_grants}))
        add("sequence", [f"{s['schema']}.{s['name']}" for s in self.sequences])
        return out

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


# -- who is incoming, who is outgoing --------------------------------------------------------------

@dataclass(frozen=True)
class Sides:
    direction: str
    outgoing: str  # its name now (the application's table name)
    aside: str  # its name after the swap
    incoming: str  # its name now (the copy's or the old table's)
    phase_after: str
    propagate: str  # the propagation direction installed by the swap
    aside_role: str  # how the outgoing table is tagged after the swap


def sides(plan: Plan, direction: str) -> Sides:
    assert plan.copy is not None
    if direction == "cutover":
        return Sides("cutover", plan.table_name, plan.copy.old_table, plan.copy.table, "cut_over", "back", "old")
    return Sides("rollback", plan.table_name, plan.copy.table, plan.copy.old_table, "rolled_back", "forward", "copy")


def index_renames(plan: Plan, direction: str) -> list[tuple[str, str, str]]:
    """(table it is on before the swap, current name, new name): every outgoing index first, so no
    incoming index takes a name still in use."""
    assert plan.copy is not None
    s = sides(plan, direction)
    carried = plan.copy.indexes
    if direction == "cutover":
        return ([(s.outgoing, i.original_name, i.old_name) for i in carried]
                + [(s.incoming, i.shadow_name, i.original_name) for i in carried])
    return ([(s.outgoing, i.original_name, i.shadow_name) for i in carried]
            + [(s.incoming, i.old_name, i.original_name) for i in carried])


# -- capture ----------------------------------------------------------------------------------------

def _oid(conn: psycopg.Connection, schema: str, name: str) -> int:
    row = conn.execute("SELECT to_regclass(%s)::oid", (sql.Identifier(schema, name).as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        raise GateFailed(f"table {schema}.{name} does not exist")
    return int(row[0])


def capture(conn: psycopg.Connection, oid: int) -> Bindings:
    """Read from the catalog what binds to table `oid` and how to re-create it on another."""
    owner, comment, enabled, forced, identity = conn.execute(
        "SELECT pg_get_userbyid(relowner), obj_description(oid, 'pg_class'), relrowsecurity, relforcerowsecurity, "
        "relreplident::text FROM pg_class WHERE oid = %s", (oid,)).fetchone()  # type: ignore[misc]
    identity_index = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s "
        "AND i.indisreplident", (oid,)).fetchone()
    found = Bindings(
        owner=owner, comment=comment,
        column_comments={r[0]: r[1] for r in conn.execute(
            "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (oid,))},
        index_comments={r[0]: r[1] for r in conn.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_index i JOIN pg_class c "
            "ON c.oid = i.indexrelid WHERE i.indrelid = %s", (oid,))},
        grants=[list(r) for r in conn.execute(
            """SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END, x.privilege_type,
                      x.is_grantable
               FROM pg_class c, aclexplode(c.relacl) x WHERE c.oid = %s AND x.grantee <> c.relowner
               ORDER BY 1, 2""", (oid,))],
        column_grants=[list(r) for r in conn.execute(
            """SELECT a.attname, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
                      x.privilege_type, x.is_grantable
               FROM pg_attribute a, aclexplode(a.attacl) x WHERE a.attrelid = %s AND a.attnum > 0
               ORDER BY 1, 2, 3""", (oid,))],
        row_security=[enabled, forced],
        policies=[{"name": r[0], "permissive": r[1], "command": _CMD[r[2]], "roles": list(r[3]), "using": r[4],
                   "with_check": r[5]} for r in conn.execute(
            """SELECT p.polname, p.polpermissive, p.polcmd::text,
                      ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END
                            FROM unnest(p.polroles) AS r),
                      pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
               FROM pg_policy p WHERE p.polrelid = %s ORDER BY p.polname""", (oid,))],
        triggers=[dependents.TriggerDef(*r) for r in conn.execute(
            """SELECT tgname, pg_get_triggerdef(oid), tgenabled::text FROM pg_trigger
               WHERE tgrelid = %s AND NOT tgisinternal AND tgname NOT LIKE 'reembed\\_%%' ORDER BY tgname""", (oid,))],
        replica_identity=[identity, identity_index[0] if identity_index else None],
        publications=[{"name": r[0], "columns": list(r[1]) if r[1] else None, "row_filter": r[2]} for r in conn.execute(
            """SELECT p.pubname,
                      (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                       WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[])),
                      pg_get_expr(pr.prqual, pr.prrelid)
               FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
               WHERE pr.prrelid = %s ORDER BY p.pubname""", (oid,))],
        checks=[{"name": r[0], "definition": r[1].removesuffix(" NOT VALID"), "validated": r[2]} for r in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint WHERE conrelid = %s "
            "AND contype = 'c' ORDER BY conname", (oid,))],
        foreign_keys=[{"name": r[0], "definition": r[1].removesuffix(" NOT VALID"), "validated": r[2]}
                      for r in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint WHERE conrelid = %s "
            "AND contype = 'f' ORDER BY conname", (oid,))],
        referencing=[{"schema": r[0], "table": r[1], "name": r[2], "definition": r[3].removesuffix(" NOT VALID"),
                      "validated": r[4]} for r in conn.execute(
            """SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
               FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE k.confrelid = %s AND k.conrelid <> %s AND k.contype = 'f' AND k.conparentid = 0
               ORDER BY 1, 2, 3""", (oid, oid))],
        sequences=[{"column": r[0], "schema": r[1], "name": r[2], "identity": r[3]} for r in conn.execute(
            """SELECT a.attname, n.nspname, s.relname, d.deptype = 'i'
               FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
               JOIN pg_namespace n ON n.oid = s.relnamespace
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
               WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %s
                 AND d.deptype IN ('a', 'i') ORDER BY 1""", (oid,))],
    )
    _capture_readers(conn, oid, found)
    return found


def _capture_readers(conn: psycopg.Connection, oid: int, found: Bindings) -> None:
    """Objects elsewhere that read the table by OID: views, functions, other tables' policies."""
    by_class: dict[str, list[int]] = {}
    for classname, objid in conn.execute(
            """SELECT DISTINCT d.classid::regclass::text, d.objid FROM pg_depend d
               WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.deptype IN ('n', 'a')""", (oid,)):
        by_class.setdefault(classname, []).append(objid)
    rewrites = by_class.pop("pg_rewrite", [])
    # A rule of another table that writes or reads this one (CREATE RULE ... DO ALSO INSERT INTO it)
    # binds by OID like a view but is no view: it cannot be re-created as one.
    rules = conn.execute(
        """SELECT r.oid, r.rulename, r.ev_class::regclass::text FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
           WHERE r.oid = ANY (%s) AND r.ev_class <> %s AND c.relkind NOT IN ('v', 'm') ORDER BY 3, 2""",
        (rewrites, oid)).fetchall()
    found.unsupported += [f"rule {rule} on {relation}" for _, rule, relation in rules]
    found.views = dependents.capture_views(conn, oid, [r for r in rewrites if r not in {row[0] for row in rules}])
    found.functions = [{"name": r[0], "definition": r[1]} for r in conn.execute(
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.oid = ANY (%s) "
        "ORDER BY p.oid", (by_class.pop("pg_proc", []),))]
    found.policies_elsewhere = [dependents.PolicyDef(*r) for r in conn.execute(
        """SELECT p.polname, n.nspname, c.relname, pg_get_expr(p.polqual, p.polrelid),
                  pg_get_expr(p.polwithcheck, p.polrelid)
           FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE p.oid = ANY (%s) AND p.polrelid <> %s ORDER BY p.oid""", (by_class.pop("pg_policy", []), oid))]
    # The table's own parts (indexes, sequences, constraints, defaults, triggers, statistics,
    # publication entries) are carried above or rebuilt on the copy.
    for own in ("pg_class", "pg_constraint", "pg_attrdef", "pg_trigger", "pg_statistic_ext", "pg_publication_rel",
                "pg_type", "pg_policy"):
        by_class.pop(own, None)
    for classname, objids in by_class.items():
        found.unsupported.append(f"{len(objids)} object(s) of {classname}")


def token(conn: psycopg.Connection, oid: int) -> str:
    """A fingerprint of the catalog rows `capture` reads, cheap enough to compare under the lock."""
    row = conn.execute(template("copy_bindings_token", table_oid=sql.Literal(oid))).fetchone()
    assert row is not None
    return str(row[0])


# -- check ------------------------------------------------------------------------------------------

def check(conn: psycopg.Connection, plan: Plan, record: PlanRecord, direction: str, targets: list[IndexTarget], *,
          refresh_matviews: bool) -> dict[str, list[str]]:
    """Refuse, before the lock, what the swap cannot do; returns what it will carry."""
    s = sides(plan, direction)
    schema = plan.table_schema
    outgoing, incoming = sql.Identifier(schema, s.outgoing), sql.Identifier(schema, s.incoming)
    out_oid, in_oid = _oid(conn, schema, s.outgoing), _oid(conn, schema, s.incoming)
    if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, s.aside).as_string(conn),)).fetchone()[0]:
        raise GateFailed(f"a relation named {schema}.{s.aside} exists: the table moved aside needs that name")
    if shape(conn, outgoing, plan.column) != shape(conn, incoming, plan.column):
        raise GateFailed(f"{incoming.as_string(conn)} no longer has exactly the columns of {outgoing.as_string(conn)} "
                         f"(the table was altered since prepare): `reembed abandon {plan.name}` and plan again")
    if direction == "cutover":
        for target in targets:
            row = conn.execute("SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON "
                               "c.oid = i.indexrelid WHERE i.indrelid = %s AND c.relname = %s",
                               (in_oid, target.name)).fetchone()
            if row is None or not row[0]:
                raise GateFailed(f"index {target.name} on the copy is missing or INVALID: run `reembed index "
                                 f"{plan.name}`")
    else:
        for _, current, _new in index_renames(plan, direction)[len(index_renames(plan, direction)) // 2:]:
            row = conn.execute("SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c ON "
                               "c.oid = i.indexrelid WHERE i.indrelid = %s AND c.relname = %s",
                               (in_oid, current)).fetchone()
            if row is None or not row[0]:
                raise GateFailed(f"index {current} of the old table is missing or INVALID")
    counts = conn.execute(sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})").format(
        outgoing, incoming)).fetchone()
    assert counts is not None
    if counts[0] != counts[1]:
        # Every row reaches the mirror in its own transaction and the backfill gate saw nothing
        # pending: a difference here means the two tables have diverged, which no run repairs.
        raise GateFailed(f"{outgoing.as_string(conn)} has {counts[0]} rows but {incoming.as_string(conn)} has "
                         f"{counts[1]} in the same snapshot: they no longer mirror each other, so reembed will not "
                         f"swap them; `reembed abandon {plan.name}` (before cutover) and plan again")
    bindings = capture(conn, out_oid)
    refuse_unsupported(bindings, refresh_matviews)
    return bindings.summary()


def refuse_unsupported(bindings: Bindings, refresh_matviews: bool) -> None:
    if bindings.unsupported:
        raise GateFailed(f"{', '.join(bindings.unsupported)} depend(s) on the table and reembed cannot carry them to "
                         "the swapped-in table: drop them before the swap and re-create them after")
    matviews = [f"{v.schema}.{v.name}" for v in bindings.views if v.kind == "materialized_view"]
    if matviews and not refresh_matviews:
        raise GateFailed(f"materialized view(s) {', '.join(matviews)} read the table: they must be re-created and "
                         "filled inside the swap, which holds the lock for as long as their queries take; pass "
                         "--refresh-matviews to accept that")


# -- the swap ---------------------------------------------------------------------------------------

def perform(conn: psycopg.Connection, plan: Plan, record: PlanRecord, direction: str, *,
            recheck: Callable[[psycopg.Connection], None], lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
            retries: int = DEFAULT_RETRIES, refresh_matviews: bool = False,
            on_retry: Callable[[int, float, float], None] | None = None) -> column_swap.SwapOutcome:
    """Exchange the tables in one transaction (lock_timeout, jittered retries); then finish what
    needs a scan."""
    s = sides(plan, direction)
    schema = plan.table_schema
    outgoing, incoming = sql.Identifier(schema, s.outgoing), sql.Identifier(schema, s.incoming)
    out_oid = _oid(conn, schema, s.outgoing)
    # Statistics for the planner from the first query on (ANALYZE takes no lock that blocks writes).
    conn.execute(sql.SQL("ANALYZE {}").format(incoming))
    before_token = token(conn, out_oid)
    before = capture(conn, out_oid)
    refuse_unsupported(before, refresh_matviews)
    views = [sql.Identifier(v.schema, v.name) for v in before.views if v.kind == "view"]
    children = sorted({(r["schema"], r["table"]) for r in before.referencing})
    parents = _referenced_tables(conn, out_oid)
    # The functions the propagation will call after the swap exist before it (nothing calls them yet).
    for statement in propagation.functions(conn, plan, record.id, s.propagate, sql.Identifier(schema, s.incoming),
                                           sql.Identifier(schema, s.aside)):
        conn.execute(statement)
    prepared = exchange_statements(conn, plan, record, s, before)

    def swap(c: psycopg.Connection) -> dict[str, Any]:
        started = time.monotonic()
        # The commit need not wait for its WAL flush while readers queue behind the lock: a crash
        # before the flush loses the whole swap (tables, phase and record together, atomically),
        # and any later commit that reached the disk implies this one did.
        c.execute("SELECT set_config('synchronous_commit', 'off', true)")
        for parent in parents:  # ADD FOREIGN KEY takes SHARE ROW EXCLUSIVE on the referenced table
            c.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(parent))
        recheck(c)
        bindings, (statements, carried) = before, prepared
        if token(c, out_oid) != before_token:  # changed meanwhile: read again, locked
            bindings = capture(c, out_oid)
            if {v.name for v in bindings.views} - {v.name for v in before.views} or \
                    {(r["schema"], r["table"]) for r in bindings.referencing} - set(children):
                raise GateFailed("a view or foreign key on the table was created during the swap; run it again")
            refuse_unsupported(bindings, refresh_matviews)
            statements, carried = exchange_statements(c, plan, record, s, bindings)
        # One round trip (simple query protocol: several statements, no parameters).
        c.execute(sql.SQL(";\n").join(statements))
        dependents.recreate_readers(c, bindings.views, bindings.functions, bindings.policies_elsewhere)
        swap_id = c.execute(
            "INSERT INTO reembed.swaps (plan_id, direction, lock_ms, attempts, captured) VALUES (%s, %s, %s, 0, %s) "
            "RETURNING id", (record.id, direction, (time.monotonic() - started) * 1000,
                             Jsonb({"strategy": "copy", "bindings": bindings.to_json(), **carried}))
        ).fetchone()[0]  # type: ignore[index]
        set_phase(c, record.id, s.phase_after, f"{direction}: {s.incoming} is now {s.outgoing}, {s.outgoing} is now "
                  f"{s.aside}", {"swap_id": swap_id})
        return {"swap_id": swap_id, "bindings": bindings, "carried": carried}

    relations = views + [outgoing, incoming] + [sql.Identifier(*child) for child in children
                                                 if child != (schema, s.outgoing)]
    locked = run_locked(conn, relations, swap, lock_timeout_ms=lock_timeout_ms, retries=retries, what=direction,
                        on_retry=on_retry, plan_id=record.id)
    conn.execute("UPDATE reembed.swaps SET lock_ms = %s, attempts = %s WHERE id = %s",
                 (locked.lock_ms, locked.attempts, locked.result["swap_id"]))
    record.phase = s.phase_after
    bindings = locked.result["bindings"]
    outcome = column_swap.SwapOutcome(direction=direction, lock_ms=locked.lock_ms, attempts=locked.attempts,
                                      waits_ms=locked.waits_ms, recreated=bindings.summary(),
                                      captured=locked.result["carried"])
    log_event(conn, record.id, direction, f"{direction}: lock held {locked.lock_ms:.1f} ms after {locked.attempts} "
              "tries", outcome.to_json(), phase=s.phase_after)
    outcome.notes += finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    return outcome


def _referenced_tables(conn: psycopg.Connection, oid: int) -> list[sql.Identifier]:
    return [sql.Identifier(r[0], r[1]) for r in conn.execute(
        """SELECT DISTINCT n.nspname, c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.confrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.conrelid = %s AND k.contype = 'f'
             AND k.confrelid <> %s ORDER BY 1, 2""", (oid, oid))]


def exchange_statements(c: psycopg.Connection, plan: Plan, record: PlanRecord, s: Sides,
                        b: Bindings) -> tuple[list[sql.Composable], dict[str, Any]]:
    """Every statement of the swap, in order, read from the catalog as it is now (before the lock,
    or again under it when the capture went stale), and what `finish` must do after the lock.
    They run in one round trip under the lock: the lock is held for the server's work only."""
    schema = plan.table_schema
    outgoing_now, incoming_now = sql.Identifier(schema, s.outgoing), sql.Identifier(schema, s.incoming)
    aside = sql.Identifier(schema, s.aside)
    table = sql.Identifier(schema, plan.table_name)  # the incoming table once renamed
    out: list[sql.Composable] = []
    alter_incoming: list[sql.Composable] = []  # subcommands of one ALTER TABLE on the incoming table
    alter_aside: list[sql.Composable] = []
    # 1. The propagation stops in both directions; it is installed the other way round at the end.
    for direction in propagation.DIRECTIONS:
        for source in (outgoing_now, incoming_now):
            out += propagation.remove(record.id, direction, source)[:2]
    # 2. Names: tables, then indexes (every outgoing one first), then identity sequences.
    sequences = _sequence_plan(c, plan, s, b)
    out.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(outgoing_now, sql.Identifier(s.aside)))
    out.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(incoming_now, sql.Identifier(plan.table_name)))
    out += [sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(schema, current), sql.Identifier(new))
            for _, current, new in index_renames(plan, s.direction)]
    out += sequences
    # 3. Constraints backed by indexes: a unique index built on the copy becomes the constraint.
    constraint_indexes = {r[0] for r in c.execute(
        "SELECT i.relname FROM pg_constraint k JOIN pg_class i ON i.oid = k.conindid WHERE k.conrelid = %s",
        (_oid(c, schema, s.incoming),))}
    for index in plan.copy.indexes if plan.copy else []:
        incoming_name = index.shadow_name if s.direction == "cutover" else index.old_name
        if index.constraint == "u" and incoming_name not in constraint_indexes:
            alter_incoming.append(sql.SQL("ADD CONSTRAINT {} UNIQUE USING INDEX {}{}").format(
                sql.Identifier(index.original_name), sql.Identifier(index.original_name),
                sql.SQL(" " + index.deferrable) if index.deferrable else sql.SQL("")))
    # 4. NOT NULL on the vector column (as planned): the outgoing table takes rows without a vector
    # from now on; the incoming one gets it as a NOT VALID check, made NOT NULL after the lock.
    not_null_check = None
    if plan.column_not_null:
        not_null_check = column_swap.helper_check_name(plan)
        helper = sql.Identifier(not_null_check)
        alter_aside += [sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(plan.column)),
                        sql.SQL("DROP CONSTRAINT IF EXISTS {}").format(helper)]
        alter_incoming += [sql.SQL("DROP CONSTRAINT IF EXISTS {}").format(helper),
                           sql.SQL("ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
                               helper, sql.Identifier(plan.column))]
    # 5. Constraints: CHECKs and foreign keys the incoming table lacks, then the ones pointing at it.
    to_validate: list[list[str]] = []
    have = {r[0] for r in c.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s",
                                    (_oid(c, schema, s.incoming),))}
    for constraint in b.checks + b.foreign_keys:
        if constraint["name"] not in have:
            alter_incoming.append(sql.SQL("ADD CONSTRAINT {} {} NOT VALID").format(
                sql.Identifier(constraint["name"]), sql.SQL(constraint["definition"])))
            if constraint["validated"]:
                to_validate.append([schema, plan.table_name, constraint["name"]])
    # 6. The application's triggers, in the state they had: created on the incoming table, dropped
    # from the outgoing one (which from now on only reembed's propagation writes).
    on_incoming = {r[0] for r in c.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s",
                                           (_oid(c, schema, s.incoming),))}
    creates: list[sql.Composable] = []
    for trigger in b.triggers:
        out.append(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger.name), aside))
        if trigger.name not in on_incoming:
            creates.append(sql.SQL(trigger.definition))
        if trigger.enabled != "O" or trigger.name in on_incoming:
            alter_incoming.append(sql.SQL("{} {}").format(sql.SQL(_ENABLE[trigger.enabled]),
                                                          sql.Identifier(trigger.name)))
    # 7. Row security and policies.
    policies: list[sql.Composable] = []
    for policy in b.policies:
        policies += [sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(policy["name"]), table),
                     _create_policy(table, policy),
                     sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(policy["name"]), aside)]
    enabled, forced = b.row_security
    alter_incoming += [sql.SQL("ENABLE ROW LEVEL SECURITY" if enabled else "DISABLE ROW LEVEL SECURITY"),
                       sql.SQL("FORCE ROW LEVEL SECURITY" if forced else "NO FORCE ROW LEVEL SECURITY"),
                       sql.SQL("OWNER TO {}").format(sql.Identifier(b.owner))]
    alter_aside += [sql.SQL("DISABLE ROW LEVEL SECURITY"), sql.SQL("NO FORCE ROW LEVEL SECURITY")]
    # 8. Replica identity (its index has the original's name on the incoming table by now).
    kind, index = b.replica_identity
    alter_incoming.append(sql.SQL("REPLICA IDENTITY {}").format(
        {"d": sql.SQL("DEFAULT"), "n": sql.SQL("NOTHING"), "f": sql.SQL("FULL")}.get(kind)
        or sql.SQL("USING INDEX {}").format(sql.Identifier(index))))
    out += creates  # before the ALTER that sets their state
    out.append(sql.SQL("ALTER TABLE {} {}").format(table, sql.SQL(", ").join(alter_incoming)))
    out.append(sql.SQL("ALTER TABLE {} {}").format(aside, sql.SQL(", ").join(alter_aside)))
    out += policies
    for ref in b.referencing:
        # The definition names the referenced table as it did before the renames: now the incoming one.
        out.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} {} NOT VALID").format(
            sql.Identifier(ref["schema"], ref["table"]), sql.Identifier(ref["name"]), sql.Identifier(ref["name"]),
            sql.SQL(ref["definition"])))
        if ref["validated"]:
            to_validate.append([ref["schema"], ref["table"], ref["name"]])
    # 9. Grants and comments.
    out += _grant_statements(c, table, _oid(c, schema, s.incoming), b)
    current = {r[0]: r[1] for r in c.execute(
        "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
        "AND NOT attisdropped", (_oid(c, schema, s.incoming),))}
    wanted = dict(b.column_comments)
    # The vector column's tag (toolkit.column_tag): the target's at cutover over no comment or a
    # reembed tag; at rollback the original table keeps the comment it had, never the copy's tag.
    if s.direction == "cutover" and column_tag.replaceable(wanted.get(plan.column)):
        wanted[plan.column] = column_tag.live_tag(plan)
    elif s.direction == "rollback" and column_tag.is_tag(wanted.get(plan.column)):
        wanted[plan.column] = current.get(plan.column)
    out += [sql.SQL("COMMENT ON COLUMN {} IS {}").format(sql.Identifier(schema, plan.table_name, column),
                                                        sql.Literal(text))
            for column, text in wanted.items() if current.get(column) != text]
    out.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(b.comment)))
    for carried in plan.copy.indexes if plan.copy else []:  # the incoming index now has the original's name
        if b.index_comments.get(carried.original_name) is not None:
            out.append(sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(schema, carried.original_name), sql.Literal(b.index_comments[carried.original_name])))
    out.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(aside, sql.Literal(_aside_tag(plan, s))))
    # 10. Publication membership.
    for pub in b.publications:
        ident = sql.Identifier(pub["name"])
        columns = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, pub["columns"]))) \
            if pub["columns"] else sql.SQL("")
        where = sql.SQL(" WHERE ({})").format(sql.SQL(pub["row_filter"])) if pub["row_filter"] else sql.SQL("")
        out += [sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(ident, aside),
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}{}{}").format(ident, table, columns, where)]
    # 11. What reads the table by OID is replayed by dependents.recreate_readers (in `perform`).
    # 12. The propagation, the other way (its functions were made before the lock): the outgoing
    # table stays current for a rollback.
    out += propagation.triggers(record.id, s.propagate, table)
    return out, {"to_validate_on": to_validate, "not_null_check": not_null_check}


def _sequence_plan(c: psycopg.Connection, plan: Plan, s: Sides, b: Bindings) -> list[sql.Composable]:
    """Identity sequences: the incoming table's takes the outgoing one's position and name; serial
    sequences (shared through the column default) become owned by the incoming table's column."""
    schema = plan.table_schema
    incoming = capture_sequences(c, schema, s.incoming)
    suffix = ("old_" + model_tag(plan.source_ref)) if s.direction == "cutover" else model_tag(plan.target_ref)
    positions: list[sql.Composable] = []
    asides: list[sql.Composable] = []
    takes: list[sql.Composable] = []
    owners: list[sql.Composable] = []
    for seq in b.sequences:
        current = sql.Identifier(seq["schema"], seq["name"])
        mine = incoming.get(seq["column"])
        if seq["identity"] and mine is not None:
            positions.append(sql.SQL("SELECT setval({}, last_value, is_called) FROM {}").format(
                sql.Literal(sql.Identifier(*mine).as_string(c)), current))
            asides.append(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                current, sql.Identifier(bounded_identifier(seq["name"], suffix))))
            takes.append(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(sql.Identifier(*mine),
                                                                        sql.Identifier(seq["name"])))
        elif not seq["identity"]:
            owners.append(sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                current, sql.Identifier(schema, plan.table_name, seq["column"])))
    # Positions first; every outgoing name is freed before an incoming sequence takes it.
    return positions + asides + takes + owners


def capture_sequences(c: psycopg.Connection, schema: str, table: str) -> dict[str, tuple[str, str]]:
    """column -> (schema, name) of the identity sequences of `table`."""
    return {r[0]: (r[1], r[2]) for r in c.execute(
        """SELECT a.attname, n.nspname, s.relname FROM pg_depend d
           JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_namespace n ON n.oid = s.relnamespace
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
           WHERE d.refobjid = to_regclass(%s) AND d.classid = 'pg_class'::regclass AND d.deptype = 'i'""",
        (sql.Identifier(schema, table).as_string(c),))}


def _create_policy(table: sql.Identifier, policy: dict[str, Any]) -> sql.Composed:
    roles = sql.SQL(", ").join(dependents.grantee_sql(r) for r in policy["roles"])
    using = sql.SQL(" USING ({})").format(sql.SQL(policy["using"])) if policy["using"] is not None else sql.SQL("")
    check = sql.SQL(" WITH CHECK ({})").format(sql.SQL(policy["with_check"])) \
        if policy["with_check"] is not None else sql.SQL("")
    return sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}{}{}").format(
        sql.Identifier(policy["name"]), table, sql.SQL("PERMISSIVE" if policy["permissive"] else "RESTRICTIVE"),
        sql.SQL(policy["command"]), roles, using, check)


def _grant_statements(c: psycopg.Connection, table: sql.Identifier, incoming_oid: int,
                      b: Bindings) -> list[sql.Composable]:
    """Make the incoming table's grants exactly the outgoing one's."""
    current = c.execute(
        """SELECT DISTINCT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END
           FROM pg_class t, aclexplode(t.relacl) x WHERE t.oid = %s AND x.grantee <> t.relowner
           UNION
           SELECT DISTINCT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END
           FROM pg_attribute a, aclexplode(a.attacl) x WHERE a.attrelid = %s""",
        (incoming_oid, incoming_oid)).fetchall()
    out: list[sql.Composable] = [sql.SQL("REVOKE ALL ON {} FROM {}").format(table, dependents.grantee_sql(g))
                                 for (g,) in current]
    out += [sql.SQL("GRANT {} ON {} TO {}{}").format(
        dependents.privilege_sql(privilege), table, dependents.grantee_sql(grantee),
        sql.SQL(" WITH GRANT OPTION" if grantable else "")) for grantee, privilege, grantable in b.grants]
    out += [sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
        dependents.privilege_sql(privilege), sql.Identifier(column), table, dependents.grantee_sql(grantee),
        sql.SQL(" WITH GRANT OPTION" if grantable else ""))
        for column, grantee, privilege, grantable in b.column_grants]
    return out


def _aside_tag(plan: Plan, s: Sides) -> str:
    if s.aside_role == "copy":
        return tag_comment(plan)
    return json.dumps({"reembed": True, "plan": plan.name, "role": "old", "model": plan.source,
                       "drop_with": f"reembed cleanup {plan.name}", "undo_with": f"reembed rollback {plan.name}"})


# -- after the lock ---------------------------------------------------------------------------------

def finish(conn: psycopg.Connection, plan: Plan, record: PlanRecord, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
           retries: int = DEFAULT_RETRIES) -> list[str]:
    """VALIDATE what was added NOT VALID (foreign keys on both sides, CHECKs), then NOT NULL on the
    vector column without a scan. Idempotent; returns notes."""
    notes: list[str] = []
    last = column_swap.last_swap(conn, record.id)
    if last is None:
        return notes
    for schema, table, name in last["captured"].get("to_validate_on", []):
        ident = sql.Identifier(schema, table)
        row = conn.execute("SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                           (ident.as_string(conn), name)).fetchone()
        if row is None or row[0]:
            continue
        try:
            conn.execute(template("cutover_validate_constraint", table=ident, constraint=sql.Identifier(name)))
        except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as exc:
            notes.append(f"constraint {name} on {schema}.{table} does not hold for every row "
                         f"({type(exc).__name__}): it stays NOT VALID (new writes are checked); fix the rows, then "
                         "run this command again")
    # NOT NULL: the same helper check and proof as the column strategy's, on the swapped-in table.
    notes += column_swap.finish(conn, plan, record, lock_timeout_ms=lock_timeout_ms, retries=retries)
    return notes


def statements(plan: Plan, direction: str, conn: psycopg.Connection | None = None) -> list[sql.Composable]:
    """The swap for `reembed plan --sql` / review. With `conn` and both tables there (after `run`),
    the exact statements the swap would run now, read from the catalog as the swap reads it; with
    only the outgoing table there (at plan), the fixed part and, by name, everything it carries."""
    s = sides(plan, direction)
    schema = plan.table_schema
    outgoing, incoming = sql.Identifier(schema, s.outgoing), sql.Identifier(schema, s.incoming)
    head: list[sql.Composable] = [
        sql.SQL("BEGIN"),
        template("cutover_lock_timeout", timeout=sql.Literal(f"{DEFAULT_LOCK_TIMEOUT_MS}ms")),
        template("cutover_lock", relations=sql.SQL(", ").join([outgoing, incoming])),
    ]
    tail: list[sql.Composable] = [
        sql.SQL("COMMIT"),
        sql.SQL("-- then VALIDATE the constraints added NOT VALID, and NOT NULL on {} without a scan").format(
            sql.Identifier(plan.column))]
    present = {name for name in (s.outgoing, s.incoming) if conn is not None and conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]}
    bindings = capture(conn, _oid(conn, schema, s.outgoing)) if conn is not None and s.outgoing in present else None
    if conn is not None and bindings is not None and s.incoming in present:
        from toolkit.state import get_plan

        exact, _ = exchange_statements(conn, plan, get_plan(conn, plan.name), s, bindings)
        # The swap re-creates these from their definitions as it reads them under the lock.
        readers = {k: v for k, v in bindings.summary().items() if k in ("view", "materialized_view", "function")}
        return head + exact + _named_by_kind("re-create {} on the swapped-in table: {}", readers) + tail
    out = head + [
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(outgoing, sql.Identifier(s.aside)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(incoming, sql.Identifier(plan.table_name)),
    ]
    out += [sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(schema, a), sql.Identifier(b))
            for _, a, b in index_renames(plan, direction)]
    carried = bindings.summary() if bindings is not None else {}
    out += _named_by_kind("carry over {}: {}", carried)
    out.append(sql.SQL("-- carry over: row security, owner, comments, replica identity, statistics; the change "
                       "propagation turned round"
                       if carried else
                       "-- carry over: identity sequences, triggers, row security and policies, owner, grants, "
                       "comments, publications, replica identity, CHECK and foreign keys (NOT VALID), views and "
                       "functions reading the table; propagation turned round"))
    return out + tail


def _named_by_kind(line: str, names_by_kind: dict[str, list[str]]) -> list[sql.Composable]:
    """One `-- ` comment line per kind of binding (`line` formats kind, then its names)."""
    return [sql.SQL("-- " + line).format(sql.SQL(kind.replace("_", " ")), sql.SQL(_comment_text(", ".join(names))))
            for kind, names in names_by_kind.items()]


def _comment_text(text: str) -> str:
    """Catalog names inside a `--` comment line: one line, and no braces for sql.SQL to format."""
    return " ".join(text.split()).replace("{", "{{").replace("}", "}}")


def bound_elsewhere(conn: psycopg.Connection, table: sql.Identifier) -> list[str]:
    """What still depends on `table` from outside it (a drop without CASCADE would stop on it)."""
    oid = conn.execute("SELECT to_regclass(%s)::oid", (table.as_string(conn),)).fetchone()[0]  # type: ignore[index]
    if oid is None:
        return []
    found = Bindings(owner="", comment=None, column_comments={}, index_comments={}, grants=[], column_grants=[],
                     row_security=[False, False], policies=[], triggers=[], replica_identity=["d", None],
                     publications=[], checks=[], foreign_keys=[], referencing=[], sequences=[])
    _capture_readers(conn, oid, found)
    out = [f"{kind} {', '.join(names)}" for kind, names in found.summary().items()]
    out += [f"foreign key {r[0]}.{r[1]}" for r in conn.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE confrelid = %s AND conrelid <> %s "
        "AND contype = 'f'", (oid, oid))]
    return out + found.unsupported
