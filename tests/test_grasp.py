"""Grasp-target poses on point clusters built here: boxes on a table, with exact normals."""

from __future__ import annotations

import numpy as np
import pytest
from grasp_shapes import SPACING, box_surface, rot_z

from lerf_ros.query.grasp import (
    GripperModel,
    _outline_cos_runs,
    cluster_dbscan,
    gripper_collisions,
    plan_grasps,
    quaternion_xyzw_to_rotation,
    rank_clusters,
    rotation_to_quaternion_xyzw,
)

GRIPPER = GripperModel(max_width=0.08, finger_depth=0.04, width_margin=0.01, support_clearance=0.01)


def table(extent=0.3, z=0.0, spacing=0.01, hole_box=None):
    u = np.arange(-extent, extent + 1e-9, spacing)
    X, Y = np.meshgrid(u, u, indexing="ij")
    p = np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], axis=1)
    return p


def in_box(p, center, size, yaw=0.0, grow=0.02):
    q = (np.asarray(p) - np.asarray(center)) @ rot_z(yaw)
    return bool(np.all(np.abs(q) <= np.asarray(size) / 2 + grow))


def plan_for_box(center, size, yaw=0.0, extra_scene=None, max_grasps=5):
    pts, nrm = box_surface(center, size, yaw)
    rel = np.full(len(pts), 0.9)
    scene = np.concatenate([pts, table()] + ([extra_scene] if extra_scene is not None else []))
    return plan_grasps(pts, nrm, rel, scene, GRIPPER, eps=0.02, min_points=10, max_grasps=max_grasps), pts


def assert_frames_valid(grasps):
    for g in grasps:
        R = g.pose[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(np.cross(R[:, 1], R[:, 2]), R[:, 0], atol=1e-9)  # x = y cross z
        np.testing.assert_allclose(g.pose[3], [0, 0, 0, 1])


@pytest.mark.parametrize("yaw", [0.0, 0.6])
def test_small_box_gets_top_down_grasp_across_narrow_side(yaw):
    center, size = (0.05, -0.02, 0.025), (0.04, 0.10, 0.05)  # 4 cm narrow, 10 cm long, 5 cm tall
    plan, _ = plan_for_box(center, size, yaw)
    assert plan.grasps, plan.message
    assert_frames_valid(plan.grasps)
    best = plan.grasps[0]
    assert best.kind == "top"
    np.testing.assert_allclose(best.approach, [0, 0, -1], atol=1e-6)
    assert in_box(best.position, center, size, yaw)
    narrow = rot_z(yaw)[:, 0]
    assert abs(best.closing_axis @ narrow) > 0.98
    assert size[0] <= best.width <= size[0] + GRIPPER.width_margin + 0.01
    assert best.width <= GRIPPER.max_width
    # The fingertips stay above the table.
    assert best.position[2] >= GRIPPER.tip_clearance - 1e-6
    assert all(a.score >= b.score for a, b in zip(plan.grasps, plan.grasps[1:]))
    assert all(0 < g.score <= 1 for g in plan.grasps)


def test_tall_object_is_grasped_from_the_side_above_the_table():
    center, size = (0.0, 0.0, 0.10), (0.05, 0.06, 0.20)
    plan, _ = plan_for_box(center, size, max_grasps=60)
    assert plan.grasps, plan.message
    assert_frames_valid(plan.grasps)
    best = plan.grasps[0]
    assert best.kind == "side"
    assert abs(best.approach[2]) < 1e-6  # horizontal approach
    assert in_box(best.position, center, size)
    assert best.width <= GRIPPER.max_width
    # Fingers (breadth along gripper x, here vertical) clear the table.
    assert best.position[2] - GRIPPER.finger_breadth / 2 > 0.0
    assert gripper_collisions(best.pose, best.width, GRIPPER, table()) == 0
    # A top-down grasp is still offered, ranked below the side grasps.
    tops = [g for g in plan.grasps if g.kind == "top"]
    assert tops and tops[0].score < best.score


def test_object_wider_than_gripper_gets_no_grasp_and_says_why():
    plan, _ = plan_for_box((0, 0, 0.025), (0.20, 0.20, 0.05))
    assert plan.grasps == []
    assert "maximum opening" in plan.message and "0.080" in plan.message


def test_obstacle_above_blocks_top_down_grasp():
    center, size = (0.0, 0.0, 0.025), (0.04, 0.06, 0.05)
    free, _ = plan_for_box(center, size)
    assert free.grasps and free.grasps[0].kind == "top"
    u = np.arange(-0.1, 0.1 + 1e-9, 0.005)
    X, Y = np.meshgrid(u, u)
    shelf = np.stack([X.ravel(), Y.ravel(), np.full(X.size, 0.09)], axis=1)  # 4 cm above the top
    blocked, _ = plan_for_box(center, size, extra_scene=shelf)
    assert blocked.grasps == []
    assert "collide" in blocked.message


def test_chooses_cluster_by_relevancy_mass_and_compactness():
    a, na = box_surface((0.0, 0.0, 0.025), (0.04, 0.05, 0.05))
    b, nb = box_surface((0.3, 0.0, 0.025), (0.04, 0.05, 0.05))
    xyz, nrm = np.concatenate([a, b]), np.concatenate([na, nb])
    for rel_a, rel_b, expect_x in ((0.9, 0.6, 0.0), (0.6, 0.9, 0.3)):
        rel = np.concatenate([np.full(len(a), rel_a), np.full(len(b), rel_b)])
        plan = plan_grasps(xyz, nrm, rel, np.concatenate([xyz, table(0.5)]), GRIPPER, 0.02, 10, 5)
        assert len(plan.clusters) == 2
        assert plan.grasps and all(g.cluster == 0 for g in plan.grasps)
        assert plan.grasps[0].position[0] == pytest.approx(expect_x, abs=0.03)
    # At equal mass, the compact cluster wins over a sprawling one.
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 0.01, (100, 3)), rng.normal(1.0, 0.1, (100, 3))])
    ranked = rank_clusters(pts, np.full(200, 0.8), labels, 0.08)
    assert ranked[0].label == 0 and ranked[0].score > ranked[1].score


