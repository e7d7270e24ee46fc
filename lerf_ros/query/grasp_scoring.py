"""How well a grasp candidate holds, as arrays over many candidates: the squareness of the jaws'
contacts (the object's normals at each jaw, the slope of its outline across the pads) and the
quality in [0, 1] the planner ranks candidates by."""

from __future__ import annotations

import numpy as np


def _outline_cos_runs(xs: np.ndarray, ys: np.ndarray, u: np.ndarray, counts: np.ndarray, spacing: float) -> np.ndarray:
    """How square the jaws meet the object's outline, for many runs of points at once: 1 / sqrt(1 +
    slope^2) of the steeper of the two ends of each run (``xs`` across the closing axis, ``ys``
    along it). An end's slope is how far it moves between the slice's two halves (``xs < u`` and
    ``>= u``): the difference of the halves' extreme ``ys`` over that of their ``xs`` (at least half
    the spacing). A box's straight side gives about 1, its corner about 0.7; 1.0 when a half is
    empty.

    ``xs``, ``ys`` (M,): the points of the runs one after the other, ``counts`` (R,) of them (none
    empty) in each, each run sorted by ``ys``; ``u`` (M,): the position of each point's slice across
    the closing axis."""
    M = len(xs)
    starts = np.cumsum(counts) - counts
    idx = np.arange(M)
    left = xs < u
    # Sorted by ys, the smallest ys of a half is its first point, the largest its last.
    lf = np.minimum.reduceat(np.where(left, idx, M), starts)
    ll = np.maximum.reduceat(np.where(left, idx, -1), starts)
    rf = np.minimum.reduceat(np.where(left, M, idx), starts)
    rl = np.maximum.reduceat(np.where(left, -1, idx), starts)
    both = (lf < M) & (rf < M)
    worst = np.zeros(len(counts))
    for i, j in ((lf, rf), (ll, rl)):
        i, j = np.where(both, i, 0), np.where(both, j, 0)
        dx = np.maximum(np.abs(xs[j] - xs[i]), max(0.5 * spacing, 1e-4))
        worst = np.maximum(worst, np.abs(ys[j] - ys[i]) / dx)
    return np.where(both, 1.0 / np.sqrt(1.0 + worst * worst), 1.0)


def _contact_cos_runs(
    rid: np.ndarray, R: int, ys: np.ndarray, cos_y: np.ndarray, deep: np.ndarray, end: np.ndarray, band: float
) -> np.ndarray:
    """Mean |normal . closing axis| of the points within ``band`` of one jaw's contact ``end`` that
    lie deep enough (the part of the surface the finger pad closes on), or of all the points
    within ``band`` of it when none is that deep; 1.0 when there are none at all: for R runs at
    once, from (run, point) pairs. ``rid`` the run of each pair, ``ys`` the point's position along
    the closing axis, ``cos_y`` its |normal . closing axis|, ``deep`` whether it lies deep enough;
    ``end`` (R,) each run's jaw contact."""
    near_end = np.abs(ys - end[rid]) <= band
    sel = near_end & deep
    n_sel = np.bincount(rid[sel], minlength=R)
    t_sel = np.bincount(rid[sel], weights=cos_y[sel], minlength=R)
    n_end = np.bincount(rid[near_end], minlength=R)
    t_end = np.bincount(rid[near_end], weights=cos_y[near_end], minlength=R)
    return np.where(n_sel > 0, t_sel / np.maximum(n_sel, 1), np.where(n_end > 0, t_end / np.maximum(n_end, 1), 1.0))


def _quality(prior: float, cos_, depth, off_centre, clearance, relevancy):
    """Quality in [0, 1] of grasps (arrays or floats), from what predicts that a grasp holds:
    ``cos_`` the contact squareness (mean |normal . closing axis| at the jaws: the friction-cone
    margin), ``depth`` the insertion as a share of the deepest the slice allows (contacts near the
    object's widest part, not its cap), ``off_centre`` the distance of the grasp's centre from the
    object's mass centre across the approach (along the jaws and along the closing axis) as a share
    of its half length along the jaws (a grasp at one end turns the object about the closing axis,
    held only by the pads' torsional friction; one beside the mass centre along the closing axis
    turns it about the jaws, held by a friction couple no wider than the opening), ``clearance``
    the opening beyond the object's extent as a share of the width margin (a tight opening scrapes
    the object on the way in), ``relevancy`` the mean relevancy of the points in the grasp (in [0,
    1])."""
    return (
        prior
        * (0.3 + 0.7 * np.clip((np.asarray(cos_) - 0.7) / 0.3, 0.0, 1.0))
        * (0.6 + 0.4 * np.clip(depth, 0.0, 1.0))
        * (1.0 - 0.5 * np.clip(off_centre, 0.0, 1.0))
        * (0.7 + 0.3 * np.clip(clearance, 0.0, 1.0))
        * (0.5 + 0.5 * np.clip(relevancy, 0.0, 1.0))
    )
