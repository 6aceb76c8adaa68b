"""Cheap token estimates, used for the per-minute token budget and for cutting long texts.

We do not ship the providers' tokenizers (Gemini's is server-side, Ollama's lives in the
model). Instead: ~4 characters per token for ASCII text (the usual average for English
with SentencePiece/BPE vocabularies), and one token per non-ASCII character. The second
rule over-counts accented Latin text but keeps CJK and other scripts (≈1 token per
character) from being under-counted, so a text we cut "to 2048 tokens" really fits:
erring high only costs a little budget, erring low would make the server cut silently.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Estimated token count of text: ceil(ascii_chars / 4) + non_ascii_chars."""
    if not text:
        return 0
    if text.isascii():
        return -(-len(text) // CHARS_PER_TOKEN)
    # encode(..., "ignore") drops non-ASCII characters in C: fast even for long texts.
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-ascii_chars // CHARS_PER_TOKEN) + (len(text) - ascii_chars)


def truncate_to_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut text so that estimate_tokens(result) <= max_tokens; returns (text, was_cut).

    The cut moves back to the last whitespace when one is near (within 10% of the kept
    text) so we do not end on half a word.
    """
    if max_tokens <= 0:
        return "", bool(text)
    if estimate_tokens(text) <= max_tokens:
        return text, False
    if text.isascii():
        keep = max_tokens * CHARS_PER_TOKEN
    else:
        # The estimate is monotonic in the prefix length: binary search the longest prefix.
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if estimate_tokens(text[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        keep = lo
    cut = text[:keep]
    space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
    if space > keep * 0.9:
        cut = cut[:space]
    return cut.rstrip(), True


def fit_text(text: str, max_tokens: int, prefix: str = "") -> tuple[str, bool]:
    """prefix + text cut so the whole stays within max_tokens; returns (text_to_send, was_cut).

    The one place that decides what is actually sent, shared by the embedders and by the
    emulators' expected_vector(), so tests can predict stored vectors exactly.
    """
    body, cut = truncate_to_tokens(text, max_tokens - estimate_tokens(prefix))
    return prefix + body, cut
