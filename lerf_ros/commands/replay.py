"""``lerf-ros replay``: publish a posed-frame source as a live ROS 2 camera stream.

Any source ``lerf_ros.data.sources.open_source`` reads (a synthetic scene folder, a
transforms.json folder, a rosbag2 file, or ``synthetic:seed=3,width=160,...`` for a freshly
rendered synthetic scene; a bare ``synthetic`` is the default one) is published at ``--rate`` Hz
on (names relative to the node namespace, prefixed with ``--topics PREFIX/`` when given):

- ``image`` (``sensor_msgs/Image``, rgb8) and ``camera_info`` (``sensor_msgs/CameraInfo``),
  ``header.frame_id`` = ``--camera-frame``;
- ``depth`` (``sensor_msgs/Image``, 32FC1 metres) when the source has depth (not with ``--no-depth``);
- ``pose`` (``geometry_msgs/PoseStamped``): the camera optical frame's pose in ``--world-frame``
  (``header.frame_id`` = the world frame), published before the image of the same stamp (not with
  ``--no-pose-topic``);
- ``/tf`` (``tf2_msgs/TFMessage``, world frame -> camera frame) when tf2_msgs is installed (not with
  ``--no-tf``);
- ``corrected_path`` (``nav_msgs/Path``; ``--corrected-path-topic``) for a synthetic scene made with
  ``lerf-ros scene --late-correction``: its ``pose_corrections.json`` (the loop closure), published
  once per pass right after the last frame, each pose stamped as its frame was published (what a
  trainer's ``corrected_path_topic`` takes; ``--no-corrected-path`` leaves it out);
- ``/clock`` (``rosgraph_msgs/Clock``) with ``--clock``, so nodes with ``use_sim_time`` follow
  the replay's time;
- with ``--cameras 2`` (synthetic sources): a second camera rigidly mounted beside the first
  (``lerf_ros.data.synthetic.offset_camera_frames``, frame ``--second-camera-frame``) on
  ``wrist/image``, ``wrist/camera_info``, ``wrist/depth``, ``wrist/pose`` and ``/tf``, each frame with
  the first camera's stamp: the topics a trainer with ``cameras: [camera, wrist]`` listens to.

Stamps are ``start + i / rate`` for the i-th published frame (start = the wall-clock time at the
first frame unless ``--start-stamp`` is given): they increase monotonically, also across
``--loop`` passes. QoS: reliable, keep last 10 by default, so nothing is lost to a subscriber
that keeps up; a sensor-data (best-effort) subscriber is compatible with it. ``--best-effort``
publishes with the sensor-data profile instead (then a subscriber must be best-effort too).

Ctrl-C (SIGINT) or SIGTERM stops it cleanly (exit code 0). The node is
``lerf_ros.ros.replay_node.ReplayNode``; this module only parses the arguments and opens the source.
"""

from __future__ import annotations

import argparse
from typing import Any, List, Optional


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="posed-frame source: a synthetic scene folder, a transforms.json folder or file, "
        "a rosbag2 file/folder, or 'synthetic[:seed=N,width=W,height=H,frames=F]' to "
        "render a synthetic scene now",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second (default 5)")
    parser.add_argument("--loop", action="store_true", help="start again at the end of the source")
    parser.add_argument("--clock", action="store_true", help="publish /clock (rosgraph_msgs/Clock) with the stamps")
    parser.add_argument("--world-frame", default="map", help="frame of the poses (default map)")
    parser.add_argument(
        "--camera-frame",
        default="camera_optical_frame",
        help="frame_id of images and camera_info and the TF child frame (default camera_optical_frame)",
    )
    parser.add_argument(
        "--topics",
        default="",
        metavar="PREFIX",
        help="topic prefix: PREFIX/image, PREFIX/camera_info, ... (default: none)",
    )
    parser.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0 = no limit)")
    parser.add_argument("--no-depth", action="store_true", help="do not publish depth")
    parser.add_argument(
        "--best-effort",
        action="store_true",
        help="sensor-data QoS (best effort, keep last 5) instead of reliable keep-last-10",
    )
    parser.add_argument(
        "--start-stamp",
        type=float,
        default=None,
        metavar="SEC",
        help="stamp of the first frame in seconds (default: wall-clock time at start)",
    )
    parser.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="hold the first frame until the image topic has N subscribers (default 0)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=30.0,
        metavar="SEC",
        help="give up waiting for subscribers after this long and start anyway (default 30)",
    )
    parser.add_argument(
        "--log-every", type=float, default=5.0, metavar="SEC", help="seconds between progress lines (default 5)"
    )
    parser.add_argument("--node-name", default=None, help="node name (default lerf_replay)")
    parser.add_argument(
        "--cameras",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: also publish a second camera beside the first (synthetic sources) on wrist/image, "
        "wrist/camera_info, wrist/depth, wrist/pose (default 1)",
    )
    parser.add_argument(
        "--second-camera-frame",
        default="wrist_camera_optical_frame",
        help="frame_id of the second camera's images and its TF child frame (default wrist_camera_optical_frame)",
    )
    parser.add_argument(
        "--no-pose-topic", action="store_true", help="do not publish the pose topic(s): poses only through /tf"
    )
    parser.add_argument("--no-tf", action="store_true", help="do not publish /tf: poses only on the pose topic(s)")
    parser.add_argument(
        "--corrected-path-topic",
        default="corrected_path",
        metavar="TOPIC",
        help="topic of the late pose corrections of a scene made with --late-correction (nav_msgs/Path, "
        "published after the last frame of each pass; prefixed by --topics; default corrected_path)",
    )
    parser.add_argument(
        "--no-corrected-path", action="store_true", help="do not publish a scene's late pose corrections"
    )
    from lerf_ros.commands.train import add_reader_arguments

    add_reader_arguments(parser)


