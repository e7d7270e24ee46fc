"""Object clusters of a query's relevant points: open3d DBSCAN, and the clusters ranked by
relevancy mass times compactness (the grasp planner tries them best first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np


@dataclass
class ClusterInfo:
    """An object cluster of relevant points."""

    label: int
    """DBSCAN label."""
    indices: np.ndarray
    """(n,) indices into the clustered points."""
    mass: float
    """Sum of relevancy over the cluster."""
    rms_radius: float
    """RMS distance (m) of the points from their relevancy-weighted centroid."""
    score: float
    """mass * compactness, compactness = 1 / (1 + (rms_radius / gripper max width)^2)."""
    centroid: np.ndarray


def cluster_dbscan(xyz: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """open3d DBSCAN. xyz (N, 3) -> (N,) int labels, -1 = noise."""
    import open3d as o3d

    xyz = np.asarray(xyz, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {xyz.shape}")
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    return np.asarray(
        pcd.cluster_dbscan(eps=float(eps), min_points=int(min_points), print_progress=False), dtype=np.int64
    )


def rank_clusters(xyz: np.ndarray, relevancy: np.ndarray, labels: np.ndarray, size_ref: float) -> List[ClusterInfo]:
    """Clusters by score = relevancy mass * compactness, best first (noise, label -1, is skipped).

    Args:
        xyz: (N, 3) points; relevancy: (N,) in [0, 1]; labels: (N,) DBSCAN labels.
        size_ref: length (m) at which compactness is 1/2 (the gripper's max width is a good one).
    """
    out: List[ClusterInfo] = []
    for lab in np.unique(labels):
        if lab < 0:
            continue
        idx = np.flatnonzero(labels == lab)
        w = relevancy[idx].astype(np.float64)
        mass = float(w.sum())
        centroid = (xyz[idx] * (w / max(mass, 1e-12))[:, None]).sum(axis=0)
        rms = float(np.sqrt(np.mean(np.sum((xyz[idx] - centroid) ** 2, axis=1))))
        compact = 1.0 / (1.0 + (rms / size_ref) ** 2)
        out.append(ClusterInfo(int(lab), idx, mass, rms, mass * compact, centroid))
    out.sort(key=lambda c: -c.score)
    return out
