"""Embedding providers: one small interface (base.Embedder), one module per provider."""

from __future__ import annotations

from toolkit.errors import BadInput
from toolkit.providers.base import Embedder, ModelRef
from toolkit.providers.models import model_info
from toolkit.providers.settings import ProviderSettings
from toolkit.ratelimit import RateLimiter, shared_limiter

__all__ = ["make_embedder", "limiter_for"]


def limiter_for(ref: ModelRef, settings: ProviderSettings) -> RateLimiter:
    """The process-wide limiter for this model at this endpoint with these caps.

    Quotas are per model and per project/key on Gemini, so every embedder of the same
    model in one process must share one limiter, whichever thread built it.
    """
    endpoint = settings.gemini_base_url if ref.provider == "gemini" else settings.ollama_base_url
    key = (ref.provider, endpoint, ref.model, settings.rpm, settings.tpm, settings.rpd, settings.concurrency,
           settings.max_attempts)
    return shared_limiter(key, lambda: RateLimiter(settings.rpm, settings.tpm, rpd=settings.rpd,
                                                   concurrency=settings.concurrency,
                                                   max_attempts=settings.max_attempts))


def make_embedder(ref: ModelRef, dimensions: int, settings: ProviderSettings,
                  limiter: RateLimiter | None = None) -> Embedder:
    """An Embedder for ref at the planned dimension. limiter None: the shared one (limiter_for)."""
    model_info(ref)  # BadInput for unknown providers, retired or unknown models
    limiter = limiter or limiter_for(ref, settings)
    if ref.provider == "gemini":
        from toolkit.providers.gemini import GeminiEmbedder  # imports google-genai only when used

        return GeminiEmbedder(ref, dimensions, settings, limiter)
    if ref.provider == "ollama":
        from toolkit.providers.ollama import OllamaEmbedder

        return OllamaEmbedder(ref, dimensions, settings, limiter)
    raise BadInput(f"no embedder for provider {ref.provider!r}")
