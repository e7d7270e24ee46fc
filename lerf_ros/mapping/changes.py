"""Change detection and forgetting in a live stream (ROS-free).

A robot that grasps changes its scene; the keyframes that show the scene as it was must then stop
teaching the field. ``ChangeDetector.observe`` is called with every frame offered to an online
session and, for every ``changes.check_every``-th of them:

1. renders the current field at the frame's pose at low resolution (longest side
   ``changes.max_side``) through every s-th pixel of the frame (``point_sampled``; a frame with lens
   distortion is resampled onto those pinhole rays through its lens);
2. normalises the exposure: per colour channel, the median ratio of frame to render over the
   pixels the field covers is taken out (a camera's gain change is not a change of the scene);
3. compares each pixel with the render's pixels in its 3x3 neighbourhood (the smallest residual
   counts, so a pose error of about a pixel at this resolution or a slightly blurred edge is not a
   change): colour residual = mean absolute difference; where the frame has depth, the depth
   residual must also exceed ``depth_tolerance + depth_tolerance_rel * distance``;
4. decides nothing while the field is still learning: before ``changes.min_steps`` training steps,
   or while the median colour residual of the frame is above ``changes.max_median_residual``;
5. a pixel disagrees when its colour residual is above both ``min_color_residual`` and the frame's
   robust level ``median + kappa * 1.4826 * MAD`` (what the field's own error explains), and (with
   depth) its depth disagrees, or all 8 of its neighbours disagree in colour too (inside a region of
   changed colour: a flat object, shorter than the depth tolerance, changes only the colour; edges
   and slivers, where pose error and shading differ between views, need the depth);
   connected regions smaller than ``min_region_pixels`` are dropped;
6. the disagreeing pixels become 3D points: the surface the frame sees now (its depth, or the
   render's without depth) and the surface the field holds (the render's depth). Their voxels
   (``voxel_size``) are counted over the last ``memory_checks`` compared frames; points whose voxel
   was flagged (it or a neighbour) by at least ``min_frames`` frames are a *candidate change*;
7. the candidate is checked against the stored keyframes: each keyframe that sees the changed
   points (at least ``min_stale_points`` of them in its image with depth) is *stale* when at least
   ``min_stale_fraction`` of the points disagree with the new surface there (its depth in front of
   or behind the new surface by more than the tolerance, and no pixel round it sees a surface at or
   in front of the point: a pixel of error at a depth edge is forgiven as in the comparison; without
   depth: its colour differs) and it agrees with the old surface the field holds. Keyframes are
   projected through their lens distortion. The confirmed pixels are clustered in 3D (touching
   voxels of the surface nearer the camera: what is gone or what appeared), one cluster per changed
   object, and each cluster is judged on its own: it is a change when at least
   ``min_stale_keyframes`` keyframes and ``min_stale_share`` of those that see it are stale
   (otherwise the disagreement was the field's own error, an occlusion or edge that a keyframe or
   two see differently, or a change whose old views have already left the store). For
   ``move_window`` compared frames after a confirmed change that removed a surface, a cluster the
   depth does not confirm whose colours are mostly among that surface's (``move_color_match``) is
   judged by colour instead (a moved flat object at its new place, where the keyframes' depth cannot
   tell it from the table), and needs ``COLOUR_STALE_SHARE`` of the keyframes that see it stale. Pixels a keyframe
   has already retired do not count in its judgement. The stale keyframes are retired
   (``KeyframeStore.remove``) and the new frame is kept as a keyframe, so the colour, density,
   language and DINO fields relearn the region
   from views of its new state. With ``changes.retire`` 'pixels' (the default) a stale keyframe loses
   only its pixels within ``voxel_size`` of the cluster's points (``region_mask``,
   ``KeyframeStore.retire_pixels``), so the unchanged objects it shows keep their evidence.

A change is counted once: a confirmation whose voxels mostly overlap one of the latest changes (those
kept for display) is the same change (its stale keyframes are still retired). The training step of
the newest change counted (``last_change_step``) goes with every snapshot
(``FrozenField.scene_change_step``): the query re-extracts its surface points after it
(``lerf_ros.query.surface``), so that a moved or added object is scored on its new surface.
The changed points of the latest changes (at most ``max_points``) are kept for display
(``changed_points``; the trainer node publishes them on ``/lerf/changes``).

The pixel, depth and voxel kernels these steps use are in ``lerf_ros.mapping.change_kernels``.

Cost: one low-resolution render (at most 64 x 64 rays at the default ``max_side``) every
``check_every``-th frame, vectorised comparisons, and a projection of at most ``MAX_CHECK_POINTS``
points into each keyframe only when a candidate change exists.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lerf_ros.config import ChangeConfig
from lerf_ros.data.frame import Frame
from lerf_ros.mapping.change_kernels import (
    VOXEL_NEIGHBOURS,
    as_numpy,
    backproject,
    connected_regions,
    gain_normalise,
    nearest_depth3,
    neighbourhood_residual,
    point_sampled,
    project_pixels,
    region_mask,
    robust_threshold,
    shifted_copies,
    voxel_clusters,
    voxel_codes,
)

__all__ = [
    "ChangeCheck",
    "ChangeDetector",
    "gain_normalise",
    "neighbourhood_residual",
    "robust_threshold",
    "backproject",
    "connected_regions",
    "stale_keyframes",
    "voxel_codes",
    "voxel_clusters",
    "point_sampled",
    "region_mask",
    "MAX_CHECK_POINTS",
]

MAX_CHECK_POINTS = 512
"""Most changed points projected into the keyframes per confirmation (a random subset beyond)."""
COLOUR_STALE_SHARE = 0.5
"""A cluster judged by colour (``changes.move_window``) is a change when at least this share of the
keyframes that see it are stale (and ``min_stale_keyframes``): colour is weaker evidence than depth."""
_REMOVED_COLOURS = 256
"""Colours kept of one removed surface (a random subset beyond)."""
_REMOVED_KEPT = 16
"""Removed surfaces remembered at most (the newest)."""

RenderFn = Callable[[np.ndarray, np.ndarray, int, int], Dict[str, Any]]
"""``render(K, c2w, height, width)`` -> 'rgb' (H, W, 3) in [0, 1], 'depth' (H, W) z-depth m,
'accumulation' (H, W) (tensors or arrays)."""


# ---------------------------------------------------------------------------- keyframe judgement
def stale_keyframes(
    new_pts: np.ndarray,
    old_pts: np.ndarray,
    new_rgb: np.ndarray,
    keyframes: Sequence[Any],
    cfg: ChangeConfig,
    color_threshold: float,
    new_view: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
    by_colour: bool = False,
) -> Tuple[List[int], int]:
    """Keys of the keyframes that show the changed region as it was, and how many keyframes saw it.

    new_pts, old_pts (N, 3): at each changed pixel of the new frame, the surface it sees now and the
    surface the field holds there; new_rgb (N, 3) the new colours in [0, 1] (gain-normalised);
    new_view: the new frame's (depth (h, w) metres, K (3, 3), c2w (4, 4)) at the comparison
    resolution, or None when it has no depth. A keyframe (``key``, ``K``, ``c2w``, ``rgb`` (H, W, 3)
    uint8, ``depth`` (H, W) or None, tensors or arrays) judges the points that fall in its image:

    - a new surface point where the keyframe saw past it (its depth beyond the point by more than the
      tolerance): the keyframe saw free space where something now stands (an added or moved object);
    - the keyframe's own surface at the pixel of an old point, back-projected with its depth, lying
      in front of what the new frame sees along its ray (by more than the tolerance): the keyframe saw
      a surface where the new frame sees through (a removed or moved object, seen from any side);
    - without depth in the keyframe or the new frame: its colour at a new point differs from the new
      colour by more than ``color_threshold``.

    With depth, pixels where the new frame sees through the old surface are judged by the second
    test, the others (a new surface in front of the old one) by the first. ``by_colour``: every point
    is judged by colour (a keyframe's pixels within one of the point's pixel, the nearest colour
    counting, so a pixel of pose error or aliasing is no evidence); where the keyframe has depth, only
    the points it sees (nothing in front of them beyond the tolerance) are judged. For a surface the
    depth cannot tell from the one before it (a flat object at a new place on the table).

    Stale: at least ``min(min_stale_points, N)`` points judged and at least ``min_stale_fraction`` of
    them are such evidence."""
    stale, seeing = [], 0
    need = max(1, min(cfg.min_stale_points, len(new_pts)))
    for kf in keyframes:
        H, W = int(kf.rgb.shape[0]), int(kf.rgb.shape[1])
        K, c2w = np.asarray(kf.K, float), np.asarray(kf.c2w, float)
        dist = getattr(kf, "distortion", None)
        depth = None if kf.depth is None else as_numpy(kf.depth)
        vn, un, zn, okn = project_pixels(new_pts, K, c2w, H, W, dist)
        trusted = getattr(kf, "trusted", None)
        if trusted is not None:  # its retired pixels no longer speak for the region
            keep = np.zeros(H * W, bool)
            keep[as_numpy(trusted)] = True
            keep = keep.reshape(H, W)
            okn &= keep[vn, un]
        if by_colour:
            judged = okn
            if depth is not None:  # the points it sees: nothing in front of them
                dn = depth[vn, un]
                judged = okn & (dn > 0) & (dn >= zn - (cfg.depth_tolerance + cfg.depth_tolerance_rel * zn))
            img = as_numpy(kf.rgb)
            diff = np.full(len(vn), np.inf, np.float32)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    rgb = img[np.clip(vn + dy, 0, H - 1), np.clip(un + dx, 0, W - 1)].astype(np.float32) / 255.0
                    diff = np.minimum(diff, np.abs(rgb - new_rgb).mean(-1))
            evidence = judged & (diff > color_threshold)
        elif depth is None or new_view is None:
            rgb = as_numpy(kf.rgb)[vn, un].astype(np.float32) / 255.0
            judged = okn
            evidence = okn & (np.abs(rgb - new_rgb).mean(-1) > color_threshold)
        else:
            nd, nK, nc2w = new_view
            centre = nc2w[:3, 3]
            # see-through pixels (the new surface lies beyond the old one): judged by the keyframe's
            # surface at the old point; the others (a surface in front of the old one) by the new point
            through = np.linalg.norm(new_pts - centre, axis=1) > np.linalg.norm(old_pts - centre, axis=1)
            vo, uo, _, oko = project_pixels(old_pts, K, c2w, H, W, dist)
            if trusted is not None:
                oko &= keep[vo, uo]
            # like the comparison, the judgement forgives a pixel: the view that sees past or through
            # a point must see no surface at or in front of it (within ``depth_tolerance``) at any
            # valid pixel round it either. At a depth edge (the table's rim or a box's top against the
            # floor far below) a point a pixel off sees past anything, while where an object vanished
            # or appeared that view saw no such surface nearby (a slanted table's next pixel lies a few
            # centimetres nearer, not in front of the point)
            tol0 = cfg.depth_tolerance
            dn = depth[vn, un]
            okn &= (dn > 0) & ~through
            saw_past = (
                okn & (dn > zn + tol0 + cfg.depth_tolerance_rel * zn) & (nearest_depth3(depth, vn, un) > zn + tol0)
            )
            oko &= through
            oko[oko] = depth[vo[oko], uo[oko]] > 0
            surf = backproject(depth, K, c2w, vo[oko], uo[oko], dist)
            vv, uu, zz, okv = project_pixels(surf, nK, nc2w, nd.shape[0], nd.shape[1])
            dnew = nd[vv, uu]
            okv &= dnew > 0
            in_free = (
                okv & (zz < dnew - (tol0 + cfg.depth_tolerance_rel * dnew)) & (zz < nearest_depth3(nd, vv, uu) - tol0)
            )
            judged = int(np.count_nonzero(okn)) + int(np.count_nonzero(okv))
            evidence = int(np.count_nonzero(saw_past)) + int(np.count_nonzero(in_free))
        n = int(np.count_nonzero(judged)) if isinstance(judged, np.ndarray) else int(judged)
        e = int(np.count_nonzero(evidence)) if isinstance(evidence, np.ndarray) else int(evidence)
        if n < need:
            continue
        seeing += 1
        if e / n >= cfg.min_stale_fraction:
            stale.append(int(kf.key))
    return stale, seeing


# ---------------------------------------------------------------------------- the detector
@dataclass
class ChangeCheck:
    """What one ``ChangeDetector.observe`` call found."""

    status: str
    """'skipped' (not a compared frame), 'not_ready' (the field is still learning), 'no_change',
    'candidate' (disagreement not yet confirmed) or 'change' (confirmed: stale keyframes found)."""
    reason: str = ""
    residual_median: float = float("nan")
    """Median colour residual of the compared frame (0..1), NaN when not compared."""
    flagged_pixels: int = 0
    """Pixels that disagree (after the region-size filter) at the comparison resolution."""
    confirmed_pixels: int = 0
    """Of those, pixels whose voxel other compared frames flagged too."""
    stale_keys: List[int] = field(default_factory=list)
    """Keyframes that show the changed region as it was (to retire)."""
    stale_masks: Dict[int, np.ndarray] = field(default_factory=dict)
    """With ``changes.retire`` 'pixels': per stale keyframe, its (H, W) bool pixels that show the
    changed region (``region_mask``): only those are retired."""
    new_change: bool = False
    """This confirmation is a change not counted before."""
    points: Optional[np.ndarray] = None
    """(M, 3) changed surface points of a confirmed change (old and new surfaces)."""
    centre: Optional[np.ndarray] = None
    """(3,) where a confirmed change is: the mean of its pixels' nearer surface (what is gone or what
    appeared; the mean of ``points`` also holds what the changed object hid or revealed, e.g. the
    floor far behind a table's edge). With several changed objects in one frame, ``reason`` gives
    each one's."""
    focus: Optional[np.ndarray] = None
    """(h, w) bool at the comparison resolution: the pixels whose colour residual is above the frame's
    robust level (where the field is wrong), or None (not compared, the field not ready, or
    ``changes.focus_share`` 0). The session has a kept frame's rays drawn from them
    (``changes.focus_share``) while ``ChangeDetector.focus_open``."""
    focus_K: Optional[np.ndarray] = None
    """(3, 3) intrinsics of the comparison's pinhole camera (``point_sampled``) that ``focus`` is in."""

    @property
    def keep_frame(self) -> bool:
        """The frame shows a confirmed change: keep it as a keyframe."""
        return self.status == "change"


