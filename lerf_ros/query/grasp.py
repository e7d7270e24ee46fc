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
#: shallowest insertion (m) of the fingers past an object's near side (thinner slices are skipped)
MIN_INSERTION = 0.005
#: most slices per approach direction (coarser slices on big clusters keep the cost bounded)
MAX_SLICES = 24
#: candidates collision-checked together (best first) until enough grasps are found
CHECK_BATCH = 64
#: depth step (m, at least; half the point spacing when coarser) of the insertions tried per slice
DEPTH_STEP = 0.004
#: most insertion depths per slice that give candidates (deepest first)
DEPTH_LEVELS = 3
#: clusters wider than this (m, largest horizontal extent) are not one graspable object
MAX_OBJECT_EXTENT = 0.5


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
    """Added to the object's extent along the closing axis to get the opening (m); the opening is
    capped at ``max_width`` when the extent plus ``min_clearance`` still fits."""
    min_clearance: float = 0.004
    """Least free space (m, both sides together) the open fingers need around the part they close
    on: a part wider than ``max_width - min_clearance`` cannot be grasped."""
    min_contact_cos: float = 0.75
    """Least mean ``|normal . closing axis|`` of the surfaces the finger pads close on: more slanted
    contacts (a fingertip high on a ball) do not hold. 0 accepts any."""
    approach_clearance: float = 0.10
    """Length (m) of the corridor behind the palm that must be free of scene points."""
    support_clearance: float = 0.01
    """Least height (m) of a side grasp's finger pads above the surface the object stands on."""
    tip_clearance: float = 0.0015
    """A top-down grasp's fingertips stop this far (m) above the surface the object stands on (the
    table, estimated from the scene points around the object), so a flat object is pinched by its
    sides (in physics, 1.5 mm held more of the thin objects than 3 mm: a pair of scissors is 9 mm
    thick, its blades 4 mm)."""
    collision_tolerance: int = 2
    """Scene points allowed inside the gripper volume before a pose counts as colliding (noise)."""

    def check(self) -> "GripperModel":
        for name in ("max_width", "finger_depth", "finger_thickness", "finger_breadth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GripperModel.{name} = {getattr(self, name)!r} must be > 0")
        if self.finger_depth <= PALM_GAP:
            raise ValueError(f"GripperModel.finger_depth = {self.finger_depth!r} must exceed {PALM_GAP} m")
        if not 0 <= self.min_contact_cos <= 1:
            raise ValueError(f"GripperModel.min_contact_cos = {self.min_contact_cos!r} must be in [0, 1]")
        for name in (
            "width_margin",
            "min_clearance",
            "approach_clearance",
            "support_clearance",
            "tip_clearance",
            "collision_tolerance",
        ):
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
        return Grasp(
            pose=np.asarray(transform, np.float64) @ self.pose,
            score=self.score,
            width=self.width,
            kind=self.kind,
            cluster=self.cluster,
        )


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
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


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


# ---------------------------------------------------------------------------- geometry of one grasp
def _palm_half_width(gripper: GripperModel, pad: float = 0.0) -> float:
    """Half the palm's size along the closing axis (m): the fully open fingers' outer faces, grown
    by ``pad``. The palm is this wide whatever opening a grasp needs, and on the way in it sweeps
    the approach corridor behind the fingers: a grasp whose fingers fit beside a round object's
    flank can still put the palm into its bulge (a ball as wide as the open gripper)."""
    return gripper.max_width / 2 + gripper.finger_thickness + pad


def gripper_collisions(
    pose: np.ndarray, width: float, gripper: GripperModel, scene: np.ndarray, pad: float = 0.0
) -> int:
    """Number of scene points inside the fingers, the palm or the approach corridor.

    Args:
        pose: (4, 4) gripper-to-world. width: opening (m). scene: (M, 3) world points.
        pad: grows the volumes (m) across the approach (along x, and outwards along y), so that a
            finger cannot slip between the samples of a surface it would cut through; half the
            points' spacing is enough.
    """
    if len(scene) == 0:
        return 0
    R, o = pose[:3, :3], pose[:3, 3]
    q = (scene - o) @ R  # (M, 3) in the gripper frame
    half_b = gripper.finger_breadth / 2 + pad
    outer = width / 2 + gripper.finger_thickness + pad
    in_x = np.abs(q[:, 0]) <= half_b
    ay = np.abs(q[:, 1])
    # Fingers: from the fingertips (z = 0) back to the palm (z = -finger_depth), outside the opening.
    fingers = in_x & (q[:, 2] <= 0) & (q[:, 2] >= -gripper.finger_depth) & (ay >= width / 2) & (ay <= outer)
    # Palm and the corridor behind it: the palm spans the fully open gripper whatever the opening,
    # and sweeps the corridor on the way in.
    back = (
        in_x
        & (q[:, 2] < -gripper.finger_depth)
        & (q[:, 2] >= -gripper.finger_depth - gripper.approach_clearance)
        & (ay <= max(outer, _palm_half_width(gripper, pad)))
    )
    return int(np.count_nonzero(fingers | back))


