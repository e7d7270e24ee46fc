"""Keyframes and a perfect field built from synthetic scenes, for the change-detection tests."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch


def as_keyframes(frames, first_key=0):
    """Stand-ins for stored keyframes (``key``, ``K``, ``c2w``, ``rgb`` as a tensor, ``depth``) of
    ``frames``, keyed from ``first_key`` on."""
    return [
        SimpleNamespace(key=first_key + i, K=f.K, c2w=f.c2w, rgb=torch.from_numpy(f.rgb), depth=f.depth)
        for i, f in enumerate(frames)
    ]


def perfect_field(scene):
    """A render function of ``scene`` rendered exactly through pinhole rays: what a converged field
    would show."""

    def render(K, c2w, h, w):
        rgb, depth, _ = scene.render_view(c2w, K=K, width=w, height=h)
        return {"rgb": rgb / 255.0, "depth": depth, "accumulation": (depth > 0).astype(np.float32)}

    return render
