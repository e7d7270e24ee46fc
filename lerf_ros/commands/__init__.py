"""The ``lerf-ros`` subcommands (one module each) and what several of them share."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Type


def checkpoint_argument(path: str) -> Optional[str]:
    """The checkpoint a ``--checkpoint`` argument names: the file itself, or for a folder the newest
    usable checkpoint in it or in its ``checkpoints/`` (the rule the trainer's resume and the query
    node use). None, with the reason printed, when a folder holds none."""
    if not os.path.isdir(path):
        return path
    from lerf_ros.mapping.checkpoint import latest_checkpoint

    found = latest_checkpoint(
        [path, os.path.join(path, "checkpoints")], warn=lambda m: print(f"warning: {m}", file=sys.stderr)
    )
    if found is None:
        print(f"no checkpoint in {path}", file=sys.stderr)
    return found


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``0.5``, ``true``, ``[1, 2]``); the text itself where it is not YAML."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def key_values(
    items: List[str], option: str = "--set", error: Type[Exception] = ValueError, prefix: str = ""
) -> Dict[str, Any]:
    """Repeated ``KEY=VALUE`` arguments of ``option`` -> {key: value parsed by ``parse_value``}.
    Raises ``error`` naming the item for one without '=' or whose key does not start with ``prefix``."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().startswith(prefix):
            raise error(f"{option} {item!r}: expected {prefix}KEY=VALUE")
        out[key.strip()] = parse_value(value.strip())
    return out
