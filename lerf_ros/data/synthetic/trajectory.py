"""Camera models and paths: pinhole intrinsics, look-at poses, the robot-like trajectory.

Poses are camera-to-world (4, 4) in the OpenCV convention of :mod:`lerf_ros.data.frame` (x right,
y down, z forward). The trajectory is a function of the seed and the objects only, so the same
layout always gets the same views.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from lerf_ros.data.synthetic.layout import SceneObject

__all__ = ["look_at", "intrinsics_from_fov", "trajectory"]


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world pose at ``eye`` looking at ``target`` (+y of the image points
    away from ``up``). Raises ValueError when the view direction is parallel to ``up``."""
    eye = np.asarray(eye, float)
    fwd = np.asarray(target, float) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, float))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("look_at: view direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, fwd], 1)
    c2w[:3, 3] = eye
    return c2w


def intrinsics_from_fov(width: int, height: int, hfov_deg: float = 60.0) -> np.ndarray:
    """(3, 3) pinhole intrinsics with square pixels, principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def trajectory(seed: int, n_frames: int, objects: Sequence[SceneObject]) -> Tuple[np.ndarray, List[str]]:
    """(F, 4, 4) camera poses and each one's segment name: an orbit around the table (radius and
    height vary, the look-at point wanders; segment 'orbit', 75% of the frames, all of them below 4
    frames), then a wrist-camera pass low over the objects, looking at them one after another
    (segment 'close')."""
    rng = np.random.default_rng([seed, 0x7247])
    n_close = int(round(0.25 * n_frames)) if n_frames >= 4 else 0
    n_orbit = n_frames - n_close
    th0 = rng.uniform(0, 2 * np.pi)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    poses, segs = [], []
    for k in range(n_orbit):
        a = k / max(n_orbit, 1)
        th = th0 + 2 * np.pi * a
        r = 0.95 + 0.12 * math.sin(2 * th + ph[0])
        z = 0.45 + 0.15 * math.sin(3 * np.pi * a + ph[1])
        target = np.array([0.12 * math.cos(2 * np.pi * a + ph[2]), 0.08 * math.sin(4 * np.pi * a), 0.02])
        poses.append(look_at([r * math.cos(th), r * math.sin(th), z], target))
        segs.append("orbit")
    if n_close:
        cs = np.array([o.center for o in sorted(objects, key=lambda o: o.center[0])])
        if len(cs) == 1:
            cs = np.concatenate([cs - [0.05, 0, 0], cs + [0.05, 0, 0]])
        side = -1.0 if rng.random() < 0.5 else 1.0
        seg_len = np.linalg.norm(np.diff(cs, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        for k in range(n_close):
            s = cum[-1] * (k + 0.5) / n_close
            target = np.array([np.interp(s, cum, cs[:, j]) for j in range(3)])
            b = (k + 0.5) / n_close
            eye = target + np.array(
                [
                    0.06 * math.sin(2 * np.pi * b),
                    side * (0.24 - 0.05 * math.sin(np.pi * b)),
                    0.22 + 0.05 * math.cos(2 * np.pi * b),
                ]
            )
            poses.append(look_at(eye, target))
            segs.append("close")
    return np.stack(poses), segs
