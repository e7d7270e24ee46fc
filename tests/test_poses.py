"""Rigid-transform helpers and the stamped pose buffer."""

import math
import threading

import numpy as np
import pytest

from lerf_ros.data.frame import FrameError
from lerf_ros.data.frame import check_pose as check_frame_pose
from lerf_ros.geometry.poses import (
    PoseBuffer,
    PoseError,
    PoseLookupError,
    StampGuard,
    check_pose,
    interpolate_pose,
    invert_pose,
    make_pose,
    matrix_to_quat,
    pose_distance,
    pose_to_tq,
    quat_slerp,
    quat_to_matrix,
)


def axis_angle_matrix(axis, angle):
    """Rodrigues' formula, written independently of the quaternion code under test."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def rigid(axis, angle, t):
    T = np.eye(4)
    T[:3, :3] = axis_angle_matrix(axis, angle)
    T[:3, 3] = t
    return T


def test_quat_to_matrix_matches_axis_angle():
    # q = (sin(a/2) * axis, cos(a/2))
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(50, 3))
    angles = rng.uniform(-math.pi, math.pi, size=50)
    unit = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    q = np.concatenate([np.sin(angles / 2)[:, None] * unit, np.cos(angles / 2)[:, None]], axis=1)
    R = quat_to_matrix(q)
    expected = np.stack([axis_angle_matrix(a, g) for a, g in zip(unit, angles)])
    np.testing.assert_allclose(R, expected, atol=1e-12)
    # 90 degrees about z maps x to y
    Rz = quat_to_matrix([0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    np.testing.assert_allclose(Rz @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_matrix_to_quat_round_trip_all_pivots():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(500, 4))
    # include rotations near 180 degrees about each axis (w ~ 0: the x/y/z pivots)
    q[:3] = [[1, 0, 0, 1e-9], [0, 1, 0, 0], [0, 0, 1, 0]]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, 3:] < 0, -1, 1)
    back = matrix_to_quat(quat_to_matrix(q))
    assert np.all(back[:, 3] >= 0)
    # q and -q are the same rotation; w >= 0 fixes the sign except when w == 0
    same = np.minimum(np.abs(back - q).max(axis=1), np.abs(back + q).max(axis=1))
    assert same.max() < 1e-9
    np.testing.assert_allclose(quat_to_matrix(back), quat_to_matrix(q), atol=1e-12)


def test_make_pose_split_and_invert():
    T = rigid([1, 2, 3], 0.7, [0.5, -1.0, 2.0])
    t, q = pose_to_tq(T)
    np.testing.assert_allclose(make_pose(t, q), T, atol=1e-12)
    np.testing.assert_allclose(invert_pose(T) @ T, np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match="zero length"):
        make_pose([0, 0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="3 components"):
        make_pose([0, 0], [0, 0, 0, 1])


def test_slerp_constant_angular_rate_and_short_way():
    q0 = np.array([0, 0, 0, 1.0])
    q1 = np.array([0, 0, math.sin(0.5), math.cos(0.5)])  # 1 rad about z
    alphas = np.linspace(0, 1, 11)
    q = quat_slerp(q0, q1, alphas)
    angles = 2 * np.arctan2(q[:, 2], q[:, 3])
    np.testing.assert_allclose(angles, alphas * 1.0, atol=1e-12)
    # -q1 is the same rotation: the result must not take the long way round
    q_neg = quat_slerp(q0, -q1, 0.5)
    np.testing.assert_allclose(quat_to_matrix(q_neg), quat_to_matrix(q[5]), atol=1e-12)


def test_pose_distance():
    a = rigid([0, 0, 1], 0.0, [0, 0, 0])
    b = rigid([0, 1, 0], 0.3, [3, 4, 0])
    dt, ang = pose_distance(a, b)
    assert dt == pytest.approx(5.0) and ang == pytest.approx(0.3)


def known_motion(t):
    """Camera moving at constant velocity and turning at a constant rate about a fixed axis."""
    v = np.array([0.4, -0.2, 0.1])
    omega = 0.8  # rad/s about the axis below
    return rigid([0.2, 1.0, 0.3], omega * t, v * t + [1.0, 2.0, 0.5])


def test_buffer_interpolates_known_motion():
    buf = PoseBuffer(max_age_s=100, tolerance_s=0.06)
    for t in np.arange(0.0, 2.01, 0.1):  # 10 Hz odometry
        buf.add(float(t), known_motion(t))
    for t in [0.0, 0.03, 0.05, 0.37, 1.234, 1.99, 2.0]:
        np.testing.assert_allclose(buf.lookup(t), known_motion(t), atol=1e-9)
    # a stamp just outside the newest pose, within tolerance: the nearest (no extrapolation)
    np.testing.assert_allclose(buf.lookup(2.03), known_motion(2.0), atol=1e-12)


def test_buffer_nearest_when_bracket_too_wide_and_errors():
    buf = PoseBuffer(max_age_s=100, tolerance_s=0.05)
    buf.add(1.0, known_motion(1.0))
    buf.add(2.0, known_motion(2.0))
    # bracketed, but the gap of 1 s is wider than 2 * tolerance: the nearest within tolerance
    np.testing.assert_allclose(buf.lookup(1.04), known_motion(1.0), atol=1e-12)
    with pytest.raises(PoseLookupError, match=r"no pose within 0.05 s of stamp 1.500 \(nearest 0.500 s away, in a gap"):
        buf.lookup(1.5)
    with pytest.raises(PoseLookupError, match="after the newest"):
        buf.lookup(2.4)
    with pytest.raises(PoseLookupError, match="before the oldest"):
        buf.lookup(0.5)
    with pytest.raises(PoseLookupError, match="no pose received yet"):
        PoseBuffer().lookup(1.0)


def test_buffer_out_of_order_pruning_and_validation():
    buf = PoseBuffer(max_age_s=1.0, tolerance_s=0.2)
    for t in [0.5, 0.1, 0.3, 0.2, 0.4]:
        buf.add(t, known_motion(t))
    np.testing.assert_allclose(buf.lookup(0.25), known_motion(0.25), atol=1e-9)
    buf.add(1.35, known_motion(1.35))  # prunes poses older than 0.35
    assert len(buf) == 3 and buf.oldest_stamp == pytest.approx(0.4)
    bad = known_motion(0.5)
    bad[0, 0] = np.nan
    with pytest.raises(PoseError, match="NaN"):
        buf.add(2.0, bad)
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(PoseError, match="not a rigid"):
        buf.add(2.0, shear)
    with pytest.raises(ValueError, match="stamp is not finite"):
        buf.add(float("nan"), np.eye(4))


def test_buffer_extrinsic_composition():
    body_T_cam = rigid([1, 0, 0], -math.pi / 2, [0.1, 0.0, 0.3])
    buf = PoseBuffer(tolerance_s=0.05, extrinsic=body_T_cam)
    buf.add(1.0, known_motion(1.0))
    T = buf.lookup(1.0)
    np.testing.assert_allclose(T, known_motion(1.0) @ body_T_cam, atol=1e-12)
    # the camera origin is the body origin moved by the lever arm expressed in the world
    np.testing.assert_allclose(T[:3, 3], known_motion(1.0)[:3, :3] @ [0.1, 0, 0.3] + known_motion(1.0)[:3, 3])


def test_buffer_thread_safety():
    buf = PoseBuffer(max_age_s=1000, tolerance_s=0.01)
    errors = []

    def writer(offset):
        for i in range(300):
            buf.add(offset + 2 * i * 0.01, known_motion(offset + 2 * i * 0.01))

    def reader():
        for _ in range(300):
            try:
                if len(buf):
                    buf.lookup(buf.newest_stamp)
            except PoseLookupError:
                pass
            except Exception as exc:  # pragma: no cover - shows up as a failure
                errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(0.0,)),
        threading.Thread(target=writer, args=(0.01,)),
        threading.Thread(target=reader),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(buf) == 600
    np.testing.assert_allclose(buf.lookup(1.0), known_motion(1.0), atol=1e-9)


def test_interpolate_pose_endpoints():
    a, b = known_motion(0.0), known_motion(1.0)
    np.testing.assert_allclose(interpolate_pose(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(interpolate_pose(a, b, 1.0), b, atol=1e-12)
    np.testing.assert_allclose(interpolate_pose(a, b, 0.5), known_motion(0.5), atol=1e-12)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.eye(3), "must be 4x4"),
        (np.diag([1.0, 1.0, np.inf, 1.0]), "NaN or infinite"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.1, 0, 1.0]]), "bottom row"),
        (np.diag([1.0, 1.0, 1.1, 1.0]), "not orthonormal"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "determinant -1"),
    ],
)
def test_check_pose_names_the_problem(bad, message):
    check_pose(rigid([0.3, -1, 2], 0.7, [1, 2, 3]))  # a rigid transform passes
    with pytest.raises(PoseError, match=message):
        check_pose(bad)
    # the frame-level check reports the same problem as a FrameError
    with pytest.raises(FrameError, match=message):
        check_frame_pose(bad)


# ---------------------------------------------------------------------------- stamp guard
def test_stamp_guard_far_stamp_never_becomes_the_reference():
    g = StampGuard(max_offset_s=300.0)
    now = 1.7e9
    for k in range(5):
        assert g.check(now + 0.1 * k, now).status == "ok"
    assert g.check(now + 1e6, now).status == "outlier"  # far future
    assert g.check(now - 2e6, now).status == "outlier"  # far past
    assert g.reference == pytest.approx(now + 0.4)
    assert g.check(now + 0.5, now).status == "ok"
    # A live stream that agrees with the clock is never taken over by far stamps, even consistent ones.
    for k in range(10):
        assert g.check(now + 1e6 + k, now).status == "outlier"
    assert g.reference == pytest.approx(now + 0.5)


def test_stamp_guard_detects_a_real_jump_and_isolated_outliers_do_not_add_up():
    g = StampGuard(max_offset_s=300.0, confirm=3)
    # A bag replayed without /clock: far from the clock all along, judged against its own stamps.
    now = 1.7e9
    for k in range(5):
        assert g.check(1000.0 + k, now).ok
    # Outliers interleaved with valid stamps never make a jump.
    for k in range(10):
        assert g.check(1e6 * (k + 1), now).status == "outlier"
        assert g.check(1005.0 + k, now).status == "ok"
    # Back by 1000 s (a bag restarted): two drops, then the third consistent stamp is a jump.
    v = [g.check(14.0 + 0.1 * k, now) for k in range(3)]
    assert [x.status for x in v] == ["outlier", "outlier", "jump"], v
    assert "jumped" in v[-1].reason
    assert g.reference == pytest.approx(14.2)
    assert g.check(14.3, now).status == "ok"
    # A small step back (within max_stamp_offset) is 'backwards'; three in a row are a jump too.
    assert [g.check(10.0 + 0.1 * k, now).status for k in range(3)] == ["backwards", "backwards", "jump"]


def test_stamp_guard_commit_backwards_tolerance_and_reset():
    g = StampGuard(max_offset_s=10.0, max_backward_s=2.0)
    assert g.check(100.0).ok
    assert g.check(99.0).status == "ok"  # within max_backward_s: out-of-order poses are fine
    assert g.reference == 100.0
    assert g.check(97.0).status == "backwards"
    assert g.check(float("nan")).status == "outlier"
    # Without commit an accepted stamp does not move the reference until commit().
    assert g.check(105.0, commit=False).ok and g.reference == 100.0
    g.commit(105.0)
    assert g.reference == 105.0
    # Unknown clock (0: simulated time before /clock) is not used.
    assert g.check(106.0, now=0.0).ok
    g.reset()
    assert g.reference is None and g.check(5.0, now=1e9).ok
    with pytest.raises(ValueError):
        StampGuard(max_offset_s=0.0)
    with pytest.raises(ValueError):
        StampGuard(confirm=1)
