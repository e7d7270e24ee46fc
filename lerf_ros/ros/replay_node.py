"""The replay node: publishes a posed-frame source as a live ROS 2 camera stream.

``lerf-ros replay`` (``lerf_ros.commands.replay``) opens the source and calls ``run_replay``; tests
build ``ReplayNode`` in their own context. Frames are published at ``rate`` Hz on (names relative
to the node namespace, prefixed with ``topic_prefix/`` when given):

- ``image`` (``sensor_msgs/Image``, rgb8) and ``camera_info`` (``sensor_msgs/CameraInfo``),
  ``header.frame_id`` = the camera frame;
- ``depth`` (``sensor_msgs/Image``, 32FC1 metres) when the frame has depth (unless disabled);
- ``pose`` (``geometry_msgs/PoseStamped``): the camera optical frame's pose in the world frame
  (``header.frame_id`` = the world frame), published before the image of the same stamp (unless
  disabled: then the poses come through /tf only);
- ``/tf`` (``tf2_msgs/TFMessage``, world frame -> camera frame) when tf2_msgs is installed (unless
  disabled: then the poses come on the pose topic only);
- ``corrected_path`` (``nav_msgs/Path``, or another topic name) when late pose corrections are given
  (a synthetic scene made with a late correction: its ``pose_corrections.json``): once per pass,
  right after the frame from whose stamp the correction is known (the last one: a loop closure at
  the end of the trajectory), the corrected pose of every frame published in that pass, each with
  the stamp that frame was published with, in the world frame (what a trainer's
  ``corrected_path_topic`` takes); reliable and transient-local, so a late subscriber still gets it;
- ``/clock`` (``rosgraph_msgs/Clock``) on request, so nodes with ``use_sim_time`` follow the
  replay's time;
- for each extra camera ``<name>`` (``extra_cameras``: frames in step with the source's, e.g. a
  synthetic scene's second camera): ``<name>/image``, ``<name>/camera_info``, ``<name>/depth``,
  ``<name>/pose`` and its ``/tf``, with the same stamp as the first camera's frame.

Stamps are ``start + i / rate`` for the i-th published frame (start = the wall-clock time at the
first frame unless given): they increase monotonically, also across loop passes. QoS: reliable,
keep last 10 by default, so nothing is lost to a subscriber that keeps up (a sensor-data
subscriber is compatible with it); or the sensor-data profile (then subscribers must be best-effort).
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.ros.common import LATCHED_QOS, init_without_signal_handlers
from lerf_ros.ros.convert import (
    ConversionError,
    K_to_camera_info,
    matrix_to_pose_stamped,
    matrix_to_transform_stamped,
    numpy_to_image,
    sec_to_stamp,
    tf_message,
)

__all__ = ["DEFAULT_NODE_NAME", "ReplayNode", "run_replay", "topic_name"]

DEFAULT_NODE_NAME = "lerf_replay"


def topic_name(prefix: str, name: str) -> str:
    """``prefix/name`` (``name`` alone for an empty prefix; a trailing slash is ignored)."""
    prefix = prefix.strip().rstrip("/")
    return f"{prefix}/{name}" if prefix else name


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
        extra_cameras: (name, frames, camera frame) of further cameras: their i-th frame is published
            with the source's i-th frame (same stamp) on ``<name>/image`` ... (``frames`` must be as
            long as the source).
        publish_pose: publish the pose topics (False: poses only through /tf).
        publish_tf: publish /tf (False: poses only on the pose topics).
        corrected_poses: (F, 4, 4) late corrections of the source's F frames (camera-to-world, in
            the world frame), or None; published as a ``nav_msgs/Path`` on ``corrected_path_topic``
            right after frame ``corrections_after`` of each pass (default: the last frame).
        corrected_path_topic: topic of the corrected path (prefixed like the others).
        corrections_after: index of the source frame from whose stamp the corrections are known.
        node_name: node name (None: ``DEFAULT_NODE_NAME``); further keyword arguments go to ``Node``.

    ``done`` becomes True when the stream has finished (end of source or ``max_frames``);
    ``published`` counts frames sent, ``stamps`` holds their stamps (seconds); ``paths_published``
    counts corrected paths sent.
    """

    def __init__(
        self,
        frames: Iterable[Frame],
        rate: float = 5.0,
        loop: bool = False,
        publish_clock: bool = False,
        world_frame: str = "map",
        camera_frame: str = "camera_optical_frame",
        topic_prefix: str = "",
        max_frames: int = 0,
        publish_depth: bool = True,
        reliable: bool = True,
        start_stamp: Optional[float] = None,
        wait_for_subscribers: int = 0,
        wait_timeout: float = 30.0,
        log_every: float = 5.0,
        node_name: Optional[str] = None,
        extra_cameras: Sequence[Tuple[str, Sequence[Frame], str]] = (),
        publish_pose: bool = True,
        publish_tf: bool = True,
        corrected_poses: Optional[np.ndarray] = None,
        corrected_path_topic: str = "corrected_path",
        corrections_after: Optional[int] = None,
        **node_kwargs,
    ):
        super().__init__(node_name or DEFAULT_NODE_NAME, **node_kwargs)
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
        self.paths_published = 0
        self._corrected = None
        self._pass_stamps = {}  # index in the pass -> stamp it was published with
        if corrected_poses is not None:
            corrected = np.asarray(corrected_poses, dtype=np.float64)
            if self._length is None or corrected.shape != (self._length, 4, 4):
                raise ValueError(
                    f"corrected_poses must be ({self._length if self._length is not None else 'F'}, 4, 4) "
                    f"for the source's frames, got {corrected.shape}"
                )
            after = self._length - 1 if corrections_after is None else int(corrections_after)
            if not 0 <= after < self._length:
                raise ValueError(f"corrections_after must be a frame index in [0, {self._length}), got {after}")
            if not str(corrected_path_topic).strip():
                raise ValueError("corrected_path_topic must not be empty when corrected poses are given")
            self._corrected = (corrected, after)

        qos = (
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
            if reliable
            else qos_profile_sensor_data
        )
        self.topics = {k: topic_name(topic_prefix, k) for k in ("image", "camera_info", "depth", "pose")}
        self._pub_image = self.create_publisher(Image, self.topics["image"], qos)
        self._pub_info = self.create_publisher(CameraInfo, self.topics["camera_info"], qos)
        self._pub_depth = self.create_publisher(Image, self.topics["depth"], qos) if publish_depth else None
        self._pub_pose = self.create_publisher(PoseStamped, self.topics["pose"], qos) if publish_pose else None
        if not publish_pose:
            del self.topics["pose"]
        self._pub_path = None
        if self._corrected is not None:
            self.topics["corrected_path"] = topic_name(topic_prefix, corrected_path_topic)
            self._pub_path = self.create_publisher(Path, self.topics["corrected_path"], LATCHED_QOS)
        self._extra = []
        for name, extra_frames, extra_frame_id in extra_cameras:
            extra_frames = list(extra_frames)
            if self._length is not None and len(extra_frames) != self._length:
                raise ValueError(
                    f"extra camera '{name}' has {len(extra_frames)} frames, the source {self._length}: they must match"
                )
            kinds = (
                ("image", "camera_info") + (("depth",) if publish_depth else ()) + (("pose",) if publish_pose else ())
            )
            topics = {k: topic_name(topic_prefix, f"{name}/{k}") for k in kinds}
            self.topics.update({f"{name}/{k}": v for k, v in topics.items()})
            pubs = {
                k: self.create_publisher(
                    PoseStamped if k == "pose" else CameraInfo if k == "camera_info" else Image, v, qos
                )
                for k, v in topics.items()
            }
            self._extra.append((name, extra_frames, extra_frame_id, pubs))
        self._pub_tf = None
        if publish_tf and tf_message([]) is not None:
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
        if not publish_tf:
            tf_note = " (no /tf: poses on the pose topic only)"
        elif self._pub_tf is None:
            tf_note = " (tf2_msgs not installed: no /tf, use the pose topic)"
        else:
            tf_note = ""
        if self._pub_pose is None and self._pub_tf is None:
            self._warn_once("neither a pose topic nor /tf is published: a trainer will find no poses for these images")
        self.get_logger().info(
            f"replaying {self._length if self._length is not None else 'a stream of'} frames at {self.rate:g} Hz"
            f"{' (looping)' if self.loop else ''} on {', '.join(self.topics.values())}"
            f"{', ' + ', '.join(extras) if extras else ''}; poses in '{world_frame}', images in '{camera_frame}'"
            f"{tf_note}"
            + (
                f"; late pose corrections on {self.topics['corrected_path']} after frame {self._corrected[1]}"
                if self._corrected is not None
                else ""
            )
        )
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
            self._pass_stamps = {}
            frame = next(self._iter)
        self._index_in_pass += 1
        return frame

    def _finish(self, why: str) -> None:
        self.done = True
        self._timer.cancel()
        elapsed = time.monotonic() - self._t_start_wall if self._t_start_wall else 0.0
        rate = (self.published - 1) / elapsed if elapsed > 0 and self.published > 1 else 0.0
        self.get_logger().info(
            f"replay finished ({why}): {self.published} frames in {elapsed:.1f} s "
            f"({rate:.2f} Hz), {self.skipped} skipped"
        )

    def _tick(self) -> None:
        if self.done:
            return
        if self.published == 0 and self.wait_for_subscribers > 0:
            have = self._pub_image.get_subscription_count()
            if have < self.wait_for_subscribers:
                if time.monotonic() - self._wait_started < self.wait_timeout:
                    if not self._waiting_logged:
                        self._waiting_logged = True
                        self.get_logger().info(
                            f"waiting for {self.wait_for_subscribers} subscriber(s) on "
                            f"{self._pub_image.topic_name} (have {have})"
                        )
                    return
                self._warn_once(
                    f"no {self.wait_for_subscribers} subscriber(s) on {self._pub_image.topic_name} "
                    f"after {self.wait_timeout:g} s: starting anyway"
                )
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
        self._pass_stamps[self._index_in_pass - 1] = stamp_s
        if self._corrected is not None and self._index_in_pass - 1 == self._corrected[1]:
            self._publish_corrections()
        now = time.monotonic()
        if now - self._last_log[0] >= self.log_every:
            rate = (self.published - self._last_log[1]) / (now - self._last_log[0])
            where = f"{self._index_in_pass}/{self._length}" if self._length else str(self._index_in_pass)
            self.get_logger().info(
                f"published {self.published} frames (pass {self.passes}, frame {where}) "
                f"at {rate:.2f} Hz (target {self.rate:g} Hz)"
            )
            self._last_log = (now, self.published)
        if self.max_frames and self.published >= self.max_frames:
            self._finish(f"max_frames={self.max_frames}")

    def _publish(self, frame: Frame, stamp_s: float) -> None:
        frame.validate()
        stamp = sec_to_stamp(stamp_s)
        i = self._index_in_pass - 1
        extra = [(e[1][i], e[2], e[3]) for e in self._extra if 0 <= i < len(e[1])]
        for f, _, _ in extra:
            f.validate()
        image = numpy_to_image(frame.rgb, "rgb8", stamp, self.camera_frame)
        info = K_to_camera_info(frame.K, frame.width, frame.height, stamp, self.camera_frame, frame.distortion)
        pose = matrix_to_pose_stamped(frame.c2w, self.world_frame, stamp)
        depth = None
        if self._pub_depth is not None and frame.depth is not None:
            depth = numpy_to_image(frame.depth, "32FC1", stamp, self.camera_frame)
        if self._pub_clock is not None:
            self._pub_clock.publish(self._Clock(clock=stamp))
        if self._pub_tf is not None:
            transforms = [matrix_to_transform_stamped(frame.c2w, self.world_frame, self.camera_frame, stamp)]
            transforms += [matrix_to_transform_stamped(f.c2w, self.world_frame, fid, stamp) for f, fid, _ in extra]
            self._pub_tf.publish(tf_message(transforms))
        if self._pub_pose is not None:
            self._pub_pose.publish(pose)
        self._pub_info.publish(info)
        if depth is not None:
            self._pub_depth.publish(depth)
        self._pub_image.publish(image)
        for f, fid, pubs in extra:
            if "pose" in pubs:
                pubs["pose"].publish(matrix_to_pose_stamped(f.c2w, self.world_frame, stamp))
            pubs["camera_info"].publish(K_to_camera_info(f.K, f.width, f.height, stamp, fid, f.distortion))
            if "depth" in pubs and f.depth is not None:
                pubs["depth"].publish(numpy_to_image(f.depth, "32FC1", stamp, fid))
            pubs["image"].publish(numpy_to_image(f.rgb, "rgb8", stamp, fid))

    def _publish_corrections(self) -> None:
        """The corrected poses of the frames published in this pass, each with its published stamp."""
        corrected, _ = self._corrected
        msg = Path()
        msg.header.frame_id = self.world_frame
        msg.header.stamp = sec_to_stamp(self._pass_stamps[self._corrected[1]])
        skipped = 0
        for i, stamp_s in sorted(self._pass_stamps.items()):
            try:
                msg.poses.append(matrix_to_pose_stamped(corrected[i], self.world_frame, sec_to_stamp(stamp_s)))
            except (ConversionError, ValueError):
                skipped += 1
        if skipped:
            self._warn_once(f"late pose corrections: {skipped} pose(s) that are not rigid transforms left out")
        self._pub_path.publish(msg)
        self.paths_published += 1
        self.get_logger().info(
            f"published late pose corrections of {len(msg.poses)} frame(s) on {self._pub_path.topic_name} "
            f"(pass {self.passes})"
        )


def run_replay(frames: Iterable[Frame], **options) -> int:
    """Publish ``frames`` with a ``ReplayNode`` (``options``: its keyword arguments) in this process
    until the stream ends or SIGINT/SIGTERM arrives, then shut down cleanly. Returns 0.

    After the last frame the publishers stay up half a second, so reliable subscribers receive it.
    A signal only sets a flag (``lerf_ros.ros.common.ShutdownRequest``): the frame being published
    is finished, then the node is destroyed and the context shut down, so nothing fails loudly.
    """
    request = init_without_signal_handlers()
    node = None
    executor = None
    try:
        node = ReplayNode(frames, **options)
        request.interrupting = False
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not request.is_set() and rclpy.ok() and not node.done:
            executor.spin_once(timeout_sec=0.1)
        linger_until = time.monotonic() + 0.5
        while not request.is_set() and rclpy.ok() and time.monotonic() < linger_until:
            executor.spin_once(timeout_sec=0.05)
        if request.is_set():
            node.get_logger().info(f"stopped after {node.published} frames")
    except (KeyboardInterrupt, ExternalShutdownException):  # a signal while the node was built
        pass
    finally:
        request.interrupting = False
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
