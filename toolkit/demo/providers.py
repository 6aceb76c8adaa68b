"""Which embedding services the demo uses, and the emulators it starts when the real ones are absent.

Source model (fills the demo table): a real Ollama when OLLAMA_HOST (or 127.0.0.1:11434)
answers and has nomic-embed-text, else the Ollama emulator. Target model: the real Gemini API
when GOOGLE_API_KEY or GEMINI_API_KEY is set, else the Gemini emulator. Emulators listen on
127.0.0.1 ephemeral ports in this process; the environment the lifecycle commands read is
changed for the demo only and restored afterwards.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from toolkit.providers.settings import DEFAULT_OLLAMA_HOST, normalize_ollama_host

SOURCE_MODEL = "nomic-embed-text"
# Only for the emulator, which accepts any key: a real key is never invented or printed.
EMULATOR_KEY = "reembed-demo-emulator-key"
_GEMINI_ENV = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "REEMBED_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL")
_PROBE_TIMEOUT_S = 1.0


def real_ollama_has_model(host: str, model: str = SOURCE_MODEL) -> bool:
    """True when an Ollama answers at `host` within a second and has `model` pulled."""
    url = normalize_ollama_host(host) + "/api/tags"
    try:
        with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:  # noqa: S310 - user's OLLAMA_HOST
            tags = json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return False
    names = {str(m.get("name", "")).removesuffix(":latest") for m in tags.get("models", []) if isinstance(m, dict)}
    return model in names


def real_gemini_key_set() -> bool:
    return bool(os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY"))


@dataclass
class DemoProviders(AbstractContextManager["DemoProviders"]):
    """Decides real vs emulated, starts what must be emulated, and sets the environment for the demo.

    force_emulators: use both emulators even when a key or a real Ollama is there (tests, CI).
    """

    force_emulators: bool = False
    source_emulated: bool = True
    target_emulated: bool = True
    ollama_url: str = ""
    gemini_url: str | None = None  # None: the SDK's default endpoint (real Gemini)
    _servers: list[Any] = field(default_factory=list)
    _saved_env: dict[str, str | None] = field(default_factory=dict)

    def __enter__(self) -> "DemoProviders":
        from toolkit.emulators import start_gemini, start_ollama

        host = os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST
        self.source_emulated = self.force_emulators or not real_ollama_has_model(host)
        self.target_emulated = self.force_emulators or not real_gemini_key_set()
        try:
            if self.source_emulated:
                server = start_ollama(0, models=(SOURCE_MODEL,))
                self._servers.append(server)
                self.ollama_url = server.base_url
                self._set_env("OLLAMA_HOST", server.base_url)
            else:
                self.ollama_url = normalize_ollama_host(host)
            if self.target_emulated:
                server = start_gemini(0)
                self._servers.append(server)
                self.gemini_url = server.base_url
                # A user's real key must not travel to the emulator, and a stray base URL must not
                # send the dummy key elsewhere: set all four for the demo, restore them afterwards.
                for name in _GEMINI_ENV:
                    self._set_env(name, None)
                self._set_env("GOOGLE_API_KEY", EMULATOR_KEY)
                self._set_env("REEMBED_GEMINI_BASE_URL", server.base_url)
                self._set_env("GOOGLE_GEMINI_BASE_URL", server.base_url)
            else:
                self.gemini_url = os.environ.get("REEMBED_GEMINI_BASE_URL") or os.environ.get("GOOGLE_GEMINI_BASE_URL")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()
        for name, value in reversed(list(self._saved_env.items())):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def _set_env(self, name: str, value: str | None) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    @property
    def any_real(self) -> bool:
        return not (self.source_emulated and self.target_emulated)

    def describe(self) -> list[str]:
        """What is real and what is emulated, in words (never a key)."""
        source = (f"Ollama {SOURCE_MODEL}: EMULATED (local emulator at {self.ollama_url}; deterministic "
                  "vectors that keep word overlap, no model runs)" if self.source_emulated
                  else f"Ollama {SOURCE_MODEL}: real Ollama at {self.ollama_url}")
        target = ("Gemini gemini-embedding-001: EMULATED (local emulator at "
                  f"{self.gemini_url}; same API, paths and errors, deterministic vectors)" if self.target_emulated
                  else "Gemini gemini-embedding-001: the REAL Gemini API (your key from the environment; "
                       "this uses your quota)")
        return [source, target]
