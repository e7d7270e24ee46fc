"""The planner's grasps executed in physics (MuJoCo): a thin marker lying on the table is grasped
and lifted; next to a neighbour, the best grasp does not put a finger through it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from grasp_shapes import box_surface  # noqa: E402

from lerf_ros.data.synthetic.objects import CLASS_BY_NAME  # noqa: E402
from lerf_ros.data.synthetic.shapes import vertex_normals  # noqa: E402
from lerf_ros.query.grasp import GripperModel, plan_grasps  # noqa: E402
from lerf_ros.sim import SimObject, SimWorld, box_object, execute_grasp  # noqa: E402

SPACING = 0.005


def _table(extent=0.3, spacing=0.01):
    u = np.arange(-extent, extent + 1e-9, spacing)
    X, Y = np.meshgrid(u, u, indexing="ij")
    return np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], axis=1)


def _mesh_surface(parts, spacing=SPACING):
    """Points and unit normals on the parts' surfaces (triangles sampled about every ``spacing``),
    above the lowest 2 mm (the table hides the rest)."""
    pts, nrm = [], []
    rng = np.random.default_rng(0)
    for p in parts:
        v, t = np.asarray(p.vertices, float), np.asarray(p.triangles)
        n = vertex_normals(v, t)
        tri = v[t]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        k = rng.poisson(area / spacing**2 * 2) + 1
        idx = np.repeat(np.arange(len(t)), k)
        w = rng.dirichlet(np.ones(3), len(idx))
        pts.append(np.einsum("ki,kij->kj", w, tri[idx]))
        nrm.append(np.einsum("ki,kij->kj", w, n[t[idx]]))
    P, N = np.concatenate(pts), np.concatenate(nrm)
    N /= np.maximum(np.linalg.norm(N, axis=1, keepdims=True), 1e-12)
    keep = P[:, 2] > 0.002
    return P[keep], N[keep]


def _plan(points, normals, scene, max_grasps=3):
    rel = np.full(len(points), 0.9)
    return plan_grasps(points, normals, rel, scene, GripperModel(), 0.02, 10, max_grasps, point_spacing=SPACING)


def test_thin_marker_lying_on_the_table_is_grasped_and_lifted():
    """A marker 1.8 cm thick lying on the table: the best grasp pinches it across its body with the
    fingertips below its top, and it lifts the marker in physics."""
    rng = np.random.default_rng(1)
    parts = CLASS_BY_NAME["marker"].build(rng, 1.0)
    pts, nrm = _mesh_surface(parts)
    plan = _plan(pts, nrm, np.concatenate([pts, _table()]))
    assert plan.grasps, plan.message
    best = plan.grasps[0]
    assert best.position[2] < 0.018
    size = np.ptp(np.concatenate([p.vertices for p in parts]), axis=0)
    world = SimWorld([SimObject("marker", "marker", np.zeros(3), np.eye(3), size, parts)], GripperModel())
    out = execute_grasp(world, best.pose, best.width, "marker")
    assert out.success, out


def test_best_grasp_next_to_a_neighbour_does_not_go_through_it():
    """A 5 x 6 cm box with a tall box 1.2 cm beside its long side (less than a finger and its
    clearance): the box's narrow side is across y, towards the neighbour, so the grasp that closes
    across it would put a finger through the neighbour. It is not returned first: the best grasp
    closes along x and lifts the box in physics without touching the neighbour; the grasp across y
    at the same place collides with the neighbour."""
    size, wall = np.array([0.06, 0.05, 0.05]), np.array([0.14, 0.03, 0.10])
    center, wall_c = np.array([0.0, 0.0, 0.025]), np.array([0.0, 0.025 + 0.012 + 0.015, 0.05])
    pts, nrm = box_surface(center, size)
    wpts, _ = box_surface(wall_c, wall)
    plan = _plan(pts, nrm, np.concatenate([pts, wpts, _table()]))
    assert plan.grasps, plan.message
    best = plan.grasps[0]
    assert abs(best.closing_axis[1]) < 0.3, best.closing_axis
    world = SimWorld(
        [box_object("target", size, center), box_object("neighbour", wall, wall_c)],
        GripperModel(),
    )
    out = execute_grasp(world, best.pose, best.width, "target")
    assert out.success, out
    assert "neighbour" not in out.moved
    across = best.pose.copy()
    across[:3, 0], across[:3, 1] = best.pose[:3, 1], -best.pose[:3, 0]  # turned 90 degrees about the approach
    bad = execute_grasp(world, across, 0.062, "target")
    assert not bad.success and bad.reason == "collision" and "neighbour" in bad.hit, bad
