"""What every real teacher needs to find its weights offline (shared by ``clip`` and ``dino``).

Weights are never downloaded at run time: ``find_cached_weights`` looks in the local caches only,
``ensure_offline_hub`` keeps the Hugging Face hub client offline, and ``TeacherWeightsError`` says
how to provide missing weights. ``RANDOM_WEIGHTS_NOTE`` marks a teacher built with random weights
(tests and cost benchmarks only) in its description.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import torch

from lerf_ros.config import ConfigError

__all__ = ["RANDOM_WEIGHTS_NOTE", "TeacherWeightsError", "resolve_device", "ensure_offline_hub", "find_cached_weights"]

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: tests/benchmarks only"


class TeacherWeightsError(RuntimeError):
    """Teacher weights are not available locally; the message says how to provide them."""


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} is invalid: CUDA is not available on this machine")
    return dev


def ensure_offline_hub() -> None:
    """Keep the Hugging Face hub client from reaching the network (unless the user decided otherwise)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def find_cached_weights(
    hf_repo: str = "",
    hf_filenames: Sequence[str] = (),
    url: str = "",
    cache_dir: str = "",
    url_dirs: Iterable[str] = (),
) -> Optional[str]:
    """Path of a locally cached weights file, or None. Never touches the network.

    Looks for ``hf_repo``/``hf_filenames`` in the Hugging Face hub cache (``cache_dir`` when given,
    else the default one), for ``hf_filenames`` directly in ``cache_dir``, and for the file name of
    ``url`` in ``cache_dir`` and ``url_dirs``.
    """
    ensure_offline_hub()
    if hf_repo:
        from huggingface_hub import try_to_load_from_cache

        for name in hf_filenames:
            try:
                hit = try_to_load_from_cache(hf_repo, name, cache_dir=cache_dir or None)
            except Exception:  # malformed cache folders: treat as a miss
                hit = None
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    candidates = [os.path.join(cache_dir, name) for name in hf_filenames] if cache_dir else []
    if url:
        base = os.path.basename(url)
        candidates += [os.path.join(folder, base) for folder in ([cache_dir] if cache_dir else []) + list(url_dirs)]
    for path in candidates:
        path = os.path.expanduser(path)
        if os.path.isfile(path):
            return path
    return None
