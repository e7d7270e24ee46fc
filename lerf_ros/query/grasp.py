"""Grasp-target poses for a parallel-jaw gripper from the relevant points of a query.

Pipeline: cluster the relevant points (open3d DBSCAN), rank the clusters by relevancy mass and
compactness, and for the best object cluster generate top-down and (for tall objects) side
grasps; each candidate is checked against the scene points for collisions of the fingers, the palm
and the approach corridor behind it, rejected when the opening it needs exceeds the gripper's
maximum, and scored.

Gripper frame convention (every pose this module returns, 4x4 gripper-to-world):
    +z  approach direction: points from the gripper into the object (top-down grasp: world -z).
    +y  closing axis: the fingers move along +-y towards the origin when they close.
    +x  = y cross z, so (x, y, z) is right-handed; for a top-down grasp x runs along the object's
        long side, for a side grasp it is (up to sign) the world vertical.
    origin: the point midway between the two fingertips, on the object. The fingers extend from
        the origin back to the palm at z = -finger_depth; the palm and the approach corridor lie
        behind it (z < -finger_depth). ``width`` is the opening the fingers need (object extent
        along y plus a margin), never more than the gripper's maximum.
World frame: z up (REP 103); the ``up`` argument can say otherwise.

The planner is split by concern: ``grasp_gripper`` (the gripper model, a grasp pose, collision
counts), ``grasp_geometry`` (point-set measures, the support height), ``grasp_clusters`` (DBSCAN and
cluster ranking), ``grasp_candidates`` (candidate poses on one cluster) and ``grasp_scoring`` (contact
squareness and quality). This module is the entry point, ``plan_grasps``, and keeps every name of
the planner importable from ``lerf_ros.query.grasp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from lerf_ros.query.grasp_candidates import DEPTH_LEVELS, DEPTH_STEP, MAX_SLICES, MIN_INSERTION, _grasp_candidates
from lerf_ros.query.grasp_clusters import ClusterInfo, cluster_dbscan, rank_clusters
from lerf_ros.query.grasp_geometry import _extent as _extent
from lerf_ros.query.grasp_geometry import _perpendicular_basis as _perpendicular_basis
from lerf_ros.query.grasp_geometry import _principal_axes_2d as _principal_axes_2d
from lerf_ros.query.grasp_geometry import _unit, support_height
from lerf_ros.query.grasp_gripper import (
    PALM_GAP,
    Grasp,
    GripperModel,
    batch_collisions,
    gripper_collisions,
    quaternion_xyzw_to_rotation,
    rotation_to_quaternion_xyzw,
)
from lerf_ros.query.grasp_scoring import _contact_cos_runs as _contact_cos_runs
from lerf_ros.query.grasp_scoring import _outline_cos_runs as _outline_cos_runs

# The public names; the private ones imported ``as`` themselves stay importable from here for the
# tests that check them against their plain references.
__all__ = [
    "CHECK_BATCH",
    "DEPTH_LEVELS",
    "DEPTH_STEP",
    "MAX_OBJECT_EXTENT",
    "MAX_SLICES",
    "MIN_INSERTION",
    "PALM_GAP",
    "ClusterInfo",
    "Grasp",
    "GraspPlan",
    "GripperModel",
    "batch_collisions",
    "cluster_dbscan",
    "gripper_collisions",
    "plan_grasps",
    "quaternion_xyzw_to_rotation",
    "rank_clusters",
    "rotation_to_quaternion_xyzw",
    "support_height",
]

#: candidates collision-checked together (best first) until enough grasps are found
CHECK_BATCH = 64
#: clusters wider than this (m, largest horizontal extent) are not one graspable object
MAX_OBJECT_EXTENT = 0.5


@dataclass
class GraspPlan:
    """Grasps (best first), the clusters they were drawn from (best first), and a note."""

    grasps: List[Grasp] = field(default_factory=list)
    clusters: List[ClusterInfo] = field(default_factory=list)
    message: str = ""


def _similar(a: np.ndarray, b: np.ndarray, spacing: float) -> bool:
    """Whether two grasp poses are near duplicates: origins within max(1 cm, spacing), the same
    approach and closing axes (up to the gripper's symmetry) within about 15 degrees."""
    close = np.linalg.norm(a[:3, 3] - b[:3, 3]) <= max(0.01, spacing)
    return bool(close and a[:3, 2] @ b[:3, 2] > 0.966 and abs(a[:3, 1] @ b[:3, 1]) > 0.966)


def plan_grasps(
    xyz: np.ndarray,
    normals: np.ndarray,
    relevancy: np.ndarray,
    scene: Optional[np.ndarray],
    gripper: GripperModel,
    eps: float,
    min_points: int,
    max_grasps: int,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    tall_ratio: float = 1.5,
    max_clusters: int = 3,
    point_spacing: float = 0.0,
) -> GraspPlan:
    """Cluster the relevant points, choose the object, and rank grasps on it.

    Args:
        xyz: (N, 3) relevant points (world). normals: (N, 3) unit outward surface normals.
        relevancy: (N,) relevancy of each point.
        scene: (M, 3) all surface points of the scene (collision checks), or None for none.
        gripper: the gripper; eps / min_points: DBSCAN parameters; max_grasps: how many to return.
        up: world up direction. tall_ratio: an object is tall (side grasps are offered, top-down
            ones penalised) when its height exceeds this times its narrow horizontal extent.
        max_clusters: clusters tried in order when the best one has no feasible grasp.
        point_spacing: sampling distance of the points (m; the voxel size of voxelised clouds).
    Returns:
        GraspPlan with grasps sorted by score (best first); score = quality * cluster score
        relative to the best cluster. ``message`` says why nothing was found, when so.

    The candidates of a cluster are checked as arrays over candidates x points: its fingers,
    palm and approach corridor against the scene's points, the object's own included
    (``batch_collisions``, grown by half the spacing), in batches of ``CHECK_BATCH``, best first.
    """
    xyz = np.asarray(xyz, np.float64)
    normals = np.asarray(normals, np.float64)
    relevancy = np.asarray(relevancy, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or normals.shape != xyz.shape or relevancy.shape != (len(xyz),):
        raise ValueError(
            f"expected xyz (N, 3), normals (N, 3), relevancy (N,); got {xyz.shape}, {normals.shape}, {relevancy.shape}"
        )
    gripper.check()
    up_v = _unit(np.asarray(up, np.float64))
    scene_pts = np.zeros((0, 3)) if scene is None else np.asarray(scene, np.float64)
    plan = GraspPlan()
    if len(xyz) < max(min_points, 3):
        plan.message = f"too few relevant points to cluster ({len(xyz)} < {max(min_points, 3)})"
        return plan
    labels = cluster_dbscan(xyz, eps, min_points)
    plan.clusters = rank_clusters(xyz, relevancy, labels, gripper.max_width)
    if not plan.clusters:
        plan.message = (
            f"no cluster of at least {min_points} relevant points within {eps} m of each other "
            "(lower query.dbscan_min_points or raise query.dbscan_eps)"
        )
        return plan
    best_score = max(plan.clusters[0].score, 1e-12)
    too_wide: List[float] = []
    colliding = 0
    too_large = 0
    pad = 0.5 * float(point_spacing)
    reach = gripper.max_width + gripper.finger_depth + gripper.approach_clearance + gripper.finger_thickness
    for ci, cl in enumerate(plan.clusters[:max_clusters]):
        idx = cl.indices
        P = xyz[idx]
        foot = P - np.outer(P @ up_v, up_v)
        if float(np.ptp(foot, axis=0).max()) > MAX_OBJECT_EXTENT:
            too_large += 1
            continue
        # Only scene points the gripper could touch while grasping this cluster.
        lo, hi = P.min(axis=0) - reach, P.max(axis=0) + reach
        near_scene = scene_pts[np.all((scene_pts >= lo) & (scene_pts <= hi), axis=1)]
        support = support_height(P, near_scene, up_v, float(point_spacing))
        cands = _grasp_candidates(
            P, normals[idx], relevancy[idx], near_scene, up_v, gripper, tall_ratio, float(point_spacing), support
        )
        feasible = cands.widths <= gripper.max_width
        too_wide += cands.widths[~feasible].tolist()
        if not feasible.any():
            continue
        poses, widths, kinds = cands.poses[feasible], cands.widths[feasible], cands.kinds[feasible]
        scores = cands.quality[feasible] * cl.score / best_score
        # Best first; the collision checks run on batches of candidates until enough distinct
        # grasps are found.
        order = np.argsort(-scores, kind="stable")
        for b0 in range(0, len(order), CHECK_BATCH):
            if len(plan.grasps) >= max_grasps:
                break
            batch = order[b0 : b0 + CHECK_BATCH]
            hits = batch_collisions(poses[batch], widths[batch], gripper, near_scene, pad) > gripper.collision_tolerance
            colliding += int(np.count_nonzero(hits))
            for k in batch[~hits]:
                if len(plan.grasps) >= max_grasps:
                    break
                if any(_similar(poses[k], g.pose, point_spacing) for g in plan.grasps):
                    continue
                plan.grasps.append(
                    Grasp(pose=poses[k], score=float(scores[k]), width=float(widths[k]), kind=str(kinds[k]), cluster=ci)
                )
        if plan.grasps:
            break
    plan.grasps.sort(key=lambda g: -g.score)
    if not plan.grasps:
        parts = []
        if too_wide:
            parts.append(
                f"the object is {min(too_wide):.3f} m across at its narrowest part (with margin), more than the "
                f"gripper's maximum opening {gripper.max_width:.3f} m"
            )
        if colliding:
            parts.append(f"{colliding} candidate pose(s) collide with the scene")
        if too_large:
            parts.append(
                f"{too_large} cluster(s) wider than {MAX_OBJECT_EXTENT} m (not one object: raise the threshold)"
            )
        plan.message = "no feasible grasp: " + ("; ".join(parts) if parts else "no candidate poses")
    return plan
