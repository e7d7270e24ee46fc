"""Posed-frame sources (ROS-free): synthetic scenes, transforms.json folders, rosbag2 files.

The readers import their heavy dependencies (open3d, rosbags, PIL) only when used.
"""

from lerf_ros.data.frame import Frame, FrameError, check_pose
from lerf_ros.data.sources import FrameSource, SourceError, open_source
from lerf_ros.data.synthetic import SceneObject, SyntheticScene, load_scene, make_scene

__all__ = [
    "Frame",
    "FrameError",
    "check_pose",
    "FrameSource",
    "SourceError",
    "open_source",
    "SceneObject",
    "SyntheticScene",
    "load_scene",
    "make_scene",
]
