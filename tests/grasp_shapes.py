"""Point clouds of simple shapes on a table, with exact normals, for the grasp planner's tests."""

from __future__ import annotations

import numpy as np

SPACING = 0.005
"""Point spacing (m) of the shapes unless told otherwise."""


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def box_surface(center, size, yaw=0.0, spacing=SPACING, bottom=False):
    """Points and outward normals on the faces of a box standing on its bottom face (bottom face
    left out: it rests on the table and no camera sees it)."""
    size = np.asarray(size, float)
    pts, nrm = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            if axis == 2 and sign < 0 and not bottom:
                continue
            a, b = [i for i in range(3) if i != axis]
            ua = np.arange(-size[a] / 2, size[a] / 2 + 1e-9, spacing)
            ub = np.arange(-size[b] / 2, size[b] / 2 + 1e-9, spacing)
            A, B = np.meshgrid(ua, ub, indexing="ij")
            p = np.zeros((A.size, 3))
            p[:, a], p[:, b], p[:, axis] = A.ravel(), B.ravel(), sign * size[axis] / 2
            n = np.zeros_like(p)
            n[:, axis] = sign
            pts.append(p)
            nrm.append(n)
    R = rot_z(yaw)
    return np.concatenate(pts) @ R.T + np.asarray(center, float), np.concatenate(nrm) @ R.T
