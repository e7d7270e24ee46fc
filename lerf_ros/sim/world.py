"""A MuJoCo world of a tabletop scene and a free-floating parallel-jaw gripper.

- The table: a static box whose top is the plane z = 0.
- Each object: a free rigid body whose collision shape is its own convex pieces
  (:mod:`lerf_ros.sim.collision`), whose mass is its enclosed volume times its class density
  (:data:`DENSITY`) and whose inertia is that of its box; friction per class (:data:`FRICTION`).
- The gripper: a free-floating palm (no arm) held by a stiff weld to a target pose that the
  attempt moves (a mocap body), carrying two fingers on slide joints along its y axis, each
  driven by a position servo whose force is capped at ``SimSettings.finger_force``. Its frame is
  the planner's (``lerf_ros.query.grasp``): origin between the fingertips, +z approach, +y
  closing axis; the fingers reach back to ``z = -finger_depth`` where the palm starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from lerf_ros.data.synthetic.shapes import Part
from lerf_ros.sim.collision import convex_pieces, part_volume

__all__ = ["SimSettings", "SimObject", "SimWorld", "DENSITY", "FRICTION", "objects_from_scene", "box_object"]

#: kg/m^3 of each class's volume (a convex part's hull; a hollow mesh such as a mug's wall encloses only the wall)
DENSITY: Dict[str, float] = {
    "mug": 2000.0,
    "bowl": 2000.0,
    "plate": 2200.0,
    "bottle": 600.0,
    "book": 700.0,
    "phone": 2300.0,
    "cereal box": 120.0,
    "remote control": 600.0,
    "rubik's cube": 500.0,
    "computer mouse": 400.0,
    "candle": 900.0,
    "vase": 900.0,
    "stapler": 1500.0,
    "sponge": 60.0,
    "teapot": 600.0,
    "tape": 800.0,
    "potted plant": 400.0,
    "scissors": 3000.0,
    "marker": 700.0,
    "tennis ball": 350.0,
    "soda can": 900.0,
}
DEFAULT_DENSITY = 950.0
"""Density of the classes not listed (fruit, eggs)."""

#: sliding friction coefficient of each class's surface against the finger pads and the table
FRICTION: Dict[str, float] = {
    "mug": 0.6,
    "bowl": 0.6,
    "plate": 0.5,
    "bottle": 0.6,
    "phone": 0.5,
    "soda can": 0.5,
    "vase": 0.6,
    "scissors": 0.5,
    "apple": 0.6,
    "egg": 0.5,
    "tennis ball": 1.0,
    "sponge": 1.0,
}
DEFAULT_FRICTION = 0.8


@dataclass(frozen=True)
class SimSettings:
    """Physics of a grasp attempt. Distances in metres, times in seconds, forces in newtons."""

    finger_force: float = 40.0
    """Largest force of each finger's servo."""
    finger_kp: float = 4000.0
    """Stiffness of the finger servos (N/m): the force saturates once a finger is blocked."""
    finger_speed: float = 0.1
    """Closing speed of a finger (m/s) when its force saturates (the slide joint's damping is
    ``finger_force / finger_speed``): a real gripper closes at about this speed, and an undamped
    finger would hit a thin object at metres per second, cross its edge within one time step and
    be pushed over it."""
    palm_thickness: float = 0.02
    """Palm size along the approach axis (behind the fingers)."""
    torsional_friction: float = 0.01
    """Torsional friction of the contacts (m: the radius of a soft pad's contact patch)."""
    timestep: float = 0.002
    pre_grasp_offset: float = 0.10
    """The approach starts this far back along the approach axis."""
    approach_speed: float = 0.25
    close_time: float = 0.6
    lift_height: float = 0.15
    lift_time: float = 1.0
    hold_time: float = 2.0
    success_lift: float = 0.10
    """The target must rise at least this much for a success."""
    collision_force: float = 3.0
    """Contact force of the gripper on something during the approach that counts as a collision."""
    moved_tolerance: float = 0.01
    """A neighbour displaced more than this counts as moved."""


@dataclass
class SimObject:
    """One free body: its name, class, pose (world) and parts in its own frame."""

    name: str
    class_name: str
    position: np.ndarray
    """(3,) body origin, world."""
    rotation: np.ndarray
    """(3, 3) body axes as columns, world."""
    size: np.ndarray
    """(3,) extents of its box (inertia)."""
    parts: List[Part]
    """Meshes in the body frame."""


