"""A ``FieldSnapshot`` built from a synthetic scene's ground truth, for tests and benchmarks.

- render: the scene's own ray caster (exact geometry: depth, colour; accumulation 1 on a hit);
- density: high inside the objects' oriented boxes and the table slab, 0 elsewhere;
- language(x, s): the text embedding of the class of the object whose box contains x, blended with
  the background embedding when the scale s is far from the object's size:
  ``normalize(w e_class + (1 - w) e_background)``, ``w = exp(-0.5 (ln(s / size) / width)^2)``,
  size = the largest side of the object's box. Outside every box it is the background embedding.
  So the scale search has a right answer: the candidate scale nearest the object's size.
- language_multi_scale and language_basis: in closed form (class lookup once per point; the norm of
  the blend from the embeddings' dot products; the span of the class embeddings).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from lerf_ros.field.snapshot import CameraView, language_per_scale

#: density (1/m) inside objects and the table slab
SOLID_DENSITY = 1000.0


class AnalyticSnapshot:
    """Ground-truth field of a ``lerf_ros.data.synthetic.SyntheticScene`` (see module docstring)."""

    def __init__(
        self,
        scene,
        encode_text: Callable[[List[str]], torch.Tensor],
        step: int = 0,
        frames: Optional[Sequence[int]] = None,
        background_text: str = "background",
        scale_width: float = 0.7,
        device: str = "cpu",
    ) -> None:
        """
        Args:
            scene: the synthetic scene.
            encode_text: texts -> (N, D) unit rows (a teacher's ``encode_text``).
            step: the training step this snapshot pretends to come from.
            frames: indices of the scene's frames used as keyframe cameras (default: all).
            background_text: phrase whose embedding is the language field outside the objects.
            scale_width: width (in ln-scale units) of the scale response around the object size.
        """
        self.scene = scene
        self.step = int(step)
        self.device = torch.device(device)
        idx = range(len(scene.frames)) if frames is None else frames
        self.cameras = [
            CameraView(
                np.asarray(scene.frames[i].K),
                np.asarray(scene.frames[i].c2w),
                scene.frames[i].height,
                scene.frames[i].width,
            )
            for i in idx
        ]
        objs = scene.objects
        names = [o.class_name for o in objs] + [background_text]
        emb = torch.as_tensor(encode_text(names)).float()
        self._emb = torch.nn.functional.normalize(emb, dim=-1).to(self.device)  # (K + 1, D)
        self.clip_dim = int(emb.shape[1])
        self._centers = torch.tensor(np.stack([o.center for o in objs]), dtype=torch.float32, device=self.device)
        self._rot = torch.tensor(np.stack([o.rotation for o in objs]), dtype=torch.float32, device=self.device)
        self._half = torch.tensor(np.stack([o.size for o in objs]) / 2, dtype=torch.float32, device=self.device)
        self._size = torch.tensor(
            [float(np.max(o.size)) for o in objs] + [1.0], dtype=torch.float32, device=self.device
        )
        self._width = float(scale_width)
        self.calls = {"language": 0, "language_multi_scale": 0, "render": 0}

    # ------------------------------------------------------------------ helpers
    def object_index(self, xyz: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,) long: index of the (first) object whose box contains the point, K if none."""
        local = torch.einsum("nkc,kcd->nkd", xyz[:, None, :] - self._centers[None], self._rot)  # R^T (x - c)
        inside = (local.abs() <= self._half[None]).all(dim=-1)  # (N, K)
        K = inside.shape[1]
        first = torch.where(
            inside.any(dim=1), inside.float().argmax(dim=1), torch.full_like(inside[:, 0], K, dtype=torch.long)
        )
        return first.long()

    def _weights(self, idx: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """(N,) object index, scales (S, N) or (S, 1) -> (S, N) weight of the class embedding."""
        size = self._size[idx][None]
        w = torch.exp(-0.5 * (torch.log(scales.clamp_min(1e-6) / size) / self._width) ** 2)
        return torch.where(idx[None] == len(self._size) - 1, torch.ones_like(w), w)

    # ------------------------------------------------------------------ FieldSnapshot
    @torch.no_grad()
    def language(self, xyz: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """xyz (N, 3), scale (N,) -> (N, D) unit rows."""
        self.calls["language"] += 1
        idx = self.object_index(xyz)
        w = self._weights(idx, scale.reshape(1, -1))[0][:, None]
        v = w * self._emb[idx] + (1 - w) * self._emb[-1][None]
        return torch.nn.functional.normalize(v, dim=-1)

    @torch.no_grad()
    def language_multi_scale(
        self, xyz: torch.Tensor, scales: torch.Tensor, project: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """xyz (N, 3), scales (S,), project (T, D) or None -> (S, N, T or D): language at each scale,
        projected. The class lookup runs once per point."""
        self.calls["language_multi_scale"] += 1
        idx = self.object_index(xyz)
        w = self._weights(idx, scales.reshape(-1, 1))[..., None]  # (S, N, 1)
        e = self._emb if project is None else self._emb @ project.T  # (K + 1, T)
        gram = self._emb @ self._emb[-1]  # e_k . e_background
        norm = torch.sqrt(w**2 + (1 - w) ** 2 + 2 * w * (1 - w) * gram[idx][None, :, None]).clamp_min(1e-12)
        return (w * e[idx][None] + (1 - w) * e[-1][None, None]) / norm

    def language_basis(self) -> torch.Tensor:
        """(r, D) orthonormal rows spanning every output of ``language``: the class embeddings'
        span (the optional exact basis of the query engine's projected features)."""
        _, s, vh = torch.linalg.svd(self._emb.double(), full_matrices=False)
        return vh[s > 1e-9 * s[0]].float()

    @torch.no_grad()
    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,): SOLID_DENSITY inside an object box or the table slab, else 0."""
        idx = self.object_index(xyz)
        tx, ty = self.scene.table_size
        top = self.scene.table_height
        table = (
            (xyz[:, 0].abs() <= tx / 2) & (xyz[:, 1].abs() <= ty / 2) & (xyz[:, 2] <= top) & (xyz[:, 2] >= top - 0.04)
        )
        solid = (idx < len(self._size) - 1) | table
        return solid.float() * SOLID_DENSITY

    @torch.no_grad()
    def render(self, K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> Dict[str, torch.Tensor]:
        """Exact render of the scene: rgb (H, W, 3) in [0, 1], depth (H, W) z-depth, accumulation (H, W)."""
        self.calls["render"] += 1
        rgb, depth, _ = self.scene.render_view(
            np.asarray(c2w, float), K=np.asarray(K, float), width=width, height=height, shadows=False
        )
        depth_t = torch.from_numpy(np.asarray(depth, np.float32)).to(self.device)
        return {
            "rgb": torch.from_numpy(rgb.astype(np.float32) / 255.0).to(self.device),
            "depth": depth_t,
            "accumulation": (depth_t > 0).float(),
        }


class ReferencePaths:
    """A field (any ``FieldSnapshot``) through the reference paths: ``language_multi_scale`` calls
    ``language`` once per scale (``language_per_scale``), and ``language_basis`` guarantees nothing
    narrower than the whole space, so the query engine estimates a basis from samples."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.step, self.clip_dim, self.device, self.cameras = inner.step, inner.clip_dim, inner.device, inner.cameras

    def language(self, xyz, scale):
        return self._inner.language(xyz, scale)

    def language_multi_scale(self, xyz, scales, project=None):
        return language_per_scale(self, xyz, scales, project)

    def language_basis(self):
        return torch.eye(self.clip_dim, device=self.device)

    def density(self, xyz):
        return self._inner.density(xyz)

    def render(self, K, c2w, height, width):
        return self._inner.render(K, c2w, height, width)


class LanguageFromModel:
    """A real model's language field on the scene's exact geometry: cameras and ``render`` from an
    ``AnalyticSnapshot``, the language field (``language``, ``language_multi_scale``,
    ``language_basis``) and density from a model snapshot such as ``lerf_ros.field.frozen.FrozenField``.
    Lets tests and benchmarks score a chosen number of real surface points with a real (e.g.
    untrained) language field."""

    def __init__(self, model_snapshot, geometry: AnalyticSnapshot) -> None:
        self._model, self._geometry = model_snapshot, geometry
        self.step, self.clip_dim, self.device = model_snapshot.step, model_snapshot.clip_dim, model_snapshot.device
        self.cameras = geometry.cameras

    def language(self, xyz, scale):
        return self._model.language(xyz, scale)

    def language_multi_scale(self, xyz, scales, project=None):
        return self._model.language_multi_scale(xyz, scales, project)

    def language_basis(self):
        return self._model.language_basis()

    def density(self, xyz):
        return self._model.density(xyz)

    def render(self, K, c2w, height, width):
        return self._geometry.render(K, c2w, height, width)
