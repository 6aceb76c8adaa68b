"""An application reader in its own process: `SELECT * FROM docs ORDER BY embedding <=> $1 LIMIT 1`
through psycopg 3, prepared on the server after the first five executions (psycopg's default
prepare threshold), as long-lived applications' statements are. Runs until the stop file exists.

Each query uses the vector of one probe row as the model now serving the column would embed it:
the phase is read from reembed.plans before and after the query inside one transaction; the
query takes the table's lock, so equal phases mean the whole query ran on one side of a swap
(otherwise the sample is ambiguous and skipped). One JSON line per query: the phase, the column
names in order, the top hit and its distance, or the error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

NEW_MODEL_PHASES = ("cut_over", "cleaned_up")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--probes", required=True)  # JSON: [{"id", "source": [...], "target": [...]}]
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-file", required=True)
    args = parser.parse_args()
    probes = json.loads(Path(args.probes).read_text())
    conn = psycopg.connect(args.dsn, application_name="prepared_reader")
    register_vector(conn)
    out = Path(args.out).open("w")
    stop = Path(args.stop_file)
    i = 0
    while not stop.exists():
        probe = probes[i % len(probes)]
        i += 1
        record: dict = {"probe": probe["id"]}
        try:
            with conn.transaction():
                before = conn.execute("SELECT phase FROM reembed.plans WHERE name = %s", (args.plan,)).fetchone()
                phase = before[0] if before else "none"
                side = "target" if phase in NEW_MODEL_PHASES else "source"
                cur = conn.execute("SELECT *, embedding <=> %s AS distance FROM docs ORDER BY embedding <=> %s LIMIT 1",
                                   (np.asarray(probe[side], dtype=np.float32),) * 2)
                row = cur.fetchone()
                columns = [d.name for d in cur.description]
                after = conn.execute("SELECT phase FROM reembed.plans WHERE name = %s", (args.plan,)).fetchone()
                prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE "
                                        "'SELECT *, embedding%%'").fetchone()[0]
            record.update(phase=phase, side=side, same_phase=(after[0] if after else "none") == phase,
                          columns=columns, top=row[0] if row else None, distance=float(row[-1]) if row else None,
                          prepared=bool(prepared))
        except Exception as exc:  # noqa: BLE001 - every failure of the application is recorded
            record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        out.write(json.dumps(record) + "\n")
        out.flush()
        time.sleep(0.01)
    out.close()
    conn.close()


if __name__ == "__main__":
    main()
