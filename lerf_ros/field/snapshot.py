"""What the query engine needs of a trained field: an immutable, read-only snapshot.

The trainer produces snapshots (a frozen copy of the weights in eval mode, plus the keyframe cameras
it was trained on); the query engine consumes them without ever touching the live model, so
training never waits on a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class CameraView:
    """A keyframe's camera: intrinsics (3x3), camera-to-world (4x4, OpenCV convention), size."""

    K: np.ndarray
    c2w: np.ndarray
    height: int
    width: int


@runtime_checkable
class FieldSnapshot(Protocol):
    """Read-only access to a trained LERF: everything the query engine uses. All methods run under
    ``torch.no_grad()``. Implemented by ``lerf_ros.field.frozen.FrozenField`` (and by the test
    suite's analytic field).

    Optional (read with a default, so fields without it still satisfy the protocol):
    ``scene_change_step`` (int), the training step of the newest scene change the trainer counted,
    -1 when none; the query re-extracts its surface points after it (``lerf_ros.query.surface``)."""

    step: int
    """Training step the weights come from."""
    clip_dim: int
    """Width of the language field's output; 0: the field has none (teacher kind 'none': geometry and
    colour only), and the language methods raise."""
    device: torch.device
    cameras: List[CameraView]
    """Cameras of the keyframes the field was trained on (for surface extraction / visibility)."""

    def language(self, xyz: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Language field at world points. xyz (N, 3), scale (N,) metres -> (N, clip_dim), unit rows."""
        ...

    def language_multi_scale(
        self, xyz: torch.Tensor, scales: torch.Tensor, project: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``language`` at every scale, projected: xyz (N, 3), scales (S,) metres, project (T, clip_dim)
        or None -> (S, N, T) = ``language(xyz, s) @ project.T`` for each s ((S, N, clip_dim) without
        project). What the scale search calls; an implementation encodes each point once (the
        position encoding does not depend on the scale). ``language_per_scale`` is the reference."""
        ...

    def language_basis(self) -> torch.Tensor:
        """(r, clip_dim) orthonormal rows whose span holds every output of ``language`` (a guarantee,
        not an estimate; r = clip_dim when nothing narrower is known)."""
        ...

    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        """Volume density at world points. xyz (N, 3) -> (N,) non-negative."""
        ...

    def render(self, K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> Dict[str, torch.Tensor]:
        """Render a view: 'rgb' (H, W, 3) in [0, 1], 'depth' (H, W) z-depth metres,
        'accumulation' (H, W) in [0, 1]."""
        ...


def language_per_scale(
    snapshot: FieldSnapshot, xyz: torch.Tensor, scales: torch.Tensor, project: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The reference for ``FieldSnapshot.language_multi_scale``: ``language`` once per scale.

    xyz (N, 3), scales (S,), project (T, clip_dim) or None -> (S, N, T or clip_dim) float32."""
    outs = []
    for s in torch.as_tensor(scales, dtype=torch.float32).reshape(-1).tolist():
        phi = snapshot.language(xyz, torch.full((len(xyz),), s, dtype=torch.float32, device=xyz.device)).float()
        outs.append(phi if project is None else phi @ project.float().T)
    width = int(snapshot.clip_dim) if project is None else project.shape[0]
    return torch.stack(outs) if outs else torch.zeros((0, len(xyz), width), device=xyz.device)
