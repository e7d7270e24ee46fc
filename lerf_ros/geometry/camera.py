"""Pinhole camera maths in the package convention (ROS-free).

``K`` is the 3x3 intrinsic matrix with the centre of pixel ``(u, v)`` at continuous image
coordinates ``(u + 0.5, v + 0.5)``; ``c2w`` is the 4x4 camera-to-world pose in the OpenCV camera
convention (x right, y down, z forward); depth is z-depth along the camera's +z axis, in metres.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["backproject", "project", "scaled_intrinsics"]


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points of every pixel centre of a z-depth image.

    Args:
        depth: (H, W) z-depth in metres (any value is back-projected; mask invalid pixels after).
        K: (3, 3) intrinsics, pixel centres at ``u + 0.5`` (a skew term is honoured).
        c2w: (4, 4) camera-to-world pose.
    Returns:
        (H, W, 3) float64 world points; ``[v, u]`` is the point of pixel row v, column u.
    Raises:
        ValueError: for arrays of the wrong shape.
    """
    depth = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise ValueError(f"K must be (3, 3) and c2w (4, 4), got {K.shape} and {c2w.shape}")
    h, w = depth.shape
    v, u = np.meshgrid(np.arange(h, dtype=np.float64) + 0.5, np.arange(w, dtype=np.float64) + 0.5, indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # (H, W, 3)
    rays = pix @ np.linalg.inv(K).T  # camera rays with z = 1
    cam = rays * depth[..., None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def project(xyz: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (N, 3) -> (col (N,) int64, row (N,) int64, z (N,) camera z-depth).

    Pixel ``(col, row)`` is the one whose area contains the projection (centres at ``+0.5``), the
    inverse of ``backproject``. Points behind the camera (z <= 0) get meaningless pixels: test z.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (p - t), row form
    z = cam[:, 2]
    zs = np.where(np.abs(z) > 1e-9, z, 1e-9)
    uv = cam @ np.asarray(K, dtype=np.float64).T
    col = np.floor(uv[:, 0] / zs).astype(np.int64)
    row = np.floor(uv[:, 1] / zs).astype(np.int64)
    return col, row, z


def scaled_intrinsics(K: np.ndarray, width: int, height: int, new_width: int, new_height: int) -> np.ndarray:
    """Intrinsics of the same camera rendered at another resolution (pixel-centre convention kept:
    continuous image coordinates scale by new/old, so the principal point scales too)."""
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, :] *= new_width / width
    K2[1, :] *= new_height / height
    K2[2, :] = np.asarray(K, dtype=np.float64)[2, :]
    return K2
