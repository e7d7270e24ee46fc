"""The trainer node: a posed camera stream in, a LERF that keeps improving out.

Callbacks only convert cheap things and enqueue; an ingest thread turns image messages into posed
``Frame`` objects (camera info, pose at the image stamp, optional aligned depth) and hands them to
the ROS-free ``OnlineTrainer``, which selects keyframes, gets teacher features computed in the
background and trains in its own thread.

Inputs (remappable): ``image``, ``camera_info``, optional ``depth`` (16UC1 mm or 32FC1 m), and the
camera pose: TF (``world_frame`` -> the image's frame at the image stamp) when tf2 is installed,
otherwise a ``geometry_msgs/PoseStamped`` on ``pose`` or a ``nav_msgs/Odometry`` on ``odom``
matched to the image stamp (optionally composed with a fixed body->camera extrinsic).

Input checks: a stamp far from the node's clock and from the stream's recent stamps is dropped as
an outlier and never becomes the reference of the pose buffer or of the keyframe selector; several
consistent stamps in a row far from the old reference (a bag restarted, a clock reset), or a
backwards jump of the ROS clock, clear the buffers tied to the old time base and learning goes on.
Camera positions farther than ``max_pose_distance_m`` from the world origin are dropped. An image
whose pose has not arrived yet waits for it up to ``pose_tolerance_s`` in the bounded ingest queue.
Each distinct drop reason is logged once, and again when it recurs after a quiet period; the
status carries a count per reason.

Late pose corrections (a SLAM loop closure moves past poses): with poses from TF, the stored keyframes
are looked up again at their own stamps every ``tf_relookup_period_s``; and a ``nav_msgs/Path`` of
corrected poses by stamp is accepted on ``corrected_path_topic``. Keyframes that moved beyond
``pose_correction_tolerance_m`` / ``_deg`` take the new pose (``Session.correct_poses``); the status
counts them (``pose_corrections``).

Outputs: ``/lerf/status`` (TrainingStatus), ``/lerf/keyframes`` (PoseArray of the keyframe cameras,
latched), ``/lerf/changes`` (PointCloud2 of the surface points of the latest confirmed scene changes,
fields x y z kind (0: a surface that is gone, 1: a new one), latched; ``lerf_ros.mapping.changes``)
and the services ``/lerf/save_checkpoint`` (Trigger),
``/lerf/pause`` (SetBool: true pauses, false resumes) and ``/lerf/reset`` (Trigger).
"""

from __future__ import annotations

import collections
import re
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped
from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import SetBool, Trigger

from lerf_ros.config import LerfConfig
from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.geometry.camera import Distortion
from lerf_ros.geometry.poses import PoseBuffer, PoseLookupError, StampGuard, make_pose
from lerf_ros.mapping.health import Check, HealthLimits, TrainerCounters, TrainerHealth
from lerf_ros.mapping.online import OnlineTrainer, TrainerState
from lerf_ros.msg import TrainingStatus
from lerf_ros.ros.common import LATCHED_QOS, SENSOR_QOS, STATUS_QOS, STATUS_TOPIC, main_for
from lerf_ros.ros.convert import (
    ConversionError,
    camera_info_distortion,
    camera_info_to_K,
    image_to_numpy,
    matrix_to_pose,
    points_to_pointcloud2,
    pose_to_matrix,
    stamp_to_sec,
    transform_to_matrix,
)
from lerf_ros.ros.diagnostics import DiagnosticsPublisher
from lerf_ros.ros.params import TRAINER_PARAMETERS, declare_config, declare_node_parameters
from lerf_ros.ros.tf import tf2_available

_STATE_CODES = {
    TrainerState.WAITING: TrainingStatus.STATE_WAITING_FOR_FRAMES,
    TrainerState.TRAINING: TrainingStatus.STATE_TRAINING,
    TrainerState.PAUSED: TrainingStatus.STATE_PAUSED,
    TrainerState.ERROR: TrainingStatus.STATE_ERROR,
    TrainerState.IDLE: TrainingStatus.STATE_IDLE,
}


