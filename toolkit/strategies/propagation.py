"""The copy strategy's change propagation: triggers that mirror every application write.

Before cutover they run from the original to the copy (`forward`); the swap drops them and
installs the same on the swapped-in table, towards the table moved aside (`back`), so that one
stays current for a rollback; a rollback turns them round again. Each direction is one row
trigger (insert, update, delete) and one TRUNCATE trigger, calling functions in schema reembed
(sql/copy_propagate_function.sql). Only reembed's own triggers are ever on the copy until the
swap, so nothing reembed writes there fires the application's.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from toolkit.phases.ddl import template
from toolkit.phases.prepare import key_json
from toolkit.plan import Plan
from toolkit.strategies.copy_table import columns, writable

DIRECTIONS = ("forward", "back")


@dataclass(frozen=True)
class Names:
    """The triggers (on the table the application writes) and functions of one direction."""

    trigger: str
    truncate_trigger: str
    function: sql.Identifier
    truncate_function: sql.Identifier


def names(plan_id: int, direction: str) -> Names:
    # The forward row trigger and function keep the column strategy's tracking names.
    suffix = "" if direction == "forward" else "_back"
    return Names(trigger=f"reembed_track_{plan_id}{suffix}", truncate_trigger=f"reembed_truncate_{plan_id}{suffix}",
                 function=sql.Identifier("reembed", f"track_{plan_id}{suffix}"),
                 truncate_function=sql.Identifier("reembed", f"truncate_{plan_id}{suffix}"))


def row_of(alias: str, cols: list[str]) -> sql.Composable:
    """row(alias.c1, ...): the alias as written (OLD, NEW, EXCLUDED must not be quoted)."""
    return sql.SQL("row({})").format(sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(alias), sql.Identifier(c))
                                                        for c in cols))


def install(conn: psycopg.Connection, plan: Plan, plan_id: int, direction: str, source: sql.Identifier,
            target: sql.Identifier) -> list[sql.Composable]:
    """The statements that make `source`'s writes reach `target` (run them in one transaction)."""
    return functions(conn, plan, plan_id, direction, source, target) + triggers(plan_id, direction, source)


def triggers(plan_id: int, direction: str, source: sql.Identifier) -> list[sql.Composable]:
    """The triggers on `source` that call one direction's functions."""
    n = names(plan_id, direction)
    return [template("copy_propagate_trigger", trigger=sql.Identifier(n.trigger), source=source, function=n.function),
            template("copy_truncate_trigger", trigger=sql.Identifier(n.truncate_trigger), source=source,
                     function=n.truncate_function)]


def functions(conn: psycopg.Connection, plan: Plan, plan_id: int, direction: str, source: sql.Identifier,
              target: sql.Identifier) -> list[sql.Composable]:
    """One direction's functions, writing into `target` by name (plpgsql resolves it when it runs).
    Column lists come from `source`'s catalog entries (the copy has the same columns)."""
    cols = columns(conn, source)
    copied = writable(cols, plan.column)
    text = plan.tracked_columns
    # A row trigger sees a VIRTUAL generated column (PostgreSQL 18) as NULL in OLD and NEW, so the
    # text's change is judged on what it is computed from too (the column strategy's watched
    # columns); the mirror's own values (m, EXCLUDED) are computed, and compared as they are.
    judged = list(dict.fromkeys(text + plan.text_inputs))
    n = names(plan_id, direction)
    unchanged = sql.SQL(" AND ").join(
        sql.SQL("OLD.{c} IS NOT DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c)) for c in copied)
    assignments = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in copied
                                     if c not in plan.primary_key) or sql.SQL("{c} = EXCLUDED.{c}").format(
        c=sql.Identifier(plan.primary_key[0]))
    match_old = sql.SQL(" AND ").join(sql.SQL("m.{c} = OLD.{c}").format(c=sql.Identifier(c)) for c in plan.primary_key)
    function = template(
        "copy_propagate_function", function=n.function, target=target, match_old=match_old,
        old_key=key_json(plan, "OLD"), new_key=key_json(plan, "NEW"), plan_id=sql.Literal(plan_id),
        unchanged=unchanged, columns=sql.SQL(", ").join(map(sql.Identifier, copied)),
        values=sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in copied),
        key=sql.SQL(", ").join(map(sql.Identifier, plan.primary_key)), assignments=assignments,
        vector=sql.Identifier(plan.column), mirror_text=row_of("m", text), excluded_text=row_of("EXCLUDED", text),
        text_changed=sql.SQL("{} IS DISTINCT FROM {}").format(row_of("OLD", judged), row_of("NEW", judged)))
    return [function, template("copy_truncate_function", function=n.truncate_function, target=target,
                               plan_id=sql.Literal(plan_id))]


def remove(plan_id: int, direction: str, source: sql.Identifier | None) -> list[sql.Composable]:
    """Drop one direction's triggers (when `source` still exists) and functions; idempotent."""
    n = names(plan_id, direction)
    out: list[sql.Composable] = []
    if source is not None:
        out += [template("prepare_drop_trigger", trigger=sql.Identifier(t), table=source)
                for t in (n.trigger, n.truncate_trigger)]
    out += [template("prepare_drop_function", function=f) for f in (n.function, n.truncate_function)]
    return out


def installed(conn: psycopg.Connection, plan_id: int, direction: str, source: sql.Identifier) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = ANY (%s)",
                       (source.as_string(conn), [names(plan_id, direction).trigger,
                                                 names(plan_id, direction).truncate_trigger])).fetchone()
    return bool(row and row[0] == 2)
