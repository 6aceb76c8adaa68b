"""What a run is asked to do (RunOptions), what it did (Counters, RunSummary), and the small
pieces every part of a run shares: the write throttle and the progress bar."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.errors import BadInput
from toolkit.memory import peak_rss_mb
from toolkit.phases import ledger

DEFAULT_BATCH_SIZE = 100  # Gemini's per-request limit
DEFAULT_LEASE_SECONDS = 300.0


@dataclass
class RunOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    concurrency: int = 4
    workers: int = 1
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    max_rows_per_second: float | None = None
    max_replica_lag: float | None = None  # seconds; pause writing while a standby is further behind
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    poll_seconds: float = 1.0
    progress: bool = True
    # Keep embedding the application's changes as they come, until cleanup (or abandon, rollback,
    # SIGINT/SIGTERM), instead of ending when nothing is pending.
    follow: bool = False
    # The provider client in a process of its own (toolkit.providers.process), so its Python and
    # the writer's round trips do not take turns on one GIL: `reembed run`'s default. Off for the
    # short runs other phases start (cutover's catch-up), and never in a daemonic process (each
    # `--workers` child is a process of its own already).
    embed_process: bool = False

    def validate(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise BadInput(f"--batch-size must be between 1 and 10000, not {self.batch_size}")
        if self.concurrency < 1:
            raise BadInput(f"--concurrency must be at least 1, not {self.concurrency}")
        if not 1 <= self.workers <= 64:
            raise BadInput(f"--workers must be between 1 and 64, not {self.workers}")
        if self.max_rows_per_second is not None and self.max_rows_per_second <= 0:
            raise BadInput(f"--max-rows-per-second must be positive, not {self.max_rows_per_second}")
        if self.max_replica_lag is not None and self.max_replica_lag <= 0:
            raise BadInput(f"--max-replica-lag must be positive, not {self.max_replica_lag}")
        if self.lease_seconds < 1:
            raise BadInput(f"--lease-seconds must be at least 1, not {self.lease_seconds}")
        if self.follow and self.workers != 1:
            raise BadInput("--follow runs one worker process: drop --workers (a live application's changes "
                           "are few; start several `reembed run --follow` for more)")

    def per_worker(self) -> "RunOptions":
        """Each of N processes gets 1/N of the quotas and of the write throttle."""
        n = self.workers

        def share(v: float | int | None, kind: type) -> Any:
            return None if v is None else max(kind(1), kind(v / n))

        return RunOptions(batch_size=self.batch_size, concurrency=self.concurrency, workers=1,
                          rpm=share(self.rpm, int), tpm=share(self.tpm, int), rpd=share(self.rpd, int),
                          max_rows_per_second=share(self.max_rows_per_second, float),
                          max_replica_lag=self.max_replica_lag,
                          lease_seconds=self.lease_seconds, poll_seconds=self.poll_seconds, progress=False)


@dataclass
class Counters:
    rows_written: int = 0
    rows_skipped: int = 0
    rows_rejected: int = 0  # changed while embedding (or lease lost): left pending, embedded again
    rows_reembedded: int = 0  # written rows that had a vector from an earlier embed of this plan
    rows_gone: int = 0  # claimed rows deleted meanwhile
    provider_retries: int = 0
    truncated: int = 0
    batches: int = 0
    malformed: int = 0  # provider answers refused (never written), their rows asked for again
    write_seconds: float = 0.0  # time inside write transactions (the database's share)
    loop_seconds: float = 0.0  # claim-embed-write loop, without start-up (imports, prepare, embedder_start)
    embedder_start_seconds: float = 0.0  # waited for the embedding process to be ready, before the loop
    replica_pauses: int = 0  # times writing stopped for a standby behind --max-replica-lag
    replica_paused_seconds: float = 0.0
    embedder_peak_rss_mb: float = 0.0  # the provider client's process (--embed-process), beside this one's

    def add(self, other: "Counters") -> None:
        for name, value in asdict(other).items():
            # Workers run side by side: their loops overlap in time, everything else adds up.
            overlap = name in ("loop_seconds", "replica_paused_seconds", "embedder_start_seconds")
            merged = max(getattr(self, name), value) if overlap else getattr(self, name) + value
            setattr(self, name, merged)


@dataclass
class RunSummary:
    name: str
    phase: str
    column: str
    seconds: float
    counters: Counters
    progress: ledger.Progress
    workers: int
    rows_per_second: float = 0.0
    rollback_fill: bool = False
    followed_until: str | None = None  # --follow: what ended it (a phase, or "signal")
    peak_rss_mb: float = field(default_factory=lambda: peak_rss_mb())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "phase": self.phase, "column": self.column, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows_per_second, 1), "workers": self.workers,
                "peak_rss_mb": round(self.peak_rss_mb + self.counters.embedder_peak_rss_mb, 1),
                "rollback_fill": self.rollback_fill, "followed_until": self.followed_until,
                **asdict(self.counters), **self.progress.to_json()}




class Throttle:
    """At most `rate` rows per second written, smoothed over batches (--max-rows-per-second)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = time.monotonic()

    def wait(self, rows: int) -> None:
        if not self.rate or rows <= 0:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + rows / self.rate


def progress_bar(total: int, enabled: bool) -> Any:
    from toolkit.progress import progress

    return progress(total, desc="re-embedding", unit="rows", enabled=enabled, dynamic_ncols=True, smoothing=0.1)
