"""Learned per-keyframe camera corrections (ROS-free): pose refinement and an appearance embedding.

Every keyframe of the store holds a slot (``Keyframe.slot``); row ``slot`` of each table below is
that keyframe's learned parameters, and each training ray gathers its keyframe's row by
``RayBatch.slot`` (vectorised, no loop over rays or keyframes).

Pose correction (table ``pose``, (S, 6)): a rotation vector ``w`` (world axes, radians) and a
translation ``t`` (world metres). The corrected camera is turned by ``exp(w)`` about its own centre
and then moved by ``t``::

    R' = exp(w) R,   c' = c + t        (c2w = [R | c])

so a ray's origin (the camera centre) moves by ``t`` and its direction turns by ``exp(w)``; ``exp``
is the SO(3) exponential (Rodrigues). Rotating about the camera's own centre keeps the two parts
decoupled (a world-frame twist would move far cameras by ``w x c``).

Gauge. Moving every camera by one rigid motion, and the scene with them, explains the images
equally well, so the corrections alone would let the whole world slide. It is anchored by keeping
each table zero-mean over the live keyframes (after every optimiser step the mean row of the live
slots is subtracted): a common rotation and translation of all cameras is removed at first order,
and the world stays where the input poses put it on average. An optional L2 penalty toward zero
(``trainer.pose_regularization``, off by default) keeps each keyframe's correction small.

Appearance (table ``appearance``, (S, A)): a vector per keyframe fed to the colour head only,
zero-initialised and kept zero-mean over the live keyframes in the same way; the neutral appearance
used for every render that has no keyframe (queries, held-out views, snapshots) is zero, i.e. the
mean appearance of the live keyframes.

Optimiser. Each table has its own Adam with per-row moments and a per-row step count, so a slot
that gets a new keyframe (or a replaced input pose) starts afresh: value, moments and bias
correction all reset; a row moves only on steps where its keyframe got rays (sparse Adam). The
rows are what checkpoints keep, by keyframe (``row_state``/``set_row_state``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["CameraCorrections", "pose_grad_rows", "render_with_pose_rows", "so3_exp"]

_BETAS = (0.9, 0.999)
_EPS = 1e-12
_ROW_GROWTH = 16


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of rotation vectors (Rodrigues). w (N, 3) radians -> (N, 3, 3).

    Exact and differentiable at every angle: near zero the coefficients ``sin(a)/a`` and
    ``(1 - cos(a))/a^2`` switch to their Taylor series."""
    if w.ndim != 2 or w.shape[1] != 3:
        raise ValueError(f"rotation vectors must be (N, 3), got {tuple(w.shape)}")
    theta2 = (w * w).sum(-1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    hat = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(hat)
    return eye + a[:, None, None] * hat + b[:, None, None] * (hat @ hat)


def pose_grad_rows(n: int, every: int, step: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Rows of a batch of ``n`` rays that carry pose gradients on ``step`` when they are spread over
    the rays (every ``every``-th ray, the start turning with the step so each row gets its turn)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return torch.arange(step % every, n, every, device=device)


def render_with_pose_rows(
    render: Callable[..., Any],
    origins: torch.Tensor,
    dirs: torch.Tensor,
    rows: torch.Tensor,
    *,
    background: Optional[torch.Tensor] = None,
    appearance: Optional[torch.Tensor] = None,
    **kwargs: Any,
):
    """Render corrected rays so that only ``rows`` back-propagate into the camera corrections.

    Autograd differentiates a tensor as a whole: one pass over the batch with some rays' positions
    requiring grad would take the (costly) gradient of every sample position. The batch is rendered
    in two passes instead, ``rows`` with their corrected rays as they are, the others detached, and
    the outputs are put back in the batch's order. ``render`` is ``LerfModel.render_rays``;
    ``background`` ((R, 3) or (3,)) and ``appearance`` ((R, A) or None) are split alike, the other
    keyword arguments go to both passes. Returns the ``RenderOutput`` of the whole batch."""
    n = origins.shape[0]
    mask = torch.zeros(n, dtype=torch.bool, device=origins.device)
    mask[rows] = True
    keep = mask.nonzero().squeeze(1)
    rest = (~mask).nonzero().squeeze(1)
    if keep.numel() == 0 or rest.numel() == 0:
        o, d = (origins, dirs) if rest.numel() == 0 else (origins.detach(), dirs.detach())
        return render(o, d, background=background, appearance=appearance, **kwargs)

    def part(idx: torch.Tensor, grad: bool):
        o, d = origins[idx], dirs[idx]
        if not grad:
            o, d = o.detach(), d.detach()
        bg = background[idx] if background is not None and background.ndim == 2 else background
        app = appearance[idx] if appearance is not None else None
        return render(o, d, background=bg, appearance=app, **kwargs)

    a, b = part(keep, True), part(rest, False)
    order = torch.argsort(torch.cat([keep, rest]))

    def merge(x, y):
        if isinstance(x, list):
            return [merge(u, v) for u, v in zip(x, y)]
        return torch.cat([x, y])[order]

    return dataclasses.replace(
        a, **{f.name: merge(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)}
    )


class CameraCorrections(nn.Module):
    """The per-slot tables (module doc) and their optimiser.

    Args:
        pose: learn a pose correction per keyframe.
        appearance_dim: width of the appearance embedding (0: none).
    """

    def __init__(self, pose: bool, appearance_dim: int) -> None:
        super().__init__()
        if appearance_dim < 0:
            raise ValueError(f"appearance_dim must be >= 0, got {appearance_dim}")
        self.widths: Dict[str, int] = {}
        if pose:
            self.widths["pose"] = 6
        if appearance_dim > 0:
            self.widths["appearance"] = int(appearance_dim)
        self.tables = nn.ParameterDict({k: nn.Parameter(torch.zeros(0, w)) for k, w in self.widths.items()})
        for k, w in self.widths.items():
            self.register_buffer(f"{k}_m", torch.zeros(0, w))
            self.register_buffer(f"{k}_v", torch.zeros(0, w))
            self.register_buffer(f"{k}_t", torch.zeros(0, dtype=torch.int64))

    # ------------------------------------------------------------------ shape
    @property
    def has_pose(self) -> bool:
        return "pose" in self.widths

    @property
    def appearance_dim(self) -> int:
        return self.widths.get("appearance", 0)

    @property
    def num_rows(self) -> int:
        return int(next(iter(self.tables.values())).shape[0]) if self.tables else 0

    def _state(self, name: str) -> Tuple[nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tables[name], getattr(self, f"{name}_m"), getattr(self, f"{name}_v"), getattr(self, f"{name}_t")

    def resize(self, n: int) -> None:
        """Make room for slots [0, n) (rows only grow; new rows are neutral)."""
        if n <= self.num_rows or not self.tables:
            return
        n = int(math.ceil(n / _ROW_GROWTH) * _ROW_GROWTH)
        with torch.no_grad():
            for name in self.widths:
                p, m, v, t = self._state(name)
                extra = n - p.shape[0]
                p.data = torch.cat([p.data, p.data.new_zeros(extra, p.shape[1])])
                p.grad = None
                setattr(self, f"{name}_m", torch.cat([m, m.new_zeros(extra, m.shape[1])]))
                setattr(self, f"{name}_v", torch.cat([v, v.new_zeros(extra, v.shape[1])]))
                setattr(self, f"{name}_t", torch.cat([t, t.new_zeros(extra)]))

    def reset_rows(self, rows: Iterable[int], names: Optional[Iterable[str]] = None) -> None:
        """Reset rows to neutral: value, Adam moments and step count (``names``: only these tables)."""
        idx = torch.as_tensor(list(rows), dtype=torch.int64)
        if idx.numel() == 0:
            return
        with torch.no_grad():
            for name in self.widths if names is None else [n for n in names if n in self.widths]:
                for tensor in self._state(name):
                    tensor.data[idx.to(tensor.device)] = 0

    # ------------------------------------------------------------------ use in training
    def correct_rays(
        self, origins: torch.Tensor, dirs: torch.Tensor, slot: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rays of corrected cameras. origins (R, 3) (each ray's camera centre), unit dirs (R, 3),
        slot (R,) int64 -> corrected (origins, dirs) (differentiable in the pose table)."""
        if not self.has_pose:
            return origins, dirs
        if slot.shape != origins.shape[:1] or origins.shape != dirs.shape:
            raise ValueError(
                f"origins, dirs (R, 3) and slot (R,) must match: {tuple(origins.shape)}, "
                f"{tuple(dirs.shape)}, {tuple(slot.shape)}"
            )
        pose = self.tables["pose"]
        rot = so3_exp(pose[:, :3])  # (S, 3, 3): one per slot, gathered per ray
        new_dirs = torch.einsum("rij,rj->ri", rot[slot], dirs.float())
        return origins.float() + pose[slot, 3:], new_dirs

    def appearance_at(self, slot: torch.Tensor) -> Optional[torch.Tensor]:
        """(R, appearance_dim) embeddings of the rays' keyframes, or None without an embedding."""
        if self.appearance_dim == 0:
            return None
        return self.tables["appearance"][slot]

    def regularization(self, live: torch.Tensor) -> torch.Tensor:
        """Mean over the live slots of the squared pose correction (rad^2 + m^2); 0 without poses."""
        if not self.has_pose or live.numel() == 0:
            return torch.zeros((), device=live.device)
        return self.tables["pose"][live].square().sum(-1).mean()

    @torch.no_grad()
    def adam_step(self, lrs: Dict[str, float], grad_scale: float = 1.0) -> bool:
        """One sparse Adam step of each table with its learning rate (``lrs[name]``; 0 or missing:
        the table does not move). Gradients are divided by ``grad_scale`` (mixed precision); returns
        False (nothing moved) when one is not finite."""
        grads = {}
        for name in self.widths:
            g = self.tables[name].grad
            if g is not None and lrs.get(name, 0.0) > 0:
                grads[name] = g / grad_scale
        if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            return False
        b1, b2 = _BETAS
        for name, g in grads.items():
            p, m, v, t = self._state(name)
            rows = g.abs().sum(-1) > 0
            t[rows] += 1
            m[rows] = b1 * m[rows] + (1 - b1) * g[rows]
            v[rows] = b2 * v[rows] + (1 - b2) * g[rows].square()
            tr = t[rows].double()
            c1 = (1 - b1**tr).float()[:, None]
            c2 = (1 - b2**tr).float()[:, None]
            p.data[rows] -= lrs[name] * (m[rows] / c1) / ((v[rows] / c2).sqrt() + _EPS)
        return True

    def zero_grad(self) -> None:
        for p in self.tables.values():
            p.grad = None

    @torch.no_grad()
    def recentre(self, live: torch.Tensor) -> None:
        """Subtract the live slots' mean row from them (the gauge anchor of the module doc)."""
        if live.numel() == 0:
            return
        for p in self.tables.values():
            p.data[live] -= p.data[live].mean(dim=0, keepdim=True)

    # ------------------------------------------------------------------ reading
    def corrected_c2w(self, c2w: np.ndarray, slots: List[int]) -> np.ndarray:
        """Corrected camera-to-world poses. c2w (N, 4, 4) input poses, slots N ints -> (N, 4, 4) float64."""
        c2w = np.array(c2w, dtype=np.float64, copy=True).reshape(-1, 4, 4)
        if not self.has_pose or len(slots) == 0:
            return c2w
        pose = self.tables["pose"].detach()[
            torch.as_tensor(slots, dtype=torch.int64, device=self.tables["pose"].device)
        ]
        rot = so3_exp(pose[:, :3].double()).cpu().numpy()
        c2w[:, :3, :3] = rot @ c2w[:, :3, :3]
        c2w[:, :3, 3] += pose[:, 3:].double().cpu().numpy()
        return c2w

    def pose_stats(self, live: torch.Tensor) -> Dict[str, float]:
        """Mean and max of the live slots' corrections: 'translation_mean_m', 'translation_max_m',
        'rotation_mean_deg', 'rotation_max_deg' (all 0 without pose refinement or keyframes)."""
        keys = ("translation_mean_m", "translation_max_m", "rotation_mean_deg", "rotation_max_deg")
        if not self.has_pose or live.numel() == 0:
            return dict.fromkeys(keys, 0.0)
        pose = self.tables["pose"].detach()[live].double()
        rot = pose[:, :3].norm(dim=-1) * (180.0 / math.pi)  # |w| is the rotation angle (< 180 degrees)
        tr = pose[:, 3:].norm(dim=-1)
        return dict(zip(keys, (float(tr.mean()), float(tr.max()), float(rot.mean()), float(rot.max()))))

    # ------------------------------------------------------------------ checkpoints
    def row_state(self, slot: int) -> Dict[str, torch.Tensor]:
        """Everything row ``slot`` holds (value, moments, step count per table), copies on the CPU."""
        out = {}
        for name in self.widths:
            for suffix, tensor in zip(("", "_m", "_v", "_t"), self._state(name)):
                out[name + suffix] = tensor.detach()[slot].to("cpu", copy=True)
        return out

    def set_row_state(self, slot: int, state: Dict[str, torch.Tensor], names: Optional[Iterable[str]] = None) -> None:
        """Restore row ``slot`` from ``row_state`` output (tables missing from ``state`` or not in
        ``names`` are left as they are; a table of another width is skipped)."""
        with torch.no_grad():
            for name in self.widths if names is None else [n for n in names if n in self.widths]:
                parts = self._state(name)
                items = [state.get(name + suffix) for suffix in ("", "_m", "_v", "_t")]
                if any(x is None for x in items) or items[0].shape != parts[0].shape[1:]:
                    continue
                for tensor, value in zip(parts, items):
                    tensor.data[slot] = value.to(tensor.device, tensor.dtype)
