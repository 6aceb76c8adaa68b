"""How the demo talks: numbered steps, the command a user would type, timings, short notes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import click

from toolkit import render
from toolkit.config import scrub


@dataclass
class StepRecord:
    title: str
    command: str | None
    seconds: float = 0.0
    status: str = "running"  # done | failed | not available


@dataclass
class Narrator:
    total: int
    echo: Callable[[str], None] = click.echo
    steps: list[StepRecord] = field(default_factory=list)

    def banner(self, lines: Sequence[str]) -> None:
        self.echo("=" * 78)
        for line in lines:
            self.echo(scrub(line))
        self.echo("=" * 78)

    @contextmanager
    def step(self, title: str, command: str | None = None) -> Iterator[StepRecord]:
        record = StepRecord(title, command)
        self.steps.append(record)
        self.echo("")
        self.echo(f"[{len(self.steps)}/{self.total}] {title}")
        if command:
            self.echo(f"$ {command}")
        started = time.perf_counter()
        try:
            yield record
        except BaseException:
            record.status = "failed" if record.status == "running" else record.status
            raise
        finally:
            record.seconds = time.perf_counter() - started
        if record.status == "running":
            record.status = "done"
        self.echo(f"    ({record.status} in {record.seconds:.1f} s)")

    def note(self, text: str) -> None:
        for line in scrub(text).splitlines() or [""]:
            self.echo(f"    {line}")

    def table(self, rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
        self.note(render.table(rows, headers))

    def summary_table(self) -> str:
        return render.table([(i + 1, s.title, s.status, f"{s.seconds:.1f} s") for i, s in enumerate(self.steps)],
                            ["#", "step", "status", "time"])
