"""Test-time pose optimisation of held-out views against a frozen map.

A map trained from noisy, drifting poses sits in their world, and its keyframes agree with each
other only up to what refinement undid; a held-out view whose pose came from the same source (or
from the truth, moved into the map's world by a rigid alignment) looks at that map from slightly off.
As pose-refinement papers evaluate (BARF: a Procrustes alignment, then each held-out camera's pose
optimised against the frozen trained field before its PSNR is taken), ``refine_view_poses`` fits a
small SE(3) correction per view to the view's own image. The map does not change: its parameters
receive no update, and each image is used for its own pose only.

The correction is that of the training keyframes (``lerf_ros.mapping.camera_opt``): a rotation
about the camera centre ``exp(w)`` (world axes) and a translation ``t`` of the centre. All views are
optimised together: each iteration renders a random subset of every view's pixels (one batch, the
deterministic evaluation samples, the neutral appearance) and takes one Adam step of every view's
correction on the mean squared colour error, with a learning rate decaying geometrically from
``lr`` to ``lr_final``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lerf_ros.field.sampling import image_rays
from lerf_ros.mapping.camera_opt import CameraCorrections

__all__ = ["refine_view_poses"]


def refine_view_poses(
    model,
    frames: Sequence,
    iterations: int = 100,
    rays_per_view: int = 512,
    lr: float = 1e-3,
    lr_final: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Poses of ``frames`` refined against ``model`` (a ``LerfModel``, left unchanged).

    Args:
        model: the trained field; evaluated in eval mode, its parameters are not updated.
        frames: the views (``Frame``-like: ``rgb`` (H, W, 3) uint8 or float in [0, 1], ``K``,
            ``c2w`` the starting pose, optional ``distortion``); sizes may differ.
        iterations: Adam steps (0: the poses come back as they were).
        rays_per_view: pixels of each view rendered per step (drawn uniformly, with replacement).
        lr, lr_final: first and last learning rate (radians and metres per step, Adam).
        seed: seed of the pixel draws.
    Returns:
        (V, 4, 4) float64 refined camera-to-world poses, in the order of ``frames``.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("refine_view_poses: no views given")
    if iterations < 0 or rays_per_view < 1:
        raise ValueError(f"iterations must be >= 0 and rays_per_view >= 1, got {iterations}, {rays_per_view}")
    if not (lr > 0 and lr_final > 0 and np.isfinite(lr) and np.isfinite(lr_final)):
        raise ValueError(f"learning rates must be positive and finite, got {lr}, {lr_final}")
    start = np.stack([np.asarray(f.c2w, dtype=np.float64) for f in frames])
    if iterations == 0:
        return start
    device = next(model.parameters()).device
    origins, dirs, colours, counts = [], [], [], []
    for f in frames:
        rgb = np.asarray(f.rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"a view's image must be (H, W, 3), got {rgb.shape}")
        h, w = rgb.shape[:2]
        o, d, _ = image_rays(f.K, f.c2w, h, w, device, getattr(f, "distortion", None))
        c = torch.as_tensor(rgb.reshape(-1, 3), device=device).float()
        origins.append(o)
        dirs.append(d)
        colours.append(c / 255.0 if rgb.dtype == np.uint8 else c)
        counts.append(h * w)
    all_o, all_d, all_c = torch.cat(origins), torch.cat(dirs), torch.cat(colours)
    n = torch.as_tensor(counts, dtype=torch.int64, device=device)
    first = torch.cumsum(n, 0) - n
    V = len(frames)
    slot = torch.arange(V, device=device).repeat_interleave(rays_per_view)
    corr = CameraCorrections(pose=True, appearance_dim=0).to(device)
    corr.resize(V)
    table = corr.tables["pose"]
    bg_value = 1.0 if model.cfg.background_color == "white" else 0.0
    bg = torch.full((3,), bg_value, device=device)
    gen = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    model.eval()
    try:
        for it in range(iterations):
            step_lr = lr * (lr_final / lr) ** (it / max(iterations - 1, 1))
            draw = torch.rand((V, rays_per_view), generator=gen).to(device)
            idx = (first[:, None] + (draw * n[:, None]).long().clamp_max(n[:, None] - 1)).reshape(-1)
            with torch.enable_grad():
                o, d = corr.correct_rays(all_o[idx], all_d[idx], slot)
                out = model.render_rays(o, d, background=bg)
                loss = (out.rgb.float() - all_c[idx]).square().mean()
                (grad,) = torch.autograd.grad(loss, [table])
            table.grad = grad
            corr.adam_step({"pose": step_lr})
            corr.zero_grad()
    finally:
        model.train(was_training)
    return corr.corrected_c2w(start, list(range(V)))
