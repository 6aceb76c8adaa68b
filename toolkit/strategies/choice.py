"""Choosing a strategy at `plan`: what the application would see under each, the disk and time
each needs, and the recommendation with its reasons.

What points to copy: the application's own UPDATE triggers (the column strategy's backfill
updates every row and fires them), a publication carrying the table (its subscribers stop on the
shadow column), statements that read or write the table by position (`SELECT *`, `RETURNING *`,
`INSERT` without a column list: they break when a column appears, moves or is renamed), found in
pg_stat_statements when it is installed. What points to column: the copy cannot carry the table
(named), or the disk the copy needs is not free. With nothing detected either way: copy, the
strategy the application cannot notice, with the disk it needs said.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from toolkit.catalog import TableInfo
from toolkit.errors import BadInput


@dataclass
class Detected:
    """What the catalog and pg_stat_statements say about how the application uses the table."""

    update_triggers: list[str] = field(default_factory=list)
    other_triggers: list[str] = field(default_factory=list)
    publications: list[str] = field(default_factory=list)  # FOR TABLE (with the table) or ALL / SCHEMA
    star_statements: list[str] = field(default_factory=list)  # SELECT * / RETURNING * / INSERT without columns
    statements_checked: str = ""  # how the statements were (or could not be) looked at
    free_disk_bytes: int | None = None  # where the data directory is readable from here


@dataclass
class StrategyView:
    name: str
    application_sees: list[str]
    disk_bytes: int
    disk_note: str
    refused: str | None = None


@dataclass
class Choice:
    recommended: str
    chosen: str
    chosen_by: str  # "recommendation" | "--strategy"
    reasons: list[str]
    views: list[StrategyView]
    detected: Detected

    def to_spec(self) -> dict[str, Any]:
        """As the plan file keeps it (TOML has no null: absent values are left out)."""
        return _without_none({"recommended": self.recommended, "chosen": self.chosen, "chosen_by": self.chosen_by,
                              "reasons": self.reasons, "views": [asdict(v) for v in self.views],
                              "detected": asdict(self.detected)})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Choice":
        return cls(recommended=spec["recommended"], chosen=spec["chosen"], chosen_by=spec["chosen_by"],
                   reasons=list(spec["reasons"]), views=[StrategyView(**v) for v in spec["views"]],
                   detected=Detected(**spec["detected"]))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


# -- detection --------------------------------------------------------------------------------------

def detect(conn: psycopg.Connection, info: TableInfo) -> Detected:
    from toolkit import surroundings

    around = surroundings.load(conn, info.oid)
    found = Detected()
    for trigger in around.triggers:
        if trigger.fired_by_backfill_update():
            found.update_triggers.append(trigger.name)
        elif trigger.fires_normally:
            found.other_triggers.append(trigger.name)
    found.publications = sorted({p.name for p in around.publications} | set(around.all_tables_publications))
    found.star_statements, found.statements_checked = positional_statements(conn, info)
    found.free_disk_bytes = _free_disk(conn)
    return found


_STAR = re.compile(r"\bselect\s+(distinct\s+)?(\w+\.)?\*|\breturning\s+\*", re.IGNORECASE)


def positional_statements(conn: psycopg.Connection, info: TableInfo, limit: int = 20) -> tuple[list[str], str]:
    """The application's statements on the table (pg_stat_statements) that depend on its columns'
    positions: `SELECT *`, `RETURNING *`, `INSERT INTO table VALUES/SELECT` without a column list."""
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                       "WHERE e.extname = 'pg_stat_statements'").fetchone()
    if row is None:
        return [], "pg_stat_statements is not installed: statements using SELECT * were not looked for"
    try:
        with conn.transaction():
            statements = [r[0] for r in conn.execute(sql.SQL(
                "SELECT query FROM {}.pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) AND query ILIKE %s ORDER BY calls DESC LIMIT 500").format(
                    sql.Identifier(row[0])), (f"%{info.name}%",)).fetchall()]
    except psycopg.Error as exc:
        return [], f"pg_stat_statements is not readable ({(str(exc).strip().splitlines() or [''])[0]})"
    found = classify_statements(statements, info)
    return [" ".join(q.split())[:200] for q in found[:limit]], \
        f"{len(statements)} statements on {info.name} in pg_stat_statements looked at"


def classify_statements(statements: list[str], info: TableInfo) -> list[str]:
    """Those of `statements` (normalized query texts) on the table that depend on its columns'
    positions: `SELECT *` (or `alias.*`), `RETURNING *`, `INSERT INTO table VALUES/SELECT ...`."""
    schema, table = re.escape(info.schema), re.escape(info.name)
    mentions = re.compile(rf'(?<![\w$."])("?{schema}"?\.)?"?{table}"?(?![\w$])', re.IGNORECASE)
    no_columns = re.compile(rf'\binsert\s+into\s+("?{schema}"?\.)?"?{table}"?\s+(as\s+\w+\s+)?'
                            r'(values|select|default\s+values|overriding)\b', re.IGNORECASE)
    own = re.compile(r'\breembed\.', re.IGNORECASE)
    return [q for q in statements
            if not own.search(q) and mentions.search(q) and (_STAR.search(q) or no_columns.search(q))]


def _free_disk(conn: psycopg.Connection) -> int | None:
    """Free bytes where the database keeps its files, when that directory is readable from here (an
    embedded or local server); None otherwise (SQL cannot tell)."""
    try:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return None
    try:
        stat = os.statvfs(row[0]) if row else None
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize if stat else None


# -- the choice ---------------------------------------------------------------------------------------

def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def choose(conn: psycopg.Connection, plan: Any, info: TableInfo, requested: str | None) -> Choice:
    """Compare the strategies for this table and plan; take `requested` when given."""
    from toolkit.strategies import strategy_named

    found = detect(conn, info)
    rows = max(info.rows_estimate, 0)
    column_disk = sum(strategy_named("column").disk_bytes(plan, rows, info))
    copy_disk = sum(strategy_named("copy").disk_bytes(plan, rows, info))
    copy_refused = _copy_refusal(conn, plan, info, strategy_named("copy"))
    triggers = ", ".join(found.update_triggers)
    column_sees = [f"an extra column {plan.shadow_column} in every `SELECT *` from prepare to cutover, then "
                   f"{plan.old_column} until cleanup; after cleanup {plan.column} is the table's last column",
                   "statements it prepared with `SELECT *` (psycopg after 5 runs, asyncpg always) fail with `cached "
                   "plan must not change result type` after prepare, cutover, rollback and cleanup, until their "
                   "connection is closed"]
    if found.star_statements:
        column_sees.append(f"{len(found.star_statements)} of its statements read or write by position "
                           f"(e.g. {found.star_statements[0]!r})")
    column_sees.append(f"its UPDATE triggers fire for every backfilled row ({rows} rows): {triggers}"
                       if found.update_triggers else "the backfill UPDATEs every row (it has no UPDATE trigger)")
    if found.publications:
        column_sees.append(f"subscribers of {', '.join(found.publications)} stop with `missing replicated column`")
    graphs = [i.original_name for i in plan.indexes if i.original_name and i.orders_by_distance]
    if graphs:
        # Each new row version is larger than the old, so some cannot stay HOT whatever the order; the
        # share depends on the row's width (README, Scale: 10% on the bench's table).
        column_sees.append(f"backfilled rows that no longer fit on their page are inserted again into "
                           f"{', '.join(graphs)}: the database's CPU per row grows with that index "
                           "(the copy strategy never writes it)")
    copy_sees = ["no change: the same columns in the same order, the same names, triggers, grants and policies; "
                 "its table is only read until the swap",
                 "each of its writes also writes the copy, in the same transaction, until cleanup"]
    if found.publications:
        copy_sees.append(f"publications {', '.join(found.publications)} carry the swapped-in table under the same "
                         "name; subscribers receive the new vectors for rows changed after the swap")
    views = [StrategyView("column", column_sees, column_disk,
                          f"~{_mb(column_disk)} for the new vectors and their index until cleanup; the old column's "
                          "space stays in the table until it is rewritten (VACUUM FULL or pg_repack)"),
             StrategyView("copy", copy_sees, copy_disk,
                          f"~{_mb(copy_disk)}, the table again (rows, TOAST, every index), until cleanup drops the "
                          "old table and returns it at once", refused=copy_refused)]
    reasons: list[str] = []
    recommended = "copy"
    if copy_refused:
        recommended = "column"
        reasons.append(f"the copy strategy cannot carry this table: {copy_refused}")
    elif found.free_disk_bytes is not None and copy_disk > 0.9 * found.free_disk_bytes > column_disk:
        recommended = "column"
        reasons.append(f"only {_mb(found.free_disk_bytes)} is free where the database keeps its files and the copy "
                       f"needs ~{_mb(copy_disk)}; the column strategy needs ~{_mb(column_disk)}")
    else:
        if found.update_triggers:
            reasons.append(f"the table has UPDATE triggers ({triggers}): the column strategy's backfill would fire "
                           f"them for every row; the copy strategy fires none")
        if found.publications:
            reasons.append(f"publication(s) {', '.join(found.publications)} carry the table: an added column stops "
                           "their subscribers")
        if found.star_statements:
            reasons.append(f"{len(found.star_statements)} statement(s) in pg_stat_statements use SELECT *, RETURNING "
                           "* or INSERT without a column list: a new or moved column breaks them")
        if not reasons:
            reasons.append("nothing detected either way: copy is the strategy the application cannot notice"
                           + (f"; it needs ~{_mb(copy_disk)} of disk until cleanup" if copy_disk else ""))
    chosen = requested or recommended
    if requested == "copy" and copy_refused:
        raise BadInput(f"the copy strategy cannot carry {info.qualified}: {copy_refused} "
                       "(plan --strategy column to re-embed in place)")
    return Choice(recommended=recommended, chosen=chosen, chosen_by="--strategy" if requested else "recommendation",
                  reasons=reasons, views=views, detected=found)


def _copy_refusal(conn: psycopg.Connection, plan: Any, info: TableInfo, copy: Any) -> str | None:
    """Why the copy strategy refuses this table, or None. Leaves the plan as it was."""
    saved = plan.copy
    try:
        copy.check_plan(conn, plan, info)
    except BadInput as exc:
        message = str(exc)
        prefix = f"the copy strategy cannot carry {info.qualified}: "
        return message.removeprefix(prefix).removesuffix(" (plan --strategy column to re-embed in place)")
    finally:
        plan.copy = saved
    return None
