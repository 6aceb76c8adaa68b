"""What we know about each model before calling it: limits, dimensions, list price, retirement.

Plan validation and estimates read this table; the providers read it for their limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import BadInput
from toolkit.providers.base import ModelRef, ProviderLimits

PROVIDERS = ("gemini", "ollama")

# Gemini's Batch API (`run --batch-api`): half the list price; one job carries up to
# BATCH_JOB_ROWS rows by default, inlined up to the API's request size limit, else as a file.
BATCH_DISCOUNT = 0.5
BATCH_JOB_ROWS = 2_000
BATCH_INLINE_LIMIT_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class ModelInfo:
    ref: ModelRef
    limits: ProviderLimits
    usd_per_million_tokens: float  # list price of input tokens; 0 for local models
    asymmetric: bool  # documents and queries are embedded differently (task type / prefix)
    doc_prefix: str = ""
    query_prefix: str = ""


_GEMINI_LIMITS = ProviderLimits(
    max_texts_per_request=100, max_input_tokens=2048, native_dimensions=3072, supported_dimensions=(128, 3072)
)

KNOWN_MODELS: dict[str, ModelInfo] = {
    "gemini:gemini-embedding-001": ModelInfo(
        ModelRef("gemini", "gemini-embedding-001"), _GEMINI_LIMITS, 0.15, asymmetric=True
    ),
    "gemini:gemini-embedding-2": ModelInfo(
        ModelRef("gemini", "gemini-embedding-2"),
        ProviderLimits(max_texts_per_request=100, max_input_tokens=8192, native_dimensions=3072,
                       supported_dimensions=(128, 3072)),
        0.20,
        asymmetric=True,
    ),
    "ollama:nomic-embed-text": ModelInfo(
        ModelRef("ollama", "nomic-embed-text"),
        ProviderLimits(max_texts_per_request=256, max_input_tokens=2048, native_dimensions=768,
                       supported_dimensions=(64, 768)),
        0.0,
        asymmetric=True,
        doc_prefix="search_document: ",
        query_prefix="search_query: ",
    ),
}

# Retired models and what replaces them: planning one of these is bad input.
RETIRED: dict[str, str] = {
    "gemini:text-embedding-004": "text-embedding-004 was shut down on 2026-01-14; use gemini:gemini-embedding-001",
    "gemini:embedding-001": "embedding-001 was shut down; use gemini:gemini-embedding-001",
    "gemini:embedding-gecko-001": "embedding-gecko-001 was shut down; use gemini:gemini-embedding-001",
}

# An Ollama model we have no facts about: assume a local model of unknown native size.
_OLLAMA_DEFAULT_LIMITS = ProviderLimits(
    max_texts_per_request=256, max_input_tokens=2048, native_dimensions=0, supported_dimensions=(1, 16000)
)


def model_info(ref: ModelRef) -> ModelInfo:
    """Facts about a model, or BadInput for an unknown provider, a retired or unknown Gemini model."""
    key = str(ref)
    if ref.provider not in PROVIDERS:
        raise BadInput(f"unknown provider {ref.provider!r} in {key!r}: use one of {', '.join(PROVIDERS)}")
    if key in RETIRED:
        raise BadInput(RETIRED[key])
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    if ref.provider == "ollama":
        return ModelInfo(ref, _OLLAMA_DEFAULT_LIMITS, 0.0, asymmetric=False)
    known = ", ".join(k for k in KNOWN_MODELS if k.startswith(ref.provider + ":"))
    raise BadInput(f"unknown {ref.provider} model {ref.model!r}: known models are {known}")


def model_tag(ref: ModelRef) -> str:
    """Short identifier-safe tag used in column names: gemini-embedding-001 -> gemini_embedding_001."""
    tag = "".join(ch if ch.isalnum() else "_" for ch in ref.model.lower()).strip("_")
    while "__" in tag:
        tag = tag.replace("__", "_")
    return tag or ref.provider
