"""Rigid-transform helpers and a stamped pose buffer (ROS-free, below every other layer).

Quaternions are ``(x, y, z, w)`` (the ROS ``geometry_msgs/Quaternion`` order) and Hamilton
(``w`` is the scalar part). Every helper accepts batches: leading dimensions are kept.

All package code builds and decomposes poses with these helpers; nothing else re-implements them.

``PoseBuffer`` answers "where was the camera at the image's stamp" from a stream of stamped poses
(``geometry_msgs/PoseStamped``, ``nav_msgs/Odometry`` or TF): it interpolates between the two
poses that bracket the stamp (linear in translation, spherical-linear in rotation) and never
extrapolates beyond its tolerance.

``StampGuard`` keeps one bad stamp from becoming a stream's time reference: a stamp far from the
node's clock and from the stream's recent stamps is an outlier, while several consistent stamps in
a row far from the old reference are a real time jump (a bag restarted, a clock reset), after which
the caller clears its buffers, as tf2 clears its buffer when time jumps.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

__all__ = [
    "PoseError",
    "PoseLookupError",
    "check_pose",
    "PoseBuffer",
    "StampGuard",
    "StampVerdict",
    "quat_to_matrix",
    "matrix_to_quat",
    "make_pose",
    "pose_to_tq",
    "quat_normalize",
    "quat_slerp",
    "interpolate_pose",
    "invert_pose",
    "pose_distance",
]


class PoseError(ValueError):
    """A matrix that is not a finite rigid 4x4 transform; the message says what is wrong."""


class PoseLookupError(LookupError):
    """No pose can be given for a stamp; the message says why."""


def check_pose(T: np.ndarray, tol: float = 1e-3) -> None:
    """Raise PoseError unless ``T`` is a finite 4x4 rigid transform (a rotation with det +1).

    ``tol`` bounds the bottom-row error and ``|R^T R - I|``.
    """
    T = np.asarray(T)
    if T.shape != (4, 4):
        raise PoseError(f"pose must be 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise PoseError("pose contains NaN or infinite values")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise PoseError(f"pose bottom row must be [0 0 0 1], got {T[3].tolist()}")
    r = T[:3, :3]
    err = np.abs(r.T @ r - np.eye(3)).max()
    if err > tol:
        raise PoseError(f"pose rotation is not orthonormal (|R^T R - I| = {err:.3g}): not a rigid transform")
    if float(np.linalg.det(r)) < 0:
        raise PoseError("pose rotation has determinant -1 (a reflection): not a rigid transform")


# ---------------------------------------------------------------------------- quaternions
def quat_normalize(q: np.ndarray, tol: Optional[float] = None) -> np.ndarray:
    """Unit quaternion(s) ``(..., 4)``.

    Raises ValueError for non-finite or zero-length quaternions, and, when ``tol`` is given, for
    quaternions whose norm differs from 1 by more than ``tol`` (a sign of a corrupted message).
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternion must have 4 components (x, y, z, w), got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("quaternion contains NaN or infinite values")
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-12):
        raise ValueError("quaternion has zero length (all components 0): no rotation is defined")
    if tol is not None and np.any(np.abs(n - 1.0) > tol):
        bad = float(np.max(np.abs(n - 1.0)))
        raise ValueError(f"quaternion is not normalised (| |q| - 1 | = {bad:.3g} > {tol:g})")
    return q / n


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` in ``(x, y, z, w)`` order.

    The quaternion is normalised first; zero or non-finite quaternions raise ValueError.
    """
    q = quat_normalize(q)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    r = np.stack(
        [
            1 - 2 * (yy + zz),
            2 * (xy - wz),
            2 * (xz + wy),
            2 * (xy + wz),
            1 - 2 * (xx + zz),
            2 * (yz - wx),
            2 * (xz - wy),
            2 * (yz + wx),
            1 - 2 * (xx + yy),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Quaternions ``(..., 4)`` ``(x, y, z, w)`` with ``w >= 0`` from rotations ``(..., 3, 3)``.

    Accepts 4x4 transforms too (their rotation block is used). Numerically stable for every
    rotation: each matrix uses the largest of the four candidate pivots (w, x, y, z).
    """
    r = np.asarray(r, dtype=np.float64)
    if r.shape[-2:] == (4, 4):
        r = r[..., :3, :3]
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotation must be (..., 3, 3) or (..., 4, 4), got shape {r.shape}")
    batch = r.shape[:-2]
    m = r.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    tr = m00 + m11 + m22
    # 4 * component^2 for each pivot choice; pick the largest per matrix.
    pivots = np.stack([1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
    choice = np.argmax(pivots, axis=-1)
    s = 2.0 * np.sqrt(np.maximum(pivots[np.arange(len(m)), choice], 1e-300))  # = 4 * |pivot component|
    q = np.empty((len(m), 4))
    # w pivot
    c = choice == 0
    q[c, 3] = 0.25 * s[c]
    q[c, 0] = (m[c, 2, 1] - m[c, 1, 2]) / s[c]
    q[c, 1] = (m[c, 0, 2] - m[c, 2, 0]) / s[c]
    q[c, 2] = (m[c, 1, 0] - m[c, 0, 1]) / s[c]
    # x pivot
    c = choice == 1
    q[c, 0] = 0.25 * s[c]
    q[c, 3] = (m[c, 2, 1] - m[c, 1, 2]) / s[c]
    q[c, 1] = (m[c, 0, 1] + m[c, 1, 0]) / s[c]
    q[c, 2] = (m[c, 0, 2] + m[c, 2, 0]) / s[c]
    # y pivot
    c = choice == 2
    q[c, 1] = 0.25 * s[c]
    q[c, 3] = (m[c, 0, 2] - m[c, 2, 0]) / s[c]
    q[c, 0] = (m[c, 0, 1] + m[c, 1, 0]) / s[c]
    q[c, 2] = (m[c, 1, 2] + m[c, 2, 1]) / s[c]
    # z pivot
    c = choice == 3
    q[c, 2] = 0.25 * s[c]
    q[c, 3] = (m[c, 1, 0] - m[c, 0, 1]) / s[c]
    q[c, 0] = (m[c, 0, 2] + m[c, 2, 0]) / s[c]
    q[c, 1] = (m[c, 1, 2] + m[c, 2, 1]) / s[c]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.where(q[:, 3:4] < 0, -1.0, 1.0)
    return q.reshape(batch + (4,))


def quat_slerp(q0: np.ndarray, q1: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation ``(..., 4)`` from ``q0`` (alpha 0) to ``q1`` (alpha 1).

    Takes the short way round (``q1`` is flipped when ``q0 . q1 < 0``); nearly equal quaternions
    fall back to normalised linear interpolation. ``alpha`` broadcasts against the batch shape.
    """
    q0 = quat_normalize(q0)
    q1 = quat_normalize(q1)
    a = np.asarray(alpha, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_t = np.sin(theta)
    near = sin_t < 1e-6
    safe = np.where(near, 1.0, sin_t)
    w0 = np.where(near, 1.0 - a, np.sin((1.0 - a) * theta) / safe)
    w1 = np.where(near, a, np.sin(a * theta) / safe)
    return quat_normalize(w0 * q0 + w1 * q1)


# ---------------------------------------------------------------------------- 4x4 transforms
def make_pose(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """4x4 transforms ``(..., 4, 4)`` from translations ``(..., 3)`` and quaternions ``(..., 4)``."""
    t = np.asarray(t, dtype=np.float64)
    if t.shape[-1:] != (3,):
        raise ValueError(f"translation must have 3 components, got shape {t.shape}")
    r = quat_to_matrix(q)
    batch = np.broadcast_shapes(t.shape[:-1], r.shape[:-2])
    out = np.zeros(batch + (4, 4))
    out[..., :3, :3] = r
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def pose_to_tq(T: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split 4x4 transforms ``(..., 4, 4)`` into translations ``(..., 3)`` and quaternions ``(..., 4)``."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"transform must be (..., 4, 4), got shape {T.shape}")
    return T[..., :3, 3].copy(), matrix_to_quat(T[..., :3, :3])


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 transforms ``(..., 4, 4)`` (uses R^T, not a general inverse)."""
    T = np.asarray(T, dtype=np.float64)
    r_t = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = r_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", r_t, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Poses ``(..., 4, 4)`` between ``T0`` (alpha 0) and ``T1`` (alpha 1): lerp + slerp."""
    t0, q0 = pose_to_tq(T0)
    t1, q1 = pose_to_tq(T1)
    a = np.asarray(alpha, dtype=np.float64)
    t = (1.0 - a)[..., None] * t0 + a[..., None] * t1
    return make_pose(t, quat_slerp(q0, q1, a))


def pose_distance(Ta: np.ndarray, Tb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Translation distance (metres) and rotation angle (radians) between poses ``(..., 4, 4)``.

    Both broadcast; the angle is that of ``Ra^T Rb`` computed from its trace.
    """
    Ta = np.asarray(Ta, dtype=np.float64)
    Tb = np.asarray(Tb, dtype=np.float64)
    dt = np.linalg.norm(Ta[..., :3, 3] - Tb[..., :3, 3], axis=-1)
    tr = np.sum(Ta[..., :3, :3] * Tb[..., :3, :3], axis=(-2, -1))  # trace(Ra^T Rb)
    ang = np.arccos(np.clip((tr - 1.0) * 0.5, -1.0, 1.0))
    return dt, ang


# ---------------------------------------------------------------------------- pose buffer
class PoseBuffer:
    """Stamped 4x4 poses, looked up at arbitrary stamps. Thread-safe.

    Lookup rules for a stamp ``t``:

    1. A stored pose with exactly this stamp is returned as is.
    2. If stored poses bracket ``t`` (``t0 < t < t1``), the nearer of the two is within
       ``tolerance_s`` and the gap ``t1 - t0`` is at most ``max_gap_s``, the pose is interpolated
       (translation linearly, rotation by slerp).
    3. Otherwise the nearest stored pose is returned if it is within ``tolerance_s``.
    4. Otherwise ``PoseLookupError`` says how far the nearest pose is.

    Poses older than ``max_age_s`` before the newest one are discarded. Poses may arrive out of
    order. With ``extrinsic`` set, every returned pose is ``T_world_body @ extrinsic``: give the
    camera optical frame's pose in the body frame (the static transform body -> camera, as TF
    publishes it) when the stored poses are those of the robot body rather than the camera.

    Args:
        max_age_s: history kept, seconds.
        tolerance_s: how far (seconds) a stored pose may be from the requested stamp.
        max_gap_s: widest bracket (seconds) interpolated across; default ``2 * tolerance_s``.
        extrinsic: optional (4, 4) rigid transform composed on the right of every pose.
        check: validate every added pose with ``check_pose`` (finite, rigid).
    """

    def __init__(
        self,
        max_age_s: float = 10.0,
        tolerance_s: float = 0.05,
        max_gap_s: Optional[float] = None,
        extrinsic: Optional[np.ndarray] = None,
        check: bool = True,
    ):
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if not tolerance_s >= 0:
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        self.max_age_s = float(max_age_s)
        self.tolerance_s = float(tolerance_s)
        self.max_gap_s = float(2.0 * tolerance_s if max_gap_s is None else max_gap_s)
        if extrinsic is not None:
            extrinsic = np.asarray(extrinsic, dtype=np.float64)
            check_pose(extrinsic)
        self.extrinsic = extrinsic
        self.check = check
        self._stamps: List[float] = []
        self._poses: List[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    @property
    def newest_stamp(self) -> Optional[float]:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    @property
    def oldest_stamp(self) -> Optional[float]:
        with self._lock:
            return self._stamps[0] if self._stamps else None

    def add(self, stamp: float, T: np.ndarray) -> None:
        """Store pose ``T`` (4, 4) at ``stamp`` seconds; a pose with the same stamp is replaced.

        Raises PoseError (a ValueError) for a non-finite or non-rigid pose and ValueError for a
        non-finite stamp.
        """
        stamp = float(stamp)
        if not np.isfinite(stamp):
            raise ValueError(f"pose stamp is not finite: {stamp}")
        T = np.array(T, dtype=np.float64)
        if self.check:
            check_pose(T)
        with self._lock:
            i = bisect.bisect_left(self._stamps, stamp)
            if i < len(self._stamps) and self._stamps[i] == stamp:
                self._poses[i] = T
            else:
                self._stamps.insert(i, stamp)
                self._poses.insert(i, T)
            cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.max_age_s)
            if cut > 0:
                del self._stamps[:cut]
                del self._poses[:cut]

    def lookup(self, stamp: float) -> np.ndarray:
        """The (4, 4) pose at ``stamp`` (see the class doc); raises PoseLookupError."""
        stamp = float(stamp)
        with self._lock:
            n = len(self._stamps)
            if n == 0:
                raise PoseLookupError(f"no pose received yet (lookup at stamp {stamp:.3f})")
            i = bisect.bisect_left(self._stamps, stamp)
            if i < n and self._stamps[i] == stamp:
                return self._compose(self._poses[i].copy())
            lo = i - 1 if i > 0 else None
            hi = i if i < n else None
            d_lo = stamp - self._stamps[lo] if lo is not None else np.inf
            d_hi = self._stamps[hi] - stamp if hi is not None else np.inf
            nearest = min(d_lo, d_hi)
            if (
                lo is not None
                and hi is not None
                and nearest <= self.tolerance_s
                and self._stamps[hi] - self._stamps[lo] <= self.max_gap_s
            ):
                alpha = d_lo / (self._stamps[hi] - self._stamps[lo])
                T = interpolate_pose(self._poses[lo], self._poses[hi], alpha)
                return self._compose(T)
            if nearest <= self.tolerance_s:
                return self._compose(self._poses[lo if d_lo <= d_hi else hi].copy())
            where = "before the oldest" if hi == 0 else "after the newest" if lo == n - 1 else "in a gap"
            raise PoseLookupError(
                f"no pose within {self.tolerance_s:g} s of stamp {stamp:.3f} "
                f"(nearest {nearest:.3f} s away, {where} of {n} buffered poses "
                f"[{self._stamps[0]:.3f}, {self._stamps[-1]:.3f}])"
            )

    def _compose(self, T: np.ndarray) -> np.ndarray:
        return T @ self.extrinsic if self.extrinsic is not None else T


# ---------------------------------------------------------------------------- stamp guard
@dataclass(frozen=True)
class StampVerdict:
    """Outcome of ``StampGuard.check``.

    Attributes:
        status: 'ok' (use the message), 'outlier' (drop it: far from the clock and from the stream's
            recent stamps, or not finite), 'backwards' (drop it: earlier than the stream allows) or
            'jump' (the stream's time really jumped: clear the buffers tied to the old time base,
            then use the message).
        reason: human-readable explanation with the stamps involved ('' when 'ok').
    """

    status: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the message may be used ('ok' or 'jump')."""
        return self.status in ("ok", "jump")


class StampGuard:
    """Plausibility of one stream's stamps (images, or poses). Thread-safe.

    The *reference* is the newest accepted stamp. A stamp is accepted when it lies within
    ``[reference - max_backward_s, reference + max_offset_s]`` and, if the reference agrees with the
    clock (within ``max_offset_s`` of ``now``; None or 0 means the clock is unknown, e.g. simulated
    time before /clock), when it agrees with the clock too. The first stamp is accepted (a bag
    replayed without /clock is far from the clock all along; a bad first stamp is left behind by the
    jump rule below). Anything else is dropped ('outlier' or 'backwards') and becomes a *candidate*:
    ``confirm`` candidates in a row, each within ``[previous - max_backward_s, previous +
    max_offset_s]`` of the one before, are a real time jump ('jump'): the last one becomes the
    reference. An accepted stamp ends the run of candidates, so isolated bad stamps interleaved with
    a valid stream never add up to a jump. Candidates far from the clock never confirm a jump away
    from a reference that agrees with the clock: a live stream cannot be taken over by bad stamps.

    Args:
        max_offset_s: how far (seconds) a stamp may be from the clock and ahead of the reference.
        max_backward_s: how far (seconds) a stamp may be behind the reference (0: strictly in order).
        confirm: consistent out-of-range stamps in a row that make a time jump (>= 2).
    """

    def __init__(self, max_offset_s: float = 300.0, max_backward_s: float = 0.0, confirm: int = 3) -> None:
        if not max_offset_s > 0:
            raise ValueError(f"max_offset_s must be > 0, got {max_offset_s}")
        if not max_backward_s >= 0:
            raise ValueError(f"max_backward_s must be >= 0, got {max_backward_s}")
        if int(confirm) < 2:
            raise ValueError(f"confirm must be >= 2, got {confirm}")
        self.max_offset_s = float(max_offset_s)
        self.max_backward_s = float(max_backward_s)
        self.confirm = int(confirm)
        self._reference: Optional[float] = None
        self._candidates: List[float] = []
        self._lock = threading.Lock()

    @property
    def reference(self) -> Optional[float]:
        """The newest accepted stamp (None before the first, and after ``reset``)."""
        with self._lock:
            return self._reference

    def reset(self) -> None:
        """Forget the reference and the candidates (after a clock jump)."""
        with self._lock:
            self._reference = None
            self._candidates.clear()

    def commit(self, stamp: float) -> None:
        """Make ``stamp`` (one ``check`` accepted) the reference if it is newer; ends a run of candidates."""
        with self._lock:
            self._commit(float(stamp))

    def _commit(self, stamp: float) -> None:
        self._reference = stamp if self._reference is None else max(self._reference, stamp)
        self._candidates.clear()

    def _near_clock(self, stamp: float, now: Optional[float]) -> bool:
        return abs(stamp - now) <= self.max_offset_s

    def check(self, stamp: float, now: Optional[float] = None, commit: bool = True) -> StampVerdict:
        """Judge ``stamp`` (seconds) against the reference and the clock ``now`` (seconds; None or 0:
        unknown). With ``commit`` an accepted stamp becomes the reference at once; without, call
        ``commit`` once the message has been used (a message that fails later never becomes the
        reference). A 'jump' always moves the reference to ``stamp``."""
        stamp = float(stamp)
        if not math.isfinite(stamp):
            return StampVerdict("outlier", f"stamp is not finite ({stamp})")
        clock = now is not None and float(now) > 0.0
        now_s = float(now) if clock else 0.0
        with self._lock:
            ref = self._reference
            if ref is None:
                accept = True
            else:
                in_window = ref - self.max_backward_s <= stamp <= ref + self.max_offset_s
                follows_clock = not clock or self._near_clock(stamp, now_s) or not self._near_clock(ref, now_s)
                accept = in_window and follows_clock
            if accept:
                if commit:
                    self._commit(stamp)
                return StampVerdict("ok")
            # A candidate for a time jump.
            if self._candidates:
                prev = self._candidates[-1]
                if not (prev - self.max_backward_s <= stamp <= prev + self.max_offset_s):
                    self._candidates.clear()
            self._candidates.append(stamp)
            protected = (
                clock and ref is not None and self._near_clock(ref, now_s) and not self._near_clock(stamp, now_s)
            )
            if len(self._candidates) >= self.confirm and not protected:
                first = self._candidates[0]
                n = len(self._candidates)
                self._reference = stamp
                self._candidates.clear()
                old = "none" if ref is None else f"{ref:.3f}"
                return StampVerdict(
                    "jump",
                    f"time jumped: {n} consistent stamps from {first:.3f} s on, far from the previous "
                    f"reference {old} s",
                )
            del self._candidates[: -self.confirm]
            if ref is not None and ref - self.max_offset_s <= stamp < ref:
                return StampVerdict(
                    "backwards",
                    f"stamp {stamp:.3f} s is {ref - stamp:.3f} s before the stream's newest {ref:.3f} s "
                    "(time went backwards; replaying a bag without /clock?)",
                )
            where = []
            if clock:
                where.append(f"{stamp - now_s:+.3g} s from the clock")
            if ref is not None:
                where.append(f"{stamp - ref:+.3g} s from the stream's newest stamp")
            return StampVerdict(
                "outlier",
                f"stamp {stamp:.3f} s is an outlier ({', '.join(where)}; more than max_stamp_offset_s = "
                f"{self.max_offset_s:g} s)",
            )
