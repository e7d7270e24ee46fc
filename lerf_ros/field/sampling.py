"""Rays and samples along them: camera rays, scene contraction, the spacing, and samplers.

Distances along rays are measured in *scene units*: world metres divided by the model's
``scene_scale`` (positions are also shifted by ``scene_center``). Samples are placed in a
normalised "spacing" coordinate ``s = g(t)`` that is linear near the scene and uniform in
inverse distance far away:

    g(t) = t / 2            for t < 1
    g(t) = 1 - 1 / (2 t)    for t >= 1

so half of the samples of a uniform draw in ``s`` fall within one scene unit of the camera and
the rest cover the unbounded remainder (mip-NeRF 360's piecewise linear/disparity spacing).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np
import torch

from lerf_ros.geometry.camera import Distortion, effective_distortion, pixel_directions


def camera_rays(
    K: torch.Tensor,
    c2w: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    d_cam: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World-frame rays through continuous pixel coordinates (pixel centres at i + 0.5).

    Args:
        K: (R, 3, 3) or (3, 3) intrinsics.
        c2w: (R, 4, 4) or (4, 4) camera-to-world, OpenCV camera convention.
        u, v: (R,) continuous pixel coordinates.
        d_cam: optional (R, 3) unit camera-frame directions to use instead of the pinhole ones
            (a distorted camera's undistorted pixel rays, from :func:`pixel_direction_table`); ``K``,
            ``u`` and ``v`` are then not read.
    Returns:
        origins (R, 3), unit directions (R, 3), and ``dir_z`` (R,): the camera-z component of the
        unit direction, so that z-depth = ray distance * dir_z.
    """
    n = u.shape[0]
    if c2w.ndim == 2:
        c2w = c2w.expand(n, 4, 4)
    if d_cam is None:
        d_cam = pinhole_directions(K, u, v)
    elif d_cam.shape != (n, 3):
        raise ValueError(f"d_cam must be ({n}, 3), got {tuple(d_cam.shape)}")
    dirs = torch.einsum("rij,rj->ri", c2w[:, :3, :3], d_cam)
    return c2w[:, :3, 3].clone(), dirs, d_cam[:, 2]


