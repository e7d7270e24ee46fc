"""The ``lerf-ros`` subcommands (one module each) and what several of them share."""

from __future__ import annotations

import os
import sys
from typing import Optional


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
