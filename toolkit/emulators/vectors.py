"""Deterministic stand-in embeddings that keep lexical meaning.

A text's vector is the sum of one random direction per word (feature hashing into 2048
buckets, one Gaussian projection matrix per model), so texts sharing words point the same
way and a query lands near the documents that contain its words. Each model has its own
matrix: two models' vectors are unrelated even at the same dimension, as with real models.
A title adds half a unit of its own words' direction; a task type adds a quarter unit of a
task direction, so RETRIEVAL_QUERY and RETRIEVAL_DOCUMENT vectors of one text differ.

The matrix is built from 256-column blocks, so a vector at 768 dims is the prefix of the
same vector at 3072 dims (Matryoshka, like gemini-embedding-001's output_dimensionality).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from functools import lru_cache
from typing import Sequence

import numpy as np

BUCKETS = 2048
_BLOCK = 256
TASK_TYPES = (
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)
_TITLE_WEIGHT = 0.5
_TASK_WEIGHT = 0.25
_WORD = re.compile(r"\w+")


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@lru_cache(maxsize=256)
def _block(model: str, block: int) -> np.ndarray:
    rng = np.random.default_rng(_seed("reembed-emulator", model, block))
    return rng.standard_normal((BUCKETS + len(TASK_TYPES), _BLOCK), dtype=np.float64)


@lru_cache(maxsize=16)
def _projection(model: str, dims: int) -> np.ndarray:
    blocks = [_block(model, b) for b in range(-(-dims // _BLOCK))]
    matrix = np.concatenate(blocks, axis=1)[:, :dims]
    return np.ascontiguousarray(matrix)


def _buckets(text: str) -> list[int]:
    words = _WORD.findall(text.lower()) or [text.strip()]
    return [zlib.crc32(w.encode()) % BUCKETS for w in words]


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.sqrt(v @ v))
    return v / norm if norm > 0 else v


def raw_vector(model: str, text: str, *, task_type: str | None, title: str | None, dims: int) -> np.ndarray:
    """The emulator's unnormalized float64 vector for exactly this input (no prefixes, no cuts)."""
    matrix = _projection(model, dims)
    v = _unit(matrix[_buckets(text)].sum(axis=0))
    if title:
        v = v + _TITLE_WEIGHT * _unit(matrix[_buckets(title)].sum(axis=0))
    if task_type and task_type != "TASK_TYPE_UNSPECIFIED":
        index = TASK_TYPES.index(task_type) if task_type in TASK_TYPES else zlib.crc32(task_type.encode()) % BUCKETS
        v = v + _TASK_WEIGHT * _unit(matrix[BUCKETS + index] if index < len(TASK_TYPES) else matrix[index])
    return v


def gemini_values(model: str, text: str, *, task_type: str | None, title: str | None, dims: int,
                  native: int = 3072) -> np.ndarray:
    """What the Gemini emulator answers: unit length only at the native size, like the real API.

    Below it the real API returns the truncated native vector (norm < 1); we scale to
    sqrt(dims/native) with a text-dependent wobble so no client can get away without
    normalizing.
    """
    v = _unit(raw_vector(model, text, task_type=task_type, title=title, dims=dims))
    if dims < native:
        wobble = 0.9 + 0.2 * ((zlib.crc32(text.encode()) % 1000) / 1000)
        v = v * (np.sqrt(dims / native) * wobble)
    return v


def ollama_values(model: str, text: str, *, dims: int) -> np.ndarray:
    """What the Ollama emulator answers: L2-normalized, like /api/embed."""
    return _unit(raw_vector(model, text, task_type=None, title=None, dims=dims))


def _provider_and_model(model: str) -> tuple[str, str]:
    if ":" in model and model.split(":", 1)[0] in ("gemini", "ollama"):
        provider, name = model.split(":", 1)
        return provider, name
    return ("gemini" if model.startswith(("gemini", "text-embedding", "embedding")) else "ollama"), model


def expected_vector(model: str, text: str, *, task_type: str | None = None, title: str | None = None,
                    dimensions: int) -> np.ndarray:
    """The L2-normalized float32 vector our embedder stores for this input, served by an emulator.

    model: `gemini:gemini-embedding-001`, `ollama:nomic-embed-text` or a bare model name.
    It applies what the embedder applies before sending: the cut to the model's input
    limit and, for Ollama models, the document/query prefix chosen by task_type
    (RETRIEVAL_DOCUMENT / RETRIEVAL_QUERY; None sends the text as is).
    """
    # Imported here: the emulators must not pull the provider modules in at import time.
    from toolkit.providers.models import KNOWN_MODELS
    from toolkit.providers.tokens import fit_text

    provider, name = _provider_and_model(model)
    info = KNOWN_MODELS.get(f"{provider}:{name}")
    if provider == "ollama":
        prefix = ""
        if info is not None and task_type == "RETRIEVAL_DOCUMENT":
            prefix = info.doc_prefix
        elif info is not None and task_type == "RETRIEVAL_QUERY":
            prefix = info.query_prefix
        limit = info.limits.max_input_tokens if info else 2048
        sent, _ = fit_text(text, limit, prefix)
        v = ollama_values(_ollama_base_name(name), sent, dims=dimensions)
    else:
        limit = info.limits.max_input_tokens if info else 2048
        sent, _ = fit_text(text, limit)
        v = raw_vector(name, sent, task_type=task_type, title=title if title and title.strip() else None,
                       dims=dimensions)
    return _unit(v).astype(np.float32)


def expected_vectors(model: str, texts: Sequence[str], **kwargs: object) -> np.ndarray:
    """expected_vector for many texts, stacked (shape (n, dimensions))."""
    return np.stack([expected_vector(model, t, **kwargs) for t in texts])  # type: ignore[arg-type]


def _ollama_base_name(name: str) -> str:
    """`nomic-embed-text:latest` and `nomic-embed-text` are the same Ollama model."""
    return name[: -len(":latest")] if name.endswith(":latest") else name
