"""The one interface every embedding provider implements.

Callers (backfill, verify, embed-query) only ever see this module's types: a ModelRef names
a model, make_embedder() builds an Embedder for it, and an Embedder turns texts into
L2-normalized float32 vectors of the planned dimension, in input order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from toolkit.errors import BadInput, MalformedResponse


@dataclass(frozen=True)
class ModelRef:
    """`provider:model`, e.g. `gemini:gemini-embedding-001` or `ollama:nomic-embed-text`."""

    provider: str
    model: str

    @classmethod
    def parse(cls, spec: str) -> "ModelRef":
        provider, sep, model = spec.partition(":")
        if not sep or not provider or not model:
            raise BadInput(f"model {spec!r} must be written PROVIDER:MODEL, e.g. gemini:gemini-embedding-001")
        return cls(provider.strip().lower(), model.strip())

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True)
class ProviderLimits:
    max_texts_per_request: int
    max_input_tokens: int
    native_dimensions: int
    supported_dimensions: tuple[int, int]  # inclusive range accepted for output_dimensionality


@dataclass
class EmbedBatch:
    """Result of one embed call over n input texts.

    `vectors[i]` is the vector of input `index[i]`; inputs not in `index` were not sent and
    appear in `skipped` with a reason (empty text). `truncated` counts inputs cut to the
    model's input limit; `retries` counts HTTP attempts beyond the first.
    """

    vectors: np.ndarray  # shape (len(index), dimensions), float32, unit norm
    index: list[int]
    skipped: dict[int, str] = field(default_factory=dict)
    truncated: int = 0
    retries: int = 0


class Embedder(Protocol):
    ref: ModelRef
    dimensions: int
    limits: ProviderLimits

    def embed_documents(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> EmbedBatch:
        """Embed documents (Gemini: RETRIEVAL_DOCUMENT with title; Ollama: document prefix)."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> EmbedBatch:
        """Embed queries (Gemini: RETRIEVAL_QUERY; Ollama: query prefix)."""
        ...

    def ready(self) -> float:
        """Wait until calls can be taken; the seconds waited (0 for a client built in this process)."""
        ...

    def close(self) -> None: ...


EMPTY_TEXT = "empty text"  # EmbedBatch.skipped reason for empty or whitespace-only input


def validated_vectors(raw: Sequence[Sequence[float] | None] | None, expected_count: int, dimensions: int,
                      source: str) -> np.ndarray:
    """A provider's answer as unit-length float32 rows, or MalformedResponse.

    Checks before anything can be stored: one vector per text sent, each of the planned
    dimension, every number finite, a non-zero norm. Normalizes on our side (Gemini below
    3072 dims is not unit length; a wrong norm must never reach `<=>` distances).
    """
    if raw is None:
        raise MalformedResponse(f"{source} answered without embeddings for {expected_count} texts")
    if len(raw) != expected_count:
        raise MalformedResponse(f"{source} returned {len(raw)} vectors for {expected_count} texts")
    for i, vector in enumerate(raw):
        if vector is None or len(vector) != dimensions:
            got = "no vector" if vector is None else f"{len(vector)} dimensions"
            raise MalformedResponse(f"{source} returned {got} for text {i} of the batch, expected {dimensions}")
    try:
        matrix = np.asarray(raw, dtype=np.float64).reshape(expected_count, dimensions)
    except (TypeError, ValueError):
        raise MalformedResponse(f"{source} returned vectors that are not lists of numbers") from None
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise MalformedResponse(f"{source} returned a non-finite number (NaN/inf) in text {int(np.argmin(finite))} "
                                "of the batch")
    norms = np.linalg.norm(matrix, axis=1)
    if not (norms > 0).all():
        raise MalformedResponse(f"{source} returned a zero vector for text {int(np.argmin(norms > 0))} of the batch")
    return (matrix / norms[:, None]).astype(np.float32)
