"""Provider settings: where the providers are, how to authenticate, how fast to go.

Resolved once from explicit values (CLI flags) and the environment. The Gemini key is held
in a `Secret`, so repr(), str(), logging and dataclasses.asdict() of the settings never
show it, and a TOML/JSON writer handed the settings fails instead of writing the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping
from urllib.parse import urlsplit

from toolkit.config import register_secret
from toolkit.errors import BadInput

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 6


class Secret:
    """A string that never prints. Call .reveal() at the one place that needs the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)  # the logging filter and scrub() mask it everywhere too

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # pickling keeps working (process pools), printing never shows it
        return (Secret, (self._value,))


@dataclass(frozen=True)
class ProviderSettings:
    gemini_api_key: Secret | None = None
    gemini_base_url: str | None = None  # None: the SDK's default endpoint
    ollama_host: str = DEFAULT_OLLAMA_HOST
    timeout: float = DEFAULT_TIMEOUT_S  # seconds, per HTTP request
    rpm: int | None = None  # hard cap, texts per minute; None = adaptive (AIMD on 429s)
    tpm: int | None = None  # hard cap, estimated tokens per minute; None = adaptive
    rpd: int | None = None  # hard cap, texts per day (Gemini's daily quotas reset at midnight Pacific time)
    concurrency: int = DEFAULT_CONCURRENCY  # max requests in flight per limiter
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # per request, for 5xx / resets / timeouts
    doc_prefix: str | None = None  # None = the model's default (models.py); "" = none
    query_prefix: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.gemini_api_key, str):
            object.__setattr__(self, "gemini_api_key", Secret(self.gemini_api_key) if self.gemini_api_key else None)
        if self.timeout <= 0:
            raise BadInput(f"provider timeout must be positive, got {self.timeout}")
        for name in ("rpm", "tpm", "rpd"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise BadInput(f"--{name} must be a positive number, got {value}")
        if self.concurrency < 1:
            raise BadInput(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise BadInput(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.gemini_base_url is not None:
            _check_url(self.gemini_base_url, "Gemini base URL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "ProviderSettings":
        """Settings from explicit overrides, then the environment, then defaults.

        An override of None means "not given" (so CLI flags can be passed through as they
        are). Environment: GOOGLE_API_KEY, else GEMINI_API_KEY; REEMBED_GEMINI_BASE_URL,
        else GOOGLE_GEMINI_BASE_URL; OLLAMA_HOST; REEMBED_TIMEOUT, REEMBED_RPM, REEMBED_TPM,
        REEMBED_RPD, REEMBED_CONCURRENCY.
        """
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown provider settings: {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None}

        values: dict[str, Any] = {}
        key = env.get("GOOGLE_API_KEY") or env.get("GEMINI_API_KEY")
        if key:
            values["gemini_api_key"] = Secret(key)
        base_url = env.get("REEMBED_GEMINI_BASE_URL") or env.get("GOOGLE_GEMINI_BASE_URL")
        if base_url:
            values["gemini_base_url"] = base_url
        if env.get("OLLAMA_HOST"):
            values["ollama_host"] = env["OLLAMA_HOST"]
        for name, var, kind in (("timeout", "REEMBED_TIMEOUT", float), ("rpm", "REEMBED_RPM", int),
                                ("tpm", "REEMBED_TPM", int), ("rpd", "REEMBED_RPD", int),
                                ("concurrency", "REEMBED_CONCURRENCY", int)):
            raw = env.get(var)
            if raw:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise BadInput(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        values.update(given)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> "ProviderSettings":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def ollama_base_url(self) -> str:
        """OLLAMA_HOST normalized the way the ollama client reads it (scheme and port added)."""
        return normalize_ollama_host(self.ollama_host)

    def public_dict(self) -> dict[str, Any]:
        """The settings fit for printing or a plan file: the key only as set / not set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["gemini_api_key"] = "set" if self.gemini_api_key else "not set"
        return out


def normalize_ollama_host(host: str) -> str:
    """`localhost`, `0.0.0.0:11434`, `http://h` → `http://host:port` (port 11434 by default)."""
    host = host.strip()
    if "://" not in host:
        host = "http://" + host
    parts = urlsplit(host)
    hostname = parts.hostname or "127.0.0.1"
    if hostname == "0.0.0.0":  # a bind address, not a destination: the client connects locally
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = parts.port or (443 if parts.scheme == "https" else 11434)
    return f"{parts.scheme}://{hostname}:{port}{parts.path.rstrip('/')}"


def _check_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInput(f"{what} {url!r} must be an http:// or https:// URL")
