"""Executing a grasp in a :class:`~lerf_ros.sim.world.SimWorld`, and why it failed.

An attempt: the gripper opens to the grasp's width at a pre-grasp pose backed off along the
approach axis, moves in along the approach to the grasp pose, closes (force-limited), lifts
``lift_height`` straight up and holds for ``hold_time``. Success: the named object rose at least
``success_lift`` and is still held by the fingers (touching at least one). Otherwise the reason is one of:

- ``collision``: the gripper pushed against something on the way in (``hit`` names what: an
  object, or ``table``); the attempt stops there (a robot would stop on contact);
- ``empty close``: the fingers closed without holding the target;
- ``slip``: the target was held after closing but dropped during the lift or the hold;
- ``wrong object``: another object was lifted instead.

``moved`` lists the other objects displaced by more than ``moved_tolerance`` in any case.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from lerf_ros.sim.world import SimWorld

__all__ = ["GraspOutcome", "execute_grasp", "grasp_physics", "FAILURE_REASONS"]

FAILURE_REASONS = ("collision", "empty close", "slip", "wrong object")


@dataclass
class GraspOutcome:
    """Result of one simulated grasp attempt."""

    success: bool
    reason: str = ""
    """'' on success, else one of ``FAILURE_REASONS``."""
    hit: List[str] = field(default_factory=list)
    """What the gripper hit on the way in (object names, 'table')."""
    moved: List[str] = field(default_factory=list)
    """Other objects displaced by more than the tolerance."""
    lift: float = 0.0
    """How far (m) the target rose."""
    sim_s: float = 0.0
    """Simulated time (s)."""
    wall_s: float = 0.0
    """Wall-clock time (s) of the attempt."""

    def to_json(self) -> dict:
        """The outcome as a JSON-ready dict."""
        return {
            "success": self.success,
            "reason": self.reason,
            "hit": list(self.hit),
            "moved": list(self.moved),
            "lift_m": round(self.lift, 4),
            "wall_s": round(self.wall_s, 4),
        }


def _contacts(world: SimWorld):
    """(geom1, geom2, normal force in N) of the active contacts."""
    import mujoco

    d = world.data
    n = d.ncon
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    c = d.contact[:n]
    f6 = np.zeros(6)
    force = np.zeros(n)
    for i in range(n):
        mujoco.mj_contactForce(world.model, d, i, f6)
        force[i] = f6[0]
    return np.asarray(c.geom1), np.asarray(c.geom2), force


def _finger_touches(world: SimWorld, target: int) -> int:
    """How many fingers (0, 1, 2) touch the target object."""
    g1, g2, _ = _contacts(world)
    touched = set()
    for f in world.finger_geoms:
        for a, b in ((g1, g2), (g2, g1)):
            sel = a == f
            if np.any(world.geom_object[b[sel]] == target):
                touched.add(f)
    return len(touched)


def _pose_to_mocap(world: SimWorld, R: np.ndarray, o: np.ndarray) -> None:
    from lerf_ros.query.grasp import rotation_to_quaternion_xyzw

    q = rotation_to_quaternion_xyzw(R)
    world.data.mocap_pos[0] = o
    world.data.mocap_quat[0] = [q[3], q[0], q[1], q[2]]


def _place_gripper(world: SimWorld, R: np.ndarray, o: np.ndarray) -> None:
    """Put the gripper (and its target) at a pose at rest."""
    from lerf_ros.query.grasp import rotation_to_quaternion_xyzw

    _pose_to_mocap(world, R, o)
    q = rotation_to_quaternion_xyzw(R)
    a = world.palm_qpos
    world.data.qpos[a : a + 3] = o
    world.data.qpos[a + 3 : a + 7] = [q[3], q[0], q[1], q[2]]


def execute_grasp(
    world: SimWorld, pose: np.ndarray, width: float, target: str, snapshots: Optional[Sequence] = None
) -> GraspOutcome:
    """Run one grasp attempt on the object named ``target`` from the initial state (the world is
    reset first). ``pose``: (4, 4) gripper-to-world (planner convention); ``width``: the opening
    (m). ``snapshots``: a list to which a callback-free record is appended: the world state at the
    start of the approach and at the end, as (qpos, mocap_pos, mocap_quat) tuples (pictures)."""
    import mujoco

    t_wall = time.perf_counter()
    s = world.settings
    m, d = world.model, world.data
    world.reset()
    ti = world.object_index(target)
    pose = np.asarray(pose, np.float64)
    R, origin, a = pose[:3, :3], pose[:3, 3], pose[:3, 2]
    half = float(np.clip(width / 2 + 0.002, 0.0, world.gripper.max_width / 2))
    for q in world.slide_qpos:
        d.qpos[q] = half
    d.ctrl[:] = half
    # let the objects settle on the table with the gripper out of the way
    for _ in range(int(0.1 / s.timestep)):
        mujoco.mj_step(m, d)
    start = world.object_positions()
    pre = origin - s.pre_grasp_offset * a
    _place_gripper(world, R, pre)
    mujoco.mj_forward(m, d)
    if snapshots is not None:
        snapshots.append((d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy()))

    def moved() -> List[str]:
        disp = np.linalg.norm(world.object_positions() - start, axis=1)
        return [world.objects[i].name for i in np.flatnonzero(disp > s.moved_tolerance) if i != ti]

    def finish(success: bool, reason: str, hit=()) -> GraspOutcome:
        if snapshots is not None:
            snapshots.append((d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy()))
        lift = float(world.object_positions()[ti, 2] - start[ti, 2])
        return GraspOutcome(success, reason, list(hit), moved(), lift, float(d.time), time.perf_counter() - t_wall)

    # approach
    n_app = max(1, int(s.pre_grasp_offset / s.approach_speed / s.timestep))
    hit: List[str] = []
    for k in range(1, n_app + 1):
        _pose_to_mocap(world, R, pre + (origin - pre) * (k / n_app))
        mujoco.mj_step(m, d)
        g1, g2, force = _contacts(world)
        deep = force > s.collision_force
        for a_, b_ in ((g1, g2), (g2, g1)):
            sel = deep & np.isin(a_, list(world.gripper_geoms))
            for other in b_[sel]:
                if other in world.gripper_geoms:
                    continue
                oi = world.geom_object[other]
                name = "table" if oi < 0 else world.objects[oi].name
                if name not in hit:
                    hit.append(name)
    if not hit:
        disp = np.linalg.norm(world.object_positions() - start, axis=1)
        if disp[ti] > 2 * s.moved_tolerance:
            hit.append(target)  # pushed the target away on the way in
    if hit:
        return finish(False, "collision", hit)
    # close
    d.ctrl[:] = 0.0
    for _ in range(int(s.close_time / s.timestep)):
        mujoco.mj_step(m, d)
    held_after_close = _finger_touches(world, ti) >= 1
    # lift, then hold
    n_lift = int(s.lift_time / s.timestep)
    for k in range(1, n_lift + 1):
        _pose_to_mocap(world, R, origin + np.array([0.0, 0.0, s.lift_height * k / n_lift]))
        mujoco.mj_step(m, d)
    for _ in range(int(s.hold_time / s.timestep)):
        mujoco.mj_step(m, d)
    pos = world.object_positions()
    rise = pos[:, 2] - start[:, 2]
    if rise[ti] >= s.success_lift and _finger_touches(world, ti) >= 1:
        return finish(True, "")
    others = [i for i in np.flatnonzero(rise >= s.success_lift) if i != ti]
    if others:
        return finish(False, "wrong object", [world.objects[i].name for i in others])
    return finish(False, "slip" if held_after_close else "empty close")


def grasp_physics(world: SimWorld, grasps: Sequence, target: str, top_k: int = 3) -> dict:
    """Execute the best ``top_k`` of ``grasps`` (``lerf_ros.query.grasp.Grasp``, best first, world
    frame) on the object ``target``. Returns a JSON-ready record: 'best_success' (the first grasp
    held), 'any_success' (any of the ``top_k`` held), 'attempts' (each attempt's outcome, in
    order) and 'wall_s' (the physics time of all the attempts). No grasps: both False and a reason
    'no grasp'."""
    attempts = [execute_grasp(world, g.pose, g.width, target) for g in list(grasps)[:top_k]]
    if not attempts:
        return {"best_success": False, "any_success": False, "best_reason": "no grasp", "attempts": [], "wall_s": 0.0}
    return {
        "best_success": attempts[0].success,
        "any_success": any(a.success for a in attempts),
        "best_reason": attempts[0].reason,
        "attempts": [a.to_json() for a in attempts],
        "wall_s": round(sum(a.wall_s for a in attempts), 4),
    }
