"""One camera of the trainer node: its subscriptions, its pose source, its checks and its counters.

The trainer node (``lerf_ros.ros.trainer_node``) builds one ``CameraInput`` per name in its
``cameras`` parameter. Each camera has its own topics and frame (parameters ``<name>.*``, see
``declare_camera``), its own bounded ingest queue, its own pose buffer (poses from a topic), stamp
guards, depth cache and keyframe selector; all cameras feed the node's one ingest thread and the
one training session, so every camera's keyframes train the same field.

A camera's callbacks only convert cheap things and enqueue. ``to_frame`` (called by the ingest
thread) turns an image into a posed ``Frame`` or says why not. Drops are counted per camera (its
own ``DropReporter``, which does not log) and reported to the node's ``DropReporter`` (which logs
each reason once); with several cameras the node's reasons name the camera.

Bad input on one camera (wrong encoding, no pose, a flood of images) fills that camera's queue and
counters only: the ingest thread takes the oldest ready image of any camera, so a camera whose
images wait for their pose does not hold the others back.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass
from typing import Deque, List, Optional, Sequence, Tuple

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.geometry.camera import Distortion
from lerf_ros.geometry.poses import PoseBuffer, PoseLookupError, StampGuard, make_pose
from lerf_ros.mapping.selection import KeyframeSelector
from lerf_ros.ros.convert import (
    ConversionError,
    camera_info_distortion,
    camera_info_to_K,
    image_to_numpy,
    pose_to_matrix,
    stamp_to_ns,
    stamp_to_sec,
)
from lerf_ros.ros.drops import DropReporter, excerpt

POSE_HISTORY_S = 30.0
"""Seconds of poses a camera keeps (poses from a topic)."""
POSE_QUEUE_DEPTH = 50
"""Depth of the pose/odom subscription (reliable, as before the QoS parameters)."""
CAMERA_FIELDS = ("image_topic", "camera_info_topic", "depth_topic", "pose_topic", "frame_id", "body_to_camera")
"""The per-camera parameters, ``<camera name>.<field>``."""
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
"""Values of ``input_qos_reliability``."""


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """The QoS of the image, camera_info and depth subscriptions (keep last ``depth``, volatile).

    Raises ValueError naming the parameter for a value it does not know."""
    key = str(reliability).strip().lower().replace("-", "_")
    if key not in RELIABILITY:
        raise ValueError(f"input_qos_reliability = '{reliability}': expected best_effort or reliable")
    if int(depth) < 1:
        raise ValueError(f"input_qos_depth = {depth}: must be >= 1")
    return QoSProfile(depth=int(depth), reliability=RELIABILITY[key], history=HistoryPolicy.KEEP_LAST)


def check_camera_names(names: Sequence[str], taken: Sequence[str]) -> List[str]:
    """The camera names, checked: at least one, unique, each a parameter name (a letter, then
    letters, digits and '_') that is not already a parameter or section of the node (``taken``)."""
    names = [str(n) for n in names]
    if not names:
        raise ValueError("cameras is empty: name at least one camera")
    for n in names:
        if not _NAME.match(n):
            raise ValueError(f"camera name '{n}': use a letter, then letters, digits or '_'")
        if n in taken:
            raise ValueError(f"camera name '{n}' is already a parameter or section of the node: pick another")
    if len(set(names)) != len(names):
        raise ValueError(f"cameras {names}: names must be unique")
    return names


@dataclass(frozen=True)
class CameraSpec:
    """Where one camera's input comes from (its ``<name>.*`` parameters)."""

    name: str
    """The camera's name (an entry of ``cameras``)."""
    image_topic: str
    """sensor_msgs/Image topic (colour)."""
    camera_info_topic: str
    """sensor_msgs/CameraInfo topic."""
    depth_topic: str
    """Optional aligned depth image topic (16UC1 mm or 32FC1 m; with ``use_depth``)."""
    pose_topic: str
    """PoseStamped (pose_source pose) or Odometry (pose_source odom) topic; unused with TF."""
    frame_id: str
    """The camera's optical frame for TF; empty: the image header's frame_id."""
    body_to_camera: Tuple[float, ...]
    """The camera's pose in the pose topic's body frame: x y z qx qy qz qw."""


