"""Progress for long work: a live bar on a terminal; elsewhere (logs, CI, cron) one plain line every
few seconds and a last one at the end, never `\\r` frames."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LINE_EVERY_S = 5.0


class LineProgress:
    """The subset of tqdm's interface reembed uses, written as whole lines."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO, every: float) -> None:
        self.total, self.n, self.desc, self.unit = total, 0, desc, unit
        self._stream, self._every = stream, every
        self._started = self._last = time.monotonic()
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self._postfix = text

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        """A new state (the part before a colon: "paused", "re-embedding") is written at once, so
        a log says when work stopped and started again; the same state's new details wait for the next line."""
        new_state = desc.split(":", 1)[0] != self.desc.split(":", 1)[0]
        self.desc = desc
        if refresh and new_state:
            self._write()

    def reset(self, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.n = 0

    def refresh(self) -> None:
        if time.monotonic() - self._last >= self._every:
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        self._last = now = time.monotonic()
        rate = self.n / max(now - self._started, 1e-9)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self._postfix}" if self._postfix else ""
        self._stream.write(f"{self.desc}: {self.n}/{self.total or '?'} {self.unit}{share}, "
                           f"{rate:.0f} {self.unit}/s{extra}\n")
        self._stream.flush()


def progress(total: int, *, desc: str, unit: str, enabled: bool = True, stream: TextIO | None = None,
             every: float = LINE_EVERY_S, **bar_options: Any) -> Any:
    """A tqdm bar when `stream` (stderr) is a terminal, else a LineProgress; disabled: a silent bar."""
    from tqdm import tqdm

    out = stream or sys.stderr
    if enabled and not out.isatty():
        return LineProgress(total, desc, unit, out, every)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=out, **bar_options)