def _similar(a: np.ndarray, b: np.ndarray, spacing: float) -> bool:
    """Whether two grasp poses are near duplicates: origins within max(1 cm, spacing), the same
    approach and closing axes (up to the gripper's symmetry) within about 15 degrees."""
    close = np.linalg.norm(a[:3, 3] - b[:3, 3]) <= max(0.01, spacing)
    return bool(close and a[:3, 2] @ b[:3, 2] > 0.966 and abs(a[:3, 1] @ b[:3, 1]) > 0.966)


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


def batch_collisions(
    poses: np.ndarray, widths: np.ndarray, gripper: GripperModel, scene: np.ndarray, pad: float = 0.0
) -> np.ndarray:
    """``gripper_collisions`` of K poses at once: (K, 4, 4) poses, (K,) widths -> (K,) counts.

    Only the scene points inside the box around all K gripper volumes are transformed, all poses
    in one matrix product."""
    K = len(poses)
    out = np.zeros(K, np.int64)
    if K == 0 or len(scene) == 0:
        return out
    poses = np.asarray(poses, np.float64)
    widths = np.asarray(widths, np.float64)
    half_b = gripper.finger_breadth / 2 + pad
    outer = widths / 2 + gripper.finger_thickness + pad
    palm = np.maximum(outer, _palm_half_width(gripper, pad))
    back = gripper.finger_depth + gripper.approach_clearance
    # The corners of each pose's volume (fingers, palm and corridor: one box) bound what it can hit.
    R, o = poses[:, :3, :3], poses[:, :3, 3]
    reach = np.abs(R[:, :, 0]) * half_b + np.abs(R[:, :, 1]) * palm[:, None]  # (K, 3) half sizes
    lo = np.minimum(o, o - back * R[:, :, 2]) - reach
    hi = np.maximum(o, o - back * R[:, :, 2]) + reach
    scene = scene[np.all((scene >= lo.min(axis=0) - 1e-6) & (scene <= hi.max(axis=0) + 1e-6), axis=1)]
    if len(scene) == 0:
        return out
    chunk = max(1, 2_000_000 // len(scene))
    for k0 in range(0, K, chunk):
        Rk, ok, wk, outk = R[k0 : k0 + chunk], o[k0 : k0 + chunk], widths[k0 : k0 + chunk], outer[k0 : k0 + chunk]
        palmk = palm[k0 : k0 + chunk]
        n = len(Rk)
        # (M, 3) @ (3, 3n) -> the points in each gripper frame, minus each origin's coordinates.
        q = (np.asarray(scene, np.float64) @ Rk.transpose(1, 0, 2).reshape(3, 3 * n)).reshape(len(scene), n, 3)
        q = q.transpose(1, 0, 2) - np.einsum("kj,kji->ki", ok, Rk)[:, None]
        in_x = np.abs(q[..., 0]) <= half_b
        ay = np.abs(q[..., 1])
        z = q[..., 2]
        fingers = (z <= 0) & (z >= -gripper.finger_depth) & (ay >= (wk / 2)[:, None]) & (ay <= outk[:, None])
        behind = (z < -gripper.finger_depth) & (z >= -back) & (ay <= palmk[:, None])
        out[k0 : k0 + chunk] = np.count_nonzero(in_x & (fingers | behind), axis=1)
    return out


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
    parts = [_approach_candidates(obj, cut, up, gripper, a, y, kind, prior) for a, y, kind, prior in approaches]
    return _Candidates.join(parts)


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


def _ranges(starts: np.ndarray, counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The ranges [starts[i], starts[i] + counts[i]) one after the other: (group i of each element,
    the element's index)."""
    gid = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(len(gid)) - np.repeat(np.cumsum(counts) - counts, counts)
    return gid, np.repeat(starts, counts) + offset


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
    pl, pp = np.nonzero(p_in)  # (slice, point), slice-major
    p_cnt = np.bincount(pl, minlength=L)
    pc, k = _ranges((np.cumsum(p_cnt) - p_cnt)[cl], p_cnt[cl])
    cp = pp[k]
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
    sl, st = np.nonzero(np.abs(sx[None] - slices[:, None]) <= half_b + pad)  # (slice, point), by slice then sy
    s_cnt = np.bincount(sl, minlength=L)
    pcombo, k = _ranges((np.cumsum(s_cnt) - s_cnt)[cl], s_cnt[cl])
    pt = st[k]
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
