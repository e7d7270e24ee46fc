"""An immutable snapshot of a trained LERF: the ``FieldSnapshot`` the query engine reads.

``FrozenField`` holds a private deep copy of the model in eval mode with gradients off, plus the
keyframe cameras it was trained on. Nothing outside can change it, so a query never races with
training; the trainer takes a new snapshot whenever it likes.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from lerf_ros.field.model import LerfModel, NoLanguageFieldError
from lerf_ros.field.sampling import image_rays
from lerf_ros.field.snapshot import CameraView


class FrozenField:
    """Read-only LERF (implements ``lerf_ros.field.snapshot.FieldSnapshot``).

    Args:
        model: the live model; it is deep-copied (the copy is what this snapshot uses).
        cameras: the keyframe cameras the field was trained on.
        step: training step of the weights.
        teacher: one-line description of the teacher that supervised the language field.
        chunk_rays: rays per chunk in :meth:`render` (bounds memory; default 4096 on CPU,
            32768 on CUDA).
        copy_model: False to adopt ``model`` as is (it must not be used elsewhere afterwards).
    """

    def __init__(
        self,
        model: LerfModel,
        cameras: Sequence[CameraView],
        step: int,
        teacher: str = "",
        chunk_rays: Optional[int] = None,
        copy_model: bool = True,
    ) -> None:
        m = copy.deepcopy(model) if copy_model else model
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        self._model = m
        self.step = int(step)
        self.scene_change_step = -1
        """Training step of the newest scene change the trainer counted before this snapshot (-1:
        none); the query's surface points are refreshed after it (``lerf_ros.query.surface``)."""
        self.clip_dim = m.clip_dim
        self.dino_dim = m.dino_dim
        self.teacher = teacher
        self.device = next(m.parameters()).device
        self.cameras: List[CameraView] = [
            CameraView(np.array(c.K, dtype=np.float64), np.array(c.c2w, dtype=np.float64), int(c.height), int(c.width))
            for c in cameras
        ]
        self.chunk_rays = int(chunk_rays or (32768 if self.device.type == "cuda" else 4096))
        self.scene_center = m.scene_center.detach().cpu().numpy().copy()
        self.scene_scale = float(m.scene_scale)
        # No language field (teacher kind 'none'): clip_dim is 0 and the language methods raise.
        self._clip_basis = m.lang.clip_basis() if m.has_language else None

    def language_basis(self) -> torch.Tensor:
        """(r, clip_dim) orthonormal rows spanning every output of :meth:`language` (the column space
        of the language head's output layer and its bias; r <= hidden width + 1). A copy."""
        if self._clip_basis is None:
            raise NoLanguageFieldError("this snapshot has no language field (teacher kind 'none')")
        return self._clip_basis.clone()

    @property
    def config(self):
        """The model configuration (a copy)."""
        return copy.deepcopy(self._model.cfg)

    def _points(self, xyz: torch.Tensor) -> torch.Tensor:
        xyz = torch.as_tensor(xyz, dtype=torch.float32, device=self.device)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"xyz must be (N, 3), got {tuple(xyz.shape)}")
        return xyz

    @torch.no_grad()
    def language(self, xyz: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``F_lang`` at world points. xyz (N, 3), scale (N,) or scalar metres -> (N, clip_dim) unit rows."""
        xyz = self._points(xyz)
        out = []
        for i in range(0, xyz.shape[0], self.chunk_rays * 8):
            sl = slice(i, i + self.chunk_rays * 8)
            s = torch.as_tensor(scale, dtype=torch.float32, device=self.device).reshape(-1)
            s = s[sl] if s.numel() > 1 else s
            out.append(self._model.language_at(xyz[sl], s))
        return torch.cat(out) if out else torch.zeros((0, self.clip_dim), device=self.device)

    @torch.no_grad()
    def language_multi_scale(
        self, xyz: torch.Tensor, scales: torch.Tensor, project: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``language`` at every scale, in one pass of the hash grids per point.

        xyz (N, 3), scales (S,) metres, project (T, clip_dim) or None -> (S, N, T) =
        ``language(xyz, s) @ project.T`` for each scale ((S, N, clip_dim) without project)."""
        xyz = self._points(xyz)
        scales = torch.as_tensor(scales, dtype=torch.float32, device=self.device).reshape(-1)
        if project is not None:
            project = torch.as_tensor(project, dtype=torch.float32, device=self.device)
            if project.ndim != 2 or project.shape[1] != self.clip_dim:
                raise ValueError(f"project must be (T, {self.clip_dim}), got {tuple(project.shape)}")
        step = self.chunk_rays * 8
        out = [
            self._model.language_multi_scale_at(xyz[i : i + step], scales, project, self._clip_basis)
            for i in range(0, xyz.shape[0], step)
        ]
        width = self.clip_dim if project is None else project.shape[0]
        return torch.cat(out, dim=1) if out else torch.zeros((len(scales), 0, width), device=self.device)

    @torch.no_grad()
    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        """Volume density (per metre) at world points. xyz (N, 3) -> (N,) non-negative."""
        xyz = self._points(xyz)
        out = [
            self._model.density_at(xyz[i : i + self.chunk_rays * 16])
            for i in range(0, xyz.shape[0], self.chunk_rays * 16)
        ]
        return torch.cat(out) if out else torch.zeros((0,), device=self.device)

    @torch.no_grad()
    def render(
        self, K: np.ndarray, c2w: np.ndarray, height: int, width: int, scale: Optional[float] = None
    ) -> Dict[str, torch.Tensor]:
        """Render a view.

        Returns 'rgb' (H, W, 3) in [0, 1], 'depth' (H, W) z-depth in metres, 'accumulation'
        (H, W); with ``scale`` (metres) also 'clip' (H, W, clip_dim): the rendered language
        embedding at that scale (unit rows).
        """
        return render_image(self._model, K, c2w, height, width, self.chunk_rays, scale)

    def __repr__(self) -> str:
        return (
            f"FrozenField(step={self.step}, clip_dim={self.clip_dim}, cameras={len(self.cameras)}, "
            f"device={self.device})"
        )


@torch.no_grad()
def render_image(
    model: LerfModel,
    K: np.ndarray,
    c2w: np.ndarray,
    height: int,
    width: int,
    chunk_rays: int,
    scale: Optional[float] = None,
) -> Dict[str, torch.Tensor]:
    """Render every pixel of a view with ``model`` (deterministic samples), ``chunk_rays`` at a time.

    Returns 'rgb' (H, W, 3) in [0, 1], 'depth' (H, W) z-depth in metres, 'accumulation' (H, W),
    and with ``scale`` (metres) 'clip' (H, W, clip_dim) unit rows. The background is black
    (white when the model trains on white).
    """
    if height < 1 or width < 1:
        raise ValueError(f"render size must be positive, got {width}x{height}")
    device = next(model.parameters()).device
    origins, dirs, dir_z = image_rays(K, c2w, height, width, device)
    bg = torch.ones(3, device=device) if model.cfg.background_color == "white" else torch.zeros(3, device=device)
    keys = ["rgb", "depth", "accumulation"] + (["clip"] if scale is not None else [])
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in keys}
    for i in range(0, origins.shape[0], chunk_rays):
        sl = slice(i, i + chunk_rays)
        out = model.render_rays(origins[sl], dirs[sl], background=bg)
        parts["rgb"].append(out.rgb.float().clamp(0.0, 1.0))
        parts["depth"].append(out.depth * dir_z[sl])
        parts["accumulation"].append(out.accumulation)
        if scale is not None:
            parts["clip"].append(
                model.render_language(out, None, scale=torch.tensor(float(scale)), with_dino=False)["clip"]
            )
    res = {k: torch.cat(v) for k, v in parts.items()}
    res["rgb"] = res["rgb"].view(height, width, 3)
    res["depth"] = res["depth"].view(height, width)
    res["accumulation"] = res["accumulation"].view(height, width)
    if "clip" in res:
        res["clip"] = res["clip"].view(height, width, -1)
    return res