def declare_camera(node, name: str, first: bool, pose_source: str, body_to_camera: Sequence[float]) -> CameraSpec:
    """Declare camera ``name``'s parameters on ``node`` and return its spec.

    Defaults: the first camera keeps the node's unprefixed topics (``image``, ``camera_info``,
    ``depth``, ``pose`` or ``odom``), so one camera works as it always did; any other camera
    ``<name>`` defaults to ``<name>/image``, ``<name>/camera_info``, ... ``body_to_camera`` defaults
    to the node's ``body_to_camera``."""
    prefix = "" if first else f"{name}/"
    pose_default = f"{prefix}{'odom' if pose_source == 'odom' else 'pose'}"
    defaults = {
        "image_topic": (f"{prefix}image", "sensor_msgs/Image (colour) topic of this camera"),
        "camera_info_topic": (f"{prefix}camera_info", "sensor_msgs/CameraInfo topic of this camera"),
        "depth_topic": (f"{prefix}depth", "Aligned depth image topic of this camera (with use_depth)"),
        "pose_topic": (
            pose_default,
            "This camera's PoseStamped (pose_source pose) or Odometry (pose_source odom) topic",
        ),
        "frame_id": ("", "This camera's frame for TF lookups; empty: the image header's frame_id"),
        "body_to_camera": (
            [float(v) for v in body_to_camera],
            "This camera's pose in the pose topic's body frame: x y z qx qy qz qw (default: body_to_camera)",
        ),
    }
    values = {}
    for field_name, (default, text) in defaults.items():
        desc = ParameterDescriptor(description=text, read_only=True)
        value = node.declare_parameter(f"{name}.{field_name}", default, desc).value
        values[field_name] = list(value) if field_name == "body_to_camera" else str(value)
    if len(values["body_to_camera"]) != 7:
        raise ValueError(f"{name}.body_to_camera must have 7 numbers: x y z qx qy qz qw")
    for key in ("image_topic", "camera_info_topic"):
        if not values[key].strip():
            raise ValueError(f"{name}.{key} is empty")
    values["body_to_camera"] = tuple(float(v) for v in values["body_to_camera"])
    return CameraSpec(name=name, **values)