def box_object(
    name: str, size: Sequence[float], center: Sequence[float], yaw: float = 0.0, cls: str = "box"
) -> SimObject:
    """A box-shaped object of ``size`` (3,) centred at ``center`` (3,), turned by ``yaw`` about z."""
    from lerf_ros.data.synthetic.layout import rot_z
    from lerf_ros.data.synthetic.shapes import Material, box

    part = box(size, Material((0.6, 0.4, 0.2)))
    return SimObject(name, cls, np.asarray(center, float), rot_z(yaw), np.asarray(size, float), [part])


def objects_from_scene(scene) -> List[SimObject]:
    """The objects of a synthetic scene (``lerf_ros.data.synthetic.SyntheticScene``) as free bodies:
    their meshes are rebuilt from the scene's seed and expressed in each object's box frame."""
    from lerf_ros.data.synthetic.layout import build_layout

    p = scene.params
    layout = build_layout(p["seed"], p["n_objects"], p["n_surface_points"])
    out = []
    for obj in scene.objects:
        parts = [g.part for g in layout.geoms if g.instance_id == obj.instance_id]
        R, c = obj.rotation, obj.center
        local = [Part((q.vertices - c) @ R, q.triangles, q.material, q.smooth) for q in parts]
        out.append(SimObject(obj.name, obj.class_name, c.copy(), R.copy(), obj.size.copy(), local))
    return out


def _quat_wxyz(R: np.ndarray) -> np.ndarray:
    from lerf_ros.query.grasp import rotation_to_quaternion_xyzw

    q = rotation_to_quaternion_xyzw(R)
    return np.array([q[3], q[0], q[1], q[2]])


def _fmt(a) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.ravel(a))


def _mjcf(objects: Sequence[SimObject], gripper, s: SimSettings) -> str:
    """The MJCF text of the world (table, objects, gripper)."""
    assets, bodies = [], []
    for i, o in enumerate(objects):
        pieces = convex_pieces(o.parts)
        vol = sum(part_volume(p) for p in o.parts)
        mass = max(DENSITY.get(o.class_name, DEFAULT_DENSITY) * vol, 0.01)
        sx, sy, sz = o.size
        inertia = mass / 12.0 * np.array([sy * sy + sz * sz, sx * sx + sz * sz, sx * sx + sy * sy])
        mu = FRICTION.get(o.class_name, DEFAULT_FRICTION)
        geoms = []
        for j, pts in enumerate(pieces):
            assets.append(f'<mesh name="o{i}_{j}" vertex="{_fmt(pts)}"/>')
            geoms.append(
                f'<geom type="mesh" mesh="o{i}_{j}" friction="{mu} {s.torsional_friction} 0.0001" '
                f'condim="4" priority="1" rgba="0.8 0.6 0.3 1"/>'
            )
        bodies.append(
            f'<body name="obj{i}" pos="{_fmt(o.position)}" quat="{_fmt(_quat_wxyz(o.rotation))}">'
            f'<freejoint/><inertial pos="0 0 0" mass="{mass:.6g}" diaginertia="{_fmt(np.maximum(inertia, 1e-7))}"/>'
            + "".join(geoms)
            + "</body>"
        )
    wmax = gripper.max_width
    # The planner's gripper (``GripperModel``) gives every finger dimension: one gripper, not two.
    hb, ht, hd = gripper.finger_breadth / 2, gripper.finger_thickness / 2, gripper.finger_depth / 2
    palm_half_y = wmax / 2 + gripper.finger_thickness
    damping = s.finger_force / s.finger_speed  # the saturated force closes the fingers at finger_speed
    fingers = ""
    for side, sign in (("left", 1), ("right", -1)):
        fingers += (
            f'<body name="finger_{side}" pos="0 0 0">'
            f'<joint name="slide_{side}" type="slide" axis="0 {sign} 0" range="0 {wmax / 2:.6g}" '
            f'damping="{damping:.6g}"/>'
            f'<geom name="finger_{side}" type="box" size="{hb:.6g} {ht:.6g} {hd:.6g}" '
            f'pos="0 {sign * ht:.6g} {-hd:.6g}" mass="0.05" friction="1 {s.torsional_friction} 0.0001" '
            f'condim="4" rgba="0.2 0.2 0.25 1"/></body>'
        )
    gripper_xml = (
        '<body name="target" mocap="true" pos="0 0 2"/>'
        '<body name="palm" pos="0 0 2"><freejoint name="palm"/>'
        f'<geom name="palm" mass="0.5" type="box" size="{hb:.6g} {palm_half_y:.6g} {s.palm_thickness / 2:.6g}" '
        f'pos="0 0 {-gripper.finger_depth - s.palm_thickness / 2:.6g}" rgba="0.3 0.3 0.35 1"/>' + fingers + "</body>"
    )
    actuators = "".join(
        f'<position name="act_{side}" joint="slide_{side}" kp="{s.finger_kp:.6g}" '
        f'forcerange="{-s.finger_force:.6g} {s.finger_force:.6g}" ctrlrange="0 {wmax / 2:.6g}"/>'
        for side in ("left", "right")
    )
    return (
        '<mujoco model="grasp">'
        f'<option timestep="{s.timestep}" integrator="implicitfast" cone="elliptic" impratio="5"/>'
        '<default><geom solref="0.01 1" solimp="0.95 0.99 0.001"/></default>'
        f"<asset>{''.join(assets)}</asset>"
        "<worldbody>"
        '<light pos="0 0 2" dir="0 0 -1" directional="true"/>'
        '<geom name="table" type="box" size="0.6 0.4 0.02" pos="0 0 -0.02" friction="0.8 0.01 0.0001" '
        'rgba="0.66 0.47 0.29 1"/>' + "".join(bodies) + gripper_xml + "</worldbody>"
        '<equality><weld body1="target" body2="palm" solref="0.01 1" solimp="0.95 0.99 0.001"/></equality>'
        f"<actuator>{actuators}</actuator>"
        "</mujoco>"
    )


