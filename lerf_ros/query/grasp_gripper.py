"""The parallel-jaw gripper of the grasp planner: its model, a grasp pose, and the volume it sweeps.

``GripperModel`` sizes the fingers, the palm and the approach corridor; ``Grasp`` is one gripper
pose (frame convention in :mod:`lerf_ros.query.grasp`) with its quaternion conversions; and
``gripper_collisions`` / ``batch_collisions`` count the scene points inside the fingers, the palm
and the corridor behind it, for one pose (the plain reference) or for many at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
        pose: (4, 4) float64 gripper-to-frame transform (convention in ``lerf_ros.query.grasp``).
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
