"""Frame lookups with tf2 when it is installed, and a clear answer when it is not."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.time import Time

from lerf_ros.ros.convert import transform_to_matrix


def tf2_available() -> bool:
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


class FrameResolver:
    """world -> target transforms for query answers. Without tf2 only the world frame is known."""

    def __init__(self, node: Node, world_frame: str, timeout_s: float = 0.2) -> None:
        self.world_frame = world_frame
        self.timeout = Duration(seconds=timeout_s)
        self.buffer = None
        if tf2_available():
            import tf2_ros

            self.buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=False)

    def world_to(self, frame_id: str) -> Tuple[Optional[np.ndarray], str]:
        """(4x4 world->frame transform or None for the world frame itself, error message or '')."""
        if frame_id == self.world_frame:
            return None, ""
        if self.buffer is None:
            return None, (
                f"unknown frame '{frame_id}': tf2 is not installed, so answers are only "
                f"available in the world frame '{self.world_frame}' (leave frame_id empty)"
            )
        try:
            tf = self.buffer.lookup_transform(frame_id, self.world_frame, Time(), timeout=self.timeout)
        except Exception as exc:  # tf2 raises several lookup/extrapolation exception types
            return None, f"unknown frame '{frame_id}': no transform from '{self.world_frame}' ({exc})"
        return transform_to_matrix(tf.transform), ""