class ChangeDetector:
    """See the module docstring. Thread-safe; one per session.

    Args:
        cfg: the ``changes`` configuration section.
        seed: seeds the subsampling of changed points.
    """

    def __init__(self, cfg: Optional[ChangeConfig] = None, seed: int = 0) -> None:
        self.cfg = (cfg or ChangeConfig()).check()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._offered = 0
        self._checks = 0  # compared frames
        self._flagged: List[Tuple[int, np.ndarray]] = []  # (check, its flagged voxel codes) of recent checks
        self._changes: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (check, voxels, points, kinds)
        self._removed: List[Tuple[int, np.ndarray]] = []  # (check, colours (M, 3)) of recently removed surfaces
        self.changes_detected = 0
        self.keyframes_retired = 0
        self._confirmed_check = None  # compared-frame count of the newest confirmation
        self.last_change_step = -1
        """Training step of the newest change counted (-1: none yet). Snapshots carry it
        (``FrozenField.scene_change_step``) so that the query's surface points follow the relearnt
        region (``lerf_ros.query.surface.SurfaceCache``). It is the step at which the frame showing the
        change was offered, and a change seen again (mostly the same voxels) does not move it, even when
        it retires more keyframes."""
        self.frames_compared = 0
        self.last_residual_median = float("nan")
        self.last_status = ""
        self.version = 0
        """Increases whenever ``changed_points`` changes."""

    def reset(self) -> None:
        """Forget flagged voxels (e.g. after the model was reset); counters are kept."""
        with self._lock:
            self._flagged.clear()
            self._removed.clear()
            self._confirmed_check = None

    def focus_open(self) -> bool:
        """Whether kept frames carry their disagreeing pixels (``ChangeCheck.focus``): within
        ``changes.focus_window`` compared frames of the newest confirmed change (a static scene
        confirms none)."""
        with self._lock:
            return self._confirmed_check is not None and self._checks - self._confirmed_check <= self.cfg.focus_window

    def stats(self) -> Dict[str, Any]:
        """changes_detected, keyframes_retired, frames_compared, last_residual_median, last_status,
        last_change_step."""
        with self._lock:
            return {
                "changes_detected": self.changes_detected,
                "keyframes_retired": self.keyframes_retired,
                "frames_compared": self.frames_compared,
                "last_residual_median": self.last_residual_median,
                "last_status": self.last_status,
                "last_change_step": self.last_change_step,
            }

    def changed_points(self) -> Tuple[np.ndarray, np.ndarray]:
        """Surface points of the latest confirmed changes (at most ``max_points``, newest last):
        (M, 3) float32 positions and (M,) float32 kinds: 0 = a surface the field held that is gone,
        1 = a surface the new frames see."""
        with self._lock:
            if not self._changes:
                return np.zeros((0, 3), np.float32), np.zeros(0, np.float32)
            pts = np.concatenate([c[2] for c in self._changes])[-self.cfg.max_points :]
            kinds = np.concatenate([c[3] for c in self._changes])[-self.cfg.max_points :]
            return pts.astype(np.float32), kinds.astype(np.float32)

    def due(self) -> bool:
        """Count one offered frame; True when it is to be compared."""
        with self._lock:
            self._offered += 1
            return (self._offered - 1) % self.cfg.check_every == 0

    def observe(self, frame: Frame, render: RenderFn, step: int, keyframes: Callable[[], Sequence[Any]]) -> ChangeCheck:
        """Compare ``frame`` with the field (``render``) when it is due and the field is ready; confirm a
        change against ``keyframes()`` (called only then). Does not change the store: the caller
        retires ``stale_keys`` and keeps the frame (then calls ``record_retired``)."""
        if not self.due():
            return ChangeCheck("skipped")
        cfg = self.cfg
        if step < cfg.min_steps:
            return self._done(ChangeCheck("not_ready", f"{step} training steps < changes.min_steps ({cfg.min_steps})"))
        obs, obs_depth, K, H, W, valid = point_sampled(frame, cfg.max_side)
        c2w = np.asarray(frame.c2w, np.float64)
        out = render(K, c2w, H, W)
        ren = as_numpy(out["rgb"]).astype(np.float32).reshape(H, W, 3)
        ren_depth = as_numpy(out["depth"]).astype(np.float32).reshape(H, W)
        acc = as_numpy(out["accumulation"]).astype(np.float32).reshape(H, W)
        covered = (acc > 0.5) & valid
        if obs_depth is not None:
            covered &= obs_depth > 0
        if np.count_nonzero(covered) < max(16, cfg.min_region_pixels):
            return self._done(ChangeCheck("not_ready", "the field covers too little of the frame"))
        gains = gain_normalise(obs, ren, covered)
        ren_n = np.clip(ren * gains, 0.0, 1.0)
        col, dep = neighbourhood_residual(obs, ren_n, obs_depth, ren_depth)
        thr, med = robust_threshold(col[covered], cfg.kappa, cfg.min_color_residual)
        with self._lock:
            self.frames_compared += 1
            self.last_residual_median = med
        if med > cfg.max_median_residual:
            return self._done(
                ChangeCheck(
                    "not_ready",
                    f"median colour residual {med:.3f} > changes.max_median_residual ({cfg.max_median_residual})",
                    med,
                )
            )
        flag = covered & (col > thr)
        if dep is not None:
            deep = dep > cfg.depth_tolerance + cfg.depth_tolerance_rel * obs_depth
            # a colour change where the depth agrees (a flat object, shorter than the tolerance)
            # counts only inside a region of changed colour (all 8 neighbours changed too): edges and
            # slivers are where pose error and shading differ between views; beyond the frame's
            # border counts as unchanged, so a border pixel never passes on its own copies
            flag &= deep | shifted_copies(flag, 1, fill=False).all(0)
        flag = connected_regions(flag, cfg.min_region_pixels)
        v, u = np.nonzero(flag)
        check = ChangeCheck("no_change", "", med, flagged_pixels=len(v))
        if cfg.focus_share > 0:
            focus = covered & (col > thr)
            if focus.any():
                check.focus, check.focus_K = focus, K
        with self._lock:
            self._checks += 1
            now = self._checks
            self._flagged = [f for f in self._flagged if f[0] > now - cfg.memory_checks]
        if len(v) == 0:
            return self._done(check)
        new_pts = backproject(obs_depth if obs_depth is not None else ren_depth, K, c2w, v, u)
        old_pts = backproject(ren_depth, K, c2w, v, u)
        keys_new, keys_old = voxel_codes(new_pts, cfg.voxel_size), voxel_codes(old_pts, cfg.voxel_size)
        with self._lock:
            # a frame's flagged voxels and their neighbours: points of two views of one change seldom
            # fall in the very same voxel
            self._flagged.append((now, np.unique(VOXEL_NEIGHBOURS[:, None] + np.concatenate([keys_new, keys_old]))))
            votes_new = sum(np.isin(keys_new, f[1]).astype(np.int64) for f in self._flagged)
            votes_old = sum(np.isin(keys_old, f[1]).astype(np.int64) for f in self._flagged)
            agreed = (votes_new >= cfg.min_frames) | (votes_old >= cfg.min_frames)
        check.confirmed_pixels = int(np.count_nonzero(agreed))
        if check.confirmed_pixels < cfg.min_region_pixels:
            check.status = "candidate" if check.flagged_pixels else "no_change"
            return self._done(check)
        # one stale test per changed object: the agreed pixels clustered in 3D by their foreground
        # surface (the one nearer the camera: what is gone or what appeared)
        agreed_idx = np.nonzero(agreed)[0]
        centre = c2w[:3, 3]
        nearer_new = np.linalg.norm(new_pts - centre, axis=1) < np.linalg.norm(old_pts - centre, axis=1)
        surface = np.where(nearer_new[:, None], new_pts, old_pts)  # the foreground surface per pixel
        fg = surface[agreed_idx]
        labels = voxel_clusters(fg, cfg.voxel_size)
        kfs = list(keyframes())
        by_key = {int(kf.key): kf for kf in kfs}
        view = None if obs_depth is None else (obs_depth, K, c2w)
        stale_pts: Dict[int, List[np.ndarray]] = {}
        confirmed: List[np.ndarray] = []
        seeing_all, reasons = 0, []
        for lab in np.unique(labels):
            idx = agreed_idx[labels == lab]
            if len(idx) < cfg.min_region_pixels:
                continue
            if len(idx) > MAX_CHECK_POINTS:
                idx = np.sort(self._rng.choice(idx, MAX_CHECK_POINTS, replace=False))
            colours = obs[v[idx], u[idx]]
            stale, seeing = stale_keyframes(new_pts[idx], old_pts[idx], colours, kfs, cfg, thr, view)
            seeing_all = max(seeing_all, seeing)
            how = ""
            # a change contradicts the views that saw the region before it; one or two keyframes
            # disagreeing among many is an occlusion or an edge seen at another angle
            if len(stale) < max(cfg.min_stale_keyframes, cfg.min_stale_share * seeing):
                # what the depth cannot tell (a flat object at a new place) is judged by colour, only
                # where a surface of these colours was just removed (a move): a static scene, where a
                # texture aliases differently in every view, never gets here
                since = self._moved_from(colours, thr, now) if view is not None else None
                if since is None:
                    continue
                stale, seeing = stale_keyframes(new_pts[idx], old_pts[idx], colours, kfs, cfg, thr, view, True)
                # colour is weaker evidence than depth: most of the keyframes that see it must agree
                if len(stale) < max(cfg.min_stale_keyframes, COLOUR_STALE_SHARE * seeing):
                    continue
                how = f" by colour (a removed surface's colours, {since} compared frames before)"
            else:
                self._remember_removed(new_pts[idx], old_pts[idx], ren_n[v[idx], u[idx]], centre, now)
            confirmed.append(idx)
            c = surface[idx].mean(0)  # where this object is
            reasons.append(
                f"{len(stale)} of {seeing} keyframes that see it show it as it was{how} "
                f"(near ({c[0]:+.2f}, {c[1]:+.2f}, {c[2]:+.2f}) m)"
            )
            pts = np.concatenate([old_pts[idx], new_pts[idx]])
            for key in stale:
                stale_pts.setdefault(key, []).append(pts)
        if not confirmed:
            check.status = "candidate"
            check.reason = (
                f"{check.confirmed_pixels} pixels disagree in {cfg.min_frames}+ frames, but none of the "
                f"{seeing_all} keyframes that see them shows them otherwise"
            )
            return self._done(check)
        check.status = "change"
        check.stale_keys = sorted(stale_pts)
        if cfg.retire == "pixels":
            check.stale_masks = {
                key: region_mask(np.concatenate(p), by_key[key], cfg.voxel_size) for key, p in stale_pts.items()
            }
        idx = np.concatenate(confirmed)
        pts = np.concatenate([old_pts[idx], new_pts[idx]]).astype(np.float32)
        check.points = pts
        check.centre = surface[idx].mean(0)
        with self._lock:
            self._confirmed_check = now
            for i in confirmed:
                vox = np.unique(np.concatenate([keys_new[i], keys_old[i]]))
                # the same change seen again (from another side, or before the field has relearnt it)
                overlap = max((np.isin(vox, c[1]).mean() for c in self._changes), default=0.0)
                if overlap < 0.5:
                    check.new_change = True
                    self.changes_detected += 1
                    self.last_change_step = int(step)
                kinds = np.repeat(np.array([0, 1], np.float32), len(i))
                self._changes.append((now, vox, np.concatenate([old_pts[i], new_pts[i]]).astype(np.float32), kinds))
            total = 0
            for j in range(len(self._changes) - 1, -1, -1):  # bounded: the newest changes up to max_points
                total += len(self._changes[j][2])
                if total > cfg.max_points:
                    del self._changes[:j]
                    break
            self.version += 1
        check.reason = "; ".join(reasons)
        return self._done(check)

    def _remember_removed(
        self, new_pts: np.ndarray, old_pts: np.ndarray, old_rgb: np.ndarray, centre: np.ndarray, now: int
    ) -> None:
        """Keep the colours (the field's, gain-normalised) of a confirmed cluster's pixels where the
        new frame sees through the surface the field held: what was removed (at most 256 of them). Only
        a cluster seen through at most of its pixels counts (something vanished there)."""
        cfg = self.cfg
        if cfg.move_window <= 0:
            return
        through = np.linalg.norm(new_pts - centre, axis=1) > np.linalg.norm(old_pts - centre, axis=1)
        if np.count_nonzero(through) < max(cfg.min_region_pixels, 0.5 * len(through)):
            return
        rgb = np.asarray(old_rgb, np.float32)[through]
        if len(rgb) > _REMOVED_COLOURS:
            rgb = rgb[self._rng.choice(len(rgb), _REMOVED_COLOURS, replace=False)]
        with self._lock:
            self._removed.append((now, rgb))
            del self._removed[:-_REMOVED_KEPT]

    def _moved_from(self, colours: np.ndarray, threshold: float, now: int) -> Optional[int]:
        """Compared frames since a surface of these colours was removed (within ``move_window``), or None:
        at least ``move_color_match`` of ``colours`` (N, 3) lie within ``threshold`` (mean absolute
        channel difference) of one removal's colours (a view of the new place may show only part of
        the object: its lit top, not its shaded sides)."""
        cfg = self.cfg
        with self._lock:
            self._removed = [r for r in self._removed if r[0] > now - cfg.move_window]
            removed = list(self._removed)
        c = np.asarray(colours, np.float32)
        for check, rgb in reversed(removed):
            near = np.abs(c[:, None, :] - rgb[None]).mean(-1) <= threshold
            if near.any(1).mean() >= cfg.move_color_match:
                return now - check
        return None

    def record_retired(self, n: int) -> None:
        """Count ``n`` keyframes the caller retired for a change."""
        with self._lock:
            self.keyframes_retired += int(n)

    def _done(self, check: ChangeCheck) -> ChangeCheck:
        with self._lock:
            self.last_status = check.status
        return check
