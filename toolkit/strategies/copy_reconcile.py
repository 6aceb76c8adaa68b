"""Changes the copy strategy's propagation did not see, found and repaired before a swap.

The propagation is a row trigger: a session with `session_replication_role = replica`
(pg_restore, a logical-replication apply) or a disabled trigger writes the application's table
without it, and the mirror (the copy before cutover, the table moved aside after it) silently
keeps the old row, which the swap would then put in front of the application. Before each swap
the two tables are compared on every column but the vector, in one REPEATABLE READ snapshot (one
scan of each), and what differs is repaired in that snapshot's transaction: a concurrent write of
the application to a repaired row makes it fail with a serialization error rather than be
overwritten, and it is tried again. Rows whose embedded text changed lose the mirror's vector and
become pending (the advised `reembed run` embeds them); rows differing only elsewhere keep it.
A change behind the triggers' back between this check and the swap's lock is not seen (README).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from toolkit.errors import GateFailed
from toolkit.phases.ddl import template
from toolkit.phases.prepare import key_json
from toolkit.plan import Plan
from toolkit.strategies.base import Reconciled
from toolkit.strategies.copy_table import columns, writable
from toolkit.strategies.propagation import row_of

TRIES = 3
_DIVERGED = sql.Identifier("reembed_diverged")


def reconcile(conn: psycopg.Connection, plan: Plan, plan_id: int, source: sql.Identifier,
              mirror: sql.Identifier) -> Reconciled:
    """Make `mirror` hold every row of `source` (but the vector) as it is now; what was done."""
    copied = writable(columns(conn, source), plan.column)
    key = plan.primary_key
    first = sql.Identifier(key[0])
    parts = {"diverged": _DIVERGED, "source": source, "mirror": mirror, "plan_id": sql.Literal(plan_id),
             "source_key": key_json(plan, "t"), "mirror_key": key_json(plan, "m")}
    diverged = template(
        "copy_diverged", **parts, in_source=sql.SQL("t.{} IS NOT NULL").format(first),
        in_mirror=sql.SQL("m.{} IS NOT NULL").format(first), source_hash=plan.text_hash_expression("t"),
        mirror_hash=plan.text_hash_expression("m"), source_row=row_of("t", copied), mirror_row=row_of("m", copied),
        match=sql.SQL(" AND ").join(sql.SQL("m.{c} = t.{c}").format(c=sql.Identifier(c)) for c in key))
    assignments = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                                     for c in copied if c not in key) or sql.SQL("{c} = EXCLUDED.{c}").format(c=first)
    text = list(dict.fromkeys(plan.tracked_columns + plan.text_inputs))
    upsert = template(
        "copy_repair_upsert", **parts, columns=sql.SQL(", ").join(map(sql.Identifier, copied)),
        values=sql.SQL(", ").join(sql.Identifier("t", c) for c in copied),
        key=sql.SQL(", ").join(map(sql.Identifier, key)), assignments=assignments,
        vector=sql.Identifier(plan.column), mirror_text=row_of("m", text), excluded_text=row_of("EXCLUDED", text))
    for attempt in range(1, TRIES + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.execute(diverged)
                counts = conn.execute(template("copy_diverged_counts", diverged=_DIVERGED)).fetchone()
                assert counts is not None
                if not counts[0]:  # the usual case: the repair's statements (another scan) are not needed
                    return Reconciled()
                deleted, repaired = int(counts[1]), int(counts[2])
                conn.execute(template("copy_lock_ledger_rows", plan_id=sql.Literal(plan_id), keys=sql.SQL(
                    "SELECT source_pk FROM {d} WHERE source_pk IS NOT NULL UNION "
                    "SELECT mirror_pk FROM {d} WHERE mirror_pk IS NOT NULL").format(d=_DIVERGED)))
                conn.execute(template("copy_repair_remove", **parts))
                conn.execute(upsert)
                marked = conn.execute(template("copy_repair_mark", **parts)).fetchone()
                assert marked is not None
                return Reconciled(changed=int(marked[0]), inserted=int(marked[1]), deleted=deleted,
                                  repaired=repaired)
        except psycopg.errors.UndefinedTable:
            # Dropped meanwhile (a cleanup or abandon won the race): nothing to repair; the swap's
            # own check names what is missing.
            return Reconciled()
        except psycopg.errors.SerializationFailure:
            if attempt == TRIES:
                raise GateFailed(f"{mirror.as_string(conn)} could not be compared with {source.as_string(conn)}: "
                                 f"the application kept changing the rows being repaired ({TRIES} tries); run "
                                 "the command again") from None
    raise AssertionError("unreachable")
