"""The application of tests/test_interleavings.py: a separate process that inserts rows, changes
their text and title, updates another column and deletes rows, at a steady pace, until its stop
file appears; its counts go to --out as JSON.

Which vector it writes with a row follows what an application may do, and makes the test's final
expectation exact. It reads the plan's registry row in the same transaction as its write (FOR
SHARE: no swap or drop can happen in between), and:
- until the plan's first cutover it is the source model's application: it writes the source
  model's vector of the row's new text (the column it writes is the source model's);
- once the plan is final it writes the final model's vector (target after cleanup, source after
  abandon): nothing re-embeds after that, so the application must;
- in between (cut over, rolled back, cut over again) it writes anything: the source or the target
  model's vector, a random vector or none. Until cleanup or abandon reembed owns both models'
  vectors: every row inserted or whose text or title changed must end with the right vector
  whatever was written, or the test fails.
Blank texts come too (a row without text must end without a vector).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from tables import passage
from toolkit.emulators import expected_vector

SOURCE = "ollama:nomic-embed-text"
TARGET = "gemini:gemini-embedding-001"
OPS = {"insert": 3, "text": 4, "title": 2, "other": 2, "delete": 1}


def _vector(model: str, text: str | None, title: str | None) -> np.ndarray | None:
    if text is None or not text.strip():
        return None
    return expected_vector(model, text, task_type="RETRIEVAL_DOCUMENT", title=title, dimensions=768)


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.nrng = np.random.default_rng(args.seed)
        self.next_id = args.first_id
        self.ops: dict[str, int] = {}
        self.vectors: dict[str, int] = {}
        self.errors: list[str] = []

    def choose_vector(self, phase: str, cut_over_at: object, text: str | None, title: str | None) -> np.ndarray | None:
        if phase == "cleaned_up":
            kind = "target"
        elif phase == "abandoned" or cut_over_at is None:
            kind = "source"
        else:
            kind = self.rng.choice(["source", "target", "random", "none"])
        self.vectors[kind] = self.vectors.get(kind, 0) + 1
        if kind == "source":
            return _vector(SOURCE, text, title)
        if kind == "target":
            return _vector(TARGET, text, title)
        if kind == "random" and text and text.strip():
            v = self.nrng.standard_normal(768).astype(np.float32)
            return v / np.linalg.norm(v)
        return None

    def text(self) -> str:
        return "   " if self.rng.random() < 0.03 else passage(self.rng.randrange(10**6, 2 * 10**6))

    def step(self, conn: psycopg.Connection) -> None:
        op = self.rng.choices(list(OPS), list(OPS.values()))[0]
        inserted = self.next_id > self.args.first_id and self.rng.random() < 0.3
        target = self.rng.randrange(self.args.first_id, self.next_id) if inserted else self.rng.randrange(self.args.rows)
        with conn.transaction():
            phase, cut_over_at = conn.execute("SELECT phase, cut_over_at FROM reembed.plans WHERE name = %s FOR SHARE",
                                              (self.args.plan,)).fetchone()
            if op == "insert":
                text, title = self.text(), f"new {self.next_id % 5}"
                conn.execute("INSERT INTO docs (id, title, content, embedding) VALUES (%s, %s, %s, %s)",
                             (self.next_id, title, text, self.choose_vector(phase, cut_over_at, text, title)))
                self.next_id += 1
            elif op == "other":
                conn.execute("UPDATE docs SET views = views + 1 WHERE id = %s", (target,))
            elif op == "delete":
                conn.execute("DELETE FROM docs WHERE id = %s", (target,))
            else:
                row = conn.execute("SELECT content, title FROM docs WHERE id = %s FOR UPDATE", (target,)).fetchone()
                if row is None:
                    return
                text, title = (self.text(), row[1]) if op == "text" else (row[0], f"retitled {self.rng.randrange(9)}")
                conn.execute("UPDATE docs SET content = %s, title = %s, embedding = %s WHERE id = %s",
                             (text, title, self.choose_vector(phase, cut_over_at, text, title), target))
        self.ops[op] = self.ops.get(op, 0) + 1

    def run(self) -> dict:
        conn = psycopg.connect(self.args.dsn, autocommit=True, application_name="interleaving_app")
        register_vector(conn)
        Path(self.args.out).with_suffix(".ready").touch()
        stop = Path(self.args.stop_file)
        interval = 1.0 / self.args.rate
        next_at = time.monotonic()
        try:
            while not stop.exists():
                try:
                    self.step(conn)
                except psycopg.Error as exc:  # the test fails on any: the application must never see one
                    detail = f" ({' '.join(exc.diag.message_detail.split())})" if exc.diag.message_detail else ""
                    self.errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}{detail}")
                    if len(self.errors) > 20:
                        break
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    next_at = time.monotonic()
        finally:
            conn.close()
        return {"ops": self.ops, "vectors": self.vectors, "errors": self.errors, "next_id": self.next_id}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--first-id", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    Path(args.out).write_text(json.dumps(App(args).run()))


if __name__ == "__main__":
    main()
