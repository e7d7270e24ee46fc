"""The trainer node: a posed camera stream in, a LERF that keeps improving out.

Callbacks only convert cheap things and enqueue; an ingest thread turns image messages into posed
``Frame`` objects (camera info, pose at the image stamp, optional aligned depth) and hands them to
the ROS-free ``OnlineTrainer``, which selects keyframes, gets teacher features computed in the
background and trains in its own thread.

Inputs (remappable): ``image``, ``camera_info``, optional ``depth`` (16UC1 mm or 32FC1 m), and the
camera pose: TF (``world_frame`` -> the image's frame at the image stamp) when tf2 is installed,
otherwise a ``geometry_msgs/PoseStamped`` on ``pose`` or a ``nav_msgs/Odometry`` on ``odom``
matched to the image stamp (optionally composed with a fixed body->camera extrinsic).

Outputs: ``/lerf/status`` (TrainingStatus), ``/lerf/keyframes`` (PoseArray of the keyframe cameras,
latched) and the services ``/lerf/save_checkpoint`` (Trigger),
``/lerf/pause`` (SetBool: true pauses, false resumes) and ``/lerf/reset`` (Trigger).
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, Optional, Tuple

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import SetBool, Trigger

from lerf_ros.config import LerfConfig
from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.geometry.poses import PoseBuffer, PoseLookupError, make_pose
from lerf_ros.mapping.online import OnlineTrainer, TrainerState
from lerf_ros.msg import TrainingStatus
from lerf_ros.ros.common import LATCHED_QOS, SENSOR_QOS, STATUS_QOS, STATUS_TOPIC, main_for
from lerf_ros.ros.convert import (
    ConversionError,
    camera_info_to_K,
    image_to_numpy,
    matrix_to_pose,
    pose_to_matrix,
    stamp_to_sec,
    transform_to_matrix,
)
from lerf_ros.ros.params import TRAINER_PARAMETERS, declare_config, declare_node_parameters
from lerf_ros.ros.tf import tf2_available

_STATE_CODES = {
    TrainerState.WAITING: TrainingStatus.STATE_WAITING_FOR_FRAMES,
    TrainerState.TRAINING: TrainingStatus.STATE_TRAINING,
    TrainerState.PAUSED: TrainingStatus.STATE_PAUSED,
    TrainerState.ERROR: TrainingStatus.STATE_ERROR,
    TrainerState.IDLE: TrainingStatus.STATE_IDLE,
}


class DropReporter:
    """Counts dropped frames and logs each distinct reason once (not once per frame)."""

    def __init__(self, logger) -> None:
        self._logger = logger
        self._seen: set = set()
        self._lock = threading.Lock()
        self.count = 0
        self.last_reason = ""

    def drop(self, reason: str, kind: Optional[str] = None) -> None:
        """Record a drop; ``kind`` groups reasons whose text varies (e.g. carries a stamp)."""
        key = kind or reason
        with self._lock:
            self.count += 1
            self.last_reason = reason
            first = key not in self._seen
            self._seen.add(key)
        if first:
            self._logger.warning(
                f"dropping frame: {reason} (further drops of this kind are counted in {STATUS_TOPIC}, not logged)"
            )


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

        self.drops = DropReporter(self.get_logger())
        self.frames_received = 0
        self._last_stamp = -np.inf
        self._camera_info: Optional[Tuple[np.ndarray, int, int, str]] = None
        self._depth_msgs: Deque[Image] = collections.deque(maxlen=30)
        self._queue: Deque[Image] = collections.deque(maxlen=max(1, int(queue_size)))
        self._queue_cv = threading.Condition()
        self._closing = False
        self._poses = PoseBuffer(max_age_s=30.0, tolerance_s=float(self.pose_tolerance))

        self.trainer = OnlineTrainer(self.cfg, teacher=teacher, log=self._log_from_trainer)
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

            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)

        self.status_pub = self.create_publisher(TrainingStatus, STATUS_TOPIC, STATUS_QOS)
        self.keyframes_pub = self.create_publisher(PoseArray, "/lerf/keyframes", LATCHED_QOS)
        self._published_store_version = -1
        control = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "/lerf/save_checkpoint", self._on_save, callback_group=control)
        self.create_service(SetBool, "/lerf/pause", self._on_pause, callback_group=control)
        self.create_service(Trigger, "/lerf/reset", self._on_reset, callback_group=control)
        self.create_timer(1.0 / max(0.1, float(status_rate)), self._publish_status, callback_group=control)

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
                self.drops.drop("ingest queue full (frames arrive faster than they are processed)", "queue")
            self._queue.append(msg)
            self._queue_cv.notify()

    def _on_depth(self, msg: Image) -> None:
        self._depth_msgs.append(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K, w, h = camera_info_to_K(msg)
        except ConversionError as exc:
            self.drops.drop(f"bad camera_info: {exc}", "camera_info")
            return
        self._camera_info = (K, w, h, msg.header.frame_id)

    def _on_pose(self, msg: PoseStamped) -> None:
        self._add_pose(stamp_to_sec(msg.header.stamp), msg.pose, msg.header.frame_id)

    def _on_odom(self, msg: Odometry) -> None:
        self._add_pose(stamp_to_sec(msg.header.stamp), msg.pose.pose, msg.header.frame_id)

    def _add_pose(self, stamp: float, pose, frame_id: str) -> None:
        if frame_id and frame_id != self.world_frame:
            self.drops.drop(
                f"pose is in frame '{frame_id}', expected the world frame '{self.world_frame}'", "pose_frame"
            )
            return
        try:
            T = pose_to_matrix(pose)
        except (ConversionError, FrameError) as exc:
            self.drops.drop(f"bad pose at {stamp:.3f}: {exc}", "bad_pose")
            return
        self._poses.add(stamp, T @ self._body_to_camera)

    # ------------------------------------------------------------------ ingestion (own thread)
    def _ingest_loop(self) -> None:
        while True:
            with self._queue_cv:
                while not self._queue and not self._closing:
                    self._queue_cv.wait(timeout=0.5)
                if self._closing:
                    return
                msg = self._queue.popleft()
            try:
                frame, reason = self._to_frame(msg)
                if frame is None:
                    self.drops.drop(reason[1], reason[0])
                    continue
                result = self.trainer.submit(frame)
                if result.rejected:
                    self.drops.drop(result.reason, result.kind)
            except Exception as exc:  # one bad message must never kill ingestion
                self.drops.drop(f"unexpected error: {exc!r}", "exception:" + type(exc).__name__)

    def _to_frame(self, msg: Image):
        """(Frame, None) or (None, (kind, reason))."""
        stamp = stamp_to_sec(msg.header.stamp)
        if stamp < self._last_stamp:
            return None, (
                "backwards",
                f"image stamp {stamp:.3f} is older than the previous {self._last_stamp:.3f} "
                "(time went backwards; replaying a bag without /clock?)",
            )
        if self._camera_info is None:
            return None, ("no_info", f"no camera_info received yet on '{self.resolve_topic_name('camera_info')}'")
        K, w, h, _ = self._camera_info
        try:
            rgb, kind = image_to_numpy(msg)
        except ConversionError as exc:
            return None, ("encoding:" + msg.encoding, f"image: {exc}")
        if kind != "rgb":
            return None, ("not_color", f"image encoding '{msg.encoding}' is not a colour image")
        if rgb.shape[:2] != (h, w):
            return None, ("size", f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says {w}x{h}")
        c2w, err = self._pose_at(msg.header.frame_id, msg.header.stamp, stamp)
        if c2w is None:
            return None, err
        depth, err = self._depth_at(stamp, (h, w))
        if err is not None:
            return None, err
        frame = Frame(rgb=rgb, K=K, c2w=c2w, stamp=stamp, frame_id=msg.header.frame_id, depth=depth)
        try:
            frame.validate()
        except FrameError as exc:
            return None, ("invalid", f"invalid frame: {exc}")
        self._last_stamp = stamp
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
                return None, ("tf", f"no TF from '{self.world_frame}' to '{frame_id}' at {stamp:.3f}: {exc}")
            return T, None
        try:
            return self._poses.lookup(stamp), None
        except PoseLookupError as exc:
            return None, ("pose_lookup", f"no camera pose for image at {stamp:.3f}: {exc}")
        except FrameError as exc:
            return None, ("bad_pose", f"bad camera pose: {exc}")

    def _depth_at(self, stamp: float, hw):
        if not self.use_depth or not self._depth_msgs:
            return None, None
        best = min(list(self._depth_msgs), key=lambda m: abs(stamp_to_sec(m.header.stamp) - stamp))
        if abs(stamp_to_sec(best.header.stamp) - stamp) > self.pose_tolerance:
            return None, None  # depth is optional: train this frame without it
        try:
            depth, kind = image_to_numpy(best)
        except ConversionError as exc:
            return None, ("depth_encoding", f"depth: {exc}")
        if kind != "depth":
            return None, ("depth_encoding", f"depth encoding '{best.encoding}' is not 16UC1 or 32FC1")
        if depth.shape != tuple(hw):
            return None, ("depth_size", f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is {hw[1]}x{hw[0]}")
        return depth, None

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
        msg.features_pending = int(s.features_pending)
        msg.rays_per_second = float(s.rays_per_second)
        msg.loss_rgb, msg.loss_lang, msg.loss_dino, msg.psnr = (
            float(s.losses.get(k, 0.0)) for k in ("rgb", "lang", "dino", "psnr")
        )
        msg.checkpoint = s.checkpoint
        msg.message = s.message
        self.status_pub.publish(msg)
        self._publish_keyframes(msg.header)

    def _publish_keyframes(self, header) -> None:
        """Camera poses of the current keyframes (the trajectory RViz shows), when they changed."""
        version = self.trainer.keyframes.version
        if version == self._published_store_version:
            return
        self._published_store_version = version
        poses = PoseArray(header=header)
        poses.poses = [matrix_to_pose(kf.c2w) for kf in self.trainer.keyframes.keyframes()]
        self.keyframes_pub.publish(poses)

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
        getattr(self.get_logger(), level)(text)

    def snapshot_provider(self):
        """For an in-process query node: the newest immutable model snapshot (or None)."""
        return self.trainer.latest_snapshot

    def close(self) -> None:
        with self._queue_cv:
            self._closing = True
            self._queue_cv.notify_all()
        self.trainer.close()


def main(args=None) -> int:
    return main_for([TrainerNode], args)


if __name__ == "__main__":
    raise SystemExit(main())
