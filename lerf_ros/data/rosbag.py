"""rosbag2 files (sqlite3 ``.db3`` and ``.mcap``) as posed frames, without ROS: the ``rosbags`` library.

Reads ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8, and 16-bit variants; decoded by
``lerf_ros.geometry.image``, the decoder the ROS nodes use too) or ``sensor_msgs/CompressedImage``
(JPEG/PNG), ``sensor_msgs/CameraInfo``, optional aligned depth (``16UC1`` / ``mono16``
millimetres or ``32FC1`` metres), and the camera pose either

- from TF (``/tf`` + ``/tf_static``): the chain ``world_frame -> camera frame`` (the image's
  ``header.frame_id``) looked up at the image stamp, each dynamic link interpolated between the
  bracketing samples (linear translation, slerp rotation), or
- from a ``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or ``nav_msgs/Odometry``
  topic matched by stamp the same way (the pose is of ``pose_child_frame``: the camera optical
  frame by default, or e.g. ``base_link`` with ``/tf_static`` supplying the rest of the chain).

A link sample counts when it brackets the stamp with a gap of at most ``max_interpolation_gap``
seconds, or lies within ``tolerance`` seconds of it (then the nearest one is used). Images without a
pose are dropped and counted in :attr:`RosbagSource.stats`.

Conventions: ROS camera optical frames already use the OpenCV axes of :class:`Frame` (x right,
y down, z forward), so poses need no axis change. ROS intrinsics put pixel centres at integer
coordinates, this package at ``u + 0.5``: ``cx``/``cy`` are shifted by +0.5 on reading
(:func:`ros_k_to_frame_k`) and back on writing (:func:`frame_k_to_ros_k`). CameraInfo lens
distortion (``plumb_bob``, ``rational_polynomial``, ``equidistant``) becomes the frames'
``distortion`` (an unknown model is refused, naming it); ``use_projection_matrix=True`` (rectified
images) takes ``P`` and no distortion.

The code lives in :mod:`lerf_ros.data.rosbag_read` (:class:`RosbagSource`, :func:`read_rosbag`),
:mod:`lerf_ros.data.rosbag_write` (:func:`write_rosbag`, which writes frames into a bag for the tests
and the replay tools), :mod:`lerf_ros.data.rosbag_tf` (:class:`TfBuffer`) and
:mod:`lerf_ros.data.rosbag_schema` (message types, the error, intrinsics, stamps); this module gathers
their public names.
"""

from __future__ import annotations

from lerf_ros.data.rosbag_read import RosbagSource, is_rosbag, read_rosbag
from lerf_ros.data.rosbag_schema import (
    CAMERA_INFO,
    COMPRESSED,
    IMAGE,
    POSE_TYPES,
    TF_MSG,
    RosbagError,
    frame_k_to_ros_k,
    ros_k_to_frame_k,
)
from lerf_ros.data.rosbag_tf import TfBuffer
from lerf_ros.data.rosbag_write import DEFAULT_MOUNT, write_rosbag

# Quaternion helpers live in geometry.poses; two are re-exported here for bag users.
from lerf_ros.geometry.poses import matrix_to_quat, quat_to_matrix

__all__ = [
    "RosbagError",
    "RosbagSource",
    "read_rosbag",
    "write_rosbag",
    "TfBuffer",
    "ros_k_to_frame_k",
    "frame_k_to_ros_k",
    "quat_to_matrix",
    "matrix_to_quat",
    "is_rosbag",
    "DEFAULT_MOUNT",
    "IMAGE",
    "COMPRESSED",
    "CAMERA_INFO",
    "TF_MSG",
    "POSE_TYPES",
]
