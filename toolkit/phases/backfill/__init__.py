"""Run: fill the new vectors from the ledger, in leased, guarded, checkpointed batches.

The package splits by concern: `run` (the command: prepare, phases, summary), `worker` (one
process's claim-embed-write loop), `processes` (`--workers N` local processes), `rollback_fill`
(source-model vectors for rows that have none after a rollback), `options` (what is asked and
what was done). Where a batch is written is the plan's strategy's answer (toolkit.strategies).
"""

from toolkit.phases.backfill.options import (DEFAULT_BATCH_SIZE, DEFAULT_LEASE_SECONDS, Counters, RunOptions,
                                             RunSummary, Throttle, peak_rss_mb)
from toolkit.phases.backfill.rollback_fill import rollback_fill
from toolkit.phases.backfill.run import check, run
from toolkit.phases.backfill.worker import MAX_SWEEPS, Worker, make_target_embedder, tune_session

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_LEASE_SECONDS", "MAX_SWEEPS", "Counters", "RunOptions", "RunSummary",
           "Throttle", "Worker", "check", "make_target_embedder", "peak_rss_mb", "rollback_fill", "run",
           "tune_session"]
