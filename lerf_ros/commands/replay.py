"""``lerf-ros replay``: publish a posed-frame source as a live ROS 2 camera stream.

Any source ``lerf_ros.data.sources.open_source`` reads (a synthetic scene folder, a
transforms.json folder, a rosbag2 file, or ``synthetic:seed=3,width=160,...`` for a freshly
rendered synthetic scene; a bare ``synthetic`` is the default one) is published at ``--rate`` Hz
on (names relative to the node namespace, prefixed with ``--topics PREFIX/`` when given):

- ``image`` (``sensor_msgs/Image``, rgb8) and ``camera_info`` (``sensor_msgs/CameraInfo``),
  ``header.frame_id`` = ``--camera-frame``;
- ``depth`` (``sensor_msgs/Image``, 32FC1 metres) when the source has depth (not with ``--no-depth``);
- ``pose`` (``geometry_msgs/PoseStamped``): the camera optical frame's pose in ``--world-frame``
  (``header.frame_id`` = the world frame), published before the image of the same stamp;
- ``/tf`` (``tf2_msgs/TFMessage``, world frame -> camera frame) when tf2_msgs is installed;
- ``/clock`` (``rosgraph_msgs/Clock``) with ``--clock``, so nodes with ``use_sim_time`` follow
  the replay's time.

Stamps are ``start + i / rate`` for the i-th published frame (start = the wall-clock time at the
first frame unless ``--start-stamp`` is given): they increase monotonically, also across
``--loop`` passes. QoS: reliable, keep last 10 by default, so nothing is lost to a subscriber
that keeps up; a sensor-data (best-effort) subscriber is compatible with it. ``--best-effort``
publishes with the sensor-data profile instead (then a subscriber must be best-effort too).

Ctrl-C (SIGINT) or SIGTERM stops it cleanly (exit code 0).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Iterable, Iterator, Optional

from lerf_ros.data.frame import Frame, FrameError

DEFAULT_NODE_NAME = "lerf_replay"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="posed-frame source: a synthetic scene folder, a transforms.json folder or file, "
                             "a rosbag2 file/folder, or 'synthetic[:seed=N,width=W,height=H,frames=F]' to "
                             "render a synthetic scene now")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second (default 5)")
    parser.add_argument("--loop", action="store_true", help="start again at the end of the source")
    parser.add_argument("--clock", action="store_true", help="publish /clock (rosgraph_msgs/Clock) with the stamps")
    parser.add_argument("--world-frame", default="map", help="frame of the poses (default map)")
    parser.add_argument("--camera-frame", default="camera_optical_frame",
                        help="frame_id of images and camera_info and the TF child frame (default camera_optical_frame)")
    parser.add_argument("--topics", default="", metavar="PREFIX",
                        help="topic prefix: PREFIX/image, PREFIX/camera_info, ... (default: none)")
    parser.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0 = no limit)")
    parser.add_argument("--no-depth", action="store_true", help="do not publish depth")
    parser.add_argument("--best-effort", action="store_true",
                        help="sensor-data QoS (best effort, keep last 5) instead of reliable keep-last-10")
    parser.add_argument("--start-stamp", type=float, default=None, metavar="SEC",
                        help="stamp of the first frame in seconds (default: wall-clock time at start)")
    parser.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                        help="hold the first frame until the image topic has N subscribers (default 0)")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="SEC",
                        help="give up waiting for subscribers after this long and start anyway (default 30)")
    parser.add_argument("--log-every", type=float, default=5.0, metavar="SEC",
                        help="seconds between progress lines (default 5)")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME, help=f"node name (default {DEFAULT_NODE_NAME})")


def open_frames(spec: str) -> Any:
    """A re-iterable source of ``Frame`` objects for ``spec`` (``lerf_ros.data.sources.open_source``;
    a bare ``synthetic`` means the default synthetic scene)."""
    from lerf_ros.data.sources import open_source

    return open_source("synthetic:" if spec == "synthetic" else spec)


def topic_name(prefix: str, name: str) -> str:
    prefix = prefix.strip().rstrip("/")
    return f"{prefix}/{name}" if prefix else name


def _make_node_class():
    """Build ReplayNode lazily so that importing this module (``lerf-ros --help``) needs no rclpy."""
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from geometry_msgs.msg import PoseStamped

    from lerf_ros.ros.convert import (
        ConversionError,
        K_to_camera_info,
        matrix_to_pose_stamped,
        matrix_to_transform_stamped,
        numpy_to_image,
        sec_to_stamp,
        tf_message,
    )

    class ReplayNode(Node):
        """Publishes frames of a source as a camera stream (see the module doc).

        Args:
            frames: a re-iterable of ``Frame`` (a list, a scene, a source: ``iter()`` restarts it).
            rate: frames per second.
            loop: restart at the end instead of finishing.
            publish_clock: publish /clock (when rosgraph_msgs is importable).
            world_frame, camera_frame: frame names of poses / images.
            topic_prefix: prefix of the image, camera_info, depth and pose topics.
            max_frames: finish after this many frames (0 = no limit).
            publish_depth: publish depth when a frame has it.
            reliable: reliable keep-last-10 QoS (else sensor-data QoS).
            start_stamp: stamp of the first frame (None = wall-clock time at the first frame).
            wait_for_subscribers: hold the first frame until the image topic has this many
                subscribers or ``wait_timeout`` s have passed.
            log_every: seconds between progress lines.

        ``done`` becomes True when the stream has finished (end of source or ``max_frames``);
        ``published`` counts frames sent, ``stamps`` holds their stamps (seconds).
        """

        def __init__(self, frames: Iterable[Frame], rate: float = 5.0, loop: bool = False,
                     publish_clock: bool = False, world_frame: str = "map",
                     camera_frame: str = "camera_optical_frame", topic_prefix: str = "", max_frames: int = 0,
                     publish_depth: bool = True, reliable: bool = True, start_stamp: Optional[float] = None,
                     wait_for_subscribers: int = 0, wait_timeout: float = 30.0, log_every: float = 5.0,
                     node_name: str = DEFAULT_NODE_NAME, **node_kwargs):
            super().__init__(node_name, **node_kwargs)
            if not rate > 0:
                raise ValueError(f"rate must be > 0, got {rate}")
            if max_frames < 0:
                raise ValueError(f"max_frames must be >= 0, got {max_frames}")
            self._source = frames
            self._iter: Iterator[Frame] = iter(frames)
            self.rate = float(rate)
            self.loop = bool(loop)
            self.world_frame = world_frame
            self.camera_frame = camera_frame
            self.max_frames = int(max_frames)
            self.publish_depth = bool(publish_depth)
            self.start_stamp = start_stamp
            self.wait_for_subscribers = int(wait_for_subscribers)
            self.wait_timeout = float(wait_timeout)
            self.log_every = float(log_every)
            self.published = 0
            self.passes = 1
            self.skipped = 0
            self.stamps = []
            self.done = False
            self._index_in_pass = 0
            self._t_start_wall: Optional[float] = None
            self._wait_started = time.monotonic()
            self._waiting_logged = False
            self._last_log = (time.monotonic(), 0)
            self._warned = set()
            try:
                self._length: Optional[int] = len(frames)  # type: ignore[arg-type]
            except TypeError:
                self._length = None

            qos = (QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
                   if reliable else qos_profile_sensor_data)
            self.topics = {k: topic_name(topic_prefix, k) for k in ("image", "camera_info", "depth", "pose")}
            self._pub_image = self.create_publisher(Image, self.topics["image"], qos)
            self._pub_info = self.create_publisher(CameraInfo, self.topics["camera_info"], qos)
            self._pub_depth = self.create_publisher(Image, self.topics["depth"], qos) if publish_depth else None
            self._pub_pose = self.create_publisher(PoseStamped, self.topics["pose"], qos)
            self._pub_tf = None
            if tf_message([]) is not None:
                from tf2_msgs.msg import TFMessage

                self._pub_tf = self.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
            self._pub_clock = None
            if publish_clock:
                try:
                    from rosgraph_msgs.msg import Clock
                except ImportError:
                    self.get_logger().warning("rosgraph_msgs is not installed: /clock is not published")
                else:
                    self._Clock = Clock
                    self._pub_clock = self.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            extras = [n for n, p in (("/tf", self._pub_tf), ("/clock", self._pub_clock)) if p is not None]
            self.get_logger().info(
                f"replaying {self._length if self._length is not None else 'a stream of'} frames at {self.rate:g} Hz"
                f"{' (looping)' if self.loop else ''} on {', '.join(self.topics.values())}"
                f"{', ' + ', '.join(extras) if extras else ''}; poses in '{world_frame}', images in '{camera_frame}'"
                f"{'' if self._pub_tf is not None else ' (tf2_msgs not installed: no /tf, use the pose topic)'}")
            self._timer = self.create_timer(1.0 / self.rate, self._tick)

        # ---------------------------------------------------------------- internals
        def _warn_once(self, reason: str) -> None:
            if reason not in self._warned:
                self._warned.add(reason)
                self.get_logger().warning(reason)

        def _next_frame(self) -> Optional[Frame]:
            try:
                frame = next(self._iter)
            except StopIteration:
                if not self.loop:
                    return None
                if self._index_in_pass == 0:
                    return None  # an empty source: nothing to loop over
                self._iter = iter(self._source)
                self.passes += 1
                self._index_in_pass = 0
                frame = next(self._iter)
            self._index_in_pass += 1
            return frame

        def _finish(self, why: str) -> None:
            self.done = True
            self._timer.cancel()
            elapsed = time.monotonic() - self._t_start_wall if self._t_start_wall else 0.0
            rate = (self.published - 1) / elapsed if elapsed > 0 and self.published > 1 else 0.0
            self.get_logger().info(f"replay finished ({why}): {self.published} frames in {elapsed:.1f} s "
                                   f"({rate:.2f} Hz), {self.skipped} skipped")

        def _tick(self) -> None:
            if self.done:
                return
            if self.published == 0 and self.wait_for_subscribers > 0:
                have = self._pub_image.get_subscription_count()
                if have < self.wait_for_subscribers:
                    if time.monotonic() - self._wait_started < self.wait_timeout:
                        if not self._waiting_logged:
                            self._waiting_logged = True
                            self.get_logger().info(f"waiting for {self.wait_for_subscribers} subscriber(s) on "
                                                   f"{self._pub_image.topic_name} (have {have})")
                        return
                    self._warn_once(f"no {self.wait_for_subscribers} subscriber(s) on {self._pub_image.topic_name} "
                                    f"after {self.wait_timeout:g} s: starting anyway")
            if self.max_frames and self.published >= self.max_frames:
                self._finish(f"max_frames={self.max_frames}")
                return
            frame = self._next_frame()
            if frame is None:
                self._finish("end of source")
                return
            if self._t_start_wall is None:
                self._t_start_wall = time.monotonic()
                if self.start_stamp is None:
                    self.start_stamp = time.time()
            stamp_s = self.start_stamp + self.published / self.rate
            try:
                self._publish(frame, stamp_s)
            except (ConversionError, FrameError, ValueError) as exc:
                self.skipped += 1
                self._warn_once(f"skipping frame(s) that cannot be published: {exc}")
                return
            self.published += 1
            self.stamps.append(stamp_s)
            now = time.monotonic()
            if now - self._last_log[0] >= self.log_every:
                rate = (self.published - self._last_log[1]) / (now - self._last_log[0])
                where = f"{self._index_in_pass}/{self._length}" if self._length else str(self._index_in_pass)
                self.get_logger().info(f"published {self.published} frames (pass {self.passes}, frame {where}) "
                                       f"at {rate:.2f} Hz (target {self.rate:g} Hz)")
                self._last_log = (now, self.published)
            if self.max_frames and self.published >= self.max_frames:
                self._finish(f"max_frames={self.max_frames}")

        def _publish(self, frame: Frame, stamp_s: float) -> None:
            frame.validate()
            stamp = sec_to_stamp(stamp_s)
            image = numpy_to_image(frame.rgb, "rgb8", stamp, self.camera_frame)
            info = K_to_camera_info(frame.K, frame.width, frame.height, stamp, self.camera_frame)
            pose = matrix_to_pose_stamped(frame.c2w, self.world_frame, stamp)
            depth = None
            if self._pub_depth is not None and frame.depth is not None:
                depth = numpy_to_image(frame.depth, "32FC1", stamp, self.camera_frame)
            if self._pub_clock is not None:
                self._pub_clock.publish(self._Clock(clock=stamp))
            if self._pub_tf is not None:
                self._pub_tf.publish(tf_message(
                    [matrix_to_transform_stamped(frame.c2w, self.world_frame, self.camera_frame, stamp)]))
            self._pub_pose.publish(pose)
            self._pub_info.publish(info)
            if depth is not None:
                self._pub_depth.publish(depth)
            self._pub_image.publish(image)

    return ReplayNode


_NODE_CLASS = None


def __getattr__(name: str):
    # ``from lerf_ros.commands.replay import ReplayNode`` builds the class on first use.
    global _NODE_CLASS
    if name == "ReplayNode":
        if _NODE_CLASS is None:
            _NODE_CLASS = _make_node_class()
        return _NODE_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    try:
        frames = open_frames(args.source)
    except (OSError, ValueError) as exc:
        print(f"lerf-ros replay: cannot open '{args.source}': {exc}", flush=True)
        return 2
    if args.rate <= 0:
        print(f"lerf-ros replay: --rate must be > 0, got {args.rate}", flush=True)
        return 2
    rclpy.init()
    node = None
    executor = None
    try:
        node = __getattr__("ReplayNode")(
            frames, rate=args.rate, loop=args.loop, publish_clock=args.clock, world_frame=args.world_frame,
            camera_frame=args.camera_frame, topic_prefix=args.topics, max_frames=args.max_frames,
            publish_depth=not args.no_depth, reliable=not args.best_effort, start_stamp=args.start_stamp,
            wait_for_subscribers=args.wait_for_subscribers, wait_timeout=args.wait_timeout,
            log_every=args.log_every, node_name=args.node_name)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not node.done:
            executor.spin_once(timeout_sec=0.1)
        # Give reliable subscribers a moment to receive the last frames before the publishers go.
        linger_until = time.monotonic() + 0.5
        while rclpy.ok() and time.monotonic() < linger_until:
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None:
            node.get_logger().info(f"stopped after {node.published} frames")
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM shut the context down while a timer callback was publishing (RCLError).
        if node is not None:
            node.get_logger().info(f"stopped after {node.published} frames")
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
