"""Pixel, depth and voxel kernels of change detection (``lerf_ros.mapping.changes``), ROS-free.

Each works on numpy arrays of one frame or keyframe and is vectorised: exposure gains, the
neighbourhood residual between a frame and a render, a robust threshold, back-projection and
projection through a lens, connected pixel regions, voxel codes and clusters, the pixels of a
keyframe that see a changed region, and the point-sampled view of a frame that a low-resolution
render matches.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.geometry.camera import (
    Distortion,
    denormalise,
    effective_distortion,
    normalise,
    pixel_directions,
    project_distorted,
)

__all__ = [
    "MAD_TO_SIGMA",
    "VOXEL_NEIGHBOURS",
    "as_numpy",
    "backproject",
    "connected_regions",
    "gain_normalise",
    "in_view",
    "nearest_depth3",
    "neighbourhood_residual",
    "point_sampled",
    "project_pixels",
    "region_mask",
    "resample_mask",
    "robust_threshold",
    "shifted_copies",
    "voxel_clusters",
    "voxel_codes",
]

MAD_TO_SIGMA = 1.4826
"""Scale of the median absolute deviation to a normal distribution's standard deviation."""


def gain_normalise(obs: np.ndarray, ren: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel gains ``g`` (3,) with ``obs ~ g * ren`` over ``mask``: the median of the ratios
    over pixels whose rendered channel is not dark, clamped to [0.5, 2]. obs, ren (H, W, 3) in
    [0, 1]; mask (H, W) bool."""
    assert obs.shape == ren.shape and obs.shape[-1] == 3 and mask.shape == obs.shape[:2]
    g = np.ones(3, np.float32)
    for c in range(3):
        r = ren[..., c][mask]
        o = obs[..., c][mask]
        ok = r > 0.05
        if np.count_nonzero(ok) >= 8:
            g[c] = float(np.clip(np.median(o[ok] / r[ok]), 0.5, 2.0))
    return g


def shifted_copies(a: np.ndarray, radius: int, fill: Optional[Any] = None) -> np.ndarray:
    """(S, H, W, ...) copies of ``a`` (H, W, ...) shifted by every offset in [-radius, radius]^2
    (edges replicated, or ``fill`` beyond the edges when given)."""
    H, W = a.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, pad, mode="edge") if fill is None else np.pad(a, pad, mode="constant", constant_values=fill)
    return np.stack([p[dy : dy + H, dx : dx + W] for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)])


def neighbourhood_residual(
    obs: np.ndarray, ren: np.ndarray, obs_depth: Optional[np.ndarray], ren_depth: np.ndarray, radius: int = 1
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Per pixel, how far the frame and the render disagree beyond a shift of ``radius`` pixels.

    Both ways: a frame pixel against the render's pixels within ``radius``, and a render pixel
    against the frame's; the larger of the two smallest differences counts. So a pose error of up to
    ``radius`` pixels costs nothing, while a vanished object shows on all of its rendered pixels
    (none of the frame's pixels near them looks like it) and a new one on all of its frame pixels.

    obs, ren: (H, W, 3) colours; obs_depth (H, W) metres (0 = none) or None; ren_depth (H, W).
    Returns (colour residual (H, W), mean absolute channel difference; depth residual (H, W)
    in metres, or None without depth).
    """
    assert obs.shape == ren.shape and ren_depth.shape == obs.shape[:2]
    col = np.maximum(
        np.abs(shifted_copies(ren, radius) - obs[None]).mean(-1).min(0),
        np.abs(shifted_copies(obs, radius) - ren[None]).mean(-1).min(0),
    )
    if obs_depth is None:
        return col, None
    dep = np.maximum(
        np.abs(shifted_copies(ren_depth, radius) - obs_depth[None]).min(0),
        np.abs(shifted_copies(obs_depth, radius) - ren_depth[None]).min(0),
    )
    return col, dep


def robust_threshold(values: np.ndarray, kappa: float, floor: float) -> Tuple[float, float]:
    """(threshold, median) of 1-D ``values``: max(floor, median + kappa * 1.4826 * MAD)."""
    if values.size == 0:
        return float("inf"), float("nan")
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return max(float(floor), med + kappa * MAD_TO_SIGMA * mad), med


def backproject(
    depth: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    v: np.ndarray,
    u: np.ndarray,
    distortion: Optional[Distortion] = None,
) -> np.ndarray:
    """World points (N, 3) of pixels (v, u) (row, column index arrays) at z-depth ``depth[v, u]``
    of a camera K (3, 3), c2w (4, 4) (OpenCV convention, pixel centres at +0.5), through its lens
    ``distortion`` (None: a pinhole)."""
    z = depth[v, u].astype(np.float64)
    d = effective_distortion(distortion)
    if d is None:
        x = (u + 0.5 - K[0, 2]) / K[0, 0] * z
        y = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    else:
        x, y = d.undistort(*normalise(K, u + 0.5, v + 0.5))
        x, y = x * z, y * z
    cam = np.stack([x, y, z], 1)
    return cam @ np.asarray(c2w)[:3, :3].T + np.asarray(c2w)[:3, 3]


def connected_regions(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` (H, W) bool with the 8-connected regions smaller than ``min_pixels`` removed.

    Regions are labelled by propagating the largest pixel index through each region (a 3x3 maximum
    restricted to the mask, repeated until nothing changes: vectorised, at most H * W rounds, in
    practice about the longest region's extent)."""
    if min_pixels <= 1 or not mask.any():
        return mask
    H, W = mask.shape
    labels = np.where(mask, np.arange(1, H * W + 1).reshape(H, W), 0)
    for _ in range(H * W):
        grown = np.where(mask, shifted_copies(labels, 1).max(0), 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    sizes = np.bincount(labels.ravel(), minlength=H * W + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def voxel_codes(points: np.ndarray, size: float) -> np.ndarray:
    """(N,) int64 code of the ``size``-metre voxel holding each of the (N, 3) points (coordinates
    within +-2^20 voxels of the origin)."""
    k = np.floor(np.asarray(points, np.float64) / size).astype(np.int64) + (1 << 20)
    k = np.clip(k, 0, (1 << 21) - 1)
    return (k[:, 0] << 42) | (k[:, 1] << 21) | k[:, 2]


def voxel_clusters(points: np.ndarray, size: float) -> np.ndarray:
    """(N,) cluster label of each of the (N, 3) points: points whose ``size``-metre voxels touch (26
    neighbours) belong to one cluster. Labels propagate along touching voxels (vectorised, at most as
    many rounds as the longest chain of voxels)."""
    if len(points) == 0:
        return np.zeros(0, np.int64)
    uniq, inv = np.unique(voxel_codes(points, size), return_inverse=True)
    m = len(uniq)
    nb = uniq[:, None] + VOXEL_NEIGHBOURS[None]
    pos = np.clip(np.searchsorted(uniq, nb), 0, m - 1)
    nbr = np.where(uniq[pos] == nb, pos, np.arange(m)[:, None])
    lab = np.arange(m)
    for _ in range(m):
        new = lab[nbr].min(1)
        if np.array_equal(new, lab):
            break
        lab = new
    return lab[inv.reshape(-1)]


VOXEL_NEIGHBOURS = np.array(
    [(dx << 42) + (dy << 21) + dz for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)], np.int64
)
"""Code offsets of a voxel's 27 neighbours (itself included) in ``voxel_codes``."""


def in_view(points: np.ndarray, K: np.ndarray, c2w: np.ndarray, height: int, width: int, distortion) -> np.ndarray:
    """(N,) bool: the world points lie in front of a distorted camera within the widest angle of its
    pixels' rays (so a lens polynomial evaluated far outside the image cannot fold them back in)."""
    cam = (np.asarray(points, np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
    dirs = pixel_directions(K, width, height, distortion)
    limit = float(np.max(np.hypot(dirs[:, 0], dirs[:, 1]) / np.maximum(dirs[:, 2], 1e-6)))
    z = cam[:, 2]
    return (z > 1e-6) & (np.hypot(cam[:, 0], cam[:, 1]) <= 1.05 * limit * np.maximum(z, 1e-6))


def project_pixels(
    points: np.ndarray, K: np.ndarray, c2w: np.ndarray, height: int, width: int, distortion: Optional[Distortion] = None
):
    """Pixel rows/columns (N,) int, depth (N,) and in-image mask (N,) of world points in a camera
    (through its lens distortion, if any)."""
    distortion = effective_distortion(distortion)
    u, v, z = project_distorted(points, K, c2w, distortion)
    ok = (z > 1e-6) & np.isfinite(u) & np.isfinite(v) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    if distortion is not None:
        ok &= in_view(points, K, c2w, height, width, distortion)
    u, v = np.nan_to_num(u), np.nan_to_num(v)
    ui = np.clip(np.floor(u), 0, width - 1).astype(np.int64)
    vi = np.clip(np.floor(v), 0, height - 1).astype(np.int64)
    return vi, ui, z, ok


def nearest_depth3(depth: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(N,) the nearest valid depth (> 0) among the 3x3 pixels round each (v, u) of ``depth`` (H, W)
    (edges replicated); 0 where none is valid."""
    H, W = depth.shape
    d = np.asarray(depth, np.float32)
    out = np.full(len(v), np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x = d[np.clip(v + dy, 0, H - 1), np.clip(u + dx, 0, W - 1)]
            out = np.minimum(out, np.where(x > 0, x, np.float32(np.inf)))
    return np.where(np.isfinite(out), out, np.float32(0.0))


_REGION_CHUNK = 256  # points per step of ``region_mask`` (bounds its memory)


def region_mask(points: np.ndarray, kf: Any, radius: float) -> np.ndarray:
    """(H, W) bool: the pixels of keyframe ``kf`` (``K``, ``c2w``, ``rgb`` (H, W, 3), optional
    ``distortion``) whose rays pass within ``radius`` metres of one of the (N, 3) changed ``points``
    (a disc of that radius round each point, across the ray), and the pixel each point falls in: the
    keyframe's view of the changed region, which its retirement removes from training. The points
    are projected through the keyframe's lens distortion and its pixels' rays are the distorted
    camera's (``pixel_directions``), so the mask is right for a distorted camera too. Vectorised over
    the points in chunks of ``_REGION_CHUNK`` (a window of the largest disc, at most 35 x 35 pixels,
    only its pixels within the disc tested), points in one pixel at nearly one place taken once, and
    a pinhole window's rays computed from ``K``: memory stays bounded (about 40 MB for 4096 points
    in a 640 x 480 keyframe)."""
    H, W = int(kf.rgb.shape[0]), int(kf.rgb.shape[1])
    K, c2w = np.asarray(kf.K, float), np.asarray(kf.c2w, float)
    dist = effective_distortion(getattr(kf, "distortion", None))
    mask = np.zeros((H, W), bool)
    pts = np.asarray(points, float).reshape(-1, 3)
    cam = (pts - c2w[:3, 3]) @ c2w[:3, :3]
    front = cam[:, 2] > 1e-3
    if dist is not None:
        front &= in_view(pts, K, c2w, H, W, dist)
    pts, cam = pts[front], cam[front]
    if len(cam) == 0:
        return mask
    u, v, z = project_distorted(pts, K, c2w, dist)
    # the disc's radius in pixels: how far the points move in the image when shifted by ``radius``
    # across the line of sight (the lens's local magnification included)
    r = np.zeros(len(cam))
    for axis in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):
        off = (cam + radius * np.asarray(axis)) @ c2w[:3, :3].T + c2w[:3, 3]
        uo, vo, _ = project_distorted(off, K, c2w, dist)
        r = np.maximum(r, np.hypot(uo - u, vo - v))
    ok = np.isfinite(r) & (u > -r) & (u < W + r) & (v > -r) & (v < H + r)
    u, v, r, cam = u[ok], v[ok], np.minimum(r[ok], 16.0), cam[ok]
    if len(u) == 0:
        return mask
    # one point per pixel and near-identical position (points closer than 1 % of the radius give the
    # same disc): a change's points crowd a few keyframe pixels
    cell = np.floor(cam / (0.01 * radius)).astype(np.int64)
    _, first = np.unique(
        np.column_stack([np.floor(u).astype(np.int64), np.floor(v).astype(np.int64), cell]), axis=0, return_index=True
    )
    u, v, r, cam = u[first], v[first], r[first], cam[first]
    R = int(np.ceil(r.max())) + 1
    d = np.arange(-R, R + 1, dtype=np.float64)
    dv, du = (a.ravel() for a in np.meshgrid(d, d, indexing="ij"))
    dirs = None if dist is None else pixel_directions(K, W, H, dist)  # cached per camera
    for s in range(0, len(u), _REGION_CHUNK):
        uc, vc, rc, cc = (
            u[s : s + _REGION_CHUNK],
            v[s : s + _REGION_CHUNK],
            r[s : s + _REGION_CHUNK],
            cam[s : s + _REGION_CHUNK],
        )
        fu, fv = np.floor(uc), np.floor(vc)
        pu = fu[:, None] + du[None]  # (n, (2R+1)^2) pixel columns
        pv = fv[:, None] + dv[None]
        near = (pu + 0.5 - uc[:, None]) ** 2 + (pv + 0.5 - vc[:, None]) ** 2 <= (rc + 1.0)[:, None] ** 2
        near &= (pu >= 0) & (pu < W) & (pv >= 0) & (pv < H)
        n_idx, m_idx = np.nonzero(near)
        px, py = pu[n_idx, m_idx], pv[n_idx, m_idx]
        if dirs is None:  # pinhole: the window's rays straight from K
            x, y = normalise(K, px + 0.5, py + 0.5)
            ray = np.stack([x, y, np.ones_like(x)], axis=-1)
            ray = (ray / np.linalg.norm(ray, axis=-1, keepdims=True)).astype(np.float32)
        else:
            ray = dirs[(py * W + px).astype(np.int64)]
        ray = ray.astype(np.float64)
        p = cc[n_idx]
        along = np.einsum("mk,mk->m", ray, p)
        across = np.linalg.norm(p - along[:, None] * ray, axis=-1)
        hit = (across <= radius) & (along > 0)
        hit |= (px == fu[n_idx]) & (py == fv[n_idx])  # the pixel each point falls in
        mask[py[hit].astype(np.int64), px[hit].astype(np.int64)] = True
    return mask


def point_sampled(
    frame: Frame, max_side: int
) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, int, int, np.ndarray]:
    """Every s-th pixel of the frame (s the smallest integer stride giving at most ``max_side`` pixels
    on the longest side, the pixel in the middle of each s x s cell) and the intrinsics of a camera
    whose pixel centres are exactly those pixels' centres: a render with it samples the same rays,
    so a textured surface aliases alike in both. A frame with lens distortion is resampled onto that
    pinhole camera: each of its pixels takes the frame's pixel its ray falls in through the lens
    (nearest; z-depth is the same along a ray), so the pinhole render and the frame see the same
    rays. Returns (rgb (h, w, 3) float32 in [0, 1], depth (h, w) float32 (0 = none) or None, K (3, 3),
    h, w, valid (h, w) bool: False where a pinhole pixel's ray falls outside the distorted frame)."""
    H, W = frame.height, frame.width
    st = max(1, -(-max(H, W) // int(max_side)))
    off = st // 2
    h, w = (H - off + st - 1) // st, (W - off + st - 1) // st
    K = np.array(frame.K, np.float64)
    # small pixel i's centre (i + 0.5) is full pixel (st * i + off)'s centre
    K[0, 0], K[1, 1], K[0, 1] = K[0, 0] / st, K[1, 1] / st, K[0, 1] / st
    K[0, 2] = (K[0, 2] - off - 0.5) / st + 0.5
    K[1, 2] = (K[1, 2] - off - 0.5) / st + 0.5
    dist = effective_distortion(frame.distortion)
    if dist is None:
        rows, cols = np.arange(off, H, st)[:h, None], np.arange(off, W, st)[None, :w]
        valid = np.ones((h, w), bool)
    else:
        vv, uu = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        ud, vd = denormalise(frame.K, *dist.distort(*normalise(K, uu, vv)))
        valid = np.isfinite(ud) & np.isfinite(vd) & (ud >= 0) & (ud < W) & (vd >= 0) & (vd < H)
        cols = np.clip(np.floor(np.nan_to_num(ud)), 0, W - 1).astype(np.int64)
        rows = np.clip(np.floor(np.nan_to_num(vd)), 0, H - 1).astype(np.int64)
    rgb = np.asarray(frame.rgb)[rows, cols].astype(np.float32) / 255.0
    depth = None
    if frame.depth is not None:
        d = np.asarray(frame.depth, np.float32)[rows, cols]
        depth = np.where(np.isfinite(d) & (d > 0) & valid, d, np.float32(0.0))
    return rgb, depth, K, h, w, valid


def resample_mask(
    mask: np.ndarray,
    K_small: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    distortion: Optional[Distortion] = None,
    grow: int = 1,
) -> np.ndarray:
    """(height, width) bool: ``mask`` (h, w) of the comparison's pinhole camera ``K_small``
    (``point_sampled``) carried onto an image of the same pose with intrinsics ``K`` (3, 3) and lens
    ``distortion``: each pixel takes the comparison pixel its ray falls in (nearest), after ``mask``
    is grown by ``grow`` pixels (the comparison forgives a pixel of shift; an object a pixel or two
    wide keeps its edges). Pixels whose ray falls outside the comparison are False. Vectorised over
    the image's pixels."""
    m = np.asarray(mask, bool)
    if grow > 0 and m.any():
        m = shifted_copies(m, grow, fill=False).any(0)
    h, w = m.shape
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    x, y = normalise(K, u, v)
    dist = effective_distortion(distortion)
    if dist is not None:
        x, y = dist.undistort(x, y)
    us, vs = denormalise(K_small, x, y)
    ok = np.isfinite(us) & np.isfinite(vs) & (us >= 0) & (us < w) & (vs >= 0) & (vs < h)
    ui = np.clip(np.floor(np.nan_to_num(us)), 0, w - 1).astype(np.int64)
    vi = np.clip(np.floor(np.nan_to_num(vs)), 0, h - 1).astype(np.int64)
    return ok & m[vi, ui]


def as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        return (x if x.device.type == "cpu" else x.cpu()).numpy()
    return np.asarray(x)
