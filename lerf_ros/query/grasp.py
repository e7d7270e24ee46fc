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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

#: gap (m) kept between the object's near side and the palm when the fingers reach in fully
PALM_GAP = 0.005


@dataclass(frozen=True)
class GripperModel:
    """A parallel-jaw gripper as boxes: two fingers, a palm and the corridor it travels through."""

    max_width: float = 0.08
    """Largest opening between the fingers (m)."""
    finger_depth: float = 0.04
    """Finger length along the approach axis (m): how deep the fingers can reach over an object."""
    finger_thickness: float = 0.01
    """Finger size along the closing axis (m)."""
    finger_breadth: float = 0.02
    """Finger size along x (m): the height of the slice of the object the pads close on."""
    width_margin: float = 0.01
    """Added to the object's extent along the closing axis to get the opening (m)."""
    approach_clearance: float = 0.10
    """Length (m) of the corridor behind the palm that must be free of scene points."""
    support_clearance: float = 0.01
    """The fingertips stop this far (m) above the far side of the object along the approach (so a
    top-down grasp never pushes into the table the object stands on)."""
    collision_tolerance: int = 2
    """Scene points allowed inside the gripper volume before a pose counts as colliding (noise)."""

    def check(self) -> "GripperModel":
        for name in ("max_width", "finger_depth", "finger_thickness", "finger_breadth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GripperModel.{name} = {getattr(self, name)!r} must be > 0")
        if self.finger_depth <= PALM_GAP:
            raise ValueError(f"GripperModel.finger_depth = {self.finger_depth!r} must exceed {PALM_GAP} m")
        for name in ("width_margin", "approach_clearance", "support_clearance", "collision_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"GripperModel.{name} = {getattr(self, name)!r} must be >= 0")
        return self


@dataclass
class Grasp:
    """One grasp target.

    Attributes:
        pose: (4, 4) float64 gripper-to-frame transform (convention in the module docstring).
        score: quality in [0, 1]; higher is better.
        width: opening the fingers need (m).
        kind: 'top' (approach along -up) or 'side'.
        cluster: index of the object cluster in ``GraspPlan.clusters``.
    """

    pose: np.ndarray
    score: float
    width: float
    kind: str = "top"
    cluster: int = 0

    @property
    def position(self) -> np.ndarray:
        """(3,) origin of the gripper frame (between the fingertips)."""
        return self.pose[:3, 3].copy()

    @property
    def approach(self) -> np.ndarray:
        """(3,) unit approach direction (gripper +z)."""
        return self.pose[:3, 2].copy()

    @property
    def closing_axis(self) -> np.ndarray:
        """(3,) unit closing axis (gripper +y)."""
        return self.pose[:3, 1].copy()

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        """(4,) orientation as a unit quaternion (x, y, z, w), w >= 0."""
        return rotation_to_quaternion_xyzw(self.pose[:3, :3])

    def transformed(self, transform: np.ndarray) -> "Grasp":
        """This grasp expressed in another frame: ``transform`` (4, 4) maps this frame to it."""
        return Grasp(pose=np.asarray(transform, np.float64) @ self.pose, score=self.score, width=self.width,
                     kind=self.kind, cluster=self.cluster)


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


@dataclass
class GraspPlan:
    """Grasps (best first), the clusters they were drawn from (best first), and a note."""

    grasps: List[Grasp] = field(default_factory=list)
    clusters: List[ClusterInfo] = field(default_factory=list)
    message: str = ""


# ---------------------------------------------------------------------------- small helpers
def rotation_to_quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit quaternion (x, y, z, w) with w >= 0."""
    R = np.asarray(R, np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotation must be 3x3, got shape {R.shape}")
    tr = np.trace(R)
    # Pick the numerically largest of 4w^2, 4x^2, 4y^2, 4z^2 and derive the others from it.
    cands = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    i = int(np.argmax(cands))
    if i == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 1e-12))
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif i == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 1e-12))
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif i == 2:
        s = 2.0 * np.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 1e-12))
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 1e-12))
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_xyzw_to_rotation(q: Sequence[float]) -> np.ndarray:
    """(4,) quaternion (x, y, z, w) -> (3, 3) rotation matrix."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


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
    evals, evecs = np.linalg.eigh(cov)          # ascending
    return evecs[:, ::-1].T


def _extent(values: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> Tuple[float, float]:
    """Robust (min, max) of 1D values: percentiles, so one stray point does not decide."""
    if len(values) < 20:
        return float(values.min()), float(values.max())
    a, b = np.percentile(values, [lo, hi])
    return float(a), float(b)


# ---------------------------------------------------------------------------- clustering
def cluster_dbscan(xyz: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """open3d DBSCAN. xyz (N, 3) -> (N,) int labels, -1 = noise."""
    import open3d as o3d

    xyz = np.asarray(xyz, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {xyz.shape}")
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    return np.asarray(pcd.cluster_dbscan(eps=float(eps), min_points=int(min_points), print_progress=False),
                      dtype=np.int64)


def rank_clusters(xyz: np.ndarray, relevancy: np.ndarray, labels: np.ndarray,
                  size_ref: float) -> List[ClusterInfo]:
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


# ---------------------------------------------------------------------------- geometry of one grasp
def gripper_collisions(pose: np.ndarray, width: float, gripper: GripperModel, scene: np.ndarray) -> int:
    """Number of scene points inside the fingers, the palm or the approach corridor.

    Args:
        pose: (4, 4) gripper-to-world. width: opening (m). scene: (M, 3) world points.
    """
    if len(scene) == 0:
        return 0
    R, o = pose[:3, :3], pose[:3, 3]
    q = (scene - o) @ R                      # (M, 3) in the gripper frame
    half_b = gripper.finger_breadth / 2
    in_x = np.abs(q[:, 0]) <= half_b
    ay = np.abs(q[:, 1])
    # Fingers: from the fingertips (z = 0) back to the palm (z = -finger_depth), outside the opening.
    fingers = in_x & (q[:, 2] <= 0) & (q[:, 2] >= -gripper.finger_depth) & (ay >= width / 2) & (
        ay <= width / 2 + gripper.finger_thickness)
    # Palm and the corridor behind it, as wide as the open gripper.
    back = in_x & (q[:, 2] < -gripper.finger_depth) & (
        q[:, 2] >= -gripper.finger_depth - gripper.approach_clearance) & (ay <= width / 2 + gripper.finger_thickness)
    return int(np.count_nonzero(fingers | back))


def _grasp_candidates(P: np.ndarray, N: np.ndarray, r: np.ndarray, up: np.ndarray, gripper: GripperModel,
                      tall_ratio: float, spacing: float) -> List[Tuple[np.ndarray, float, str, float]]:
    """Candidate grasps on one object cluster: list of (pose 4x4, width, kind, quality in [0, 1]).

    Widths may exceed the gripper here; the caller rejects those and checks collisions.
    P (n, 3) points, N (n, 3) unit normals (outward), r (n,) relevancy; spacing: distance between
    neighbouring points (m): the slices the widths are measured on are at least 3 spacings thick.
    """
    half_slice = max(gripper.finger_breadth / 2, 1.5 * spacing)
    h = P @ up
    base, top = _extent(h)
    height = top - base
    e1, e2 = _perpendicular_basis(up)
    foot = np.stack([P @ e1, P @ e2], axis=1)
    axes2 = _principal_axes_2d(foot)
    major = _unit(axes2[0, 0] * e1 + axes2[0, 1] * e2)
    minor = _unit(axes2[1, 0] * e1 + axes2[1, 1] * e2)
    lo, hi = _extent(P @ minor)
    minor_extent = hi - lo
    tall = height > tall_ratio * max(minor_extent, 1e-6)

    approaches: List[Tuple[np.ndarray, str, float]] = [(-up, "top", 0.6 if tall else 1.0)]
    if tall:
        for d in (major, -major, minor, -minor):
            approaches.append((d, "side", 0.9))
    rmax = max(float(r.max()), 1e-12)
    out = []
    for a, kind, prior in approaches:
        along = P @ a
        near, far = _extent(along)
        depth_avail = far - near - gripper.support_clearance if kind == "top" else far - near
        # Leave a small gap between the palm and the object.
        insertion = float(np.clip(depth_avail, min(0.005, far - near), gripper.finger_depth - PALM_GAP))
        region = (along >= near - 1e-6) & (along <= near + insertion)
        if kind == "side":
            # Close on a horizontal slice at the middle of the object's height, or as low as the
            # fingers can go without touching the support.
            g_h = max(base + 0.5 * height, base + gripper.support_clearance + gripper.finger_breadth / 2)
            region &= np.abs(h - g_h) <= half_slice + 1e-6
        if np.count_nonzero(region) < 3:
            continue
        R0 = P[region]
        b1, b2 = _perpendicular_basis(a)
        ax = _principal_axes_2d(np.stack([R0 @ b1, R0 @ b2], axis=1))
        y = _unit(ax[1, 0] * b1 + ax[1, 1] * b2)       # closing axis: the narrow side
        if kind == "side":
            # Close horizontally: the narrow horizontal direction across the approach.
            y = _unit(np.cross(up, a))
        if y @ (e1 + 0.5 * e2) < 0:                     # deterministic sign (the gripper is symmetric)
            y = -y
        x = np.cross(y, a)
        xs = R0 @ x
        xlo, xhi = _extent(xs)
        centres = [0.5 * (xlo + xhi)]
        if xhi - xlo > 4 * gripper.finger_breadth:          # long object: also grasp off-centre
            centres += [xlo + 0.25 * (xhi - xlo), xlo + 0.75 * (xhi - xlo)]
        entry = (along <= near + max(0.01, 0.25 * insertion))
        normal_fit = float(np.mean(np.clip(-(N[entry] @ a), 0.0, 1.0))) if np.any(entry) else 0.0
        for k, cx in enumerate(centres):
            sl = np.abs(xs - cx) <= half_slice
            if np.count_nonzero(sl) < 3:
                continue
            S = R0[sl]
            ys = S @ y
            ylo, yhi = _extent(ys, 0.5, 99.5)
            width = (yhi - ylo) + gripper.width_margin
            cy = 0.5 * (ylo + yhi)
            # Fingertips `insertion` past the near face, centred on the slice across the closing axis.
            origin = x * cx + y * cy + a * (near + insertion)
            pose = np.eye(4)
            pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, a, origin
            rel = float(np.mean(r[region][sl])) / rmax
            quality = prior * (0.5 + 0.5 * normal_fit) * (0.5 + 0.5 * rel) * (1.0 if k == 0 else 0.9)
            out.append((pose, float(width), kind, quality))
    return out


def plan_grasps(xyz: np.ndarray, normals: np.ndarray, relevancy: np.ndarray, scene: Optional[np.ndarray],
                gripper: GripperModel, eps: float, min_points: int, max_grasps: int,
                up: Sequence[float] = (0.0, 0.0, 1.0), tall_ratio: float = 1.5,
                max_clusters: int = 3, point_spacing: float = 0.0) -> GraspPlan:
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
    """
    xyz = np.asarray(xyz, np.float64)
    normals = np.asarray(normals, np.float64)
    relevancy = np.asarray(relevancy, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or normals.shape != xyz.shape or relevancy.shape != (len(xyz),):
        raise ValueError(f"expected xyz (N, 3), normals (N, 3), relevancy (N,); got {xyz.shape}, "
                         f"{normals.shape}, {relevancy.shape}")
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
        plan.message = (f"no cluster of at least {min_points} relevant points within {eps} m of each other "
                        "(lower query.dbscan_min_points or raise query.dbscan_eps)")
        return plan
    best_score = plan.clusters[0].score
    too_wide: List[float] = []
    colliding = 0
    for ci, cl in enumerate(plan.clusters[:max_clusters]):
        idx = cl.indices
        cands = _grasp_candidates(xyz[idx], normals[idx], relevancy[idx], up_v, gripper, tall_ratio,
                                  float(point_spacing))
        for pose, width, kind, quality in cands:
            if width > gripper.max_width:
                too_wide.append(width)
                continue
            if gripper_collisions(pose, width, gripper, scene_pts) > gripper.collision_tolerance:
                colliding += 1
                continue
            width_fit = 1.0 - 0.5 * (width / gripper.max_width) ** 2
            score = quality * width_fit * cl.score / best_score
            plan.grasps.append(Grasp(pose=pose, score=float(score), width=width, kind=kind, cluster=ci))
        if plan.grasps:
            break
    plan.grasps.sort(key=lambda g: -g.score)
    plan.grasps = plan.grasps[:max_grasps]
    if not plan.grasps:
        parts = []
        if too_wide:
            parts.append(f"the object is {min(too_wide):.3f} m across its narrowest grasp, more than the "
                         f"gripper's maximum opening {gripper.max_width:.3f} m")
        if colliding:
            parts.append(f"{colliding} candidate pose(s) collide with the scene")
        plan.message = "no feasible grasp: " + ("; ".join(parts) if parts else "no candidate poses")
    return plan
