"""Training ray batches drawn from keyframes, and the scene bounds estimated from them (ROS-free).

``sample_rays`` is the kernel behind ``KeyframeStore.sample``: keyframes in, one ``RayBatch`` out,
vectorised over rays (the only loop runs over the keyframes a batch touches, to gather their pixels
and teacher targets).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lerf_ros.field.sampling import camera_rays, pinhole_directions
from lerf_ros.geometry.camera import backproject


@dataclass
class RayBatch:
    """A batch of R training rays (all tensors on one device).

    Attributes:
        origins: (R, 3) world metres.
        directions: (R, 3) unit, world frame.
        dir_z: (R,) camera-z component of each unit direction (z-depth = distance * dir_z).
        rgb: (R, 3) target colour in [0, 1].
        depth: (R,) target z-depth in metres (0 = none), or None when no sampled view has depth.
        view_index: (R,) index of the ray's keyframe in the sampling order of this batch's keyframes.
        slot: (R,) int64 slot of the ray's keyframe in the store (``Keyframe.slot``): the row of its
            per-keyframe learned parameters, stable while the keyframe is stored.
        u, v: (R,) continuous pixel coordinates (pixel centres at i + 0.5).
        fy: (R,) focal length in pixels along y.
        crop_px: (R,) side in pixels of the CLIP crop scale the ray's language target comes from.
        feature_rows: (M,) indices of the rays whose keyframe has teacher features.
        clip: (M, clip_dim) language targets of those rays (unit rows), or None.
        dino: (M, dino_dim) DINO targets of those rays, or None.
    """

    origins: torch.Tensor
    directions: torch.Tensor
    dir_z: torch.Tensor
    rgb: torch.Tensor
    depth: Optional[torch.Tensor]
    view_index: torch.Tensor
    slot: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    fy: torch.Tensor
    crop_px: torch.Tensor
    feature_rows: torch.Tensor
    clip: Optional[torch.Tensor] = None
    dino: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def to(self, device: torch.device) -> "RayBatch":
        kw = {}
        for f in fields(self):
            val = getattr(self, f.name)
            kw[f.name] = val.to(device, non_blocking=True) if isinstance(val, torch.Tensor) else val
        return RayBatch(**kw)


def sample_rays(
    views: Sequence[Any],
    stacked: Tuple[torch.Tensor, ...],
    n: int,
    generator: Optional[torch.Generator],
    device: torch.device,
    focus: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    n_focus: int = 0,
) -> RayBatch:
    """Draw ``n`` random rays from ``views``.

    Args:
        views: V keyframes (``rgb`` (H, W, 3) uint8 and ``depth`` (H, W) or None tensors on ``device``,
            ``features`` with ``pyramid`` and optional ``dino`` lookups, or None; ``slot``: int).
        stacked: the views' cameras stacked: K (V, 3, 3) and c2w (V, 4, 4) float32 on ``device``,
            pixel counts (V,) float64 (of the trusted pixels of a view with ``trusted``: flat pixel
            indices drawn among instead of all), widths (V,) int64, sampling weights (V,) float64, and
            optionally a sixth entry: per view the (H*W, 3) undistorted pixel directions of a
            distorted camera (``field.sampling.pixel_direction_table``) or None for a pinhole one;
            the entry itself is None (or absent) when no view is distorted.
        n: rays to draw (>= 1).
        generator: CPU generator for every random number (a seeded one gives a reproducible batch).
        focus: (view index (F,), flat pixel index (F,)) int64 CPU tensors of focus pixels (trusted
            ones), or None; ``n_focus`` (< n) of the rays are drawn uniformly among them, the others
            as without them. With no focus pixels (or ``n_focus`` 0) the batch is exactly the one
            drawn without: the same random numbers in the same order.

    Rays of distorted views go through the inverse of their lens distortion (the raw pixels are
    used as they are); pinhole views take the pinhole formula. Rays are grouped by view. Views
    without features contribute RGB (and depth) supervision only;
    ``feature_rows`` lists the rays that have language targets.
    """
    if n < 1:
        raise ValueError(f"cannot sample {n} rays")
    K_all, c2w_all, hw_all, w_all, weights = stacked[:5]
    tables = stacked[5] if len(stacked) > 5 else None
    n_views = len(views)
    if not (K_all.shape == (n_views, 3, 3) and c2w_all.shape == (n_views, 4, 4) and weights.shape == (n_views,)):
        raise ValueError(
            f"stacked cameras do not match {n_views} views: K {tuple(K_all.shape)}, "
            f"c2w {tuple(c2w_all.shape)}, weights {tuple(weights.shape)}"
        )
    dev = device
    if focus is None or len(focus[0]) == 0:
        n_focus = 0
    if not 0 <= n_focus < n:
        raise ValueError(f"cannot draw {n_focus} of {n} rays from focus pixels")
    n_rest = n - n_focus
    vid = torch.multinomial(weights, n_rest, replacement=True, generator=generator)
    counts = torch.bincount(vid, minlength=n_views)
    vid = torch.repeat_interleave(torch.arange(n_views), counts)  # grouped by view
    r_pix = torch.rand(n_rest, generator=generator, dtype=torch.float64)
    r_crop = torch.rand(n, generator=generator)
    pix = torch.minimum((r_pix * hw_all[vid]).long(), hw_all[vid].long() - 1)
    for i in torch.nonzero(counts).flatten().tolist():  # views with retired pixels: draw among the trusted
        trusted = getattr(views[i], "trusted", None)
        if trusted is not None:
            a = int(torch.sum(counts[:i]))
            pix[a : a + int(counts[i])] = trusted[pix[a : a + int(counts[i])]]
    if n_focus:  # uniformly among the focus pixels, then grouped by view again
        j = torch.randint(len(focus[0]), (n_focus,), generator=generator)
        vid, order = torch.sort(torch.cat([vid, focus[0][j]]), stable=True)
        pix = torch.cat([pix, focus[1][j]])[order]
        counts = torch.bincount(vid, minlength=n_views)
    width = w_all[vid]
    px, py = pix % width, torch.div(pix, width, rounding_mode="floor")
    u = px.float() + 0.5
    v = py.float() + 0.5
    vid_d = vid.to(dev)
    pix_d = pix.to(dev)
    u_d, v_d = u.to(dev), v.to(dev)
    starts = torch.cumsum(counts, 0) - counts
    d_cam = None
    if tables is not None:
        if len(tables) != n_views:
            raise ValueError(f"stacked direction tables do not match {n_views} views: {len(tables)}")
        d_cam = pinhole_directions(K_all[vid_d], u_d, v_d)
        for i in torch.nonzero(counts).flatten().tolist():
            if tables[i] is not None:
                a, b = int(starts[i]), int(starts[i] + counts[i])
                d_cam[a:b] = tables[i][pix_d[a:b]]
    origins, dirs, dir_z = camera_rays(K_all[vid_d], c2w_all[vid_d], u_d, v_d, d_cam=d_cam)

    rgb = torch.empty((n, 3), dtype=torch.uint8, device=dev)
    any_depth = any(view.depth is not None for view in views)
    depth = torch.zeros(n, dtype=torch.float32, device=dev) if any_depth else None
    crop_px = torch.zeros(n, dtype=torch.float32)
    feat_rows: List[torch.Tensor] = []
    clips: List[torch.Tensor] = []
    dinos: List[torch.Tensor] = []
    for i in torch.nonzero(counts).flatten().tolist():
        view = views[i]
        a, b = int(starts[i]), int(starts[i] + counts[i])
        p = pix_d[a:b]
        rgb[a:b] = view.rgb.view(-1, 3)[p]
        if view.depth is not None:
            depth[a:b] = view.depth.view(-1)[p]
        feats = view.features
        if feats is not None:
            pyr = feats.pyramid
            lo, hi = float(pyr.min_crop_px), float(pyr.max_crop_px)
            cp = lo + (hi - lo) * r_crop[a:b]
            crop_px[a:b] = cp
            clips.append(torch.as_tensor(pyr.lookup(u[a:b], v[a:b], cp), dtype=torch.float32))
            if feats.dino is not None:
                dinos.append(torch.as_tensor(feats.dino.lookup(u[a:b], v[a:b]), dtype=torch.float32))
            feat_rows.append(torch.arange(a, b))
    clip = torch.cat(clips).to(dev) if clips else None
    dino = torch.cat(dinos).to(dev) if dinos and len(dinos) == len(clips) else None
    rows = torch.cat(feat_rows) if feat_rows else torch.zeros(0, dtype=torch.int64)
    return RayBatch(
        origins=origins,
        directions=dirs,
        dir_z=dir_z,
        rgb=rgb.float() / 255.0,
        depth=depth,
        view_index=vid_d,
        slot=torch.tensor([int(view.slot) for view in views], dtype=torch.int64)[vid].to(dev),
        u=u_d,
        v=v_d,
        fy=K_all[vid_d, 1, 1],
        crop_px=crop_px.to(dev),
        feature_rows=rows.to(dev),
        clip=clip,
        dino=dino,
    )


def estimate_scene_bounds(
    frames: Sequence[Any], margin: float = 1.05, max_points_per_frame: int = 2000, percentile: float = 1.0
) -> Tuple[List[float], float]:
    """Centre and half-extent (metres) of the region the field maps linearly.

    ``frames``: anything with ``K`` (3, 3), ``c2w`` (4, 4) and ``depth`` ((H, W) metres or None):
    ``Frame`` objects or keyframes (their depth tensors are read on the CPU).

    With depth, the region is the axis-aligned box of the camera centres and the back-projected
    depth points (``percentile``..``100 - percentile`` per axis, so stray far points do not blow
    it up); without depth, the box of the camera centres grown by 50% (cameras look inwards at
    content at about their own spread). The half-extent is the largest half side times ``margin``.

    Returns:
        (center (3,) float list, scale float).
    """
    if not frames:
        raise ValueError("cannot estimate scene bounds from no frames")
    centres = np.stack([np.asarray(f.c2w, dtype=np.float64)[:3, 3] for f in frames])
    pts = [centres]
    has_depth = False
    for f in frames:
        if f.depth is None:
            continue
        d = f.depth.cpu().numpy() if isinstance(f.depth, torch.Tensor) else f.depth
        d = np.asarray(d, dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        n_valid = int(np.count_nonzero(valid))
        if n_valid == 0:
            continue
        has_depth = True
        step = max(1, n_valid // max_points_per_frame)
        pts.append(backproject(np.where(valid, d, 0.0), f.K, f.c2w)[valid][::step])
    allp = np.concatenate(pts)
    if has_depth:
        lo, hi = np.percentile(allp, percentile, axis=0), np.percentile(allp, 100.0 - percentile, axis=0)
        lo, hi = np.minimum(lo, centres.min(0)), np.maximum(hi, centres.max(0))
        half = (hi - lo).max() / 2.0
    else:
        lo, hi = centres.min(0), centres.max(0)
        half = 1.5 * (hi - lo).max() / 2.0
    center = (lo + hi) / 2.0
    scale = float(max(half * margin, 0.1))
    return [float(c) for c in center], scale
