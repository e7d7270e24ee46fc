"""Training views and ray batches.

``TrainingViews`` holds the frames the trainer learns from (images, optional depth, cameras, and
teacher features once they are computed) and draws random ray batches from them. Views can be
added and removed while another thread samples (the online trainer's keyframe store does that);
a lock makes each operation atomic.

View weighting. Frames keep arriving while the field trains, so new views should be learnt
quickly without the old ones being forgotten. View ``i`` is drawn with probability proportional to

    w_i = 1 + recency_boost * exp(-age_i / recency_tau)

where ``age_i`` counts the views added after it (the newest has age 0). Every view keeps at least
weight 1, so an old view is never starved: with V views its share is at least
``1 / (V + recency_boost * recency_tau')`` (``tau'`` ~ ``recency_tau`` for V >> tau); the newest
view gets up to ``1 + recency_boost`` times the share of an old one. ``recency_boost = 0`` gives
uniform sampling (offline training). Within a view, pixels are drawn uniformly.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Hashable, List, Optional

import numpy as np
import torch

from lerf_ros.data.frame import Frame
from lerf_ros.field.sampling import camera_rays
from lerf_ros.field.snapshot import CameraView


@dataclass
class RayBatch:
    """A batch of R training rays (all tensors on one device).

    Attributes:
        origins: (R, 3) world metres.
        directions: (R, 3) unit, world frame.
        dir_z: (R,) camera-z component of each unit direction (z-depth = distance * dir_z).
        rgb: (R, 3) target colour in [0, 1].
        depth: (R,) target z-depth in metres (0 = none), or None when no sampled view has depth.
        view_index: (R,) index of the ray's view in the sampling order of this batch's views.
        u, v: (R,) continuous pixel coordinates (pixel centres at i + 0.5).
        fy: (R,) focal length in pixels along y.
        crop_px: (R,) side in pixels of the CLIP crop scale the ray's language target comes from.
        feature_rows: (M,) indices of the rays whose view has teacher features.
        clip: (M, clip_dim) language targets of those rays (unit rows), or None.
        dino: (M, dino_dim) DINO targets of those rays, or None.
    """

    origins: torch.Tensor
    directions: torch.Tensor
    dir_z: torch.Tensor
    rgb: torch.Tensor
    depth: Optional[torch.Tensor]
    view_index: torch.Tensor
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


@dataclass
class _View:
    key: Hashable
    rgb: torch.Tensor  # (H, W, 3) uint8
    depth: Optional[torch.Tensor]  # (H, W) float32 z-depth, 0 = none
    K: torch.Tensor  # (3, 3) float32
    c2w: torch.Tensor  # (4, 4) float32
    height: int
    width: int
    seq: int
    features: Any = None
    stamp: float = 0.0


class TrainingViews:
    """Thread-safe set of training views that yields random ray batches.

    Args:
        device: where images and depth are kept and batches are built.
        recency_boost: extra weight of the newest view (0 = uniform; see module doc).
        recency_tau: how many views the boost decays over.
    """

    def __init__(self, device: str | torch.device = "cpu", recency_boost: float = 4.0, recency_tau: float = 8.0) -> None:
        if recency_boost < 0 or recency_tau <= 0:
            raise ValueError(f"recency_boost must be >= 0 and recency_tau > 0, got {recency_boost}, {recency_tau}")
        self.device = torch.device(device)
        self.recency_boost = float(recency_boost)
        self.recency_tau = float(recency_tau)
        self._views: "OrderedDict[Hashable, _View]" = OrderedDict()
        self._lock = threading.Lock()
        self._seq = 0
        self._stack: Optional[tuple] = None  # cached (K (V,3,3), c2w (V,4,4), hw (V,), w (V,), fy (V,))

    # ------------------------------------------------------------------ contents
    def add(self, key: Hashable, frame: Frame, features: Any = None) -> None:
        """Add (or replace) a view. ``features``: teacher ``FrameFeatures`` or None (RGB/depth only
        until :meth:`set_features`). Raises FrameError for an invalid frame."""
        frame.validate()
        dev = self.device
        depth = None
        if frame.depth is not None:
            d = np.asarray(frame.depth, dtype=np.float32)
            d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
            depth = torch.from_numpy(d).to(dev)
        view = _View(key=key, rgb=torch.from_numpy(np.array(frame.rgb, dtype=np.uint8, copy=True)).to(dev), depth=depth,
                     K=torch.as_tensor(np.asarray(frame.K), dtype=torch.float32, device=dev),
                     c2w=torch.as_tensor(np.asarray(frame.c2w), dtype=torch.float32, device=dev),
                     height=frame.height, width=frame.width, seq=0, features=features, stamp=float(frame.stamp))
        with self._lock:
            self._seq += 1
            view.seq = self._seq
            self._views.pop(key, None)
            self._views[key] = view
            self._stack = None

    def remove(self, key: Hashable) -> None:
        """Remove a view; KeyError if absent."""
        with self._lock:
            if key not in self._views:
                raise KeyError(f"no training view with key {key!r}")
            del self._views[key]
            self._stack = None

    def set_features(self, key: Hashable, features: Any) -> None:
        """Attach teacher features to a view (its rays then also supervise the language field)."""
        with self._lock:
            if key not in self._views:
                raise KeyError(f"no training view with key {key!r}")
            self._views[key].features = features

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._views

    def keys(self) -> List[Hashable]:
        with self._lock:
            return list(self._views.keys())

    def has_features(self, key: Hashable) -> bool:
        with self._lock:
            return self._views[key].features is not None

    def num_with_features(self) -> int:
        with self._lock:
            return sum(1 for v in self._views.values() if v.features is not None)

    def has_depth(self) -> bool:
        with self._lock:
            return any(v.depth is not None for v in self._views.values())

    def cameras(self) -> List[CameraView]:
        """The views' cameras, oldest first."""
        with self._lock:
            return [CameraView(v.K.double().cpu().numpy(), v.c2w.double().cpu().numpy(), v.height, v.width)
                    for v in self._views.values()]

    def memory_bytes(self) -> int:
        """Bytes held by images and depth (teacher features not included)."""
        with self._lock:
            return sum(v.rgb.numel() + (v.depth.numel() * 4 if v.depth is not None else 0) for v in self._views.values())

    def view_weights(self) -> torch.Tensor:
        """(V,) sampling weights of the views, oldest first (see module doc)."""
        with self._lock:
            return self._weights(list(self._views.values()))

    def _weights(self, views: List[_View]) -> torch.Tensor:
        n = len(views)
        # OrderedDict keeps insertion order (replacement re-inserts), so age = n - 1 - position.
        age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
        return 1.0 + self.recency_boost * torch.exp(-age / self.recency_tau)

    def _stacked(self, views: List[_View]) -> tuple:
        if self._stack is None:
            K = torch.stack([v.K for v in views])
            c2w = torch.stack([v.c2w for v in views])
            hw = torch.tensor([v.height * v.width for v in views], dtype=torch.float64)
            w = torch.tensor([v.width for v in views], dtype=torch.int64)
            self._stack = (K, c2w, hw, w, self._weights(views))
        return self._stack

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> RayBatch:
        """Draw ``n`` random rays (see the module doc for the view weighting).

        Random numbers come from ``generator`` (a CPU generator), so a seeded generator gives a
        reproducible batch. Rays are grouped by view. Views without features contribute RGB (and
        depth) supervision only; ``feature_rows`` lists the rays that have language targets.
        """
        if n < 1:
            raise ValueError(f"cannot sample {n} rays")
        with self._lock:
            views = list(self._views.values())
            if not views:
                raise RuntimeError("no training views: add frames before sampling rays")
            K_all, c2w_all, hw_all, w_all, weights = self._stacked(views)
            dev = self.device
            n_views = len(views)
            vid = torch.multinomial(weights, n, replacement=True, generator=generator)
            counts = torch.bincount(vid, minlength=n_views)
            vid = torch.repeat_interleave(torch.arange(n_views), counts)  # grouped by view
            r_pix = torch.rand(n, generator=generator, dtype=torch.float64)
            r_crop = torch.rand(n, generator=generator)
            pix = torch.minimum((r_pix * hw_all[vid]).long(), hw_all[vid].long() - 1)
            width = w_all[vid]
            px, py = pix % width, torch.div(pix, width, rounding_mode="floor")
            u = px.float() + 0.5
            v = py.float() + 0.5
            vid_d = vid.to(dev)
            pix_d = pix.to(dev)
            u_d, v_d = u.to(dev), v.to(dev)
            origins, dirs, dir_z = camera_rays(K_all[vid_d], c2w_all[vid_d], u_d, v_d)

            rgb = torch.empty((n, 3), dtype=torch.uint8, device=dev)
            any_depth = any(view.depth is not None for view in views)
            depth = torch.zeros(n, dtype=torch.float32, device=dev) if any_depth else None
            crop_px = torch.zeros(n, dtype=torch.float32)
            feat_rows: List[torch.Tensor] = []
            clips: List[torch.Tensor] = []
            dinos: List[torch.Tensor] = []
            starts = torch.cumsum(counts, 0) - counts
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
                    if getattr(feats, "dino", None) is not None:
                        dinos.append(torch.as_tensor(feats.dino.lookup(u[a:b], v[a:b]), dtype=torch.float32))
                    feat_rows.append(torch.arange(a, b))
            clip = torch.cat(clips).to(dev) if clips else None
            dino = torch.cat(dinos).to(dev) if dinos and len(dinos) == len(clips) else None
            rows = torch.cat(feat_rows) if feat_rows else torch.zeros(0, dtype=torch.int64)
            return RayBatch(origins=origins, directions=dirs, dir_z=dir_z, rgb=rgb.float() / 255.0, depth=depth,
                            view_index=vid_d, u=u_d, v=v_d, fy=K_all[vid_d, 1, 1], crop_px=crop_px.to(dev),
                            feature_rows=rows.to(dev), clip=clip, dino=dino)


def estimate_scene_bounds(frames: List[Frame], margin: float = 1.05, max_points_per_frame: int = 2000,
                          percentile: float = 1.0) -> tuple:
    """Centre and half-extent (metres) of the region to map linearly (``model.scene_center`` /
    ``model.scene_scale``).

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
        d = np.asarray(f.depth, dtype=np.float64)
        v, u = np.nonzero(np.isfinite(d) & (d > 0))
        if len(u) == 0:
            continue
        has_depth = True
        step = max(1, len(u) // max_points_per_frame)
        u, v = u[::step], v[::step]
        z = d[v, u]
        K = np.asarray(f.K, dtype=np.float64)
        y = (v + 0.5 - K[1, 2]) / K[1, 1]
        x = (u + 0.5 - K[0, 2] - K[0, 1] * y) / K[0, 0]
        cam = np.stack([x * z, y * z, z], axis=1)
        c2w = np.asarray(f.c2w, dtype=np.float64)
        pts.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
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
