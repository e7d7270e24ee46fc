"""What the rosbag2 reader and writer share: message type names, the error, intrinsics and stamps.

ROS intrinsics put pixel centres at integer coordinates, this package at ``u + 0.5``: ``cx``/``cy``
are shifted by +0.5 on reading (:func:`ros_k_to_frame_k`) and back on writing
(:func:`frame_k_to_ros_k`). Stamps are float seconds in frames, ``sec``/``nanosec`` in headers and
integer nanoseconds as bag times.
"""

from __future__ import annotations

import numpy as np

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MSG = "tf2_msgs/msg/TFMessage"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")


class RosbagError(ValueError):
    """A bag that cannot be turned into frames; the message names the file and the problem."""


def ros_k_to_frame_k(K: np.ndarray) -> np.ndarray:
    """ROS/OpenCV intrinsics (pixel centres at integers) -> this package's (centres at u + 0.5)."""
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def frame_k_to_ros_k(K: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ros_k_to_frame_k`."""
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def stamp_s(header) -> float:
    """A message header's stamp in seconds."""
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


def stamp_ns(stamp: float) -> int:
    """Seconds -> integer nanoseconds (a bag time, or a key for matching stamps)."""
    return int(round(float(stamp) * 1e9))


def typestore():
    """The ``rosbags`` message types (the latest ROS 2 release's definitions)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.LATEST)
