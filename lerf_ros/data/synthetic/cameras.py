"""A second camera on the robot: the scene's views seen by a camera rigidly offset from the first.

The frames of a :class:`~lerf_ros.data.synthetic.scene.SyntheticScene` are the head camera's. A
robot often carries a second camera (on the wrist, say) whose pose is the head camera's composed
with a fixed extrinsic. :func:`offset_camera_frames` renders the scene from that second camera at
every frame's pose and stamp, so a replay can publish two synchronised camera streams.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic.trajectory import intrinsics_from_fov
from lerf_ros.geometry.poses import make_pose

WRIST_OFFSET = (0.12, 0.06, 0.0, 0.0, -0.0871557, 0.0, 0.9961947)
"""The second camera's pose in the first camera's optical frame (x y z qx qy qz qw): 12 cm to the
right, 6 cm down, turned 10 degrees back to the left (about the optical y axis), so both see the
table from viewpoints a hand's width apart."""
WRIST_FRAME = "wrist_camera_optical_frame"
"""Default ``frame_id`` of the second camera's frames."""


def offset_camera_frames(
    scene,
    offset: Sequence[float] = WRIST_OFFSET,
    frame_id: str = WRIST_FRAME,
    hfov_deg: Optional[float] = None,
    frames: Optional[Sequence[Frame]] = None,
) -> List[Frame]:
    """The scene rendered from a camera at ``offset`` (x y z qx qy qz qw in the first camera's
    optical frame) from each of ``frames`` (default: the scene's frames): same size, stamps and
    index, depth and instance maps, ``frame_id`` as given, ``meta['camera'] = 'second'``.

    ``hfov_deg``: the second camera's field of view (default: the scene's)."""
    if len(offset) != 7:
        raise ValueError(f"offset must have 7 numbers (x y z qx qy qz qw), got {len(offset)}")
    frames = list(scene.frames if frames is None else frames)
    if not frames:
        return []
    T = make_pose(np.asarray(offset[:3], float), np.asarray(offset[3:], float))
    w, h = frames[0].width, frames[0].height
    K = intrinsics_from_fov(w, h, float(hfov_deg if hfov_deg is not None else scene.params["hfov_deg"]))
    c2ws = np.stack([np.asarray(f.c2w, float) @ T for f in frames])
    rgb, depth, inst = scene.renderer.render(K, c2ws, w, h, bool(scene.params.get("shadows", True)))
    return [
        dataclasses.replace(
            f,
            rgb=rgb[i],
            K=K.copy(),
            c2w=c2ws[i],
            frame_id=frame_id,
            depth=depth[i],
            instance=inst[i],
            distortion=None,
            meta={**dict(f.meta or {}), "camera": "second"},
        )
        for i, f in enumerate(frames)
    ]
