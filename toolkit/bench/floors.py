"""The two floors `reembed run` is judged against, each measured with nothing else running.

(a) database: the same claim, read and write statements `reembed run` sends, through the same
    `Worker` loop and connection settings, with vectors that cost nothing (made before the clock
    starts): what the database can take.
(b) provider: the same provider calls through the same client (the plan's embedder, the same
    batch size and requests in flight, the same vector checks) over the table's texts, read
    before the clock starts, with no database write: what the provider path can give.

End to end, `reembed run` does both at once, its provider client in a process of its own (the
default; `--embed-here` keeps it in the run's process, where round trips wait for the GIL behind
the embedding threads); its rows/s over the slower floor says how much the two get in each
other's way, the processes sharing the machine's cores.

Each floor runs as its own process (`python -m toolkit.bench.floors database|provider PLAN`),
the way `reembed run` is started, and prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
from psycopg import sql

from toolkit.db import Database
from toolkit.phases import ledger
from toolkit.phases.backfill.options import RunOptions, peak_rss_mb
from toolkit.phases.backfill.worker import Worker, make_target_embedder
from toolkit.phases.writer import check_vectors
from toolkit.plan import Plan, load
from toolkit.providers.base import EmbedBatch, ModelRef, ProviderLimits



class FreeEmbedder:
    """An embedder whose answers cost nothing: unit vectors made once, before the clock starts."""

    def __init__(self, plan: Plan, batch_size: int) -> None:
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((batch_size, plan.dimensions)).astype(np.float32)
        self._vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.ref = ModelRef("bench", "free")
        self.dimensions = plan.dimensions
        self.limits = ProviderLimits(batch_size, 1 << 20, plan.dimensions, (plan.dimensions, plan.dimensions))

    def embed_documents(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> EmbedBatch:
        return EmbedBatch(vectors=self._vectors[:len(texts)], index=list(range(len(texts))))

    def embed_queries(self, texts: Sequence[str]) -> EmbedBatch:
        return self.embed_documents(texts)

    def ready(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


def database_floor(db: Database, plan_name: str, options: RunOptions) -> dict[str, Any]:
    """The run's own loop (claim, read, write; the same pipeline) with a provider that costs nothing."""
    conn = db.connect()
    plan, record = load(conn, plan_name)
    conn.close()
    embedder = FreeEmbedder(plan, options.batch_size)
    counters = Worker(db, plan, record, options, embedder, ledger.owner_id()).run()
    rows = counters.rows_written + counters.rows_skipped
    return {"rows": rows, "seconds": round(counters.loop_seconds, 3),
            "rows_per_second": round(rows / counters.loop_seconds, 1) if counters.loop_seconds else 0.0,
            "write_seconds": round(counters.write_seconds, 3), "peak_rss_mb": peak_rss_mb()}


def provider_floor(db: Database, plan_name: str, options: RunOptions) -> dict[str, Any]:
    """Every row's text through the plan's embedder, `concurrency` requests in flight, no database write."""
    conn = db.connect()
    plan, _record = load(conn, plan_name)
    texts = conn.execute(sql.SQL("SELECT {}, {} FROM {} AS t WHERE btrim(coalesce({}, '')) <> '' ORDER BY 1").format(
        plan.text_expression("t"), plan.title_expression("t"), plan.table, plan.text_expression("t"))).fetchall()
    conn.close()
    batches = [texts[i:i + options.batch_size] for i in range(0, len(texts), options.batch_size)]
    embedder = make_target_embedder(plan, options)
    done = 0
    lock = threading.Lock()

    def embed(batch: list[tuple[str, str | None]]) -> None:
        nonlocal done
        result = embedder.embed_documents([t for t, _ in batch], [title for _, title in batch])
        check_vectors(result.vectors, len(result.index), plan.dimensions)  # as the run's threads do
        with lock:
            done += len(result.index)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        for future in [pool.submit(embed, b) for b in batches]:
            future.result()
    seconds = time.monotonic() - started
    embedder.close()
    return {"rows": done, "seconds": round(seconds, 3), "rows_per_second": round(done / seconds, 1) if seconds else 0.0,
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str]) -> None:
    kind, plan_name, batch_size, concurrency = argv[0], argv[1], int(argv[2]), int(argv[3])
    # The provider floor is the client in this process with nothing else running: the strongest
    # floor, with no pipe between the client and its caller.
    options = RunOptions(batch_size=batch_size, concurrency=concurrency, progress=False, embed_process=False)
    floor = {"database": database_floor, "provider": provider_floor}[kind]
    print(json.dumps(floor(Database.from_flag(None), plan_name, options)))


if __name__ == "__main__":
    main(sys.argv[1:])
