"""Physics checks of grasps (MuJoCo): a tabletop scene as free rigid bodies, a free-floating
force-limited parallel-jaw gripper, and the execution of a planned grasp with its outcome.

ROS-free; imports ``mujoco`` only when a world is built. See :mod:`lerf_ros.sim.world` (the model),
:mod:`lerf_ros.sim.collision` (collision shapes from the objects' own meshes),
:mod:`lerf_ros.sim.execute` (an attempt and its failure reasons) and :mod:`lerf_ros.sim.pictures`.
"""

from lerf_ros.sim.execute import FAILURE_REASONS, GraspOutcome, execute_grasp, grasp_physics
from lerf_ros.sim.world import SimObject, SimSettings, SimWorld, box_object, objects_from_scene, offscreen_gl

__all__ = [
    "FAILURE_REASONS",
    "GraspOutcome",
    "SimObject",
    "SimSettings",
    "SimWorld",
    "box_object",
    "execute_grasp",
    "grasp_physics",
    "objects_from_scene",
    "offscreen_gl",
]
