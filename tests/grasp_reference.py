"""A straightforward reference of the grasp planner's candidate generation: plain Python loops over
approaches, slices, insertion depths and runs of points, one candidate at a time. The package's
vectorised ``_grasp_candidates`` must give the same candidates (tests/test_grasp_vectorised.py)."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from lerf_ros.query.grasp import (
    DEPTH_LEVELS,
    DEPTH_STEP,
    MAX_SLICES,
    MIN_INSERTION,
    PALM_GAP,
    GripperModel,
    _extent,
    _perpendicular_basis,
    _principal_axes_2d,
    _unit,
)


def _slab_segments(ys: np.ndarray, min_gap: float) -> List[Tuple[int, int]]:
    """Runs of sorted values ``ys`` separated by gaps wider than ``min_gap``: [(start, stop), ...]
    index ranges into ``ys`` (stop exclusive)."""
    cut = np.flatnonzero(np.diff(ys) > min_gap) + 1
    bounds = np.concatenate([[0], cut, [len(ys)]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _contact_cos(
    ys: np.ndarray, depth: np.ndarray, normals: np.ndarray, y: np.ndarray, end: float, band: float, min_depth: float
) -> float:
    """Mean |normal . closing axis| of the slab points within ``band`` of one jaw's contact ``end``
    and at least ``min_depth`` deep (the part of the surface the finger pad closes on), or of all
    the points within ``band`` of it when none is that deep; 1.0 when there are none at all."""
    near_end = np.abs(ys - end) <= band
    sel = near_end & (depth >= min_depth)
    if not np.any(sel):
        sel = near_end
    if not np.any(sel):
        return 1.0
    return float(np.mean(np.abs(normals[sel] @ y)))


def _outline_cos(xs: np.ndarray, ys: np.ndarray, u: float, spacing: float) -> float:
    """How square the jaws meet the object's outline: 1 / sqrt(1 + slope^2) of the steeper of the
    two ends of a slice's run of points (``xs`` across the closing axis, ``ys`` along it). An end's
    slope is how far it moves between the slice's two halves (``xs < u`` and ``>= u``): the
    difference of the halves' extreme ``ys`` over that of their ``xs`` (at least half the spacing). A
    box's straight side gives about 1, its corner about 0.7; 1.0 when a half is empty."""
    left, right = np.flatnonzero(xs < u), np.flatnonzero(xs >= u)
    if len(left) == 0 or len(right) == 0:
        return 1.0
    worst = 0.0
    for pick in (np.argmin, np.argmax):
        i, j = left[pick(ys[left])], right[pick(ys[right])]
        dx = max(abs(float(xs[j] - xs[i])), 0.5 * spacing, 1e-4)
        worst = max(worst, abs(float(ys[j] - ys[i])) / dx)
    return float(1.0 / np.sqrt(1.0 + worst * worst))


