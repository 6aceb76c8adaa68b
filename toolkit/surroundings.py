"""What reacts to the migration's own work on a table: the application's triggers and event
triggers (fired by reembed's writes and DDL), and the publications that carry the table to
logical-replication subscribers (who must follow its column changes). Read-only; `inspect` and
`plan` list these and say, for the chosen strategy, what fires and what each subscriber needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

if TYPE_CHECKING:
    from toolkit.plan import Plan

# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h)
_ROW, _BEFORE, _INSERT, _DELETE, _UPDATE, _TRUNCATE, _INSTEAD = 1, 2, 4, 8, 16, 32, 64
_OWN_PREFIX = "reembed\\_"  # reembed's own triggers (tracking, the copy strategy's propagation)


@dataclass
class Trigger:
    name: str
    timing: str  # BEFORE | AFTER | INSTEAD OF
    level: str  # ROW | STATEMENT
    events: list[str]
    columns: list[str]  # UPDATE OF these columns only; empty: any UPDATE
    condition: bool  # has a WHEN clause
    enabled: str  # pg_trigger.tgenabled: O (origin), D (disabled), R (replica only), A (always)
    function: str

    @property
    def fires_normally(self) -> bool:
        """Fires in an ordinary session (session_replication_role = origin)."""
        return self.enabled in ("O", "A")

    def fired_by_backfill_update(self) -> bool:
        """The column strategy's backfill UPDATEs only the new column, which no application trigger
        names: every enabled UPDATE trigger without a column list fires."""
        return self.fires_normally and "UPDATE" in self.events and not self.columns

    def describe(self) -> str:
        events = " OR ".join(e + (f" OF {', '.join(self.columns)}" if e == "UPDATE" and self.columns else "")
                             for e in self.events)
        state = {"D": ", disabled", "R": ", replica only"}.get(self.enabled, "")
        return (f"{self.name}: {self.timing} {events} FOR EACH {self.level}"
                + (" WHEN (...)" if self.condition else "") + f" -> {self.function}{state}")


@dataclass
class Publication:
    name: str
    all_tables: bool
    via_schema: bool  # FOR TABLES IN SCHEMA
    columns: list[str] | None  # a column list: only these are published
    row_filter: str | None
    operations: list[str]  # published operations: insert, update, delete, truncate


@dataclass
class Surroundings:
    triggers: list[Trigger] = field(default_factory=list)
    event_triggers: list[str] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    all_tables_publications: list[str] = field(default_factory=list)  # they also publish schema reembed
    logical_slots: list[str] = field(default_factory=list)  # "name (active|inactive)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load(conn: psycopg.Connection, oid: int) -> Surroundings:
    cur = conn.cursor(row_factory=dict_row)
    triggers = []
    for r in cur.execute(
            """SELECT t.tgname, t.tgtype::int AS tgtype, t.tgenabled, t.tgqual IS NOT NULL AS has_when,
                      t.tgfoid::regproc::text AS function,
                      ARRAY(SELECT a.attname FROM unnest(t.tgattr::int2[]) AS k
                            JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = k) AS columns
               FROM pg_trigger t WHERE t.tgrelid = %s AND NOT t.tgisinternal AND t.tgname NOT LIKE %s
               ORDER BY t.tgname""", (oid, _OWN_PREFIX + "%")):
        kind = r["tgtype"]
        events = [name for bit, name in ((_INSERT, "INSERT"), (_UPDATE, "UPDATE"), (_DELETE, "DELETE"),
                                         (_TRUNCATE, "TRUNCATE")) if kind & bit]
        timing = "INSTEAD OF" if kind & _INSTEAD else ("BEFORE" if kind & _BEFORE else "AFTER")
        triggers.append(Trigger(name=r["tgname"], timing=timing, level="ROW" if kind & _ROW else "STATEMENT",
                                events=events, columns=list(r["columns"]), condition=r["has_when"],
                                enabled=r["tgenabled"], function=r["function"]))
    event_triggers = [f"{name} ON {event}" for name, event in conn.execute(
        "SELECT evtname, evtevent FROM pg_event_trigger WHERE evtenabled <> 'D' ORDER BY 1")]
    publications = [Publication(name=r["pubname"], all_tables=r["puballtables"], via_schema=r["via_schema"],
                                columns=list(r["attnames"]) if r["has_list"] else None, row_filter=r["rowfilter"],
                                operations=[op for op, on in (("insert", r["pubinsert"]), ("update", r["pubupdate"]),
                                                              ("delete", r["pubdelete"]),
                                                              ("truncate", r["pubtruncate"])) if on])
                    for r in cur.execute(
            """SELECT p.pubname, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
                      pt.attnames, pt.rowfilter,
                      EXISTS (SELECT 1 FROM pg_publication_namespace pn JOIN pg_class c ON c.relnamespace = pn.pnnspid
                              WHERE pn.pnpubid = p.oid AND c.oid = %(t)s) AS via_schema,
                      EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = %(t)s
                              AND pr.prattrs IS NOT NULL) AS has_list
               FROM pg_publication p
               JOIN pg_publication_tables pt ON pt.pubname = p.pubname
               JOIN pg_class c ON c.oid = %(t)s AND c.relname = pt.tablename
               JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = pt.schemaname
               ORDER BY p.pubname""", {"t": oid})]
    all_tables = [r[0] for r in conn.execute("SELECT pubname FROM pg_publication WHERE puballtables ORDER BY 1")]
    slots = [f"{name} ({'active' if active else 'inactive'})" for name, active in conn.execute(
        "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'logical' AND database = "
        "current_database() ORDER BY 1")]
    return Surroundings(triggers=triggers, event_triggers=event_triggers, publications=publications,
                        all_tables_publications=all_tables, logical_slots=slots)


# -- what fires ------------------------------------------------------------------------------------

def trigger_notes(surroundings: Surroundings, strategy: str = "column") -> list[str]:
    """For each application trigger and event trigger: whether the strategy's work fires it."""
    notes = []
    for trigger in surroundings.triggers:
        if strategy == "column" and trigger.fired_by_backfill_update():
            times = "once per row" if trigger.level == "ROW" else "once per batch"
            notes.append(f"{trigger.describe()}: FIRES {times} during `reembed run` (the backfill UPDATEs every "
                         "row" + (", unless its WHEN condition is false" if trigger.condition else "") + ")")
        elif strategy == "column":
            notes.append(f"{trigger.describe()}: not fired by reembed (its writes touch only the new column; "
                         "the swap is DDL)")
        else:
            notes.append(f"{trigger.describe()}: not fired by reembed (it writes only the copy, which has none of "
                         "the application's triggers; at the swap they move to the new table in the state they had)")
    for event_trigger in surroundings.event_triggers:
        notes.append(f"event trigger {event_trigger}: fires on reembed's DDL (prepare, index, cutover, cleanup)")
    return notes


