"""Physics checks of grasps (lerf_ros.sim): a centred grasp lifts a box, the same grasp beside it
closes on nothing, a grasp through a neighbour reports the collision and what it hit."""

import numpy as np
import pytest

pytest.importorskip("mujoco")

from grasp_shapes import box_surface  # noqa: E402

from lerf_ros.data.synthetic.objects import CLASS_BY_NAME  # noqa: E402
from lerf_ros.data.synthetic.shapes import Part  # noqa: E402
from lerf_ros.query.grasp import GripperModel  # noqa: E402
from lerf_ros.sim import SimWorld, box_object, execute_grasp  # noqa: E402
from lerf_ros.sim.collision import convex_pieces, hull_volume, part_is_convex, part_volume  # noqa: E402

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


def test_the_simulated_fingers_open_as_wide_as_the_planners_gripper():
    """One gripper: a box 11 cm across is lifted by the fingers of a 14 cm gripper; with the 8 cm
    default the same grasp cannot open that far and its fingers come down onto the box."""
    box = [box_object("wide box", (0.05, 0.11, 0.05), (0.0, 0.0, 0.025))]
    pose = top_down(0.0, 0.0, 0.03)
    wide = execute_grasp(SimWorld(box, GripperModel(max_width=0.14)), pose, 0.13, "wide box")
    assert wide.success, wide
    narrow = execute_grasp(SimWorld(box, GripperModel()), pose, 0.13, "wide box")
    assert not narrow.success
    assert narrow.reason == "collision" and "wide box" in narrow.hit, narrow


def test_wrong_name_is_an_error(world):
    with pytest.raises(KeyError):
        execute_grasp(world, top_down(0.0, 0.0, 0.03), 0.06, "giraffe")


def test_collision_pieces_keep_a_mug_hollow():
    rng = np.random.default_rng(0)
    body = CLASS_BY_NAME["mug"].build(rng, 1.0)[0]
    assert not part_is_convex(body)
    pieces = convex_pieces([body])
    assert len(pieces) > 4
    # no piece reaches across the opening: every piece is much smaller than the mug
    spans = [float(np.ptp(p[:, :2], axis=0).max()) for p in pieces]
    assert max(spans) < 0.06
    cube = CLASS_BY_NAME["rubik's cube"].build(rng, 1.0)
    assert len(convex_pieces(cube)) == 1
    # a roll of tape: every vertex lies on its hull (on the caps), its inner wall does not
    tape = CLASS_BY_NAME["tape"].build(rng, 1.0)
    assert not any(part_is_convex(p) for p in tape)


def test_lathed_convex_parts_are_one_hull_with_the_hull_volume():
    """A candle and a soda can are lathed solids whose triangles are not all wound outwards (their
    signed volume is a fraction of the true one): they are convex, so each is one hull piece and
    its volume is the hull's (a cylinder's within 3%)."""
    rng = np.random.default_rng(0)
    for name, radius, height in (("candle", 0.035, 0.10), ("soda can", 0.033, 0.122)):
        body = CLASS_BY_NAME[name].build(rng, 1.0)[0]
        assert part_is_convex(body), name
        assert len(convex_pieces([body])) == 1, name
        assert part_volume(body) == pytest.approx(hull_volume(body.vertices))
        assert part_volume(body) == pytest.approx(np.pi * radius**2 * height, rel=0.1), name


def _lathe_volume(r, z):
    """Volume of the solid of revolution of the closed profile polygon (r, z) (Pappus: 2 pi times
    the first moment of its area about the axis)."""
    r, z = np.asarray(r, float), np.asarray(z, float)
    r1, z1 = np.roll(r, -1), np.roll(z, -1)
    return abs(2 * np.pi * float(np.sum((r + r1) * (r * z1 - r1 * z))) / 6.0)


