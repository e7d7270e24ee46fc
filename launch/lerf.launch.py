"""Start lerf_ros: trainer + query node (one process by default, two with separate_processes:=true),
optionally RViz.

    ros2 launch lerf_ros lerf.launch.py preset:=lerf world_frame:=map image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info depth:=/camera/aligned_depth_to_color/image_raw rviz:=true

Parameters come from ``params_file`` (default: the installed config/lerf.yaml). The arguments
``preset``, ``output_dir``, ``world_frame``, ``pose_source``, ``use_sim_time`` and ``autostart``
override the file only when given: left out, the file's values stand (``lerf_ros.ros.launch_args``, which also
stops the launch with a clear message when the file has an unknown or invalid key).

Both nodes are managed (lifecycle) nodes: by default (``autostart`` true) they configure and
activate themselves; ``autostart:=false`` leaves them unconfigured for a lifecycle manager
(``ros2 lifecycle set /lerf_trainer configure``, Nav2's ``lifecycle_manager``).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from lerf_ros.ros.launch_args import NOT_GIVEN, PARAMETER_ARGUMENTS, is_true, launch_plan


def _nodes(context):
    """The nodes, built once the arguments' values are known."""
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = value("params_file")
    plan = launch_plan(params_file, {name: value(name) for name in PARAMETER_ARGUMENTS})
    remaps = [(topic, value(topic)) for topic in ("image", "camera_info", "depth", "pose", "odom")]
    if is_true(value("separate_processes")):
        nodes = [
            Node(
                package="lerf_ros",
                executable="trainer_node",
                name="lerf_trainer",
                output="screen",
                parameters=[params_file, plan.trainer],
                remappings=remaps,
            ),
            Node(
                package="lerf_ros",
                executable="query_node",
                name="lerf_query",
                output="screen",
                parameters=[params_file, plan.query],
            ),
        ]
    else:
        # One process, two nodes (no name override: it would rename both).
        nodes = [
            Node(
                package="lerf_ros",
                executable="lerf_node",
                output="screen",
                parameters=[params_file, plan.trainer],
                remappings=remaps,
            )
        ]
    if is_true(value("rviz")):
        nodes.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", value("rviz_config")],
                parameters=[{"use_sim_time": plan.use_sim_time}],
            )
        )
    return nodes


def generate_launch_description():
    share = get_package_share_directory("lerf_ros")
    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "lerf.yaml"),
            description="ROS parameters YAML for the trainer and query nodes",
        ),
    ]
    args += [
        DeclareLaunchArgument(
            name,
            default_value=NOT_GIVEN,
            description=f"{desc} (overrides the params file; not given: the file's value)",
        )
        for name, desc in PARAMETER_ARGUMENTS.items()
    ]
    args += [
        DeclareLaunchArgument("image", default_value="image", description="Colour image topic"),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("depth", default_value="depth", description="Aligned depth topic (16UC1 mm or 32FC1 m)"),
        DeclareLaunchArgument(
            "pose",
            default_value="pose",
            description="PoseStamped topic (used when tf2 is unavailable or pose_source:=pose)",
        ),
        DeclareLaunchArgument("odom", default_value="odom", description="Odometry topic (pose_source:=odom)"),
        DeclareLaunchArgument(
            "separate_processes",
            default_value="false",
            description="Run the query node as its own process (it then loads checkpoints)",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/lerf.rviz"),
        DeclareLaunchArgument(
            "rviz_config",
            default_value=os.path.join(share, "config", "lerf.rviz"),
            description="RViz configuration file",
        ),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