class SimWorld:
    """A compiled MuJoCo world of ``objects`` and a gripper (``lerf_ros.query.grasp.GripperModel``:
    its ``max_width``, ``finger_depth``, ``finger_thickness`` and ``finger_breadth`` are the gripper's).
    ``reset`` restores the initial state; the model is built once and reused for every grasp on the scene."""

    def __init__(self, objects: Sequence[SimObject], gripper, settings: Optional[SimSettings] = None) -> None:
        import mujoco

        self.settings = settings or SimSettings()
        self.gripper = gripper
        self.objects = list(objects)
        self.model = mujoco.MjModel.from_xml_string(_mjcf(self.objects, gripper, self.settings))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.object_body = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"obj{i}") for i in range(len(objects))]
        self.palm_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "palm")
        self.palm_qpos = int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "palm")])
        self.finger_geoms = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"finger_{s}") for s in ("left", "right")]
        self.gripper_geoms = set(self.finger_geoms) | {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "palm")}
        self.table_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table")
        self.slide_qpos = [
            int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"slide_{s}")]) for s in ("left", "right")
        ]
        body_to_object = {b: i for i, b in enumerate(self.object_body)}
        self.geom_object = np.array([body_to_object.get(int(b), -1) for b in m.geom_bodyid])
        """(ngeom,) index of the object each geom belongs to, -1 for the table and the gripper."""
        self.reset()

    def reset(self) -> None:
        """Initial state: objects where the scene puts them (settled for a moment), gripper far above."""
        import mujoco

        mujoco.mj_resetData(self.model, self.data)
        self.data.mocap_pos[0] = [0.0, 0.0, 2.0]
        mujoco.mj_forward(self.model, self.data)

    def object_positions(self) -> np.ndarray:
        """(n_objects, 3) world positions of the object bodies."""
        return self.data.xpos[self.object_body].copy()

    def object_index(self, name: str) -> int:
        """Index of the object called ``name``; KeyError when there is none."""
        for i, o in enumerate(self.objects):
            if o.name == name:
                return i
        raise KeyError(f"no object called {name!r} in the simulated scene")


def offscreen_gl() -> None:
    """Choose MuJoCo's headless OpenGL backend (OSMesa) when nothing else is set and no display is
    present; must run before ``mujoco`` is first imported to take effect."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "osmesa"
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
