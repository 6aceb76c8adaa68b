"""Transport exception classes of every httpx flavour the SDKs may use.

google-genai sends through `httpx2` (pydantic's fork of httpx, separate namespace) when it
is installed and through `httpx` otherwise; the ollama client uses `httpx`. Their
exception classes are unrelated, so a timeout must be recognised in both.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def _modules() -> list[ModuleType]:
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def _classes(attr: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(m, attr) for m in _modules() if hasattr(m, attr))


TIMEOUTS = _classes("TimeoutException")
CONNECT_ERRORS = _classes("ConnectError")
UNUSABLE_URL = _classes("UnsupportedProtocol")
TRANSPORT_ERRORS = _classes("TransportError")  # resets, protocol errors, the above