def pinhole_directions(K: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unit camera-frame directions ``K^-1 [u, v, 1]`` normalised (skew honoured).
    K (R, 3, 3) or (3, 3), u, v (R,) continuous pixel coordinates -> (R, 3)."""
    if K.ndim == 2:
        K = K.expand(u.shape[0], 3, 3)
    x = (u - K[:, 0, 2] - K[:, 0, 1] * (v - K[:, 1, 2]) / K[:, 1, 1]) / K[:, 0, 0]
    y = (v - K[:, 1, 2]) / K[:, 1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    return d_cam * torch.rsqrt((d_cam * d_cam).sum(-1))[:, None]


@functools.lru_cache(maxsize=8)
def _device_table(K: Tuple[float, ...], width: int, height: int, distortion: Distortion, device: str) -> torch.Tensor:
    table = pixel_directions(np.asarray(K).reshape(3, 3), width, height, distortion)
    return torch.as_tensor(np.array(table), dtype=torch.float32, device=torch.device(device))


def pixel_direction_table(
    K: np.ndarray, width: int, height: int, distortion: Optional[Distortion], device: torch.device
) -> Optional[torch.Tensor]:
    """(H*W, 3) unit camera-frame directions of every pixel centre (row-major) of a distorted
    camera on ``device``, computed once per camera and device and cached; None for a pinhole
    camera (no distortion or all-zero coefficients), whose rays need no table."""
    d = effective_distortion(distortion)
    if d is None:
        return None
    key = tuple(float(k) for k in np.asarray(K, dtype=np.float64).reshape(-1))
    return _device_table(key, int(width), int(height), d, str(torch.device(device)))


def image_rays(
    K: np.ndarray,
    c2w: np.ndarray,
    height: int,
    width: int,
    device: torch.device,
    distortion: Optional[Distortion] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre of an image, row-major. Returns (H*W, 3), (H*W, 3), (H*W,).
    With a ``distortion`` the rays are those of the raw (distorted) image: each pixel's undistorted
    direction, cached per camera."""
    K_t = torch.as_tensor(np.asarray(K), dtype=torch.float32, device=device)
    c2w_t = torch.as_tensor(np.asarray(c2w), dtype=torch.float32, device=device)
    table = pixel_direction_table(K, width, height, distortion, device)
    if table is not None:
        empty = torch.empty(height * width, device=device)
        return camera_rays(K_t, c2w_t, empty, empty, d_cam=table)
    vv, uu = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return camera_rays(K_t, c2w_t, uu.reshape(-1), vv.reshape(-1))


def contract(x: torch.Tensor) -> torch.Tensor:
    """Scene contraction (L-infinity norm, as nerfacto): identity inside the unit cube, the
    rest of space squeezed into the cube of half-size 2. (N, 3) -> (N, 3) in [-2, 2]."""
    mag = x.abs().amax(dim=-1, keepdim=True)
    safe = mag.clamp_min(1.0)
    return torch.where(mag <= 1.0, x, (2.0 - 1.0 / safe) * (x / safe))


def contract_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Contract and map [-2, 2]^3 to [0, 1]^3 (the hash grids' input domain)."""
    return (contract(x) + 2.0) * 0.25


def spacing(t: torch.Tensor) -> torch.Tensor:
    """Distance (scene units) -> normalised spacing coordinate in [0, 1)."""
    return torch.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / t.clamp_min(1e-6))


def spacing_inv(s: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`spacing`."""
    return torch.where(s < 0.5, 2.0 * s, 0.5 / (1.0 - s).clamp_min(1e-7))


def uniform_edges(
    near: torch.Tensor, far: torch.Tensor, num_samples: int, jitter: Optional[torch.Tensor]
) -> torch.Tensor:
    """Evenly spaced bin edges in spacing coordinates between near and far (scene units).

    Args:
        near, far: (R,) distances.
        num_samples: S intervals.
        jitter: (R, 1) uniform [0, 1) offsets (one per ray: all intervals shift together inside
            their bins), or None for the deterministic midpoint layout.
    Returns:
        (R, S + 1) edges in spacing coordinates.
    """
    s_near, s_far = spacing(near)[:, None], spacing(far)[:, None]
    steps = torch.linspace(0.0, 1.0, num_samples + 1, device=near.device, dtype=near.dtype)
    if jitter is not None:
        # Shift the inner edges within [-half, +half) a bin; the end points stay put.
        offset = (jitter - 0.5) / num_samples
        inner = (steps[1:-1] + offset).clamp(0.0, 1.0)
        steps = torch.cat([steps[:1].expand(near.shape[0], 1), inner, steps[-1:].expand(near.shape[0], 1)], dim=1)
    return s_near + (s_far - s_near) * steps


def pdf_edges(
    edges: torch.Tensor, weights: torch.Tensor, num_samples: int, jitter: Optional[torch.Tensor], padding: float = 0.01
) -> torch.Tensor:
    """Inverse-transform sampling of new bin edges from a piecewise-constant histogram.

    Args:
        edges: (R, P + 1) histogram edges (spacing coordinates).
        weights: (R, P) histogram weights (need not be normalised; detached inside).
        num_samples: S new intervals (S + 1 edges are drawn).
        jitter: (R, 1) uniform [0, 1) stratification offset (one per ray), or None (midpoints).
        padding: added to every weight so that no region gets zero probability.
    Returns:
        (R, S + 1) sorted edges within [edges[:, 0], edges[:, -1]].
    """
    w = weights.detach() + padding
    pdf = w / w.sum(dim=1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=1)], dim=1).clamp(max=1.0)
    cdf[:, -1] = 1.0
    n = num_samples + 1
    u = torch.arange(n, device=edges.device, dtype=edges.dtype) / n  # stratified in [0, 1)
    if jitter is None:
        u = (u + 0.5 / n).expand(edges.shape[0], n)
    else:
        u = u + jitter / n
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, cdf.shape[1] - 1)
    hi = idx.clamp(0, cdf.shape[1] - 1)
    c0, c1 = torch.gather(cdf, 1, lo), torch.gather(cdf, 1, hi)
    e0, e1 = torch.gather(edges, 1, lo), torch.gather(edges, 1, hi)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-8)).clamp(0.0, 1.0)
    out = e0 + frac * (e1 - e0)
    return out.detach()


def sample_points(origins: torch.Tensor, dirs: torch.Tensor, t_edges: torch.Tensor) -> torch.Tensor:
    """Interval midpoints in space. origins, dirs (R, 3), t_edges (R, S + 1) -> (R, S, 3)."""
    mids = 0.5 * (t_edges[:, 1:] + t_edges[:, :-1])
    return origins[:, None, :] + dirs[:, None, :] * mids[..., None]


def anneal_weights(weights: torch.Tensor, step: int, anneal_steps: int, slope: float = 10.0) -> torch.Tensor:
    """Proposal-weight annealing: ``w^a`` with ``a`` rising from 0 (uniform) to 1 over
    ``anneal_steps`` along ``a = slope*f / ((slope-1)*f + 1)``, ``f`` the fraction done."""
    if anneal_steps <= 0:
        return weights
    f = min(max(step / anneal_steps, 0.0), 1.0)
    a = slope * f / ((slope - 1.0) * f + 1.0)
    if a >= 1.0:
        return weights
    return weights.clamp_min(0.0).pow(a)
