"""The one posed-frame type every source yields and every consumer takes.

Conventions (used everywhere in the package):
- ``c2w`` is a 4x4 camera-to-world transform in the OpenCV camera convention: camera +x right,
  +y down, +z forward (looking direction). World frame: right-handed, +z up (ROS REP 103).
- ``K`` is the 3x3 pinhole intrinsic matrix; pixel (u, v) has its centre at (u + 0.5, v + 0.5)
  in continuous image coordinates, so the ray through pixel centre (u, v) is
  ``K^-1 [u + 0.5, v + 0.5, 1]``.
- ``distortion`` is the lens distortion of the raw image (``lerf_ros.geometry.camera.Distortion``,
  in normalised coordinates) or None for a pinhole camera; rays then go through
  ``undistort(K^-1 [u + 0.5, v + 0.5, 1])`` and the image is never resampled.
- ``depth`` is metric z-depth (along camera +z, not along the ray), float32 metres; 0 or non-finite
  means "no measurement".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lerf_ros.geometry.camera import Distortion
from lerf_ros.geometry.poses import PoseError
from lerf_ros.geometry.poses import check_pose as check_rigid_pose


class FrameError(ValueError):
    """A frame that cannot be used; the message says what is wrong with it."""


def check_pose(c2w: np.ndarray, tol: float = 1e-3) -> None:
    """Raise FrameError unless ``c2w`` is a finite 4x4 rigid transform (rotation with det +1);
    the check is ``lerf_ros.geometry.poses.check_pose``."""
    try:
        check_rigid_pose(c2w, tol)
    except PoseError as exc:
        raise FrameError(str(exc)) from None


def check_intrinsics(K: np.ndarray) -> None:
    """Raise FrameError unless ``K`` is a finite 3x3 matrix with positive focal lengths."""
    K = np.asarray(K)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise FrameError(f"intrinsics must be a finite 3x3 matrix, got shape {K.shape}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise FrameError(f"focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")


@dataclass
class Frame:
    """One posed RGB(-D) image.

    Attributes:
        rgb: (H, W, 3) uint8 image.
        K: (3, 3) float64 intrinsics.
        c2w: (4, 4) float64 camera-to-world pose, OpenCV camera convention (see module doc).
        stamp: capture time in seconds.
        frame_id: the camera's frame name (ROS ``header.frame_id``).
        depth: optional (H, W) float32 metric z-depth; 0 or non-finite = invalid.
        instance: optional (H, W) int32 ground-truth instance ids (synthetic scenes only);
            0 is the background, object i has id i + 1 in the scene's object list.
        index: position in its source (-1 when unknown).
        distortion: lens distortion of the raw image, or None for a pinhole camera (module doc).
    """

    rgb: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    stamp: float = 0.0
    frame_id: str = "camera"
    depth: Optional[np.ndarray] = None
    instance: Optional[np.ndarray] = None
    index: int = -1
    meta: dict = field(default_factory=dict)
    distortion: Optional[Distortion] = None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def validate(self) -> "Frame":
        """Check shapes, dtypes and the pose; raise FrameError naming the problem. Returns self."""
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise FrameError(f"rgb must be HxWx3, got shape {self.rgb.shape}")
        if self.rgb.dtype != np.uint8:
            raise FrameError(f"rgb must be uint8, got {self.rgb.dtype}")
        if self.height < 2 or self.width < 2:
            raise FrameError(f"image too small: {self.width}x{self.height}")
        check_intrinsics(self.K)
        if self.distortion is not None and not isinstance(self.distortion, Distortion):
            raise FrameError(
                "distortion must be a lerf_ros.geometry.camera.Distortion or None, "
                f"got {type(self.distortion).__name__}"
            )
        check_pose(self.c2w)
        if not np.isfinite(self.stamp):
            raise FrameError("stamp is not finite")
        hw = self.rgb.shape[:2]
        if self.depth is not None and self.depth.shape != hw:
            raise FrameError(f"depth size {self.depth.shape[::-1]} does not match image size {hw[::-1]}")
        if self.instance is not None and self.instance.shape != hw:
            raise FrameError(f"instance map size {self.instance.shape[::-1]} does not match image size {hw[::-1]}")
        return self
