"""Start lerf_ros: trainer + query node (one process by default, two with separate_processes:=true),
optionally RViz.

    ros2 launch lerf_ros lerf.launch.py preset:=lerf world_frame:=map image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info depth:=/camera/aligned_depth_to_color/image_raw rviz:=true
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("lerf_ros")
    arg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "lerf.yaml"),
                              description="ROS parameters YAML for the trainer and query nodes"),
        DeclareLaunchArgument("preset", default_value="lerf",
                              description="Model preset: tiny, lerf-lite, lerf or lerf-big"),
        DeclareLaunchArgument("world_frame", default_value="map", description="Fixed frame the field is built in"),
        DeclareLaunchArgument("output_dir", default_value="lerf_output",
                              description="Folder for checkpoints, renders and the resolved config"),
        DeclareLaunchArgument("image", default_value="image", description="Colour image topic"),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("depth", default_value="depth", description="Aligned depth topic (16UC1 mm or 32FC1 m)"),
        DeclareLaunchArgument("pose", default_value="pose",
                              description="PoseStamped topic (used when tf2 is unavailable or pose_source:=pose)"),
        DeclareLaunchArgument("odom", default_value="odom", description="Odometry topic (pose_source:=odom)"),
        DeclareLaunchArgument("pose_source", default_value="auto", description="tf, pose, odom or auto"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)"),
        DeclareLaunchArgument("separate_processes", default_value="false",
                              description="Run the query node as its own process (it then loads checkpoints)"),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/lerf.rviz"),
        DeclareLaunchArgument("rviz_config", default_value=os.path.join(share, "config", "lerf.rviz"),
                              description="RViz configuration file"),
    ]
    overrides = {
        "preset": arg("preset"), "world_frame": arg("world_frame"), "output_dir": arg("output_dir"),
        "pose_source": arg("pose_source"), "use_sim_time": arg("use_sim_time"),
    }
    remaps = [("image", arg("image")), ("camera_info", arg("camera_info")), ("depth", arg("depth")),
              ("pose", arg("pose")), ("odom", arg("odom"))]
    params = [arg("params_file"), overrides]
    # One process, two nodes (no name override: it would rename both).
    together = Node(package="lerf_ros", executable="lerf_node", output="screen",
                    parameters=params, remappings=remaps,
                    condition=UnlessCondition(arg("separate_processes")))
    separate = GroupAction([
        Node(package="lerf_ros", executable="trainer_node", name="lerf_trainer", output="screen",
             parameters=params, remappings=remaps),
        Node(package="lerf_ros", executable="query_node", name="lerf_query", output="screen",
             parameters=[arg("params_file"), {k: v for k, v in overrides.items() if k != "pose_source"}]),
    ], condition=IfCondition(arg("separate_processes")))
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", arg("rviz_config")],
                parameters=[{"use_sim_time": arg("use_sim_time")}], condition=IfCondition(arg("rviz")))
    return LaunchDescription(args + [together, separate, rviz])
