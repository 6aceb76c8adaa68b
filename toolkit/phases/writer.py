"""Reading claimed rows and writing their vectors: one short transaction per batch.

The write is binary COPY into a per-connection temp table, then one guarded statement from
stage that also marks the ledger. Which statement is the plan's strategy's (the column
strategy's `UPDATE ... FROM stage`: DESIGN.md, ~8.8k rows/s without an index on the original
column; the page-striped ledger order keeps most updates HOT with one). Nothing here holds a
snapshot between batches: the connection is in autocommit mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql
from psycopg.pq import Format
from psycopg.types.json import Jsonb

from toolkit.errors import MalformedResponse
from toolkit.phases.ddl import template
from toolkit.phases.ledger import Key
from toolkit.phases.prepare import key_json, vector_type
from toolkit.plan import Plan
from toolkit.strategies.base import Write

EMPTY_TEXT = "empty text"


@dataclass
class SourceRow:
    """A claimed row as it is now: its key, what will be embedded, and the hash the write is guarded by."""

    key: Key
    key_values: tuple[Any, ...]
    text: str | None
    title: str | None
    hash: str

    @property
    def empty(self) -> bool:
        return self.text is None or not self.text.strip()


@dataclass
class Outcome:
    written: int = 0
    skipped: int = 0
    rejected: int = 0  # changed since read, or lease lost: stays pending
    reembedded: int = 0  # written rows that had been embedded before (embed_count > 1)
    written_keys: list[Key] = field(default_factory=list)


def match(plan: Plan, left: str, right: str) -> sql.Composable:
    """`left.k1 = right.k1 AND ...` over the primary key."""
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(c), sql.Identifier(right),
                                        sql.Identifier(c)) for c in plan.primary_key)


def key_columns(plan: Plan, alias: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in plan.primary_key)


def read_rows(conn: psycopg.Connection, plan: Plan, keys: Sequence[Key]) -> list[SourceRow]:
    """The claimed rows that still exist, with their current text, title and hash."""
    if not keys:
        return []
    query = template("backfill_read", key=key_json(plan, "t"), key_columns=key_columns(plan, "t"),
                     text=plan.text_expression("t"), title=plan.title_expression("t"),
                     hash=plan.text_hash_expression("t"), table=plan.table, keys=sql.Placeholder(),
                     match=match(plan, "t", "k"))
    n = len(plan.primary_key)
    rows = conn.execute(query, (Jsonb(list(keys)),)).fetchall()
    return [SourceRow(key=r[0], key_values=tuple(r[1:1 + n]), text=r[1 + n], title=r[2 + n], hash=r[3 + n])
            for r in rows]


def check_vectors(vectors: np.ndarray, count: int, dimensions: int) -> np.ndarray:
    """The last line of defence before the database: never write a vector we cannot trust."""
    if not isinstance(vectors, np.ndarray) or vectors.shape != (count, dimensions):
        shape = getattr(vectors, "shape", None)
        raise MalformedResponse(f"provider answered vectors of shape {shape}, expected ({count}, {dimensions})")
    vectors = vectors.astype(np.float32, copy=False)
    if not np.all(np.isfinite(vectors)):
        raise MalformedResponse("provider answered a vector with NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    if count and (np.any(norms == 0) or np.any(np.abs(norms - 1.0) > 1e-3)):
        raise MalformedResponse("provider answered a vector that is zero or not unit length after normalization")
    return vectors


class BatchWriter:
    """Writes batches of one plan through one connection (autocommit) and its temp staging table."""

    def __init__(self, conn: psycopg.Connection, plan: Plan, plan_id: int, owner: str, phase: str) -> None:
        from toolkit.strategies import strategy_for

        self.conn, self.plan, self.plan_id, self.owner = conn, plan, plan_id, owner
        self.stage = sql.Identifier(f"reembed_stage_{plan_id}")
        conn.execute(template("backfill_stage", stage=self.stage, key_columns=key_columns(plan, "t"),
                              vtype=vector_type(plan), table=plan.table))
        self._columns = [c for c in plan.primary_key] + ["pk", "hash", "v", "reason"]
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            self.stage, sql.SQL(", ").join(sql.Identifier(c) for c in self._columns))
        self._types = self._binary_types()
        self._half = plan.new_vector_base == "halfvec"
        if self._types is None:
            self._copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
                self.stage, sql.SQL(", ").join(sql.Identifier(c) for c in self._columns))
        self._write = strategy_for(plan).write_statement(conn, plan, phase, self.stage, plan_id, owner)

    def _binary_types(self) -> list[int] | None:
        """OIDs of the stage's columns (domains resolved to their base type), or None when a key type
        has no binary adapter in psycopg (then COPY falls back to text format)."""
        rows = self.conn.execute(
            """SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum""", (f"pg_temp.{self.stage.as_string(self.conn)}",)).fetchall()
        oids = [r[0] for r in rows]
        for oid in oids:
            try:
                self.conn.adapters.get_dumper_by_oid(oid, Format.BINARY)
            except psycopg.ProgrammingError:  # no binary dumper registered for this type
                return None
        return oids

    def write(self, rows: Sequence[SourceRow], vectors: dict[int, np.ndarray], skipped: dict[int, str]) -> Outcome:
        """Write `vectors` (by position in `rows`) and mark `skipped` rows, in one transaction.

        Rows neither written nor skipped here, and rows the guard rejects, have their lease released."""
        outcome = Outcome()
        by_key: dict[str, int] = {}
        with self.conn.transaction():
            with self.conn.cursor() as cur:
                with cur.copy(self._copy) as copy:
                    if self._types is not None:
                        copy.set_types(self._types)
                    for i, row in enumerate(rows):
                        if i in vectors:
                            # halfvec's binary dumper takes HalfVector objects only
                            v, reason = (HalfVector(vectors[i]) if self._half else vectors[i]), None
                        elif i in skipped:
                            v, reason = None, skipped[i]
                        else:
                            continue
                        by_key[_key_str(row.key)] = i
                        copy.write_row((*row.key_values, Jsonb(row.key), row.hash, v, reason))
                results = run_write(cur, self._write)[0] if by_key else []
                done_keys = set()
                for key, was_skipped, embed_count in results:
                    done_keys.add(_key_str(key))
                    if was_skipped:
                        outcome.skipped += 1
                    else:
                        outcome.written += 1
                        outcome.written_keys.append(key)
                        if embed_count > 1:
                            outcome.reembedded += 1
                leftover = [r.key for r in rows if _key_str(r.key) not in done_keys]
                outcome.rejected = sum(1 for k in by_key if k not in done_keys)
                if leftover:
                    cur.execute(template("backfill_release", plan_id=sql.Literal(self.plan_id),
                                         owner=sql.Literal(self.owner), keys=sql.Placeholder()),
                                ([Jsonb(k) for k in leftover],))
        return outcome

    def forget_missing(self, keys: Sequence[Key]) -> int:
        """Drop ledger rows of claimed keys whose row no longer exists."""
        if not keys:
            return 0
        return self.conn.execute(template(
            "backfill_forget", plan_id=sql.Literal(self.plan_id), owner=sql.Literal(self.owner),
            keys=sql.Placeholder(), table=self.plan.table, match=match(self.plan, "t", "k")),
            ([Jsonb(k) for k in keys],)).rowcount


def run_write(cur: psycopg.Cursor, write: Write) -> tuple[list[tuple[Any, ...]], int]:
    """The strategy's write inside the caller's transaction: what goes before, the statement,
    what goes after. Returns the statement's rows and row count."""
    for statement in write.before:
        cur.execute(statement)
    cur.execute(write.statement)
    rows, count = (cur.fetchall() if cur.description else []), cur.rowcount
    for statement in write.after:
        cur.execute(statement)
    return rows, count


def _key_str(key: Key) -> str:
    return json.dumps(key, sort_keys=True, default=str)
