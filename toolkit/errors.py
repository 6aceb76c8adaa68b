"""Exception classes. Each carries the CLI exit code it maps to, so commands stay thin."""

from __future__ import annotations


class ReembedError(Exception):
    """Base of every error reembed reports to the user as one line."""

    exit_code = 1


class BadInput(ReembedError):
    """The user asked for something that cannot be done as stated (exit 2)."""

    exit_code = 2


class GateFailed(ReembedError):
    """A precondition or verification gate refused to proceed (exit 1)."""

    exit_code = 1


class PlanMoved(GateFailed):
    """Another command moved the plan to another phase (or dropped what this one works on) while
    this one ran: it stopped without writing anything for the old layout."""

    def __init__(self, message: str, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class Unreachable(ReembedError):
    """The database or a provider could not be reached (exit 3)."""

    exit_code = 3


class ProviderError(ReembedError):
    """A provider answered with a permanent error (bad key, unknown model, bad request)."""

    exit_code = 1


class ProviderUnreachable(Unreachable):
    """A provider could not be reached, or kept failing after bounded retries."""


class MalformedResponse(ProviderError):
    """A provider answered, but the vectors cannot be trusted (count, dimension, NaN, zero norm)."""


class QuotaExhausted(ProviderUnreachable):
    """The provider kept answering 429 (or asked for a wait longer than we accept)."""


class DailyQuotaExhausted(QuotaExhausted):
    """A per-day quota is used up (the provider said so, or --rpd was reached): nothing to retry
    until it resets, so the run stops (exit 1) with the time it resets."""

    exit_code = 1
