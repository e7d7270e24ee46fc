"""Grasp candidates on one object cluster, as arrays: for each approach direction the object is cut
into slices as broad as the finger pads, the fingers reach in to a few depths, and the surface
points between them are split into runs along the closing axis; each run (or the runs that fit
between the fingers together) is one candidate pose with its opening and quality. Collisions of
the palm and the corridor behind it are checked later, by the planner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from lerf_ros.query.grasp_geometry import _extent, _perpendicular_basis, _principal_axes_2d, _unit
from lerf_ros.query.grasp_gripper import PALM_GAP, GripperModel
from lerf_ros.query.grasp_scoring import _contact_cos_runs, _outline_cos_runs, _quality

#: shallowest insertion (m) of the fingers past an object's near side (thinner slices are skipped)
MIN_INSERTION = 0.005
#: most slices per approach direction (coarser slices on big clusters keep the cost bounded)
MAX_SLICES = 24
#: depth step (m, at least; half the point spacing when coarser) of the insertions tried per slice
DEPTH_STEP = 0.004
#: most insertion depths per slice that give candidates (deepest first)
DEPTH_LEVELS = 3


def _grasp_candidates(
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
) -> "_Candidates":
    """Candidate grasps on one object cluster: poses (4x4), widths, kinds and qualities in [0, 1].

    For each approach (top-down with ``n_yaws`` closing directions over 180 degrees; for tall
    objects also four horizontal side approaches closing horizontally) the object is cut into
    slices as broad as the finger pads across the closing axis. In each slice the fingers reach in
    from the object's near side to a few depths: at most ``finger_depth - PALM_GAP``, and for
    top-down grasps never lower than ``support + gripper.tip_clearance`` (the table the object
    stands on, so a flat object is pinched with the fingertips near the table). At each depth the
    surface points between the fingers (the object's and its surroundings' points ``S``, half a
    spacing beyond the fingertips and the pads, where a finger would scrape past) are split along the
    closing axis wherever a gap leaves room for a finger. When the runs that hold points of the
    object fit between the fingers together, they make one candidate (a gap inside an object may
    be a part nobody has seen); otherwise each run that holds points of the object is one
    candidate: a part of it (a bowl's or a roll of tape's wall at the rim, a mug's handle).
    Shallower depths give the cap of a fruit that is too wide at its middle. Each approach is
    computed as arrays over its slices x depths x runs of points (:func:`_approach_candidates`),
    not one candidate at a time.

    A candidate's width is its extent plus ``gripper.width_margin``, capped at the maximum opening
    when the extent plus ``gripper.min_clearance`` still fits; otherwise the uncapped width is
    returned (quality 0) and the caller rejects it as too wide. Candidates whose contact surfaces
    are too slanted to hold (mean ``|normal . closing axis|`` of the object's points at the jaws
    below ``gripper.min_contact_cos``, the friction cone) are left out. Quality (see
    :func:`_quality`) predicts holding: square contacts, contacts deep on the fingers, a grasp
    centred on the object's mass along the jaws, clearance for the fingers, and relevant points.

    P (n, 3) object points, N (n, 3) their unit normals (either sign), r (n,) relevancy; S (m, 3)
    surface points around the object (may include P); spacing: distance between neighbouring
    points (m); support: height of the surface the object stands on (along ``up``).
    """
    obj, cut, approaches = _prepare_object(P, N, r, S, up, gripper, tall_ratio, spacing, support, n_yaws)
    parts = [_approach_candidates(obj, cut, up, gripper, a, y, kind, prior) for a, y, kind, prior in approaches]
    return _Candidates.join(parts)


def _prepare_object(
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
) -> Tuple["_Object", "_Cuts", List[Tuple[np.ndarray, np.ndarray, str, float]]]:
    """What :func:`_grasp_candidates` works on (same arguments): the object, how it is cut, and the
    approaches (approach direction, closing axis, kind, prior quality) tried on it."""
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
    obj = _Object(P, N, w, S, centre, base, top, support)
    cut = _Cuts(step, half_b, pad, min_gap, band, margin, max_insertion, spacing)
    return obj, cut, approaches


@dataclass
class _Candidates:
    """Candidate grasps as arrays: poses (K, 4, 4), widths (K,), kinds (K,) 'top'/'side', quality
    (K,) in [0, 1] (0: too wide for the gripper; its width is the opening it would need)."""

    poses: np.ndarray
    widths: np.ndarray
    kinds: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return len(self.widths)

    @staticmethod
    def empty() -> "_Candidates":
        return _Candidates(np.zeros((0, 4, 4)), np.zeros(0), np.zeros(0, dtype="<U4"), np.zeros(0))

    @staticmethod
    def join(parts: Sequence["_Candidates"]) -> "_Candidates":
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Candidates.empty()
        return _Candidates(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("poses", "widths", "kinds", "quality"))
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The ranges [starts[i], starts[i] + counts[i]) one after the other: (group i of each element,
    the element's index)."""
    gid = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(len(gid)) - np.repeat(np.cumsum(counts) - counts, counts)
    return gid, np.repeat(starts, counts) + offset


def _combo_pairs(in_slice: np.ndarray, cl: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The points in each combo's slice as (combo, point) pairs, combo-major: ``in_slice`` (L, n)
    says which of n points lie in which of L slices, ``cl`` (C,) is the slice of each combo. Within
    a combo the points keep their order."""
    sl, pt = np.nonzero(in_slice)  # (slice, point), slice-major
    cnt = np.bincount(sl, minlength=len(in_slice))
    combo, k = _ranges((np.cumsum(cnt) - cnt)[cl], cnt[cl])
    return combo, pt[k]


@dataclass(frozen=True)
class _Object:
    """One object cluster as the candidate generation sees it."""

    P: np.ndarray
    """(n, 3) its points."""
    N: np.ndarray
    """(n, 3) their unit normals (either sign)."""
    w: np.ndarray
    """(n,) their relevancy over the cluster's highest."""
    S: np.ndarray
    """(m, 3) the surface points around it, its own included, the support's left out."""
    centre: np.ndarray
    """(3,) its relevancy-weighted centroid: where its mass is taken to be."""
    base: float
    """Its lowest height (robust) along ``up``."""
    top: float
    """Its highest height (robust) along ``up``."""
    support: float
    """Height of the surface it stands on."""


@dataclass(frozen=True)
class _Cuts:
    """How an object is cut into slices and runs (see :func:`_grasp_candidates`)."""

    step: float
    """Distance (m) between the slices."""
    half_b: float
    """Half the breadth (m) of a slice (the finger pads')."""
    pad: float
    """Growth (m) of what the fingers sweep, for the sampling: half the point spacing."""
    min_gap: float
    """Least gap (m) along the closing axis that a finger fits in."""
    band: float
    """Distance (m) from a jaw's contact within which points count for its normals."""
    margin: float
    """Added (m) to a part's extent to give the opening."""
    max_insertion: float
    """Deepest (m) the fingers reach past a slice's near side."""
    spacing: float
    """Distance (m) between neighbouring points."""


def _approach_candidates(
    obj: _Object,
    cut: _Cuts,
    up: np.ndarray,
    gripper: GripperModel,
    a: np.ndarray,
    y: np.ndarray,
    kind: str,
    prior: float,
) -> "_Candidates":
    """The candidates of one approach ``a`` closing along ``y`` (see :func:`_grasp_candidates`), as
    arrays over slices x insertion depths x runs of points."""
    P, N, w, S, centre = obj.P, obj.N, obj.w, obj.S, obj.centre
    base, top, support = obj.base, obj.top, obj.support
    step, half_b, pad, min_gap = cut.step, cut.half_b, cut.pad, cut.min_gap
    band, margin, max_insertion, spacing = cut.band, cut.margin, cut.max_insertion, cut.spacing
    x = np.cross(y, a)
    px, py, pa = P @ x, P @ y, P @ a
    # The object's mass centre along the jaws (x) and along the closing axis (y).
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
    if len(slices) == 0:
        return _Candidates.empty()
    # --- slices (L) x object points (n)
    p_in = np.abs(px[None] - slices[:, None]) <= half_b
    ok_slice = np.count_nonzero(p_in, axis=1) >= 3
    near = np.where(p_in, pa[None], np.inf).min(axis=1)
    far = np.where(p_in, pa[None], -np.inf).max(axis=1)
    if kind == "top":
        # fingertips no lower than tip_clearance above the support
        deepest = np.minimum(float(-(support + gripper.tip_clearance) * (a @ -up)) - near, max_insertion)
    else:
        deepest = np.minimum(far - near, max_insertion)
    ok_slice &= deepest >= MIN_INSERTION  # else nothing in the slice for the fingers to close on
    if not ok_slice.any():
        return _Candidates.empty()
    # From the deepest up in steps of half a spacing (at least DEPTH_STEP): the deepest level that
    # fits is where a fruit too wide at its middle is held best. At most DEPTH_LEVELS levels (the
    # first that give candidates) are kept.
    depth_step = max(DEPTH_STEP, 0.5 * spacing)
    n_depths = np.where(ok_slice, np.floor((np.where(ok_slice, deepest, 0) - MIN_INSERTION) / depth_step) + 1, 0)
    D = int(n_depths.max())
    L = len(slices)
    grid = np.arange(D)[None] < n_depths[:, None]  # (L, D) depths tried
    cl, cj = np.nonzero(grid)  # combos (slice, depth), slice-major
    insertion = deepest[cl] - depth_step * cj
    bottom = near[cl] + insertion + 1e-9
    C = len(cl)
    # The surroundings that can lie between the fingers of some combo (across the closing axis
    # within reach of the object, in some slice, within the depths tried), sorted along the closing
    # axis: every selection of them below stays sorted.
    sy = S @ y
    sx = S @ x
    sa = S @ a
    keep = (sy >= py.min() - gripper.max_width) & (sy <= py.max() + gripper.max_width)
    keep &= (sx >= slices.min() - half_b - pad) & (sx <= slices.max() + half_b + pad)
    keep &= (sa >= float(bottom.min()) - gripper.finger_depth) & (sa <= float(bottom.max()) + pad)
    keep = np.flatnonzero(keep)
    keep = keep[np.argsort(sy[keep], kind="stable")]
    sx, sy, sa = sx[keep], sy[keep], sa[keep]
    # --- combos x object points, as (combo, point) pairs, combo-major: the object's points
    # between the fingers
    pc, cp = _combo_pairs(p_in, cl)
    slab = pa[cp] <= bottom[pc] + pad
    pc, cp = pc[slab], cp[slab]
    n_slab = np.bincount(pc, minlength=C)
    ok_combo = n_slab >= 3
    py_c = py[cp]
    slab_start = np.cumsum(n_slab) - n_slab
    nz = np.flatnonzero(n_slab)
    p_lo = np.full(C, np.inf)
    p_hi = np.full(C, -np.inf)
    if len(nz):
        p_lo[nz] = np.minimum.reduceat(py_c, slab_start[nz])
        p_hi[nz] = np.maximum.reduceat(py_c, slab_start[nz])
    # --- combos x surrounding points, as (combo, point) pairs, combo-major and sorted by sy within
    # a combo. What lies between the fingers, and half a spacing beyond their tips (above them, the
    # palm's collision check decides).
    pcombo, pt = _combo_pairs(np.abs(sx[None] - slices[:, None]) <= half_b + pad, cl)
    sa_p, bot = sa[pt], bottom[pcombo]
    inside = (sa_p <= bot + pad) & (sa_p >= bot - gripper.finger_depth)
    pcombo, pt = pcombo[inside], pt[inside]
    if len(pt) == 0:
        return _Candidates.empty()
    ys_p = sy[pt]
    # --- runs: split where the combo changes or a gap leaves room for a finger
    brk = np.ones(len(pt), bool)
    brk[1:] = (pcombo[1:] != pcombo[:-1]) | (np.diff(ys_p) > min_gap)
    seg_start = np.flatnonzero(brk)
    seg_stop = np.append(seg_start[1:], len(pt))
    seg_c = pcombo[seg_start]
    y0, y1 = ys_p[seg_start], ys_p[seg_stop - 1]
    ours = ok_combo[seg_c] & (y1 >= p_lo[seg_c] - 1e-9) & (y0 <= p_hi[seg_c] + 1e-9)
    # The runs that hold points of the object are consecutive: merged when they fit together.
    n_ours = np.bincount(seg_c[ours], minlength=C)
    first_o = np.full(C, len(ours))
    last_o = np.full(C, -1)
    oi = np.flatnonzero(ours)
    np.minimum.at(first_o, seg_c[oi], oi)
    np.maximum.at(last_o, seg_c[oi], oi)
    merge = n_ours > 1
    mc = np.flatnonzero(merge)
    merge[mc] = y1[last_o[mc]] - y0[first_o[mc]] + gripper.min_clearance <= gripper.max_width
    single = ours & ~merge[seg_c]
    mc = np.flatnonzero(merge)
    r_seg = np.concatenate([np.flatnonzero(single), first_o[mc]])
    r_last = np.concatenate([np.flatnonzero(single), last_o[mc]])
    ro = np.argsort(r_seg, kind="stable")  # runs in the order of combos, then along y
    r_seg, r_last = r_seg[ro], r_last[ro]
    rc = seg_c[r_seg]
    R = len(rc)
    ylo, yhi = y0[r_seg], y1[r_last]
    r_start, r_stop = seg_start[r_seg], seg_stop[r_last]
    # --- runs x object points, as (run, point) pairs: the object's points each run holds
    rid, k = _ranges(slab_start[rc], n_slab[rc])
    mp = cp[k]
    yv = py_c[k]
    inm = (yv >= ylo[rid] - 1e-9) & (yv <= yhi[rid] + 1e-9)
    rid, mp, yv = rid[inm], mp[inm], yv[inm]
    n_mine = np.bincount(rid, minlength=R)
    enough = n_mine >= 3
    extent = yhi - ylo
    too_wide = enough & (extent + gripper.min_clearance > gripper.max_width)
    width = np.where(
        too_wide,
        extent + max(gripper.width_margin, gripper.min_clearance),
        np.minimum(extent + margin, gripper.max_width),
    )
    ins_r = insertion[rc]
    deep_r = deepest[cl[rc]]
    near_r = near[cl[rc]]
    u_r = slices[cl[rc]]
    # The normals at the jaws decide, except where the sampling cannot show them: on an object too
    # flat for its sides to be sampled (the fingers then reach its whole height) and on a part
    # narrower than three spacings (a stem, a neck); a shallow pinch of a wider cap or ridge is
    # checked like any other.
    use_normals = (ins_r >= 2.0 * spacing) | ((ins_r < deep_r - 1e-6) & (extent >= 3.0 * spacing))
    cos_ = np.ones(R)
    chk = enough & ~too_wide & use_normals
    if chk.any():
        cos_y = np.abs(N[mp] @ y)
        deep_enough = pa[mp] - near_r[rid] >= 0.4 * ins_r[rid]
        cos_ = np.where(
            chk,
            np.minimum(
                _contact_cos_runs(rid, R, yv, cos_y, deep_enough, ylo, band),
                _contact_cos_runs(rid, R, yv, cos_y, deep_enough, yhi, band),
            ),
            1.0,
        )
    run_of, on_run = _ranges(r_start, r_stop - r_start)  # the surrounding points of each run
    cos_ = np.minimum(
        cos_,
        _outline_cos_runs(
            sx[pt[on_run]], ys_p[on_run], u_r[run_of], r_stop - r_start, max(spacing, gripper.finger_breadth / 4)
        ),
    )
    good = enough & ~too_wide & (cos_ >= gripper.min_contact_cos)
    # Depth levels: a combo counts when it gives a candidate; a slice stops after DEPTH_LEVELS.
    productive = np.zeros((L, D), bool)
    productive[cl[rc[good]], cj[rc[good]]] = True
    before = np.cumsum(productive, axis=1) - productive
    kept_combo = before[cl, cj] < DEPTH_LEVELS
    sel = np.flatnonzero((good | too_wide) & kept_combo[rc])
    K = len(sel)
    poses = np.tile(np.eye(4), (K, 1, 1))
    gk = ~too_wide[sel]
    g = sel[gk]
    poses[gk, :3, 0], poses[gk, :3, 1], poses[gk, :3, 2] = x, y, a
    poses[gk, :3, 3] = (
        u_r[g][:, None] * x[None]
        + (0.5 * (ylo[g] + yhi[g]))[:, None] * y[None]
        + (near_r[g] + ins_r[g])[:, None] * a[None]
    )
    quality = np.zeros(K)
    if len(g):
        rel = np.bincount(rid, weights=w[mp], minlength=R)[g] / n_mine[g]
        quality[gk] = _quality(
            prior,
            cos_[g],
            ins_r[g] / np.maximum(deep_r[g], 1e-6),
            np.hypot(u_r[g] - cx, 0.5 * (ylo[g] + yhi[g]) - cy) / half_len,
            (width[g] - extent[g]) / margin,
            rel,
        )
    return _Candidates(poses, width[sel], np.full(K, kind, dtype="<U4"), quality)