def open_frames(spec: str, options: Optional[List[str]] = None) -> Any:
    """A re-iterable source of ``Frame`` objects for ``spec`` (``lerf_ros.data.sources.open_source``
    with the ``--reader-option KEY=VALUE`` items; a bare ``synthetic`` means the default synthetic
    scene)."""
    from lerf_ros.commands.train import open_with_options

    return open_with_options("synthetic:" if spec == "synthetic" else spec, list(options or []))


def run(args: argparse.Namespace) -> int:
    """Open the source and replay it (``lerf_ros.ros.replay_node.run_replay``); 2 for a source that
    cannot be opened or a rate <= 0."""
    try:
        frames = open_frames(args.source, args.reader_option)
    except (OSError, ValueError) as exc:
        print(f"lerf-ros replay: cannot open '{args.source}': {exc}", flush=True)
        return 2
    if args.rate <= 0:
        print(f"lerf-ros replay: --rate must be > 0, got {args.rate}", flush=True)
        return 2
    extra = []
    if args.cameras == 2:
        scene = getattr(frames, "scene", None)
        if scene is None or not hasattr(scene, "renderer"):
            print(
                f"lerf-ros replay: --cameras 2 renders the second camera from a synthetic scene; '{args.source}' "
                "is not one",
                flush=True,
            )
            return 2
        from lerf_ros.data.synthetic import offset_camera_frames

        extra = [
            (
                "wrist",
                offset_camera_frames(scene, frame_id=args.second_camera_frame, frames=list(frames)),
                args.second_camera_frame,
            )
        ]
    if args.no_pose_topic and args.no_tf:
        print("lerf-ros replay: --no-pose-topic with --no-tf would publish no poses at all", flush=True)
        return 2
    corrected = None
    if not args.no_corrected_path:
        corrected = getattr(getattr(frames, "scene", None), "corrected_poses", None)
        if corrected is not None and not args.corrected_path_topic.strip():
            print(
                "lerf-ros replay: --corrected-path-topic must not be empty (--no-corrected-path turns it off)",
                flush=True,
            )
            return 2
    from lerf_ros.ros.replay_node import run_replay

    return run_replay(
        frames,
        rate=args.rate,
        loop=args.loop,
        publish_clock=args.clock,
        world_frame=args.world_frame,
        camera_frame=args.camera_frame,
        topic_prefix=args.topics,
        max_frames=args.max_frames,
        publish_depth=not args.no_depth,
        reliable=not args.best_effort,
        start_stamp=args.start_stamp,
        wait_for_subscribers=args.wait_for_subscribers,
        wait_timeout=args.wait_timeout,
        log_every=args.log_every,
        node_name=args.node_name,
        extra_cameras=extra,
        publish_pose=not args.no_pose_topic,
        publish_tf=not args.no_tf,
        corrected_poses=corrected,
        corrected_path_topic=args.corrected_path_topic,
    )
