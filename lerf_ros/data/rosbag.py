"""rosbag2 files (sqlite3 ``.db3`` and ``.mcap``) as posed frames, without ROS: the ``rosbags`` library.

Colour (or compressed) images, camera info, optional aligned depth, and the camera pose from TF or a
pose/odometry topic become :class:`Frame` objects (:class:`RosbagSource`, :func:`read_rosbag`; what
is read, how poses are matched and the conventions: :mod:`lerf_ros.data.rosbag_read`), and frames are
written into a bag (:func:`write_rosbag`).

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
