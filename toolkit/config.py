"""Where settings come from (flags, then environment) and how secrets are kept out of output."""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import urlsplit, urlunsplit

import psycopg.conninfo

from toolkit.errors import BadInput

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

SECRET_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "PGPASSWORD")


def register_secret(value: str | None) -> None:
    """Remember a value that must never be printed, logged or stored."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def register_environment_secrets() -> None:
    for name in SECRET_ENV_VARS:
        register_secret(os.environ.get(name))


def scrub(text: str) -> str:
    """Replace every registered secret in text with a mask."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


_URL_PASSWORD = re.compile(r"(?P<scheme>postgres(?:ql)?(?:\+\w+)?://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """A DSN fit for printing: the password replaced by ***, in URL or key=value form."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:  # not even a URL: mask whatever sits between :// and @
            return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", dsn)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            # From the netloc text, not parts.port: that raises on a port out of range.
            parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
        query = _KV_PASSWORD.sub(r"\1***", parts.query.replace("&", " ")).replace(" ", "&") if parts.query else ""
        return urlunsplit(parts._replace(query=query))
    return _KV_PASSWORD.sub(r"\1***", dsn)


def dsn_password(dsn: str) -> str | None:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except psycopg.ProgrammingError:
        match = _URL_PASSWORD.search(dsn)
        return match.group("pw") if match else None


# The variables with which a psql user names a server. Any of them set means the user has one:
# libpq then resolves it exactly as psql would (service file, ~/.pgpass included).
LIBPQ_TARGET_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE")
LIBPQ_DEFAULTS = ""  # the empty conninfo: every parameter from the PG* variables and libpq's defaults


def libpq_target_vars() -> list[str]:
    return [name for name in LIBPQ_TARGET_VARS if os.environ.get(name)]


def resolve_dsn(flag_value: str | None) -> str | None:
    """--dsn, else DATABASE_URL, else the PG* variables (LIBPQ_DEFAULTS); None: the embedded PostgreSQL.

    A DSN that leaves parts out (`service=app`, `postgresql:///rag`) is completed by libpq from the
    PG* variables, the service file and ~/.pgpass, as psql completes it."""
    dsn = flag_value or os.environ.get("DATABASE_URL") or None
    if dsn:
        register_secret(dsn_password(dsn))
        check_dsn(dsn)
        return dsn
    return LIBPQ_DEFAULTS if libpq_target_vars() else None


def describe_target(host: str | None, port: int | str | None, dbname: str | None) -> str:
    """`host:port/dbname`, the form every command names its database in (never a password)."""
    return f"{host or 'localhost'}:{port or 5432}/{dbname or ''}"


def conninfo_target(conninfo: str) -> str:
    """`host:port/dbname` that libpq will try for conninfo, before connecting (PG* variables applied)."""
    from psycopg import pq

    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return redact_dsn(conninfo)
    if "service" in given or os.environ.get("PGSERVICE"):
        service = given.get("service") or os.environ.get("PGSERVICE")
        return f"service {service}"
    defaults = {o.keyword.decode(): o.val.decode() for o in pq.Conninfo.get_defaults() if o.val is not None}
    merged = {**defaults, **{k: str(v) for k, v in given.items() if v is not None}}
    return describe_target(merged.get("host") or merged.get("hostaddr"), merged.get("port"),
                           merged.get("dbname") or merged.get("user"))


def check_dsn(dsn: str) -> None:
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise BadInput(f"the DSN {redact_dsn(dsn)} is malformed: {first}") from None
    for port in str(params.get("port") or "").split(","):
        if port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            raise BadInput(f"the DSN {redact_dsn(dsn)} names port {port.strip()}: a port is a number from 1 to 65535")


class SecretScrubbingFilter(logging.Filter):
    """Scrubs registered secrets from every log record, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(verbosity: int | bool) -> None:
    """0: warnings only; 1 (-v): reembed's own log lines too; 2 (-vv): every library's debug output
    (httpx, httpcore, google-genai, ollama, psycopg). Secrets are scrubbed from every record."""
    handler = logging.StreamHandler()
    handler.addFilter(SecretScrubbingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = int(verbosity)
    root.setLevel(logging.DEBUG if level >= 2 else logging.WARNING)
    logging.getLogger("toolkit").setLevel(logging.DEBUG if level >= 1 else logging.NOTSET)
