"""Reading what a command printed, the way a user reads it."""

from __future__ import annotations

ACTING_ON = "reembed: acting on "


def error_lines(stderr: str) -> list[str]:
    """stderr without the line that names the database a changing command acts on."""
    return [line for line in stderr.strip().splitlines() if not line.startswith(ACTING_ON)]