# -- what subscribers need -----------------------------------------------------------------------------

@dataclass
class SubscriberStep:
    """One thing every subscriber needs, at one moment of the migration."""

    when: str
    statements: list[str]  # SQL to run on the subscriber, or one shell command when `shell`
    why: str
    shell: bool = False

    def describe(self) -> str:
        body = self.statements[0] if self.shell else " ".join(s.rstrip(";") + ";" for s in self.statements)
        return f"{self.when}: {body}  ({self.why})"


@dataclass
class SubscriberAdvice:
    publications: list[str]  # the publications the steps are for
    steps: list[SubscriberStep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # publisher-side changes to make first, in words

    def lines(self) -> list[str]:
        out = list(self.warnings)
        if self.steps:
            out.append(f"on every subscriber of {', '.join(self.publications)}, in this order:")
            out += [f"  {n}. {step.describe()}" for n, step in enumerate(self.steps, 1)]
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def subscriber_advice(plan: "Plan", surroundings: Surroundings) -> SubscriberAdvice:
    """What every subscriber of a publication carrying the table needs, in order, for `strategy`.

    Logical replication applies changes by column name, and stops at a change that names a column
    (or a table) its side lacks, retrying until it exists. The column strategy adds a column and
    later swaps two names: a subscriber adds the new column before the backfill (whose UPDATEs
    replicate the new vectors), and swaps its own names when the first change made after the
    publisher's swap arrives -- which is exactly where it stops, lacking the aside column's name,
    having applied everything before. A FOR ALL TABLES publication also carries schema reembed.
    """
    table = _q(plan.table_schema, plan.table_name)
    carrying = [p for p in surroundings.publications if p.columns is None or plan.column in p.columns]
    advice = SubscriberAdvice(publications=[p.name for p in carrying])
    for publication in carrying:
        if publication.columns is not None:
            advice.warnings.append(
                f"publication {publication.name} lists the columns it publishes ({', '.join(publication.columns)}): "
                "the new column is not among them, so its subscribers would keep the old model's vector in every "
                f"row not written after cutover. Before `reembed run {plan.name}`, publish {table} without a list "
                f"(BEGIN; ALTER PUBLICATION {publication.name} DROP TABLE {table}; ALTER PUBLICATION "
                f"{publication.name} ADD TABLE {table}; COMMIT; its subscribers then need every column of {table}) "
                "and set the list again after cleanup")
        if "update" not in publication.operations:
            advice.warnings.append(
                f"publication {publication.name} does not publish UPDATEs, so the backfill's new vectors never reach "
                f"its subscribers: publish them for the migration (ALTER PUBLICATION {publication.name} SET "
                f"(publish = '{', '.join(publication.operations + ['update'])}'))")
    for publication in surroundings.publications:
        if publication.columns is not None and plan.column not in publication.columns:
            advice.warnings.append(f"publication {publication.name} publishes {', '.join(publication.columns)} of "
                                   f"{table}, not {plan.column}: its subscribers need nothing")
    if surroundings.all_tables_publications:
        advice.publications += [p for p in surroundings.all_tables_publications if p not in advice.publications]
        advice.steps.append(SubscriberStep(
            when="now (schema reembed exists here once any reembed command but inspect has run)",
            statements=["pg_dump --schema-only --schema=reembed PUBLISHER_DSN | psql SUBSCRIBER_DSN"], shell=True,
            why=f"{', '.join(surroundings.all_tables_publications)} FOR ALL TABLES also publish reembed's registry and "
                "ledger, written all through the migration; a subscriber without their tables stops with `relation "
                "reembed.... does not exist` and resumes by itself once they exist"))
    if carrying:
        advice.steps += _STEPS_BY_STRATEGY[plan.strategy](plan, table)
    if advice.steps and surroundings.logical_slots:
        advice.warnings.append(f"logical replication slots here: {', '.join(surroundings.logical_slots)}; while a "
                               "subscriber is stopped its slot keeps WAL on this server")
    return advice


def _column_strategy_steps(plan: "Plan", table: str) -> list[SubscriberStep]:
    # The subscriber runs the statements reembed runs here (rendered the same way), so its table
    # follows the publisher's exactly.
    from toolkit.strategies import strategy_for

    strategy = strategy_for(plan)
    steps = [SubscriberStep(
        when=f"before `reembed run {plan.name}`",
        statements=[f"ALTER TABLE {table} ADD COLUMN {_q(plan.shadow_column)} {plan.new_column_type}"],
        why="the backfill's UPDATEs bring it the new vectors; without it the subscriber stops with `missing "
            "replicated column`")]
    targets = strategy.index_targets(plan, "backfilled")
    if targets:
        steps.append(SubscriberStep(
            when=f"before `reembed cutover {plan.name}`, where the subscriber serves queries",
            statements=[_rendered(t.statement) for t in targets],
            why="the same indexes as the publisher's, ready when the new vectors take the column's name"))
    swap = [_rendered(s) for s in strategy.swap_sql(plan, "cutover")]
    steps.append(SubscriberStep(
        when=f"after `reembed cutover {plan.name}`, when the subscriber stops with `missing replicated column "
             f"{plan.old_column}` (or, if nothing is written to {table}, once it has caught up)",
        statements=[s for s in swap if not s.startswith("--")],
        why="the publisher's own swap: the subscriber stops at the first change made after it, having applied "
            "everything before, and resumes by itself once its names match; views and functions on the subscriber "
            "that read the column follow the old one, as they would here: re-create them in the same transaction. "
            "A `reembed rollback` is followed the same way, in reverse"))
    steps.append(SubscriberStep(
        when=f"after `reembed cleanup {plan.name}`",
        statements=[f"ALTER TABLE {table} DROP COLUMN {_q(plan.old_column)}"],
        why=f"the publisher no longer sends it (after `reembed abandon`, drop {plan.shadow_column} instead)"))
    return steps


def _rendered(statement: sql.Composable) -> str:
    return " ".join(statement.as_string(None).split())


def _q(*names: str) -> str:
    """A (qualified) identifier quoted as SQL needs it, for statements printed for the user to run."""
    return sql.Identifier(*names).as_string(None)


def _copy_strategy_steps(plan: "Plan", table: str) -> list[SubscriberStep]:
    """The copy is not published and the swapped-in table keeps the name and the columns, so
    replication goes on untouched; only the re-embedded vectors of rows nobody changes after the
    swap are not sent (the backfill wrote them into the copy). Re-copying the table brings them."""
    return [SubscriberStep(
        when=f"after `reembed cutover {plan.name}`, if the subscriber must have the new vectors of every row",
        statements=[f"-- on the publisher: ALTER PUBLICATION <pub> DROP TABLE {table}",
                    "ALTER SUBSCRIPTION <sub> REFRESH PUBLICATION",
                    f"TRUNCATE {table}",
                    f"-- on the publisher: ALTER PUBLICATION <pub> ADD TABLE {table}",
                    "ALTER SUBSCRIPTION <sub> REFRESH PUBLICATION WITH (copy_data = true)"],
        why="nothing is needed for replication to go on (the same table name and columns); rows changed after "
            "the swap arrive with their new vectors, the others keep the old model's until the table is copied "
            "again")]


_STEPS_BY_STRATEGY: dict[str, Callable[["Plan", str], list[SubscriberStep]]] = {
    "column": _column_strategy_steps, "copy": _copy_strategy_steps}
