"""Point-set geometry the grasp planner measures objects with: unit vectors, a basis around the
up direction, principal axes of a footprint, robust extents, and the height of the surface an
object stands on."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _perpendicular_basis(u: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing ``u`` to a right-handed orthonormal basis (e1, e2, u)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(helper - u * (helper @ u))
    return e1, np.cross(u, e1)


def _principal_axes_2d(coords: np.ndarray) -> np.ndarray:
    """(n, 2) -> (2, 2) rows: major then minor principal direction (unit)."""
    c = coords - coords.mean(axis=0)
    cov = c.T @ c / max(len(c), 1)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    return evecs[:, ::-1].T


def _extent(values: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> Tuple[float, float]:
    """Robust (min, max) of 1D values: percentiles, so one stray point does not decide."""
    if len(values) < 20:
        return float(values.min()), float(values.max())
    # np.percentile's linear interpolation, from a partial sort of the four values it needs.
    n = len(values)
    at = (n - 1) * (np.array([lo, hi]) / 100.0)
    below = np.floor(at).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    v = np.partition(np.asarray(values, np.float64), np.unique(np.concatenate([below, above])))
    a, b, t = v[below], v[above], at - below
    d = b - a
    out = np.where(t >= 0.5, b - d * (1 - t), a + d * t)
    return float(out[0]), float(out[1])


def support_height(P: np.ndarray, S: np.ndarray, up: np.ndarray, spacing: float) -> float:
    """Height (along ``up``) of the surface an object stands on: the median height of the scene
    points around its footprint (grown by 3 cm) no higher than a centimetre above its lowest
    points; the object's lowest height when there are fewer than five such points.

    P (n, 3) object points; S (m, 3) scene points (may include P); spacing: point spacing (m)."""
    h = P @ up
    base = _extent(h)[0]
    if len(S) == 0:
        return base
    e1, e2 = _perpendicular_basis(up)
    f = np.stack([P @ e1, P @ e2], axis=1)
    lo, hi = f.min(axis=0) - 0.03, f.max(axis=0) + 0.03
    sf = np.stack([S @ e1, S @ e2], axis=1)
    sh = S @ up
    near = np.all((sf >= lo) & (sf <= hi), axis=1) & (sh <= base + max(0.01, spacing)) & (sh >= base - 0.05)
    if np.count_nonzero(near) < 5:
        return base
    return float(min(base, np.median(sh[near])))
