"""Checks on what a query request carries, and how answers quote it. No ROS here.

A request comes from anywhere on the network, so its strings are untrusted: they are bounded in
length, refused when they hold control characters (a NUL would silently cut the text short in the
C layers of ROS), and an answer never echoes one whole: ``excerpt`` quotes at most
``EXCERPT_CHARS`` characters of it and says how long it was.
"""

from __future__ import annotations

import unicodedata

EXCERPT_CHARS = 40
"""Characters of a bad input that an answer or a log line quotes."""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``value`` quoted for a message: its repr (control characters escaped) when it has at most
    ``limit`` characters, else the repr of its first ``limit`` characters, '...' and its length."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def control_character(value: str) -> int:
    """Index of the first control character (Unicode category Cc: NUL, tab, newline, escape, DEL,
    ...) in ``value``, or -1."""
    for i, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc":
            return i
    return -1


def text_problem(what: str, value: object, max_chars: int, limit_name: str, allow_empty: bool = False) -> str:
    """Why ``value`` is not an acceptable request string, or "" when it is.

    Args:
        what: how the message names the field ("query text", "negative phrase 3", "frame_id").
        value: the string received.
        max_chars: most characters accepted.
        limit_name: the parameter that sets ``max_chars`` (quoted in the message).
        allow_empty: whether an empty (or all-blank) string is fine.
    """
    if not isinstance(value, str):
        return f"{what} must be a string, got {excerpt(value)}"
    if len(value) > max_chars:
        return (
            f"{what} too long ({len(value)} characters): at most {max_chars} ({limit_name}); it starts {excerpt(value)}"
        )
    i = control_character(value)
    if i >= 0:
        return (
            f"{what} holds a control character (U+{ord(value[i]):04X} at position {i}) in {excerpt(value)}: "
            "give printable text only"
        )
    if not allow_empty and not value.strip():
        return f"{what} is empty: give a word or phrase"
    return ""


def format_relevancy(value: float, reference: float) -> str:
    """``value`` with 3 decimals, or as many more (up to 7) as it takes to tell it apart from
    ``reference`` (a threshold) when they differ: 0.9996 against 1.0 prints 0.9996, not 1.000."""
    value, reference = float(value), float(reference)
    for digits in range(3, 8):
        text = f"{value:.{digits}f}"
        if value == reference or text != f"{reference:.{digits}f}":
            return text
    return f"{value:.7f}"
