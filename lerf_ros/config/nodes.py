"""The ROS nodes' own settings (wiring, rates, frames), which a parameter YAML may hold beside the
model configuration.

``NODE_PARAMETERS`` lists them with defaults and descriptions (the nodes declare them from it);
``is_node_key`` tells them, and rclpy's own per-node parameters, from configuration keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

LERF_NODES: Tuple[str, ...] = ("lerf_trainer", "lerf_query")
"""Default names of the package's ROS nodes (the sections of a parameter file the loader reads)."""


# ---------------------------------------------------------------------------- node-level keys
@dataclass(frozen=True)
class NodeParameter:
    """A ROS node's own setting (wiring, rates, frames): a parameter of the node, not a model setting.

    Declared by the nodes (``lerf_ros.ros.params``) with this default and description; a parameter
    YAML may hold it beside the model configuration, and the configuration loader leaves it out."""

    name: str
    """Parameter name."""
    default: Any
    """Default value (its type is the parameter's type; a tuple is a ROS array)."""
    description: str
    """What ``ros2 param describe`` shows."""
    nodes: Tuple[str, ...]
    """The nodes that declare it: 'trainer', 'query' or both."""


NODE_PARAMETERS: Tuple[NodeParameter, ...] = (
    NodeParameter(
        "autostart",
        True,
        "Configure and activate the node as it starts (a managed node); false: it waits in 'unconfigured' for "
        "a lifecycle manager or `ros2 lifecycle set <node> configure`",
        ("trainer", "query"),
    ),
    NodeParameter(
        "world_frame",
        "map",
        "Fixed frame the field is built in and answers are given in by default",
        ("trainer", "query"),
    ),
    NodeParameter(
        "pose_source",
        "auto",
        "'tf', 'pose' (PoseStamped on 'pose'), 'odom' (Odometry on 'odom') or "
        "'auto' (tf when tf2 is installed, else pose)",
        ("trainer",),
    ),
    NodeParameter(
        "pose_tolerance_s", 0.05, "Max stamp difference when matching a pose or depth to an image (s)", ("trainer",)
    ),
    NodeParameter("tf_timeout_s", 0.1, "How long to wait for TF at an image's stamp (s)", ("trainer",)),
    NodeParameter(
        "tf_cache_s",
        120.0,
        "TF history kept (s): keyframes older than this can no longer be looked up again (tf_relookup_period_s)",
        ("trainer",),
    ),
    NodeParameter(
        "tf_relookup_period_s",
        5.0,
        "With poses from TF: every this many seconds the stored keyframes are looked up again (world_frame at "
        "the latest time <- odom_frame <- camera at the keyframe's stamp, so a SLAM's new map -> odom after a loop "
        "closure reaches past keyframes) and those that moved beyond pose_correction_tolerance_m/_deg take the "
        "new pose (0 = off) (s)",
        ("trainer",),
    ),
    NodeParameter(
        "odom_frame",
        "odom",
        "Frame in which the odometry is continuous (the child of a SLAM's map -> odom), held fixed in time by the "
        "TF re-lookup; world_frame itself when there is no such frame",
        ("trainer",),
    ),
    NodeParameter(
        "corrected_path_topic",
        "",
        "nav_msgs/Path of late-corrected poses by stamp in world_frame (the pose/odom topic's body, composed "
        "with body_to_camera), interpolated at the keyframes' stamps within pose_tolerance_s; empty = off",
        ("trainer",),
    ),
    NodeParameter(
        "pose_correction_tolerance_m",
        0.01,
        "A late correction replaces a keyframe's pose only when it moved more than this (m) or than "
        "pose_correction_tolerance_deg",
        ("trainer",),
    ),
    NodeParameter(
        "pose_correction_tolerance_deg",
        0.5,
        "A late correction replaces a keyframe's pose only when it turned more than this (degrees) or moved "
        "more than pose_correction_tolerance_m",
        ("trainer",),
    ),
    NodeParameter(
        "max_stamp_offset_s",
        300.0,
        "A stamp farther than this from the node's clock and from its stream's recent stamps is dropped as an "
        "outlier; several consistent ones in a row are a time jump (buffers cleared) (s)",
        ("trainer",),
    ),
    NodeParameter(
        "max_pose_distance_m",
        1000.0,
        "Camera poses farther than this from the world origin are dropped as implausible (m)",
        ("trainer",),
    ),
    NodeParameter(
        "body_to_camera",
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
        "Fixed pose of the camera in the pose/odom topic's body frame: x y z qx qy qz qw",
        ("trainer",),
    ),
    NodeParameter(
        "cameras",
        ("camera",),
        "Names of the cameras that feed the field; each has the parameters <name>.image_topic, "
        "<name>.camera_info_topic, <name>.depth_topic, <name>.pose_topic, <name>.frame_id and <name>.body_to_camera "
        "(the first camera's topics default to image, camera_info, depth, pose/odom; another's to <name>/image, ...)",
        ("trainer",),
    ),
    NodeParameter(
        "input_qos_reliability",
        "best_effort",
        "Reliability of the image, camera_info and depth subscriptions: best_effort (sensor data; takes reliable "
        "publishers too) or reliable",
        ("trainer",),
    ),
    NodeParameter(
        "input_qos_depth",
        5,
        "History depth (keep last) of the image, camera_info and depth subscriptions",
        ("trainer",),
    ),
    NodeParameter("status_rate_hz", 2.0, "Rate of /lerf/status", ("trainer",)),
    NodeParameter(
        "diagnostics_stall_s",
        5.0,
        "/diagnostics: the input check warns when no image has arrived for this long (s)",
        ("trainer",),
    ),
    NodeParameter(
        "diagnostics_max_drop_fraction",
        0.5,
        "/diagnostics: the input check warns when more than this share of the images received in the "
        "last 10 s were dropped (and at least 3)",
        ("trainer",),
    ),
    NodeParameter("queue_size", 4, "Images waiting for ingestion; the oldest is dropped when full", ("trainer",)),
    NodeParameter("use_depth", True, "Subscribe to 'depth' and attach aligned depth to frames", ("trainer",)),
    NodeParameter("resume", True, "Resume from the newest checkpoint in output_dir when one exists", ("trainer",)),
    NodeParameter(
        "export_dir",
        "",
        "Folder /lerf/export writes the map to (surface.ply, mesh.ply, cameras.json, cameras.ply, relevancy.ply); "
        "empty: <output_dir>/export",
        ("trainer",),
    ),
    NodeParameter(
        "checkpoint_dir",
        "",
        "Separate-process mode: folder of the trainer's checkpoints to load (default: <output_dir>/checkpoints)",
        ("query",),
    ),
    NodeParameter("reload_period_s", 2.0, "How often to look for a newer snapshot or checkpoint (s)", ("query",)),
    NodeParameter(
        "snapshot_min_interval_s",
        10.0,
        "Shortest time between two model swaps (each swap re-extracts "
        "the surface points and their language features, a few seconds on a CPU)",
        ("query",),
    ),
    NodeParameter(
        "prepare_cpu_share",
        0.5,
        "Share of the wall time the background preparation of a new snapshot may take: after each chunk "
        "of work it pauses for the rest, leaving the CPU to training and queries (0 < share <= 1)",
        ("query",),
    ),
    NodeParameter(
        "prepare_niceness",
        10,
        "How much the snapshot preparation thread lowers its scheduling priority (Linux nice; 0 = not at all)",
        ("query",),
    ),
)

ROS_NODE_KEYS: Tuple[str, ...] = ("use_sim_time",)
"""Parameters rclpy declares on every node (a parameter YAML may set them)."""
ROS_NODE_KEY_PREFIXES: Tuple[str, ...] = ("qos_overrides.",)
"""Prefixes of rclpy's own per-node parameters."""


def node_parameters(node: str) -> Tuple[NodeParameter, ...]:
    """The node-level parameters the node ``node`` ('trainer' or 'query') declares."""
    if node not in ("trainer", "query"):
        raise ValueError(f"node {node!r}: expected 'trainer' or 'query'")
    return tuple(p for p in NODE_PARAMETERS if node in p.nodes)


def is_node_key(key: str) -> bool:
    """Whether a dotted key is a node-level setting (``NODE_PARAMETERS`` or rclpy's own)."""
    return key in {p.name for p in NODE_PARAMETERS} or key in ROS_NODE_KEYS or key.startswith(ROS_NODE_KEY_PREFIXES)
