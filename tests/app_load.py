"""The application under reembed's feet: a separate process that writes and queries a docs table
at a steady rate and records every error and latency (used by tests/reliability_support.AppLoad).

Writer connection: inserts (with a vector of its own, as an application embedding with the model
it uses), text updates, title updates, updates of another column, deletes. Reader connection: the
application's unchanged retrieval query `ORDER BY embedding <=> $1 LIMIT 5` (prepared by psycopg
after a few runs, as a long-lived application's would be). Runs until the stop file exists;
writes its report as JSON to --out. Any exception is an error of the application.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from tables import passage

QUERY = "SELECT id, title FROM {table} ORDER BY embedding <=> %s LIMIT 5"


def _unit(rng: np.random.Generator, dims: int) -> np.ndarray:
    v = rng.standard_normal(dims).astype(np.float32)
    return v / np.linalg.norm(v)


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.table = sql.Identifier(*args.table.split(".")) if "." in args.table else sql.Identifier(args.table)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.error_count = 0
        self.ops: dict[str, int] = {}
        self.queries: list[tuple[float, float]] = []
        self.writes: list[tuple[float, float]] = []
        self.weights = {k: float(v) for k, v in (p.split("=") for p in args.weights.split(","))}

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.args.dsn, autocommit=True, application_name="app_load")
        register_vector(conn)
        return conn

    def error(self, where: str, exc: BaseException) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < 50:
                self.errors.append(f"{where}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")

    def count(self, op: str) -> None:
        with self.lock:
            self.ops[op] = self.ops.get(op, 0) + 1

    def publish_ops(self, path: Path) -> None:
        """The counts so far, for a test that waits until every kind of write has happened."""
        with self.lock:
            text = json.dumps(self.ops)
        tmp = path.with_suffix(".ops-tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def paced(self, rate: float, step) -> None:  # type: ignore[no-untyped-def]
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            step()
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()  # fell behind (a blocked call): no burst to catch up

    def writer(self) -> None:
        rng = random.Random(11)
        nrng = np.random.default_rng(11)
        next_id = self.args.first_id
        # Ops are dealt from shuffled decks holding each kind in proportion to its weight (at least
        # once), so every kind of write happens every few seconds instead of only on average.
        deck_template = [op for op, w in self.weights.items() for _ in range(max(1, round(w)))]
        deck: list[str] = []
        conn = self.connect()

        def step() -> None:
            nonlocal next_id
            if not deck:
                deck.extend(rng.sample(deck_template, len(deck_template)))
            op = deck.pop()
            target = rng.randrange(self.args.max_id)
            started, wall = time.monotonic(), time.time()
            try:
                if op == "insert":
                    conn.execute(sql.SQL("INSERT INTO {} (id, title, content, embedding) VALUES (%s, %s, %s, %s)")
                                 .format(self.table), (next_id, f"inserted {next_id % 7}", passage(next_id),
                                                       _unit(nrng, 768)))
                    next_id += 1
                elif op == "text":
                    conn.execute(sql.SQL("UPDATE {} SET content = %s WHERE id = %s").format(self.table),
                                 (passage(rng.randrange(10**6, 2 * 10**6)), target))
                elif op == "title":
                    conn.execute(sql.SQL("UPDATE {} SET title = %s WHERE id = %s").format(self.table),
                                 (f"retitled {rng.randrange(100)}", target))
                elif op == "other":
                    conn.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = %s").format(self.table), (target,))
                elif op == "delete":
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(self.table), (target,))
                self.count(op)
                with self.lock:
                    self.writes.append((wall, (time.monotonic() - started) * 1000))
            except Exception as exc:  # noqa: BLE001 - every failure of the application is counted
                self.error(op, exc)

        try:
            self.paced(self.args.write_rate, step)
        finally:
            conn.close()

    def reader(self) -> None:
        nrng = np.random.default_rng(12)
        conn = self.connect()
        query = sql.SQL(QUERY).format(table=self.table)

        def step() -> None:
            q = _unit(nrng, 768)
            started, wall = time.monotonic(), time.time()
            try:
                rows = conn.execute(query, (q,)).fetchall()
                if len(rows) != 5:
                    raise AssertionError(f"retrieval query returned {len(rows)} rows")
                self.count("query")
                with self.lock:
                    self.queries.append((wall, (time.monotonic() - started) * 1000))
            except Exception as exc:  # noqa: BLE001
                self.error("query", exc)

        try:
            self.paced(self.args.query_rate, step)
        finally:
            conn.close()

    def run(self) -> dict:
        threads = [threading.Thread(target=self.writer), threading.Thread(target=self.reader)]
        for t in threads:
            t.start()
        Path(self.args.out).with_suffix(".ready").touch()
        stop_file = Path(self.args.stop_file)
        live = Path(self.args.out).with_suffix(".ops")
        while not stop_file.exists():
            self.publish_ops(live)
            time.sleep(0.05)
        self.stop.set()
        for t in threads:
            t.join()
        return {"ops": self.ops, "errors": self.errors, "error_count": self.error_count,
                "queries": self.queries, "writes": self.writes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--table", default="docs")
    parser.add_argument("--write-rate", type=float, default=10.0)
    parser.add_argument("--query-rate", type=float, default=20.0)
    parser.add_argument("--first-id", type=int, default=1_000_000)
    parser.add_argument("--max-id", type=int, default=1000)
    parser.add_argument("--weights", default="insert=2,text=2,title=1,other=3,delete=1")
    args = parser.parse_args()
    report = Load(args).run()
    Path(args.out).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
