"""Pictures of grasp attempts: the start (gripper at the pre-grasp pose) and the end state side by
side, rendered with MuJoCo's offscreen renderer (OSMesa on a headless CPU machine: call
:func:`lerf_ros.sim.offscreen_gl` before ``mujoco`` is first imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np

from lerf_ros.sim.execute import GraspOutcome, execute_grasp
from lerf_ros.sim.world import SimWorld

__all__ = ["save_attempt_picture"]


def save_attempt_picture(
    world: SimWorld,
    pose: np.ndarray,
    width: float,
    target: str,
    path: Union[str, Path],
    size: Sequence[int] = (320, 240),
) -> GraspOutcome:
    """Run the attempt again, render its start and end states looking at the target, and write them
    side by side as a PNG at ``path``. Returns the attempt's outcome."""
    import mujoco
    from PIL import Image, ImageDraw

    snaps: list = []
    out = execute_grasp(world, pose, width, target, snapshots=snaps)
    w, h = int(size[0]), int(size[1])
    renderer = mujoco.Renderer(world.model, h, w)
    try:
        cam = mujoco.MjvCamera()
        cam.lookat[:] = world.objects[world.object_index(target)].position + np.array([0.0, 0.0, 0.05])
        cam.distance, cam.azimuth, cam.elevation = 0.6, 135.0, -30.0
        images = []
        for qpos, mpos, mquat in snaps:
            world.data.qpos[:] = qpos
            world.data.mocap_pos[:] = mpos
            world.data.mocap_quat[:] = mquat
            mujoco.mj_forward(world.model, world.data)
            renderer.update_scene(world.data, cam)
            images.append(renderer.render().copy())
    finally:
        renderer.close()
    canvas = Image.fromarray(np.concatenate(images, axis=1))
    text = f"{target}: " + ("held" if out.success else out.reason + (f" ({', '.join(out.hit)})" if out.hit else ""))
    ImageDraw.Draw(canvas).text((6, 6), text, fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return out
