"""Candidate 3D points to score: the surface of the current field, seen by enough keyframes.

Each keyframe camera of a snapshot (at most ``surface_max_views`` of them, evenly spread) renders
expected depth, colour and accumulation at 1/``surface_stride`` of its resolution; pixels with
enough accumulated opacity are back-projected to world points with their colour; points beyond
``surface_max_box`` scene half-extents from the scene centre (the contracted background, where the
field is coarse) are dropped when the snapshot knows its scene box. The points are
merged, voxel-downsampled (open3d), given normals (open3d, oriented towards the cameras that see
them), and visibility-filtered as the LERF paper does: a point is kept only when at least
``min_views`` of the rendered views see it (it projects inside the image, in front of the camera,
and is not occluded: the view's rendered depth at that pixel matches the point's depth within
``visibility_tolerance + visibility_tolerance_rel * depth``). When fewer views than ``min_views``
were rendered, all of them are required. Finally the count is bounded by ``max_candidate_points``:
the points seen by the most views are kept (ties broken at random, seeded by the training step so
a refresh is reproducible).

``SurfaceCache`` keeps the result per snapshot and recomputes it only when the snapshot's step has
advanced by ``refresh_every_steps`` (or went backwards: a reset trainer), not for every query; after
a scene change (the snapshot's ``scene_change_step``) also as early in training, whenever the steps
since the change have doubled, so that a moved or added object is scored on its new surface.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from lerf_ros.config import QueryConfig
from lerf_ros.field.snapshot import CameraView, FieldSnapshot
from lerf_ros.geometry.camera import backproject, project, scaled_intrinsics
from lerf_ros.query.cancel import StopFlag, check

__all__ = [
    "PRE_VISIBILITY_POINTS",
    "SurfaceError",
    "SurfacePoints",
    "SurfaceCache",
    "CHANGE_REFRESH_STEPS",
    "select_views",
    "extract_surface",
    "backproject",
    "project",
    "scaled_intrinsics",
]


#: voxel points always visibility-tested before any random thinning (more only for larger max_candidate_points)
PRE_VISIBILITY_POINTS = 200_000
#: rays per rendered strip of a view (CPU, CUDA): the unit of work between two checks of the stop flag
STRIP_RAYS = {"cpu": 4096, "cuda": 32768}


class SurfaceError(RuntimeError):
    """Surface extraction cannot run on this snapshot; the message says why."""


@dataclass(frozen=True)
class SurfacePoints:
    """Surface points of one snapshot (world frame).

    Attributes:
        xyz: (N, 3) float32 positions (m).
        rgb: (N, 3) uint8 rendered colour.
        normals: (N, 3) float32 unit normals, pointing towards the cameras that see the point.
        views: (N,) int32 number of rendered views that see the point.
        step: training step of the snapshot they were extracted from.
        stats: counts and timings of the extraction (for logs and benchmarks).
    """

    xyz: np.ndarray
    rgb: np.ndarray
    normals: np.ndarray
    views: np.ndarray
    step: int
    stats: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def select_views(cameras: List[CameraView], max_views: int) -> List[int]:
    """Indices of at most ``max_views`` cameras, evenly spread over the list (keyframe order)."""
    n = len(cameras)
    if n <= max_views:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, max_views).round().astype(int).tolist()))


def _strip_rays(snapshot: FieldSnapshot) -> int:
    return STRIP_RAYS["cuda" if torch.device(snapshot.device).type == "cuda" else "cpu"]


def _render_view(
    snapshot: FieldSnapshot, cam: CameraView, stride: int, stop: Optional[StopFlag] = None
) -> Dict[str, np.ndarray]:
    """Depth, colour and accumulation of one keyframe view at 1/``stride`` resolution.

    The view is rendered in horizontal strips of about ``STRIP_RAYS`` rays (rows a..b of a pinhole
    image are the image of the same camera with its principal point moved up by a rows), checking
    ``stop`` between strips."""
    w = max(1, int(round(cam.width / stride)))
    h = max(1, int(round(cam.height / stride)))
    K = scaled_intrinsics(np.asarray(cam.K), cam.width, cam.height, w, h)
    c2w = np.asarray(cam.c2w, dtype=np.float64)
    rows = max(1, _strip_rays(snapshot) // w)
    parts: Dict[str, List[np.ndarray]] = {"depth": [], "rgb": [], "accumulation": []}
    for top in range(0, h, rows):
        check(stop)
        n = min(rows, h - top)
        Ks = np.array(K, dtype=np.float64, copy=True)
        Ks[1, 2] -= top
        with torch.no_grad():
            out = snapshot.render(Ks, c2w, n, w)
        for key in parts:
            if key not in out:
                raise SurfaceError(f"snapshot.render() returned no '{key}' (got {sorted(out)})")
            parts[key].append(out[key].detach().float().cpu().numpy().reshape(n, w, -1))
    depth, rgb, acc = (np.concatenate(parts[k], axis=0) for k in ("depth", "rgb", "accumulation"))
    return {"K": K, "c2w": c2w, "depth": depth.reshape(h, w), "rgb": rgb.reshape(h, w, 3), "acc": acc.reshape(h, w)}


def _scene_box(snapshot: FieldSnapshot, max_box: float) -> Optional[Tuple[np.ndarray, float]]:
    """(centre (3,), half side) of the region whose surface is scored, or None for no bound (0, or
    a snapshot without ``scene_center`` / ``scene_scale``)."""
    center, scale = getattr(snapshot, "scene_center", None), getattr(snapshot, "scene_scale", None)
    if max_box <= 0 or center is None or scale is None:
        return None
    return np.asarray(center, np.float64).reshape(3), float(max_box) * float(scale)


def extract_surface(snapshot: FieldSnapshot, cfg: QueryConfig, stop: Optional[StopFlag] = None) -> SurfacePoints:
    """Surface points of ``snapshot`` (see the module docstring). Raises SurfaceError when the
    snapshot has no cameras, and ``lerf_ros.query.cancel.Cancelled`` when ``stop`` is set (checked
    between strips of the rendered views and between views of the visibility test)."""
    import open3d as o3d

    t0 = time.perf_counter()
    cams = list(snapshot.cameras)
    if not cams:
        raise SurfaceError("the snapshot has no keyframe cameras to extract a surface from")
    views = [
        _render_view(snapshot, cams[i], cfg.surface_stride, stop) for i in select_views(cams, cfg.surface_max_views)
    ]
    t_render = time.perf_counter()

    box = _scene_box(snapshot, cfg.surface_max_box)
    pts, cols = [], []
    n_rendered = 0
    for v in views:
        ok = (v["acc"] > cfg.surface_min_accumulation) & np.isfinite(v["depth"]) & (v["depth"] > 0)
        if not np.any(ok):
            continue
        p, c = backproject(v["depth"], v["K"], v["c2w"])[ok], v["rgb"][ok]
        n_rendered += len(p)
        if box is not None:
            inside = np.all(np.abs(p - box[0]) <= box[1], axis=1)
            p, c = p[inside], c[inside]
        pts.append(p)
        cols.append(np.clip(c, 0.0, 1.0))
    stats: Dict[str, float] = {
        "views": float(len(views)),
        "rendered_points": float(n_rendered),
        "in_box_points": float(sum(len(p) for p in pts)),
    }
    pts, cols = [p for p in pts if len(p)], [c for c in cols if len(c)]
    empty = SurfacePoints(
        np.zeros((0, 3), np.float32),
        np.zeros((0, 3), np.uint8),
        np.zeros((0, 3), np.float32),
        np.zeros(0, np.int32),
        int(snapshot.step),
        stats,
    )
    if not pts:
        stats["ms"] = 1000 * (time.perf_counter() - t0)
        return empty

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate(pts).astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(np.concatenate(cols).astype(np.float64))
    pcd = pcd.voxel_down_sample(cfg.voxel_size)
    xyz = np.asarray(pcd.points)
    rgb = np.asarray(pcd.colors)
    stats["voxel_points"] = float(len(xyz))
    rng = np.random.default_rng(int(snapshot.step))
    # Visibility costs points x views: bound the work before it (random share; the final,
    # visibility-ranked bound comes after).
    pre_bound = max(10 * cfg.max_candidate_points, PRE_VISIBILITY_POINTS)
    if len(xyz) > pre_bound:
        keep = np.sort(rng.choice(len(xyz), pre_bound, replace=False))
        xyz, rgb = xyz[keep], rgb[keep]

    count = np.zeros(len(xyz), np.int32)
    towards = np.zeros_like(xyz)  # sum of unit directions to the cameras that see a point
    for v in views:
        check(stop)
        h, w = v["depth"].shape
        col, row, z = project(xyz, v["K"], v["c2w"])
        inside = (z > 1e-6) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        d = np.zeros_like(z)
        d[inside] = v["depth"][row[inside], col[inside]]
        tol = cfg.visibility_tolerance + cfg.visibility_tolerance_rel * np.abs(z)
        opaque = v["acc"][np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)] > cfg.surface_min_accumulation
        seen = inside & opaque & (np.abs(d - z) <= tol)
        count += seen
        to_cam = v["c2w"][:3, 3] - xyz
        to_cam /= np.maximum(np.linalg.norm(to_cam, axis=1, keepdims=True), 1e-12)
        towards += to_cam * seen[:, None]
    need = min(cfg.min_views, len(views))
    keep = count >= need
    stats["visible_points"] = float(keep.sum())
    xyz, rgb, count, towards = xyz[keep], rgb[keep], count[keep], towards[keep]
    if len(xyz) > cfg.max_candidate_points:
        # Keep the best-observed points (most views; random among equals): the part of the scene
        # the robot looked at, rather than a thin random share of far walls and floor.
        order = np.lexsort((rng.random(len(xyz)), -count))
        sel = np.sort(order[: cfg.max_candidate_points])
        xyz, rgb, count, towards = xyz[sel], rgb[sel], count[sel], towards[sel]
    if len(xyz) == 0:
        stats["ms"] = 1000 * (time.perf_counter() - t0)
        return empty

    npcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    npcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3.0 * cfg.voxel_size, max_nn=30))
    normals = np.asarray(npcd.normals).copy()
    if len(normals) != len(xyz):  # too few neighbours anywhere: fall back to view directions
        normals = towards.copy()
    flip = np.sum(normals * towards, axis=1) < 0
    normals[flip] *= -1.0
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)

    stats["points"] = float(len(xyz))
    stats["render_ms"] = 1000 * (t_render - t0)
    stats["ms"] = 1000 * (time.perf_counter() - t0)
    return SurfacePoints(
        xyz.astype(np.float32),
        np.round(rgb * 255.0).astype(np.uint8),
        normals.astype(np.float32),
        count.astype(np.int32),
        int(snapshot.step),
        stats,
    )


CHANGE_REFRESH_STEPS = 20
"""Training steps after a scene change before the surface points are first refreshed for it."""


def _relearning(step: int, surface_step: int, change_step: int) -> bool:
    """Whether surface points extracted at ``surface_step`` are stale at ``step`` because the scene
    changed at ``change_step`` (-1: never): the field relearns the changed region from then on, a
    young part of the field again, so the points are refreshed as early in training: first
    ``CHANGE_REFRESH_STEPS`` steps after the change, then whenever the steps since the change have
    doubled since the last extraction (until ``refresh_every_steps`` takes over). Without this a
    moved or added object is scored on the surface of before the change (the table under it) until
    the next regular refresh."""
    if change_step < 0 or step <= change_step:
        return False
    age = surface_step - change_step  # steps since the change at the last extraction (< 0: before it)
    return step - change_step >= max(CHANGE_REFRESH_STEPS, 2 * age)


class SurfaceCache:
    """The surface of the newest snapshot, recomputed only when training has moved on enough.

    Thread-safe. A refresh is computed by one thread; while it runs, other callers get the previous
    surface when there is one (and wait for the new one otherwise).
    """

    def __init__(self, cfg: QueryConfig, stop: Optional[StopFlag] = None) -> None:
        self.cfg = cfg
        self.stop = stop
        self._state = threading.Lock()
        self._compute = threading.Lock()
        self._surface: Optional[SurfacePoints] = None
        self._tensors: Dict[str, torch.Tensor] = {}

    def _stale(self, snapshot: FieldSnapshot) -> bool:
        s = self._surface
        if s is None:
            return True
        step = int(snapshot.step)
        if step == s.step:
            return False
        if step < s.step or len(s) == 0:  # reset trainer, or nothing found yet: retry
            return True
        # Early on the geometry changes fast: refresh whenever training has doubled its step count,
        # then every refresh_every_steps.
        if step - s.step >= min(self.cfg.refresh_every_steps, max(s.step, 1)):
            return True
        return _relearning(step, s.step, int(getattr(snapshot, "scene_change_step", -1)))

    def get(self, snapshot: FieldSnapshot, stop: Optional[StopFlag] = None) -> Tuple[SurfacePoints, bool]:
        """(surface for ``snapshot``, whether this call computed it). ``stop``: checked between chunks
        of the extraction instead of the cache's own flag (a paced view of it, for background work)."""
        with self._state:
            if not self._stale(snapshot):
                return self._surface, False
            current = self._surface
        if current is not None and not self._compute.acquire(blocking=False):
            return current, False  # someone is refreshing it: answer from the previous one
        if current is None:
            self._compute.acquire()
        try:
            with self._state:
                if not self._stale(snapshot):
                    return self._surface, False
            surface = extract_surface(snapshot, self.cfg, stop if stop is not None else self.stop)
            with self._state:
                self._surface = surface
                self._tensors = {}
            return surface, True
        finally:
            self._compute.release()

    def peek(self) -> Optional[SurfacePoints]:
        """The cached surface, without computing anything."""
        with self._state:
            return self._surface

    def xyz_tensor(self, surface: SurfacePoints, device: torch.device) -> torch.Tensor:
        """(N, 3) float32 tensor of ``surface.xyz`` on ``device``, cached with the surface."""
        key = f"{id(surface)}:{device}"
        with self._state:
            t = self._tensors.get(key)
            if t is None:
                t = torch.from_numpy(np.ascontiguousarray(surface.xyz)).to(device)
                if self._surface is surface:
                    self._tensors[key] = t
            return t
