"""Posed-frame sources (ROS-free): synthetic scenes, transforms.json folders, rosbag2 files."""
from lerf_ros.data.frame import Frame, FrameError, check_pose

__all__ = ["Frame", "FrameError", "check_pose"]
