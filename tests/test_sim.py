"""Physics checks of grasps (lerf_ros.sim): a centred grasp lifts a box, the same grasp beside it
closes on nothing, a grasp through a neighbour reports the collision and what it hit."""

import numpy as np
import pytest

pytest.importorskip("mujoco")

from lerf_ros.data.synthetic.objects import CLASS_BY_NAME  # noqa: E402
from lerf_ros.query.grasp import GripperModel  # noqa: E402
from lerf_ros.sim import SimWorld, box_object, execute_grasp  # noqa: E402
from lerf_ros.sim.collision import CONVEX_FILL, convex_pieces, hull_volume, mesh_volume  # noqa: E402

CUBE = 0.05


def top_down(x: float, y: float, z: float) -> np.ndarray:
    """Top-down grasp pose (approach -z, closing along world y) with its origin at (x, y, z)."""
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]
    pose[:3, 3] = [x, y, z]
    return pose


@pytest.fixture(scope="module")
def world():
    objects = [
        box_object("cube", (CUBE, CUBE, CUBE), (0.0, 0.0, CUBE / 2)),
        box_object("neighbour", (0.10, 0.03, 0.10), (0.20, 0.055, 0.05)),
        box_object("target", (0.05, 0.05, 0.05), (0.20, 0.0, 0.025)),
    ]
    return SimWorld(objects, GripperModel())


def test_centred_grasp_lifts_the_box(world):
    out = execute_grasp(world, top_down(0.0, 0.0, 0.03), 0.06, "cube")
    assert out.success, out
    assert out.reason == "" and out.lift >= 0.10
    assert out.wall_s < 5.0


def test_grasp_beside_the_box_closes_on_nothing(world):
    out = execute_grasp(world, top_down(0.0, -0.05 - CUBE / 2, 0.03), 0.06, "cube")
    assert not out.success
    assert out.reason == "empty close"
    assert out.lift < 0.01


def test_grasp_through_a_neighbour_reports_the_collision(world):
    # the finger on +y comes down onto the neighbour standing 5.5 cm beside the target
    out = execute_grasp(world, top_down(0.20, 0.0, 0.03), 0.07, "target")
    assert not out.success
    assert out.reason == "collision"
    assert "neighbour" in out.hit


def test_wrong_name_is_an_error(world):
    with pytest.raises(KeyError):
        execute_grasp(world, top_down(0.0, 0.0, 0.03), 0.06, "giraffe")


def test_collision_pieces_keep_a_mug_hollow():
    rng = np.random.default_rng(0)
    body = CLASS_BY_NAME["mug"].build(rng, 1.0)[0]
    assert mesh_volume(body.vertices, body.triangles) < CONVEX_FILL * hull_volume(body.vertices)
    pieces = convex_pieces([body])
    assert len(pieces) > 4
    # no piece reaches across the opening: every piece is much smaller than the mug
    spans = [float(np.ptp(p[:, :2], axis=0).max()) for p in pieces]
    assert max(spans) < 0.06
    cube = CLASS_BY_NAME["rubik's cube"].build(rng, 1.0)
    assert len(convex_pieces(cube)) == 1
