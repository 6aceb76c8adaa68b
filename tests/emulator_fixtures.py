"""Fixtures for the provider emulators (registered by conftest.py through pytest_plugins).

`gemini_emulator` / `ollama_emulator`: one emulator each per session, reset before every test
(faults, quota window, stats and the request log); start_gemini()/start_ollama() for more.
`provider_env`: points the environment the providers read (GOOGLE_API_KEY, the Gemini base
URL, OLLAMA_HOST) at those emulators, with monkeypatch, so code under test that calls
ProviderSettings.from_env() talks to them. `provider_settings`: the same as a
ProviderSettings, with a small retry budget so failure tests stay fast.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from toolkit.emulators import EmulatorServer, start_gemini, start_ollama
from toolkit.providers.settings import ProviderSettings

# Long and distinctive, so a leak is easy to find in any output.
TEST_API_KEY = "test-key-Zq8RvE3nW1xYhP0aLm5K"


@pytest.fixture(scope="session")
def _gemini_server() -> Iterator[EmulatorServer]:
    with start_gemini(0, api_keys=[TEST_API_KEY]) as server:
        yield server


@pytest.fixture(scope="session")
def _ollama_server() -> Iterator[EmulatorServer]:
    with start_ollama(0, models=("nomic-embed-text", "all-minilm")) as server:
        yield server


@pytest.fixture
def gemini_emulator(_gemini_server: EmulatorServer) -> EmulatorServer:
    """One server for the session (same URL: the cached SDK client is reused), reset for each test."""
    _gemini_server.reset()
    return _gemini_server


@pytest.fixture
def ollama_emulator(_ollama_server: EmulatorServer) -> EmulatorServer:
    _ollama_server.reset()
    return _ollama_server


@pytest.fixture
def provider_env(monkeypatch: pytest.MonkeyPatch, gemini_emulator: EmulatorServer,
                 ollama_emulator: EmulatorServer) -> dict[str, str]:
    env = {
        "GOOGLE_API_KEY": TEST_API_KEY,
        "REEMBED_GEMINI_BASE_URL": gemini_emulator.base_url,
        "GOOGLE_GEMINI_BASE_URL": gemini_emulator.base_url,
        "OLLAMA_HOST": ollama_emulator.base_url,
    }
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
    for name in ("REEMBED_RPM", "REEMBED_TPM", "REEMBED_TIMEOUT", "REEMBED_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def provider_settings(provider_env: dict[str, str]) -> ProviderSettings:
    return ProviderSettings.from_env(timeout=60.0, max_attempts=3)
