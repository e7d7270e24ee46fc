"""What the query engine needs of a trained field: an immutable, read-only snapshot.

The trainer produces snapshots (a frozen copy of the weights in eval mode, plus the keyframe cameras
it was trained on); the query engine consumes them without ever touching the live model, so
training never waits on a query.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class CameraView:
    """A keyframe's camera: intrinsics (3x3), camera-to-world (4x4, OpenCV convention), size."""

    K: np.ndarray
    c2w: np.ndarray
    height: int
    width: int


class FieldSnapshot(Protocol):
    """Read-only access to a trained LERF. All methods run under ``torch.no_grad()``."""

    step: int
    """Training step the weights come from."""
    clip_dim: int
    device: torch.device
    cameras: List[CameraView]
    """Cameras of the keyframes the field was trained on (for surface extraction / visibility)."""

    def language(self, xyz: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Language field at world points. xyz (N, 3), scale (N,) metres -> (N, clip_dim), unit rows."""
        ...

    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        """Volume density at world points. xyz (N, 3) -> (N,) non-negative."""
        ...

    def render(self, K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> Dict[str, torch.Tensor]:
        """Render a view: 'rgb' (H, W, 3) in [0, 1], 'depth' (H, W) z-depth metres,
        'accumulation' (H, W) in [0, 1]."""
        ...
