"""The two models verify talks to: the target (new vectors) and the source (old vectors).

A provider that cannot be built or reached is not an exception that ends verify: it becomes
the reason the checks that need it fail, so the other checks still report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from toolkit.errors import ReembedError, Unreachable
from toolkit.providers.base import Embedder, ModelRef


@dataclass
class Model:
    """An embedder, or why there is none. Query vectors are cached: several checks ask for the same."""

    ref: ModelRef
    embedder: Embedder | None
    error: str | None = None
    _queries: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, ref: ModelRef, dimensions: int, settings: object) -> "Model":
        from toolkit.providers import make_embedder

        try:
            return cls(ref, make_embedder(ref, dimensions, settings))  # type: ignore[arg-type]
        except ReembedError as exc:
            return cls(ref, None, f"{ref} cannot be used: {exc}")

    def fail(self, exc: ReembedError) -> str:
        """Remember the first failure: later checks report it instead of calling again."""
        kind = "unreachable" if isinstance(exc, Unreachable) else "failed"
        self.error = self.error or f"{self.ref} {kind}: {exc}"
        self.close()
        return self.error

    @property
    def available(self) -> bool:
        return self.embedder is not None and self.error is None

    def queries(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Query vectors (RETRIEVAL_QUERY / query prefix) in input order; None for an empty text.

        Raises ReembedError from the provider; the caller turns it into the check's reason."""
        assert self.embedder is not None
        missing = list(dict.fromkeys(t for t in texts if t not in self._queries))
        if missing:
            batch = self.embedder.embed_queries(missing)
            for position, i in enumerate(batch.index):
                self._queries[missing[i]] = batch.vectors[position]
        return [self._queries.get(t) for t in texts]

    def documents(self, texts: Sequence[str], titles: Sequence[str | None]) -> list[np.ndarray | None]:
        assert self.embedder is not None
        batch = self.embedder.embed_documents(list(texts), list(titles))
        out: list[np.ndarray | None] = [None] * len(texts)
        for position, i in enumerate(batch.index):
            out[i] = batch.vectors[position]
        return out

    def close(self) -> None:
        if self.embedder is not None:
            try:
                self.embedder.close()
            except Exception:  # noqa: BLE001 - closing a client must never hide the verdict
                pass
            self.embedder = None


QUERY_CHARS = 400


def query_from_text(text: str, limit: int = QUERY_CHARS) -> str:
    """A query made from a row's own text: its beginning, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit]