class CameraInput:
    """One camera's input (see the module docstring); owned by a ``TrainerNode``.

    Args:
        node: the trainer node (its clock, logger, world frame, tolerances, TF buffer, the shared
            ingest condition ``_queue_cv`` and its ``DropReporter``).
        spec: the camera's topics and frames.
        selector: the camera's keyframe selector (the session's own for the first camera).
        qos: QoS of the image, camera_info and depth subscriptions.
        queue_size: images of this camera waiting for ingestion (the oldest is dropped when full).
        name_reasons: prefix the reasons given to the node's reporter with the camera's name.
        callback_group: of the subscriptions.
    """

    def __init__(
        self,
        node,
        spec: CameraSpec,
        selector: KeyframeSelector,
        qos: QoSProfile,
        queue_size: int,
        name_reasons: bool,
        callback_group,
    ) -> None:
        self.node = node
        self.spec = spec
        self.name = spec.name
        self.selector = selector
        self._name_reasons = bool(name_reasons)
        self._body_to_camera = make_pose(np.asarray(spec.body_to_camera[:3]), np.asarray(spec.body_to_camera[3:]))
        self.drops = DropReporter(lambda _line: None)  # per-camera counts; the node's reporter logs
        self.frames_received = 0
        self.keyframes = 0
        self._camera_info: Optional[Tuple[np.ndarray, int, int, str, Optional[Distortion]]] = None
        self._camera_info_error: Optional[str] = None
        self._distortion_logged: set = set()
        self._depth_msgs: Deque[Image] = collections.deque(maxlen=30)
        # Images waiting for ingestion (with their arrival time): also the bounded cache where an
        # image waits up to pose_tolerance_s for a pose that is still on its way.
        self.queue: Deque[Tuple[float, Image]] = collections.deque(maxlen=max(1, int(queue_size)))
        self._poses = PoseBuffer(max_age_s=POSE_HISTORY_S, tolerance_s=float(node.pose_tolerance))
        self._image_stamps = StampGuard(node.max_stamp_offset)
        self._pose_stamps = StampGuard(node.max_stamp_offset, max_backward_s=POSE_HISTORY_S)
        self.selector_reset = threading.Event()  # set by the clock-jump callback, done by the ingest thread
        self._qos, self._callback_group = qos, callback_group

    def subscribe(self) -> None:
        """Create this camera's subscriptions on the node (the managed node does so when it is activated
        and destroys them when it is deactivated)."""
        node, spec, qos, group = self.node, self.spec, self._qos, self._callback_group
        node.create_subscription(Image, spec.image_topic, self._on_image, qos, callback_group=group)
        node.create_subscription(CameraInfo, spec.camera_info_topic, self._on_camera_info, qos, callback_group=group)
        if node.use_depth and spec.depth_topic.strip():
            node.create_subscription(Image, spec.depth_topic, self._on_depth, qos, callback_group=group)
        if node.pose_source == "pose":
            node.create_subscription(
                PoseStamped, spec.pose_topic, self._on_pose, POSE_QUEUE_DEPTH, callback_group=group
            )
        elif node.pose_source == "odom":
            node.create_subscription(Odometry, spec.pose_topic, self._on_odom, POSE_QUEUE_DEPTH, callback_group=group)

    # ------------------------------------------------------------------ counting
    def drop(self, reason: str) -> None:
        """Count a dropped frame of this camera and report it to the node (which logs it once)."""
        self.drops.drop(reason)
        self.node.drops.drop(f"camera '{self.name}': {reason}" if self._name_reasons else reason)

    def note(self, event: str) -> None:
        """Log an event of this camera once (the node's reporter), without counting a drop."""
        self.node.drops.note(f"camera '{self.name}': {event}" if self._name_reasons else event)

    @property
    def dropped(self) -> int:
        """Frames of this camera dropped so far."""
        return self.drops.count

    # ------------------------------------------------------------------ callbacks (cheap)
    def _on_image(self, msg: Image) -> None:
        self.frames_received += 1
        self.node.frames_received += 1
        with self.node._queue_cv:
            if len(self.queue) == self.queue.maxlen:
                self.drop("ingest queue full (frames arrive faster than they are processed)")
            self.queue.append((time.monotonic(), msg))
            self.node._queue_cv.notify()

    def _on_depth(self, msg: Image) -> None:
        self._depth_msgs.append(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        # Lens distortion is modelled (rays go through its inverse; the raw image is used as is);
        # a model that cannot be modelled is refused, naming it: images are then dropped with
        # that reason instead of being trained as if the lens were a pinhole.
        try:
            K, w, h = camera_info_to_K(msg)
            distortion = camera_info_distortion(msg)
        except ConversionError as exc:
            self._camera_info_error = f"bad camera_info: {exc}"
            self._camera_info = None
            self.drop(self._camera_info_error)
            return
        self._camera_info_error = None
        if distortion is not None and distortion not in self._distortion_logged:
            self._distortion_logged.add(distortion)
            where = f"camera '{self.name}' " if self._name_reasons else ""
            self.node.get_logger().info(
                f"{where}camera_info lens distortion {distortion.model} {distortion.as_dict()} is modelled "
                f"(it moves rays by up to {distortion.max_displacement_px(K, w, h):.1f} px)"
            )
        self._camera_info = (K, w, h, msg.header.frame_id, distortion)

    def _on_pose(self, msg: PoseStamped) -> None:
        self._add_pose(stamp_to_sec(msg.header.stamp), msg.pose, msg.header.frame_id)

    def _on_odom(self, msg: Odometry) -> None:
        self._add_pose(stamp_to_sec(msg.header.stamp), msg.pose.pose, msg.header.frame_id)

    def _add_pose(self, stamp: float, pose, frame_id: str) -> None:
        node = self.node
        if frame_id and frame_id != node.world_frame:
            self.drop(f"pose is in frame '{excerpt(frame_id)}', expected the world frame '{excerpt(node.world_frame)}'")
            return
        try:
            T = pose_to_matrix(pose) @ self._body_to_camera
        except (ConversionError, FrameError) as exc:
            self.drop(f"bad pose at {stamp:.3f}: {exc}")
            return
        far = node._too_far(T)
        if far:
            self.drop(f"pose at {stamp:.3f}: {far}")
            return
        verdict = self._pose_stamps.check(stamp, node._now())
        if verdict.status == "jump":
            node._time_jumped(self._stream("pose"), verdict.reason)
            self._poses.clear()
        elif not verdict.ok:
            self.drop(f"pose {verdict.status}: {verdict.reason}")
            return
        self._poses.add(stamp, T)
        with node._queue_cv:
            node._queue_cv.notify()  # an image may be waiting for this pose

    def _stream(self, kind: str) -> str:
        return f"camera '{self.name}' {kind}" if self._name_reasons else kind

    def clear_time_base(self) -> None:
        """The ROS clock jumped: forget the poses, stamps and depth of the old time base (the
        selector is reset by the ingest thread: ``selector_reset``)."""
        self._poses.clear()
        self._pose_stamps.reset()
        self._image_stamps.reset()
        self._depth_msgs.clear()
        self.selector_reset.set()

    # ------------------------------------------------------------------ ingestion (the node's thread)
    def pose_wait(self, msg: Image, arrived: float) -> float:
        """Seconds ``msg`` should still wait for its pose (0: process it now)."""
        if self.node.pose_source == "tf":
            return 0.0  # the TF lookup waits by itself (tf_timeout_s)
        newest = self._poses.newest_stamp
        if newest is not None and newest >= stamp_to_sec(msg.header.stamp):
            return 0.0
        return arrived + float(self.node.pose_tolerance) - time.monotonic()

    def to_frame(self, msg: Image, cancel: Optional[threading.Event] = None):
        """(Frame, None) or (None, reason). The frame's ``meta`` names the camera. ``cancel``: set
        while a TF lookup waits, it gives the lookup up at once (the node is being deactivated)."""
        node = self.node
        if self.selector_reset.is_set():
            self.selector_reset.clear()
            self.selector.reset()
        stamp = stamp_to_sec(msg.header.stamp)
        verdict = self._image_stamps.check(stamp, node._now(), commit=False)
        if verdict.status == "jump":
            node._time_jumped(self._stream("image"), verdict.reason)
            self.selector.reset()
            self._depth_msgs.clear()
            newest = self._poses.newest_stamp
            if newest is not None and abs(newest - stamp) > node.max_stamp_offset:
                self._poses.clear()  # still the old time base: the pose stream follows on its own
                self._pose_stamps.reset()
        elif not verdict.ok:
            return None, f"image {verdict.status}: {verdict.reason}"
        if self._camera_info is None:
            if self._camera_info_error is not None:
                return None, self._camera_info_error
            return None, f"no camera_info received yet on '{node.resolve_topic_name(self.spec.camera_info_topic)}'"
        K, w, h, _, distortion = self._camera_info
        try:
            rgb, kind = image_to_numpy(msg)
        except ConversionError as exc:
            return None, f"image: {exc}"
        if kind != "rgb":
            return None, f"image encoding '{excerpt(msg.encoding)}' is not a colour image"
        if rgb.shape[:2] != (h, w):
            return None, f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says {w}x{h}"
        frame_id = self.spec.frame_id or msg.header.frame_id
        c2w, err = self._pose_at(frame_id, msg.header.stamp, stamp, cancel)
        if c2w is None:
            return None, err
        far = node._too_far(c2w)
        if far:
            return None, f"camera pose for image at {stamp:.3f}: {far}"
        depth, err = self._depth_at(stamp, (h, w))
        if err is not None:
            return None, err
        stamp_ns = stamp_to_ns(msg.header.stamp)
        frame = Frame(
            rgb=rgb,
            K=K,
            c2w=c2w,
            stamp=stamp,
            frame_id=frame_id,
            depth=depth,
            distortion=distortion,
            # the exact stamp, for looking the keyframe up in TF again; the camera it came from
            meta={"stamp_ns": stamp_ns, "camera": self.name},
        )
        try:
            frame.validate()
        except FrameError as exc:
            return None, f"invalid frame: {exc}"
        self._image_stamps.commit(stamp)
        return frame, None

    def _pose_at(self, frame_id: str, stamp_msg, stamp: float, cancel: Optional[threading.Event] = None):
        node = self.node
        if node.pose_source == "tf":
            # The process's shared TF feed (lerf_ros.ros.tf); before any /tf arrived the reason says so.
            T, _, reason = node._tf.lookup(node.world_frame, frame_id, stamp_msg, float(node.tf_timeout), cancel)
            return (T, None) if T is not None else (None, reason)
        try:
            return self._poses.lookup(stamp), None
        except PoseLookupError as exc:
            return None, f"no camera pose for image at {stamp:.3f}: {exc}"
        except FrameError as exc:
            return None, f"bad camera pose: {exc}"

    def _depth_at(self, stamp: float, hw):
        if not self.node.use_depth or not self._depth_msgs:
            return None, None
        best = min(list(self._depth_msgs), key=lambda m: abs(stamp_to_sec(m.header.stamp) - stamp))
        if abs(stamp_to_sec(best.header.stamp) - stamp) > self.node.pose_tolerance:
            return None, None  # depth is optional: train this frame without it
        try:
            depth, kind = image_to_numpy(best)
        except ConversionError as exc:
            return None, f"depth: {exc}"
        if kind != "depth":
            return None, f"depth encoding '{excerpt(best.encoding)}' is not 16UC1 or 32FC1"
        if depth.shape != tuple(hw):
            return None, f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is {hw[1]}x{hw[0]}"
        return depth, None
