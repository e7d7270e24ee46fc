"""The error every invalid configuration value raises, and the check that raises it.

A ``ConfigError`` is a ``ValueError`` whose message names the dotted key and says what was expected;
``_require`` is the one-line check each section's ``check()`` is written with.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: expected {expected}")