def test_hollow_lathed_parts_weigh_their_volume_wherever_they_lie():
    """A plate and a mug are lathed solids that are not convex (their mass comes from the enclosed
    volume) and whose triangles are not all wound the same way: their volume is the solid of
    revolution's (the 28-sided mesh within 3%) wherever the mesh lies. Summed as wound, the plate
    centred on its origin came out at a quarter of its volume and the mug at about a fiftieth."""
    rng = np.random.default_rng(0)
    plate = CLASS_BY_NAME["plate"].build(rng, 1.0)[0]
    mug = CLASS_BY_NAME["mug"].build(rng, 1.0)[0]
    R, h, w = 0.040, 0.095, 0.006
    expected = {
        "plate": (plate, _lathe_volume([0, 0.07, 0.12, 0.08, 0], [0, 0, 0.02, 0.006, 0.006])),
        "mug": (mug, _lathe_volume([0, R, R, R - w, R - w, 0], [0, 0, h, h, 0.008, 0.008])),
    }
    for name, (part, volume) in expected.items():
        assert not part_is_convex(part), name
        for shift in ((0.0, 0.0, 0.0), (0.0, 0.0, -0.5 * np.ptp(part.vertices[:, 2])), (0.3, -0.2, 0.05)):
            moved = Part(part.vertices + np.asarray(shift), part.triangles, part.material, part.smooth)
            assert part_volume(moved) == pytest.approx(volume, rel=0.03), (name, shift)


def _planned(points, normals, scene, max_grasps=5):
    from lerf_ros.query.grasp import plan_grasps

    rel = np.full(len(points), 0.9)
    return plan_grasps(points, normals, rel, scene, GripperModel(), 0.02, 10, max_grasps, point_spacing=0.005)


def _table_points(extent=0.25, spacing=0.01):
    u = np.arange(-extent, extent + 1e-9, spacing)
    X, Y = np.meshgrid(u, u, indexing="ij")
    return np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], axis=1)


def test_planned_grasp_on_a_flat_object_lifts_it():
    """A phone-like box 1.2 cm thick: the planner pinches it by its sides near the table, and the
    grasp lifts it in physics."""
    center, size, yaw = (0.02, -0.01, 0.006), (0.14, 0.06, 0.012), 0.4
    pts, nrm = box_surface(center, size, yaw)
    plan = _planned(pts, nrm, np.concatenate([pts, _table_points()]))
    assert plan.grasps, plan.message
    best = plan.grasps[0]
    assert best.position[2] < size[2]  # fingertips below its top
    world = SimWorld([box_object("phone", size, center, yaw)], GripperModel())
    out = execute_grasp(world, best.pose, best.width, "phone")
    assert out.success, out
    # the same grasp with the fingertips 1.5 cm higher (above the phone) closes on nothing
    high = best.pose.copy()
    high[2, 3] += 0.015
    assert not execute_grasp(world, high, best.width, "phone").success


def _sphere(radius, center, spacing=0.005):
    """Points and outward normals of a sphere's surface above its lowest 5 mm (the part cameras see)."""
    n = int(4 * np.pi * radius**2 / spacing**2)
    k = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * k / n), np.pi * (1 + 5**0.5) * k
    d = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    p = np.asarray(center) + radius * d
    keep = p[:, 2] > 0.005
    return p[keep], d[keep]


def test_ranking_puts_a_grasp_that_holds_first():
    """A ball 7.4 cm across (a gripper opening of 8 cm): grasps below its cap are possible at
    several depths, and the shallow ones squeeze it out upwards. The best-ranked grasp holds in
    physics, and so do the next two; the same grasp closing on the cap (fingertips 2.5 cm above
    the middle) does not."""
    from lerf_ros.data.synthetic.shapes import Material, ellipsoid
    from lerf_ros.sim import SimObject

    r = 0.037
    pts, nrm = _sphere(r, (0.0, 0.0, r))
    plan = _planned(pts, nrm, np.concatenate([pts, _table_points()]), max_grasps=20)
    assert plan.grasps, plan.message
    best = plan.grasps[0]
    ball = SimObject("ball", "tennis ball", np.zeros(3), np.eye(3), np.full(3, 2 * r), [])
    ball.parts = [ellipsoid((r, r, r), Material((0.8, 0.9, 0.3)))]
    world = SimWorld([ball], GripperModel())
    assert abs(best.position[2] - r) < 0.012, best.position  # close to the widest part
    assert execute_grasp(world, best.pose, best.width, "ball").success
    assert all(abs(g.position[2] - r) < 0.015 for g in plan.grasps[:3])
    # the same grasp on the cap, fingertips 2.5 cm above the middle, opened to the cap's chord
    cap = best.pose.copy()
    cap[2, 3] = r + 0.025
    chord = 2 * np.sqrt(r**2 - 0.025**2)
    assert not execute_grasp(world, cap, chord + 0.01, "ball").success