def test_dbscan_separates_boxes_and_marks_noise():
    a, _ = box_surface((0.0, 0.0, 0.025), (0.04, 0.05, 0.05))
    b, _ = box_surface((0.2, 0.0, 0.025), (0.04, 0.05, 0.05))
    lone = np.array([[1.0, 1.0, 1.0]])
    labels = cluster_dbscan(np.concatenate([a, b, lone]), eps=0.02, min_points=10)
    assert len(set(labels[: len(a)])) == 1 and len(set(labels[len(a) : len(a) + len(b)])) == 1
    assert labels[0] != labels[len(a)]
    assert labels[-1] == -1


def test_too_few_points_and_bad_shapes():
    plan = plan_grasps(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2), None, GRIPPER, 0.02, 10, 5)
    assert plan.grasps == [] and "too few" in plan.message
    with pytest.raises(ValueError, match="expected xyz"):
        plan_grasps(np.zeros((5, 2)), np.zeros((5, 3)), np.ones(5), None, GRIPPER, 0.02, 10, 5)
    with pytest.raises(ValueError, match="max_width"):
        GripperModel(max_width=0.0).check()


def test_quaternion_round_trip_and_known_values():
    np.testing.assert_allclose(rotation_to_quaternion_xyzw(np.eye(3)), [0, 0, 0, 1], atol=1e-12)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(rotation_to_quaternion_xyzw(rot_z(np.pi / 2)), [0, 0, s, s], atol=1e-12)
    # 180 degrees about x: w = 0 branch.
    np.testing.assert_allclose(np.abs(rotation_to_quaternion_xyzw(np.diag([1.0, -1, -1]))), [1, 0, 0, 0], atol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        R = quaternion_xyzw_to_rotation(q)
        q2 = rotation_to_quaternion_xyzw(R)
        assert q2[3] >= 0
        np.testing.assert_allclose(q2, q * np.sign(q[3]), atol=1e-9)


def test_transformed_grasp_moves_with_the_frame():
    plan, _ = plan_for_box((0.0, 0.0, 0.025), (0.04, 0.06, 0.05))
    g = plan.grasps[0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot_z(0.3), [1.0, 2.0, 3.0]
    h = g.transformed(T)
    np.testing.assert_allclose(h.position, T[:3, :3] @ g.position + T[:3, 3])
    np.testing.assert_allclose(h.approach, T[:3, :3] @ g.approach)
    assert h.width == g.width and h.score == g.score


def cup_surface(center, r_out, wall, height, spacing=0.005):
    """An open cylindrical cup (walls and an inner floor, no lid) standing on z = 0: points and
    outward normals."""
    cx, cy = center[0], center[1]
    pts, nrm = [], []
    zs = np.arange(0.004, height + 1e-9, spacing)
    for r, sign in ((r_out, 1.0), (r_out - wall, -1.0)):
        th = np.arange(0, 2 * np.pi, spacing / r)
        T, Z = np.meshgrid(th, zs)
        d = np.stack([np.cos(T.ravel()), np.sin(T.ravel()), np.zeros(T.size)], 1)
        pts.append(np.stack([cx + r * d[:, 0], cy + r * d[:, 1], Z.ravel()], 1))
        nrm.append(sign * d)
    u = np.arange(-(r_out - wall), r_out - wall + 1e-9, spacing)  # the floor inside
    X, Y = np.meshgrid(u, u)
    inside = X**2 + Y**2 < (r_out - wall) ** 2
    pts.append(np.stack([cx + X[inside], cy + Y[inside], np.full(inside.sum(), 0.004)], 1))
    nrm.append(np.tile([0.0, 0.0, 1.0], (int(inside.sum()), 1)))
    return np.concatenate(pts), np.concatenate(nrm)


def test_bowl_wider_than_gripper_is_grasped_at_its_rim():
    center, r_out, wall, height = (0.02, -0.01), 0.08, 0.006, 0.06
    pts, nrm = cup_surface(center, r_out, wall, height)
    scene = np.concatenate([pts, table()])
    plan = plan_grasps(pts, nrm, np.full(len(pts), 0.9), scene, GRIPPER, 0.02, 10, 5, point_spacing=0.005)
    assert plan.grasps, plan.message
    assert_frames_valid(plan.grasps)
    for g in plan.grasps:
        radial = np.hypot(g.position[0] - center[0], g.position[1] - center[1])
        assert r_out - wall - 0.01 <= radial <= r_out + 0.005  # on the wall, not across the bowl
        assert g.width <= wall + GRIPPER.width_margin + 0.01
        closing = np.array([*g.closing_axis[:2], 0.0])
        to_axis = np.array([g.position[0] - center[0], g.position[1] - center[1], 0.0]) / radial
        assert abs(closing @ to_axis) > 0.9  # closes across the wall
        assert g.position[2] > height - GRIPPER.finger_depth  # fingertips reach in from the rim
        assert gripper_collisions(g.pose, g.width, GRIPPER, scene, pad=0.0025) <= GRIPPER.collision_tolerance


def test_gap_inside_an_object_that_fits_is_not_a_part():
    """A hole in the seen surface of a small box (part of it no camera saw) must not make the
    planner put a finger into the box: the runs that fit together are grasped together."""
    center, size = (0.0, 0.0, 0.025), (0.05, 0.10, 0.05)
    pts, nrm = box_surface(center, size)
    hole = (np.abs(pts[:, 0] + 0.002) < 0.013) & (pts[:, 2] > 0.03)  # top and sides near x = 0
    pts, nrm = pts[~hole], nrm[~hole]
    scene = np.concatenate([pts, table()])
    plan = plan_grasps(pts, nrm, np.full(len(pts), 0.9), scene, GRIPPER, 0.02, 10, 5, point_spacing=0.01)
    assert plan.grasps, plan.message
    for g in plan.grasps:
        if abs(g.closing_axis[0]) > 0.9:  # closing across the 5 cm side
            assert g.width >= size[0] - 0.002


def outline_cos(xs, ys, u, spacing):
    """The planner's outline measure of one run of points."""
    o = np.argsort(ys, kind="stable")
    return float(_outline_cos_runs(xs[o], ys[o], np.full(len(xs), u), np.array([len(xs)]), spacing)[0])


def test_outline_slope_tells_a_straight_side_from_a_corner():
    xs = np.repeat(np.linspace(-0.01, 0.01, 5), 7)
    straight = np.tile(np.linspace(-0.03, 0.03, 7), 5)
    assert outline_cos(xs, straight, 0.0, 0.005) > 0.99
    corner = np.concatenate([np.linspace(-0.03 + x + 0.01, 0.03 - x - 0.01, 7) for x in np.linspace(-0.01, 0.01, 5)])
    assert 0.6 < outline_cos(xs, corner, 0.0, 0.005) < 0.75  # 45-degree ends: cos 45 = 0.71


def test_padding_catches_a_finger_between_sparse_samples():
    """A finger cutting through a surface sampled every 1.5 cm can fall between the samples; growing
    the volume by half the spacing finds it."""
    u = np.arange(-0.1, 0.1 + 1e-9, 0.015) + 0.0075  # no sample inside a 1 cm finger here
    X, Y = np.meshgrid(u, u)
    sheet = np.stack([X.ravel(), Y.ravel(), np.full(X.size, 0.02)], 1)
    pose = np.eye(4)
    pose[:3, 2] = [0, 0, -1]
    pose[:3, 1] = [0, 1, 0]
    pose[:3, 0] = np.cross(pose[:3, 1], pose[:3, 2])
    pose[:3, 3] = [0.0, 0.0, 0.0]  # fingertips below the sheet
    width = 0.02
    assert gripper_collisions(pose, width, GRIPPER, sheet) <= GRIPPER.collision_tolerance
    assert gripper_collisions(pose, width, GRIPPER, sheet, pad=0.0075) > GRIPPER.collision_tolerance


def test_palm_spans_the_full_opening_whatever_the_grasp_width():
    """A narrow grasp's fingers fit beside a bulge behind them, but the palm is as wide as the fully
    open gripper (it does not close with the fingers): points there, and in the corridor it sweeps
    on the way in, collide; beyond the palm's edge they do not."""
    pose = np.eye(4)  # approach +z: the palm starts at z = -finger_depth
    width = 0.03
    outer = width / 2 + GRIPPER.finger_thickness  # the fingers' outer faces
    palm = GRIPPER.max_width / 2 + GRIPPER.finger_thickness
    xs = np.linspace(-0.008, 0.008, 5)
    for z in (-GRIPPER.finger_depth - 0.01, -GRIPPER.finger_depth - 0.06):
        beside = np.stack([xs, np.full(5, 0.5 * (outer + palm)), np.full(5, z)], 1)
        assert gripper_collisions(pose, width, GRIPPER, beside) == 5
        beyond = np.stack([xs, np.full(5, palm + 0.003), np.full(5, z)], 1)
        assert gripper_collisions(pose, width, GRIPPER, beyond) == 0
    # beside the fingers themselves (in front of the palm) the opening decides
    level = np.stack([xs, np.full(5, 0.5 * (outer + palm)), np.full(5, -0.02)], 1)
    assert gripper_collisions(pose, width, GRIPPER, level) == 0


def test_cluster_as_wide_as_the_table_is_skipped_fast():
    """A query with a very low threshold makes the whole table relevant: no grasp, a reason, and
    no long search."""
    import time

    sheet = table(extent=0.6, spacing=0.01)
    sheet[:, 2] = 0.02
    nrm = np.tile([0.0, 0.0, 1.0], (len(sheet), 1))
    t0 = time.perf_counter()
    plan = plan_grasps(sheet, nrm, np.full(len(sheet), 0.5), sheet, GRIPPER, 0.025, 10, 5, point_spacing=0.01)
    assert time.perf_counter() - t0 < 10.0
    assert plan.grasps == [] and "wider than" in plan.message


def roof_surface(length=0.12, base=0.06, height=0.03, spacing=SPACING):
    """Points and outward normals of a triangular prism lying on the table, its ridge along x: two
    faces slanted at atan(height / (base / 2)) from the vertical (45 degrees here) and two ends."""
    pts, nrm = [], []
    xs = np.arange(-length / 2, length / 2 + 1e-9, spacing)
    ts = np.arange(0.0, 1.0 + 1e-9, spacing / np.hypot(base / 2, height))
    for sign in (-1.0, 1.0):
        X, T = np.meshgrid(xs, ts, indexing="ij")
        p = np.stack([X.ravel(), sign * (base / 2) * (1 - T.ravel()), height * T.ravel()], axis=1)
        n = np.tile(np.array([0.0, sign * height, base / 2]) / np.hypot(height, base / 2), (len(p), 1))
        pts.append(p)
        nrm.append(n)
    for sign in (-1.0, 1.0):  # the triangular ends
        Y, Z = np.meshgrid(np.arange(-base / 2, base / 2 + 1e-9, spacing), np.arange(0, height + 1e-9, spacing))
        inside = np.abs(Y) <= (base / 2) * (1 - Z / height) + 1e-9
        p = np.stack([np.full(inside.sum(), sign * length / 2), Y[inside], Z[inside]], axis=1)
        pts.append(p)
        nrm.append(np.tile([sign, 0.0, 0.0], (len(p), 1)))
    return np.concatenate(pts), np.concatenate(nrm)


def test_antipodal_check_rejects_closing_on_slanted_faces():
    """A prism whose long sides slant 45 degrees: fingers closing across them would squeeze it out
    of the grasp (the contact normals lie outside any friction cone the gripper can count on), so
    no grasp closes across them; a box of the same footprint is grasped across its short side,
    and so is the prism when the contact check is switched off."""
    pts, nrm = roof_surface()
    scene = np.concatenate([pts, table()])
    plan = plan_grasps(pts, nrm, np.full(len(pts), 0.9), scene, GRIPPER, 0.02, 10, 5, point_spacing=SPACING)
    across = [g for g in plan.grasps if abs(g.closing_axis[1]) > 0.5]
    assert across == [], [np.round(g.closing_axis, 2) for g in across]
    lax = GripperModel(**{**GRIPPER.__dict__, "min_contact_cos": 0.0})
    loose = plan_grasps(pts, nrm, np.full(len(pts), 0.9), scene, lax, 0.02, 10, 5, point_spacing=SPACING)
    assert loose.grasps and abs(loose.grasps[0].closing_axis[1]) > 0.9
    box_plan, _ = plan_for_box((0.0, 0.0, 0.015), (0.12, 0.06, 0.03))
    assert box_plan.grasps and abs(box_plan.grasps[0].closing_axis[1]) > 0.9


def test_flat_object_is_pinched_near_the_table():
    """A phone-like box 1.2 cm thick: the fingertips go down to tip_clearance above the table (found
    from the table's points), below the box's top, so the pads close on its sides."""
    center, size = (0.03, 0.01, 0.006), (0.14, 0.06, 0.012)
    plan, _ = plan_for_box(center, size, yaw=0.3)
    assert plan.grasps, plan.message
    best = plan.grasps[0]
    assert best.kind == "top"
    assert best.position[2] == pytest.approx(GRIPPER.tip_clearance, abs=1e-3)
    assert best.position[2] < size[2] - 0.005
    assert abs(best.closing_axis @ rot_z(0.3)[:, 1]) > 0.95  # across the 6 cm side


@pytest.mark.parametrize("yaw", [0.0, 0.4, 1.0])
def test_grasp_beside_the_mass_centre_along_the_closing_axis_ranks_below_a_centred_one(yaw):
    """A flat square frame wider than the gripper with a bar across its middle (a handle): pinching
    a wall of the frame holds the object 4 cm beside its mass centre along the closing axis (it
    turns about the jaws on the lift); pinching the bar holds it at its centre, and ranks first."""
    parts, normals = [], []
    for c, size in (
        ((0, 0.042, 0.004), (0.09, 0.006, 0.008)),
        ((0, -0.042, 0.004), (0.09, 0.006, 0.008)),
        ((0.042, 0, 0.004), (0.006, 0.078, 0.008)),
        ((-0.042, 0, 0.004), (0.006, 0.078, 0.008)),
        ((0, 0, 0.004), (0.078, 0.006, 0.008)),  # the bar
    ):
        p, n = box_surface(c, size, yaw)
        parts.append(p)
        normals.append(n)
    pts, nrm = np.concatenate(parts), np.concatenate(normals)
    scene = np.concatenate([pts, table()])
    plan = plan_grasps(pts, nrm, np.full(len(pts), 0.9), scene, GRIPPER, 0.02, 10, 5, point_spacing=SPACING)
    assert plan.grasps, plan.message
    best = plan.grasps[0]
    assert np.linalg.norm(best.position[:2]) < 0.015, best.position
