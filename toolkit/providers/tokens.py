"""Token counts without a tokenizer: ~4 characters per token, the ratio Google documents for its
models. Used for quota pacing, estimates and cutting text to a model's input limit."""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def truncate_to_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """The text cut to about max_tokens tokens, and whether it was cut."""
    limit = max_tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text, False
    return text[:limit], True