def reference_candidates(
    P: np.ndarray,
    N: np.ndarray,
    r: np.ndarray,
    S: np.ndarray,
    up: np.ndarray,
    gripper: GripperModel,
    tall_ratio: float,
    spacing: float,
    support: float,
    n_yaws: int = 8,
) -> List[Tuple[np.ndarray, float, str, float]]:
    """Candidate grasps on one object cluster: list of (pose 4x4, width, kind, quality in [0, 1]),
    one at a time (see ``lerf_ros.query.grasp._grasp_candidates``)."""
    step = max(gripper.finger_breadth / 2, spacing)
    # Bound the work on big clusters: at most MAX_SLICES slices per approach.
    span = float(np.ptp(P, axis=0).max()) if len(P) else 0.0
    step = max(step, span / MAX_SLICES)
    half_b = max(gripper.finger_breadth / 2, 0.75 * spacing)
    pad = 0.5 * spacing
    # A gap is room for a finger when it holds the finger, its share of the opening and the sampling.
    min_gap = max(
        gripper.finger_thickness + max(gripper.min_clearance, gripper.width_margin / 2) + 0.5 * spacing, 2.0 * spacing
    )
    band = max(spacing, 0.005)
    # Surface points voxelised from a curved side lie up to about half a spacing inside it: the
    # margin keeps the fingers that far out as well.
    margin = max(gripper.width_margin, 1.5 * spacing)
    max_insertion = gripper.finger_depth - PALM_GAP
    h = P @ up
    base, top = _extent(h)
    height = top - base
    e1, e2 = _perpendicular_basis(up)
    foot = np.stack([P @ e1, P @ e2], axis=1)
    axes2 = _principal_axes_2d(foot)
    major = _unit(axes2[0, 0] * e1 + axes2[0, 1] * e2)
    minor = _unit(axes2[1, 0] * e1 + axes2[1, 1] * e2)
    lo, hi = _extent(P @ minor)
    tall = height > tall_ratio * max(hi - lo, 1e-6)
    w = r / max(float(r.max()), 1e-12)
    centre = (P * w[:, None]).sum(axis=0) / float(w.sum()) if w.sum() > 0 else P.mean(axis=0)
    # The object's points are always part of the free-space test, whatever the caller's scene holds.
    S = np.concatenate([P, S]) if len(S) else P
    # Table points are no part of what the fingers close on (the fingertips stay above them).
    S = S[S @ up > support + 0.5 * gripper.tip_clearance]

    approaches: List[Tuple[np.ndarray, np.ndarray, str, float]] = []
    for k in range(n_yaws):
        th = np.pi * k / n_yaws
        approaches.append((-up, _unit(np.cos(th) * minor + np.sin(th) * major), "top", 0.6 if tall else 1.0))
    if tall:
        for d in (major, -major, minor, -minor):
            approaches.append((d, _unit(np.cross(up, d)), "side", 0.9))
    out = []
    for a, y, kind, prior in approaches:
        x = np.cross(y, a)
        px, py, pa = P @ x, P @ y, P @ a
        sy_all = S @ y
        keep = (sy_all >= py.min() - gripper.max_width) & (sy_all <= py.max() + gripper.max_width)
        Sk = S[keep]
        sx, sy, sa = Sk @ x, sy_all[keep], Sk @ a
        # Centre of the object's mass along the jaws (x) and along the approach.
        cx, cy = float(centre @ x), float(centre @ y)
        half_len = max(0.5 * float(np.ptp(px)), gripper.finger_breadth / 2)
        if kind == "top":
            xlo, xhi = _extent(px)
            mid = 0.5 * (xlo + xhi)
            m = int(np.floor(0.5 * (xhi - xlo) / step))
            slices = mid + step * np.arange(-m, m + 1)
        else:
            # x is the world's down direction here: slices at heights where the pads clear the support.
            lowest = max(base, support) + gripper.support_clearance + half_b
            hs = np.arange(top - half_b, lowest - 1e-9, -step) if top - half_b >= lowest else np.zeros(0)
            slices = hs * float(x @ up)  # px of a point at height hs
        for u in slices:
            p_in = np.flatnonzero(np.abs(px - u) <= half_b)
            if len(p_in) < 3:
                continue
            near, far = float(pa[p_in].min()), float(pa[p_in].max())
            if kind == "top":
                # fingertips no lower than tip_clearance above the support
                deepest = float(-(support + gripper.tip_clearance) * (a @ -up)) - near
                deepest = min(deepest, max_insertion)
            else:
                deepest = min(far - near, max_insertion)
            if deepest < MIN_INSERTION:
                continue  # nothing in this slice for the fingers to close on
            s_in = np.abs(sx - u) <= half_b + pad
            # From the deepest up in steps of half a spacing (at least DEPTH_STEP): the deepest
            # level that fits is where a fruit too wide at its middle is held best. At most
            # DEPTH_LEVELS levels give candidates.
            depth_step = max(DEPTH_STEP, 0.5 * spacing)
            depths = deepest - depth_step * np.arange(int((deepest - MIN_INSERTION) / depth_step) + 1)
            levels = 0
            for insertion in depths:
                if levels >= DEPTH_LEVELS:
                    break
                found = len(out)
                bottom = near + insertion + 1e-9
                # What lies between the fingers, and half a spacing beyond their tips (above them,
                # the palm's collision check decides).
                s_slab = np.flatnonzero(s_in & (sa <= bottom + pad) & (sa >= bottom - gripper.finger_depth))
                s_order = s_slab[np.argsort(sy[s_slab])]
                slab_y = sy[s_order]
                p_slab = p_in[pa[p_in] <= bottom + pad]
                if len(p_slab) < 3 or len(slab_y) == 0:
                    continue
                p_y = py[p_slab]
                runs = [(float(slab_y[s0]), float(slab_y[s1 - 1])) for s0, s1 in _slab_segments(slab_y, min_gap)]
                ours = [(a0, a1) for a0, a1 in runs if a1 >= p_y.min() - 1e-9 and a0 <= p_y.max() + 1e-9]
                if not ours:
                    continue
                whole = (min(r0 for r0, _ in ours), max(r1 for _, r1 in ours))
                if len(ours) > 1 and whole[1] - whole[0] + gripper.min_clearance <= gripper.max_width:
                    ours = [whole]
                for ylo, yhi in ours:
                    mine = p_slab[(p_y >= ylo - 1e-9) & (p_y <= yhi + 1e-9)]
                    if len(mine) < 3:
                        continue
                    extent = yhi - ylo
                    if extent + gripper.min_clearance > gripper.max_width:
                        out.append((np.eye(4), extent + max(gripper.width_margin, gripper.min_clearance), kind, 0.0))
                        continue
                    width = min(extent + margin, gripper.max_width)
                    # The normals at the jaws decide, except where the sampling cannot show them:
                    # on an object too flat for its sides to be sampled (the fingers then reach its
                    # whole height) and on a part narrower than three spacings (a stem, a neck); a
                    # shallow pinch of a wider cap or ridge is checked like any other.
                    if insertion >= 2.0 * spacing or (insertion < deepest - 1e-6 and extent >= 3.0 * spacing):
                        d_min = 0.4 * insertion
                        ys_m, dep_m = py[mine], pa[mine] - near
                        cos_ = min(
                            _contact_cos(ys_m, dep_m, N[mine], y, ylo, band, d_min),
                            _contact_cos(ys_m, dep_m, N[mine], y, yhi, band, d_min),
                        )
                    else:
                        cos_ = 1.0
                    run = s_order[(slab_y >= ylo) & (slab_y <= yhi)]
                    cos_ = min(cos_, _outline_cos(sx[run], sy[run], u, max(spacing, gripper.finger_breadth / 4)))
                    if cos_ < gripper.min_contact_cos:
                        continue
                    origin = x * u + y * (0.5 * (ylo + yhi)) + a * (near + insertion)
                    quality = _quality(
                        prior,
                        cos_,
                        insertion / max(deepest, 1e-6),
                        float(np.hypot(u - cx, 0.5 * (ylo + yhi) - cy)) / half_len,
                        (width - extent) / margin,
                        float(np.mean(w[mine])),
                    )
                    pose = np.eye(4)
                    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, a, origin
                    out.append((pose, float(width), kind, float(quality)))
                levels += int(any(c[3] > 0 for c in out[found:]))
    return out


def _quality(prior: float, cos_: float, depth: float, off_centre: float, clearance: float, relevancy: float) -> float:
    """Quality in [0, 1] of a grasp, from what predicts that it holds: ``cos_`` the contact
    squareness (mean |normal . closing axis| at the jaws: the friction-cone margin), ``depth`` the
    insertion as a share of the deepest the slice allows (contacts near the object's widest part,
    not its cap), ``off_centre`` the distance of the jaws from the object's mass centre along the
    jaws as a share of its half length (a grasp at one end turns the object about the closing
    axis), ``clearance`` the opening beyond the object's extent as a share of the width margin (a
    tight opening scrapes the object on the way in), ``relevancy`` the mean relevancy of the points
    in the grasp (in [0, 1])."""
    return (
        prior
        * (0.3 + 0.7 * float(np.clip((cos_ - 0.7) / 0.3, 0.0, 1.0)))
        * (0.6 + 0.4 * float(np.clip(depth, 0.0, 1.0)))
        * (1.0 - 0.5 * float(np.clip(off_centre, 0.0, 1.0)))
        * (0.7 + 0.3 * float(np.clip(clearance, 0.0, 1.0)))
        * (0.5 + 0.5 * float(np.clip(relevancy, 0.0, 1.0)))
    )