PATH_MAX_GAP_S = 1.0
"""Widest gap (s) between two poses of a corrected path that is interpolated across."""

_SIZE = re.compile(r"\b\d+x\d+\b")
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_\d])")
_MAX_TEXT = 300
_MAX_QUOTED = 48
KEYFRAME_REPUBLISH_STEPS = 200
"""While pose corrections are learned, /lerf/keyframes is published again after this many steps."""


def excerpt(text: str, limit: int = _MAX_QUOTED) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis): bad input is echoed, never in full."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reason_key(reason: str) -> str:
    """The reason without its numbers (stamps, sizes, distances become '#'; names such as rgb8 or
    16UC1 stay): drops that differ only in their numbers share one key; different problems keep
    different keys."""
    return _NUMBER.sub("#", _SIZE.sub("#x#", excerpt(reason, _MAX_TEXT)))


class DropReporter:
    """Counts dropped frames per distinct reason and logs each reason once, and again (rate-limited)
    when it recurs after ``quiet_s`` seconds without it.

    A reason is its text with the numbers taken out (``reason_key``); at most ``max_reasons`` are
    kept apart, later ones are counted together as 'other reasons'.

    Args:
        warn: ``warn(text)`` writes one log line (the node's logger).
        quiet_s: a reason seen again after this long without it is logged again, at most once per
            ``quiet_s``.
        max_reasons: distinct reasons counted separately.
        clock: monotonic seconds (``time.monotonic``).
    """

    OTHER = "other reasons (too many distinct reasons to count apart)"

    def __init__(
        self,
        warn: Callable[[str], None],
        quiet_s: float = 30.0,
        max_reasons: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._warn = warn
        self.quiet_s = float(quiet_s)
        self.max_reasons = int(max_reasons)
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = {}
        self._last_seen: Dict[str, float] = {}
        self._last_logged: Dict[str, float] = {}
        self._logged_count: Dict[str, int] = {}
        self.count = 0
        self.last_reason = ""

    def drop(self, reason: str) -> None:
        """Count a dropped frame (or message) and log its reason if it is new or back after a quiet period."""
        self._record(reason, "dropping frame", counted=True)

    def note(self, event: str) -> None:
        """Log an event (e.g. a time jump) with the same once-per-reason rule, without counting a drop."""
        self._record(event, "input", counted=False)

    def _record(self, text: str, prefix: str, counted: bool) -> None:
        text = excerpt(text, _MAX_TEXT)
        key = reason_key(text)
        now = self._clock()
        with self._lock:
            if key not in self._counts and len(self._counts) >= self.max_reasons:
                key = self.OTHER
            n = self._counts.get(key, 0) + 1
            if counted:
                self.count += 1
                self.last_reason = text
                self._counts[key] = n
            elif key not in self._counts:
                self._counts[key] = 0  # events are logged once like reasons, but not counted as drops
            last_seen = self._last_seen.get(key)
            last_logged = self._last_logged.get(key)
            self._last_seen[key] = now
            if last_logged is None:
                line = f"{prefix}: {text} (repeats are counted in {STATUS_TOPIC} drop_reasons/drop_counts"
                line += f"; logged again after {self.quiet_s:g} s without it)"
            elif now - last_seen >= self.quiet_s and now - last_logged >= self.quiet_s:
                since = n - self._logged_count.get(key, 0)
                line = f"{prefix} again after {now - last_seen:.0f} s: {text} ({since} since last logged)"
            else:
                return
            self._last_logged[key] = now
            self._logged_count[key] = n
        self._warn(line)

    def counts(self) -> List[Tuple[str, int]]:
        """(reason, count) of every drop reason so far, in the order they first occurred."""
        with self._lock:
            return [(k, n) for k, n in self._counts.items() if n > 0]


class TrainerNode(Node):
    """See the module docstring."""

    def __init__(self, cfg: Optional[LerfConfig] = None, teacher=None, name: str = "lerf_trainer", **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.cfg = cfg if cfg is not None else declare_config(self, TRAINER_PARAMETERS)
        params = declare_node_parameters(self, "trainer")  # names, defaults, descriptions: config.NODE_PARAMETERS
        self.world_frame = params["world_frame"]
        pose_source = params["pose_source"]
        self.pose_tolerance = params["pose_tolerance_s"]
        self.tf_timeout = params["tf_timeout_s"]
        body_to_camera = params["body_to_camera"]
        status_rate = params["status_rate_hz"]
        queue_size = params["queue_size"]
        self.use_depth = params["use_depth"]
        self.resume = params["resume"]
        self.max_stamp_offset = float(params["max_stamp_offset_s"])
        self.max_pose_distance = float(params["max_pose_distance_m"])
        tf_cache = float(params["tf_cache_s"])
        self.odom_frame = str(params["odom_frame"]) or self.world_frame
        self.tf_relookup_period = float(params["tf_relookup_period_s"])
        corrected_path_topic = str(params["corrected_path_topic"])
        self.correction_tolerance = (
            float(params["pose_correction_tolerance_m"]),
            float(params["pose_correction_tolerance_deg"]),
        )
        if not (tf_cache > 0 and self.tf_relookup_period >= 0 and min(self.correction_tolerance) >= 0):
            raise ValueError(
                f"tf_cache_s = {tf_cache} must be > 0; tf_relookup_period_s = {self.tf_relookup_period}, "
                f"pose_correction_tolerance_m/_deg = {self.correction_tolerance} must be >= 0"
            )

        if pose_source == "auto":
            pose_source = "tf" if tf2_available() else "pose"
        if pose_source not in ("tf", "pose", "odom"):
            raise ValueError(f"pose_source = '{pose_source}': expected tf, pose, odom or auto")
        if pose_source == "tf" and not tf2_available():
            raise ValueError("pose_source = 'tf' but tf2_ros is not installed; use 'pose' or 'odom'")
        self.pose_source = pose_source
        if len(body_to_camera) != 7:
            raise ValueError("body_to_camera must have 7 numbers: x y z qx qy qz qw")
        self._body_to_camera = make_pose(np.asarray(body_to_camera[:3]), np.asarray(body_to_camera[3:]))

        if not self.max_stamp_offset > 0:
            raise ValueError(f"max_stamp_offset_s = {self.max_stamp_offset}: must be > 0")
        if not self.max_pose_distance > 0:
            raise ValueError(f"max_pose_distance_m = {self.max_pose_distance}: must be > 0")

        self.drops = DropReporter(self.get_logger().warning)
        self.frames_received = 0
        self.time_jumps = 0
        self._camera_info: Optional[Tuple[np.ndarray, int, int, str, Optional[Distortion]]] = None
        self._camera_info_error: Optional[str] = None
        self._distortion_logged: set = set()
        self._depth_msgs: Deque[Image] = collections.deque(maxlen=30)
        # Images waiting for ingestion (with their arrival time): also the bounded cache where an
        # image waits up to pose_tolerance_s for a pose that is still on its way.
        self._queue: Deque[Tuple[float, Image]] = collections.deque(maxlen=max(1, int(queue_size)))
        self._queue_cv = threading.Condition()
        self._closing = False
        pose_history_s = 30.0
        self._poses = PoseBuffer(max_age_s=pose_history_s, tolerance_s=float(self.pose_tolerance))
        self._image_stamps = StampGuard(self.max_stamp_offset)
        self._pose_stamps = StampGuard(self.max_stamp_offset, max_backward_s=pose_history_s)
        self._selector_reset = threading.Event()  # set by the clock-jump callback, done by the ingest thread
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_clock_jump,
        )

        self.trainer = OnlineTrainer(
            self.cfg, teacher=teacher, log=self._log_from_trainer, snapshot_every=self.cfg.trainer.snapshot_every
        )
        if self.resume:
            resumed = self.trainer.resume_latest()
            if resumed:
                self.get_logger().info(f"resumed from checkpoint {resumed} (step {self.trainer.step})")

        sensors = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, "image", self._on_image, SENSOR_QOS, callback_group=sensors)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, SENSOR_QOS, callback_group=sensors)
        if self.use_depth:
            self.create_subscription(Image, "depth", self._on_depth, SENSOR_QOS, callback_group=sensors)
        if pose_source == "pose":
            self.create_subscription(PoseStamped, "pose", self._on_pose, 50, callback_group=sensors)
        elif pose_source == "odom":
            self.create_subscription(Odometry, "odom", self._on_odom, 50, callback_group=sensors)
        else:
            import tf2_ros

            self._tf_buffer = tf2_ros.Buffer(cache_time=Duration(seconds=tf_cache))
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)

        self.status_pub = self.create_publisher(TrainingStatus, STATUS_TOPIC, STATUS_QOS)
        self.keyframes_pub = self.create_publisher(PoseArray, "/lerf/keyframes", LATCHED_QOS)
        self._published_store_version = -1
        self.changes_pub = self.create_publisher(PointCloud2, "/lerf/changes", LATCHED_QOS)
        self._published_changes_version = 0
        corrections = MutuallyExclusiveCallbackGroup()
        if corrected_path_topic:
            self.create_subscription(Path, corrected_path_topic, self._on_corrected_path, 2, callback_group=corrections)
        if pose_source == "tf" and self.tf_relookup_period > 0:
            self.create_timer(self.tf_relookup_period, self._relookup_keyframes, callback_group=corrections)
        self._published_step = 0
        control = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "/lerf/save_checkpoint", self._on_save, callback_group=control)
        self.create_service(SetBool, "/lerf/pause", self._on_pause, callback_group=control)
        self.create_service(Trigger, "/lerf/reset", self._on_reset, callback_group=control)
        self.create_timer(1.0 / max(0.1, float(status_rate)), self._publish_status, callback_group=control)
        self._health = TrainerHealth(
            HealthLimits(
                stall_s=float(params["diagnostics_stall_s"]),
                max_drop_fraction=float(params["diagnostics_max_drop_fraction"]),
            )
        )
        self.diagnostics = DiagnosticsPublisher(self, self._health_checks, ("input", "training", "keyframes"))

        self._ingest_thread = threading.Thread(target=self._ingest_loop, name="lerf_ingest", daemon=True)
        self._ingest_thread.start()
        self.trainer.start()
        self.get_logger().info(
            f"preset '{self.cfg.preset}', teacher: {self.trainer.teacher_description}; pose from {pose_source}; "
            f"world frame '{self.world_frame}'; output {self.cfg.output_dir}"
        )

    # ------------------------------------------------------------------ callbacks (cheap)
    def _on_image(self, msg: Image) -> None:
        self.frames_received += 1
        with self._queue_cv:
            if len(self._queue) == self._queue.maxlen:
                self.drops.drop("ingest queue full (frames arrive faster than they are processed)")
            self._queue.append((time.monotonic(), msg))
            self._queue_cv.notify()

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
            self.drops.drop(self._camera_info_error)
            return
        self._camera_info_error = None
        if distortion is not None and distortion not in self._distortion_logged:
            self._distortion_logged.add(distortion)
            self.get_logger().info(
                f"camera_info lens distortion {distortion.model} {distortion.as_dict()} is modelled "
                f"(it moves rays by up to {distortion.max_displacement_px(K, w, h):.1f} px)"
            )
        self._camera_info = (K, w, h, msg.header.frame_id, distortion)

    def _on_pose(self, msg: PoseStamped) -> None:
        self._add_pose(stamp_to_sec(msg.header.stamp), msg.pose, msg.header.frame_id)

    def _on_odom(self, msg: Odometry) -> None:
        self._add_pose(stamp_to_sec(msg.header.stamp), msg.pose.pose, msg.header.frame_id)

    def _add_pose(self, stamp: float, pose, frame_id: str) -> None:
        if frame_id and frame_id != self.world_frame:
            self.drops.drop(
                f"pose is in frame '{excerpt(frame_id)}', expected the world frame '{excerpt(self.world_frame)}'"
            )
            return
        try:
            T = pose_to_matrix(pose) @ self._body_to_camera
        except (ConversionError, FrameError) as exc:
            self.drops.drop(f"bad pose at {stamp:.3f}: {exc}")
            return
        far = self._too_far(T)
        if far:
            self.drops.drop(f"pose at {stamp:.3f}: {far}")
            return
        verdict = self._pose_stamps.check(stamp, self._now())
        if verdict.status == "jump":
            self._time_jumped("pose", verdict.reason)
            self._poses.clear()
        elif not verdict.ok:
            self.drops.drop(f"pose {verdict.status}: {verdict.reason}")
            return
        self._poses.add(stamp, T)
        with self._queue_cv:
            self._queue_cv.notify()  # an image may be waiting for this pose

    def _too_far(self, c2w: np.ndarray) -> str:
        """Why a camera pose is outside the plausible workspace ('' when it is inside)."""
        d = float(np.linalg.norm(c2w[:3, 3]))
        if d <= self.max_pose_distance:
            return ""
        limit = f"max_pose_distance_m = {self.max_pose_distance:g} m"
        return f"camera position {d:.3g} m from the world origin (more than {limit})"

    def _now(self) -> float:
        """The node's clock in seconds (0 with simulated time before the first /clock message)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _time_jumped(self, stream: str, why: str) -> None:
        self.time_jumps += 1
        self.drops.note(
            f"{stream} stream {why}: buffers of the old time base cleared (a bag restarted or a clock reset?)"
        )

    def _on_clock_jump(self, jump) -> None:
        """The ROS clock jumped back (or switched source): forget everything tied to the old time base."""
        backwards = jump.delta.nanoseconds < 0
        if not backwards and jump.clock_change == ClockChange.ROS_TIME_NO_CHANGE:
            return
        self.time_jumps += 1
        self.drops.note(
            f"clock jumped by {jump.delta.nanoseconds * 1e-9:+.3f} s ({jump.clock_change.name}): "
            "pose, depth and keyframe-selection buffers cleared"
        )
        self._poses.clear()
        self._pose_stamps.reset()
        self._image_stamps.reset()
        self._depth_msgs.clear()
        self._selector_reset.set()

    # ------------------------------------------------------------------ ingestion (own thread)
    def _ingest_loop(self) -> None:
        while True:
            msg = self._next_image()
            if msg is None:
                return
            try:
                if self._selector_reset.is_set():
                    self._selector_reset.clear()
                    self.trainer.session.selector.reset()
                frame, reason = self._to_frame(msg)
                if frame is None:
                    self.drops.drop(reason)
                    continue
                result = self.trainer.submit(frame)
                if result.rejected:
                    self.drops.drop(result.reason)
            except Exception as exc:  # one bad message must never kill ingestion
                self.drops.drop(f"unexpected error: {exc!r}")

    def _next_image(self) -> Optional[Image]:
        """The oldest queued image once it can be processed (None when closing). With poses from a
        topic, an image newer than every buffered pose waits for its pose up to ``pose_tolerance_s``
        after its arrival (the pose callback wakes this thread), as message_filters' caches do."""
        with self._queue_cv:
            while not self._closing:
                if not self._queue:
                    self._queue_cv.wait(timeout=0.5)
                    continue
                arrived, msg = self._queue[0]
                wait = self._pose_wait(msg, arrived)
                if wait <= 0.0:
                    self._queue.popleft()
                    return msg
                self._queue_cv.wait(timeout=wait)
            return None

    def _pose_wait(self, msg: Image, arrived: float) -> float:
        """Seconds ``msg`` should still wait for its pose (0: process it now)."""
        if self.pose_source == "tf":
            return 0.0  # the TF lookup waits by itself (tf_timeout_s)
        newest = self._poses.newest_stamp
        if newest is not None and newest >= stamp_to_sec(msg.header.stamp):
            return 0.0
        return arrived + float(self.pose_tolerance) - time.monotonic()

    def _to_frame(self, msg: Image):
        """(Frame, None) or (None, reason)."""
        stamp = stamp_to_sec(msg.header.stamp)
        verdict = self._image_stamps.check(stamp, self._now(), commit=False)
        if verdict.status == "jump":
            self._time_jumped("image", verdict.reason)
            self.trainer.session.selector.reset()
            self._depth_msgs.clear()
            newest = self._poses.newest_stamp
            if newest is not None and abs(newest - stamp) > self.max_stamp_offset:
                self._poses.clear()  # still the old time base: the pose stream follows on its own
                self._pose_stamps.reset()
        elif not verdict.ok:
            return None, f"image {verdict.status}: {verdict.reason}"
        if self._camera_info is None:
            if self._camera_info_error is not None:
                return None, self._camera_info_error
            return None, f"no camera_info received yet on '{self.resolve_topic_name('camera_info')}'"
        K, w, h, _, distortion = self._camera_info
        try:
            rgb, kind = image_to_numpy(msg)
        except ConversionError as exc:
            return None, f"image: {exc}"
        if kind != "rgb":
            return None, f"image encoding '{excerpt(msg.encoding)}' is not a colour image"
        if rgb.shape[:2] != (h, w):
            return None, f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says {w}x{h}"
        c2w, err = self._pose_at(msg.header.frame_id, msg.header.stamp, stamp)
        if c2w is None:
            return None, err
        far = self._too_far(c2w)
        if far:
            return None, f"camera pose for image at {stamp:.3f}: {far}"
        depth, err = self._depth_at(stamp, (h, w))
        if err is not None:
            return None, err
        stamp_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        frame = Frame(
            rgb=rgb,
            K=K,
            c2w=c2w,
            stamp=stamp,
            frame_id=msg.header.frame_id,
            depth=depth,
            distortion=distortion,
            meta={"stamp_ns": stamp_ns},  # the exact stamp, for looking the keyframe up in TF again
        )
        try:
            frame.validate()
        except FrameError as exc:
            return None, f"invalid frame: {exc}"
        self._image_stamps.commit(stamp)
        return frame, None

    def _pose_at(self, frame_id: str, stamp_msg, stamp: float):
        if self.pose_source == "tf":
            from rclpy.duration import Duration
            from rclpy.time import Time

            try:
                tf = self._tf_buffer.lookup_transform(
                    self.world_frame,
                    frame_id,
                    Time.from_msg(stamp_msg),
                    timeout=Duration(seconds=float(self.tf_timeout)),
                )
                T = transform_to_matrix(tf.transform)
            except Exception as exc:
                return None, f"no TF from '{self.world_frame}' to '{excerpt(frame_id)}' at {stamp:.3f}: {exc}"
            return T, None
        try:
            return self._poses.lookup(stamp), None
        except PoseLookupError as exc:
            return None, f"no camera pose for image at {stamp:.3f}: {exc}"
        except FrameError as exc:
            return None, f"bad camera pose: {exc}"

    def _depth_at(self, stamp: float, hw):
        if not self.use_depth or not self._depth_msgs:
            return None, None
        best = min(list(self._depth_msgs), key=lambda m: abs(stamp_to_sec(m.header.stamp) - stamp))
        if abs(stamp_to_sec(best.header.stamp) - stamp) > self.pose_tolerance:
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

    # ------------------------------------------------------------------ late pose corrections
    def _relookup_keyframes(self) -> None:
        """Timer (poses from TF): look every stored keyframe up again, without waiting: the camera at the
        keyframe's stamp in ``odom_frame`` (held fixed in time), then ``odom_frame`` in ``world_frame`` at
        the latest time. A loop closure does not rewrite the TF history, it publishes a new
        ``map -> odom``: this is how it reaches past keyframes. Keyframes whose TF is no longer buffered
        (older than ``tf_cache_s``) keep their pose."""
        import tf2_ros
        from rclpy.time import Time

        pairs, missing = [], 0
        for kf in self.trainer.keyframes.keyframes():
            ns = kf.meta.get("stamp_ns")
            when = Time(nanoseconds=int(ns) if ns is not None else int(round(kf.stamp * 1e9)))
            try:
                tf = self._tf_buffer.lookup_transform_full(
                    self.world_frame, Time(), kf.frame_id, when, self.odom_frame, timeout=Duration(nanoseconds=0)
                )
                pairs.append((kf.stamp, transform_to_matrix(tf.transform)))
            except (tf2_ros.TransformException, ConversionError):
                missing += 1
        if missing:
            self.drops.note(
                f"TF re-lookup: {missing} keyframe(s) not found in the TF buffer (older than tf_cache_s, or no "
                f"'{excerpt(self.odom_frame)}' frame: see odom_frame) keep their pose"
            )
        if pairs:
            self._apply_corrections(pairs, "TF re-lookup", 1e-6, 0.0)

    def _on_corrected_path(self, msg: Path) -> None:
        """Corrected poses by stamp (the pose/odom topic's body in ``world_frame``, composed with
        ``body_to_camera``): a keyframe takes the path pose within ``pose_tolerance_s`` of its stamp,
        or the interpolation of the two around it when they are at most ``PATH_MAX_GAP_S`` apart.
        Unusable poses are skipped and counted in one log line per kind."""
        pairs, wrong_frame, bad = [], 0, 0
        for ps in msg.poses:
            frame_id = ps.header.frame_id or msg.header.frame_id
            if frame_id and frame_id != self.world_frame:
                wrong_frame += 1
                continue
            try:
                pairs.append((stamp_to_sec(ps.header.stamp), pose_to_matrix(ps.pose) @ self._body_to_camera))
            except ConversionError:
                bad += 1
        if wrong_frame:
            self.drops.note(
                f"corrected path: {wrong_frame} pose(s) not in the world frame '{excerpt(self.world_frame)}' skipped"
            )
        if bad:
            self.drops.note(f"corrected path: {bad} invalid pose(s) (NaN, not a unit quaternion) skipped")
        if pairs:
            self._apply_corrections(pairs, "corrected path", float(self.pose_tolerance), PATH_MAX_GAP_S)

    def _apply_corrections(self, pairs, source: str, stamp_tolerance_s: float, max_gap_s: float) -> int:
        tol_m, tol_deg = self.correction_tolerance
        try:
            n = self.trainer.session.correct_poses(pairs, tol_m, tol_deg, stamp_tolerance_s, max_gap_s)
        except Exception as exc:  # a correction that cannot be applied must never stop the node
            self.drops.note(f"late pose corrections ({source}) not applied: {exc!r}")
            return 0
        if n:
            self.get_logger().info(
                f"late pose corrections ({source}): {n} keyframe pose(s) moved more than {tol_m:g} m or "
                f"{tol_deg:g} deg and were replaced ({self.trainer.session.pose_corrections} so far)",
                throttle_duration_sec=10.0,
            )
        return n

    # ------------------------------------------------------------------ status and control
    def _publish_status(self) -> None:
        s = self.trainer.status()
        msg = TrainingStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.world_frame
        msg.state = _STATE_CODES[s.state]
        msg.state_name = s.state.value
        msg.step = int(s.step)
        msg.frames_received = int(self.frames_received)
        msg.frames_kept = int(s.keyframes)
        msg.frames_dropped = int(self.drops.count)
        msg.last_drop_reason = self.drops.last_reason
        counts = self.drops.counts()
        msg.drop_reasons = [k for k, _ in counts]
        msg.drop_counts = [int(n) for _, n in counts]
        msg.time_jumps = int(self.time_jumps)
        msg.pose_corrections = int(self.trainer.session.pose_corrections)
        msg.changes_detected = int(s.changes_detected)
        msg.keyframes_retired = int(s.keyframes_retired)
        msg.features_pending = int(s.features_pending)
        msg.rays_per_second = float(s.rays_per_second)
        msg.loss_rgb, msg.loss_lang, msg.loss_dino, msg.psnr = (
            float(s.losses.get(k, 0.0)) for k in ("rgb", "lang", "dino", "psnr")
        )
        pc = self.trainer.session.pose_correction_stats()
        msg.pose_correction_mean_m, msg.pose_correction_max_m = pc["translation_mean_m"], pc["translation_max_m"]
        msg.pose_correction_mean_deg, msg.pose_correction_max_deg = pc["rotation_mean_deg"], pc["rotation_max_deg"]
        msg.checkpoint = s.checkpoint
        msg.message = s.message
        self.status_pub.publish(msg)
        self._publish_changes(msg.header)
        self._publish_keyframes(msg.header, int(s.step))

    def _health_checks(self) -> List[Check]:
        """The trainer's checks for /diagnostics (``lerf_ros.mapping.health``)."""
        s = self.trainer.status()
        with self._queue_cv:
            depth = len(self._queue)
        kcfg = self.cfg.keyframes
        return self._health.checks(
            TrainerCounters(
                frames_received=int(self.frames_received),
                drops=self.drops.counts(),
                queue_depth=depth,
                queue_size=int(self._queue.maxlen or 0),
                state=s.state.value,
                error=s.message if s.state == TrainerState.ERROR else "",
                step=int(s.step),
                rays_per_second=float(s.rays_per_second),
                keyframes=int(s.keyframes),
                max_keyframes=int(kcfg.max_keyframes),
                memory_mb=float(s.store_mb),
                max_memory_mb=float(kcfg.max_memory_mb),
                teacher_backlog=int(s.features_pending),
                losses={k: float(v) for k, v in s.losses.items()},
                changes_detected=int(s.changes_detected),
                keyframes_retired=int(s.keyframes_retired),
            )
        )

    def _publish_keyframes(self, header, step: int) -> None:
        """Camera poses of the current keyframes (the trajectory RViz shows), with their learned pose
        corrections: when the store changed, or every ``KEYFRAME_REPUBLISH_STEPS`` training steps while
        the corrections are being learned."""
        version = self.trainer.keyframes.version
        refining = self.cfg.trainer.pose_refinement and step >= self._published_step + KEYFRAME_REPUBLISH_STEPS
        if version == self._published_store_version and not refining:
            return
        self._published_store_version, self._published_step = version, step
        poses = PoseArray(header=header)
        poses.poses = [matrix_to_pose(c2w) for _, c2w in self.trainer.session.keyframe_poses()]
        self.keyframes_pub.publish(poses)

    def _publish_changes(self, header) -> None:
        """Surface points of the latest confirmed scene changes (x y z, kind: 0 gone, 1 new), when
        they changed."""
        detector = self.trainer.session.changes
        if detector is None or detector.version == self._published_changes_version:
            return
        self._published_changes_version = detector.version
        points, kinds = detector.changed_points()
        self.changes_pub.publish(
            points_to_pointcloud2(points, fields={"kind": kinds}, frame_id=self.world_frame, stamp=header.stamp)
        )

    def _on_save(self, _req, resp):
        try:
            path = self.trainer.save_checkpoint()
            resp.success, resp.message = True, f"saved {path} (step {self.trainer.step})"
        except Exception as exc:
            resp.success, resp.message = False, f"could not save a checkpoint: {exc}"
        return resp

    def _on_pause(self, req, resp):
        self.trainer.set_paused(bool(req.data))
        resp.success, resp.message = True, "paused" if req.data else "resumed"
        return resp

    def _on_reset(self, _req, resp):
        self.trainer.reset()
        resp.success, resp.message = True, "model reset to step 0 (keyframes kept)"
        return resp

    def _log_from_trainer(self, level: str, text: str) -> None:
        # One call site per severity: rclpy refuses a call site whose severity changes.
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        else:
            logger.info(text)

    def snapshot_provider(self):
        """For an in-process query node: the newest immutable model snapshot (or None)."""
        return self.trainer.latest_snapshot

    def close(self) -> None:
        """Stop ingestion, then training; write a checkpoint of the current step when it has steps
        not saved yet (``OnlineTrainer.close``). Called on SIGINT/SIGTERM by ``spin_nodes``; bounded."""
        with self._queue_cv:
            self._closing = True
            self._queue_cv.notify_all()
        if self._ingest_thread is not threading.current_thread():
            self._ingest_thread.join(timeout=0.5)  # the frame in conversion, so nothing is submitted after
        self.trainer.close(save=True, timeout_s=3.0)


def main(args=None) -> int:
    return main_for([TrainerNode], args)


if __name__ == "__main__":
    raise SystemExit(main())
