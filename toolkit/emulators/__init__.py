"""Local emulators of the Gemini and Ollama embedding APIs (real HTTP on 127.0.0.1).

Used by the test suite and by the offline `reembed demo`:

    with start_gemini(quota_texts_per_minute=100) as gemini:
        settings = ProviderSettings.from_env(gemini_api_key="test-key", gemini_base_url=gemini.base_url)

Fault options (constructor keyword arguments and .configure()): see server.Faults.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from toolkit.emulators.gemini import GeminiApp
from toolkit.emulators.ollama import OllamaApp
from toolkit.emulators.server import EmulatorServer, EmulatorStats, Faults, split_fault_options
from toolkit.emulators.vectors import expected_vector, expected_vectors

__all__ = ["EmulatorServer", "EmulatorStats", "Faults", "expected_vector", "expected_vectors", "start_gemini",
           "start_ollama"]


def start_gemini(port: int = 0, *, api_keys: Iterable[str] | None = None, forbidden_keys: Iterable[str] = (),
                 models: Mapping[str, int] | None = None, answer_cache_bytes: int | None = None,
                 **fault_options: Any) -> EmulatorServer:
    """A Gemini API emulator (embeddings, batch jobs, files). api_keys: the accepted keys (None: any
    non-empty key); answer_cache_bytes: memory for pre-serialised answers (GeminiApp)."""
    faults, rest = split_fault_options(fault_options)
    if rest:
        raise TypeError(f"unknown Gemini emulator options: {', '.join(sorted(rest))}")
    extra = {} if answer_cache_bytes is None else {"answer_cache_bytes": answer_cache_bytes}
    return EmulatorServer(GeminiApp(faults, api_keys=api_keys, forbidden_keys=forbidden_keys,
                                    models=dict(models) if models else None, **extra), port)


def start_ollama(port: int = 0, models: Iterable[str] | Mapping[str, int] = ("nomic-embed-text",),
                 **fault_options: Any) -> EmulatorServer:
    """An Ollama emulator serving the given models (names, or name → native dimensions)."""
    faults, rest = split_fault_options(fault_options)
    if rest:
        raise TypeError(f"unknown Ollama emulator options: {', '.join(sorted(rest))}")
    return EmulatorServer(OllamaApp(faults, models=models), port)
