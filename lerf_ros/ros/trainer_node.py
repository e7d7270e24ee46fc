"""The trainer node: a posed camera stream in, a LERF that keeps improving out.

Callbacks only convert cheap things and enqueue; an ingest thread turns image messages into posed
``Frame`` objects (camera info, pose at the image stamp, optional aligned depth) and hands them to
the ROS-free ``OnlineTrainer``, which selects keyframes, gets teacher features computed in the
background and trains in its own thread.

Inputs (remappable): ``image``, ``camera_info``, optional ``depth`` (16UC1 mm or 32FC1 m), and the
camera pose: TF (``world_frame`` -> the image's frame at the image stamp) when tf2 is installed,
otherwise a ``geometry_msgs/PoseStamped`` on ``pose`` or a ``nav_msgs/Odometry`` on ``odom``
matched to the image stamp (optionally composed with a fixed body->camera extrinsic). Several
cameras feed one field: the ``cameras`` parameter names them, each with its own topics, frame and
extrinsic (``<name>.image_topic`` ...; ``lerf_ros.ros.camera_input``), and the status and
/diagnostics count each camera. The image, camera_info and depth subscriptions use
``input_qos_reliability`` / ``input_qos_depth`` (sensor-data: best effort, keep last 5).

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
``/lerf/pause`` (SetBool: true pauses, false resumes), ``/lerf/reset`` (Trigger) and ``/lerf/export``
(Trigger: the live map as files in ``export_dir``, with the last answer on ``/lerf/relevancy_cloud``).

A managed (lifecycle) node (``lerf_ros.ros.lifecycle``): configure loads the teacher and builds the
session (resumed from the newest checkpoint), publishers and services; activate subscribes to the
inputs and starts ingestion and training; deactivate stops them (a checkpoint of unsaved steps is
written, the session and its keyframes stay) and the services answer "inactive"; cleanup drops the
session. ``autostart`` (default true) goes to active at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import List, Optional, Tuple

import numpy as np
from geometry_msgs.msg import PoseArray
from nav_msgs.msg import Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import SetBool, Trigger

from lerf_ros.config import LerfConfig
from lerf_ros.geometry.poses import make_pose
from lerf_ros.mapping.health import Check, HealthLimits, TrainerCounters, TrainerHealth
from lerf_ros.mapping.online import OnlineTrainer, TrainerState
from lerf_ros.mapping.selection import KeyframeSelector
from lerf_ros.msg import TrainingStatus
from lerf_ros.ros.camera_input import CameraInput, check_camera_names, declare_camera, input_qos
from lerf_ros.ros.common import LATCHED_QOS, STATUS_QOS, STATUS_TOPIC, main_for
from lerf_ros.ros.convert import (
    ConversionError,
    matrix_to_pose,
    points_to_pointcloud2,
    pose_to_matrix,
    stamp_to_sec,
)
from lerf_ros.ros.diagnostics import DiagnosticsPublisher
from lerf_ros.ros.drops import DropReporter, excerpt, reason_key  # noqa: F401 (reason_key: imported from here too)
from lerf_ros.ros.lifecycle import ManagedNode
from lerf_ros.ros.params import TRAINER_PARAMETERS, declare_config, declare_node_parameters
from lerf_ros.ros.tf import acquire_tf_feed, tf2_available

_STATE_CODES = {
    TrainerState.WAITING: TrainingStatus.STATE_WAITING_FOR_FRAMES,
    TrainerState.TRAINING: TrainingStatus.STATE_TRAINING,
    TrainerState.PAUSED: TrainingStatus.STATE_PAUSED,
    TrainerState.ERROR: TrainingStatus.STATE_ERROR,
    TrainerState.IDLE: TrainingStatus.STATE_IDLE,
}


PATH_MAX_GAP_S = 1.0
"""Widest gap (s) between two poses of a corrected path that is interpolated across."""

DEACTIVATE_SAVE_TIMEOUT_S = 10.0
"""Deactivate waits this long at most for the training step in flight and the checkpoint of unsaved
steps (no checkpoint, and a warning, when the step has not finished by then)."""

KEYFRAME_REPUBLISH_STEPS = 200
"""While pose corrections are learned, /lerf/keyframes is published again after this many steps."""


class TrainerNode(ManagedNode):
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
        sensor_qos = input_qos(params["input_qos_reliability"], params["input_qos_depth"])
        taken = set(params) | {"preset", "use_sim_time", "qos_overrides"} | set(TRAINER_PARAMETERS)
        camera_names = check_camera_names(params["cameras"], sorted(taken))
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

        if corrected_path_topic and len(camera_names) > 1:
            raise ValueError(
                "corrected_path_topic works with one camera (its poses are matched to keyframes by stamp); "
                f"with cameras {camera_names} correct the poses through TF (tf_relookup_period_s)"
            )

        self.drops = DropReporter(self.get_logger().warning)
        self.frames_received = 0
        self.time_jumps = 0
        # One condition for every camera's ingest queue: callbacks notify it, the ingest thread waits on it.
        self._queue_cv = threading.Condition()
        self._ingest_stop = threading.Event()  # the running ingest thread's own (see activate_node)
        # Held while a frame is handed to the session; deactivate sets the stop event under it, so no
        # frame reaches the session after deactivate returned.
        self._submit_lock = threading.Lock()
        self._ingest_thread: Optional[threading.Thread] = None
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_clock_jump,
        )
        self._teacher = teacher
        self._camera_specs = [
            declare_camera(self, name, i == 0, pose_source, body_to_camera) for i, name in enumerate(camera_names)
        ]
        self._sensor_qos, self._queue_size = sensor_qos, int(queue_size)
        self._tf_cache = tf_cache
        self._corrected_path_topic = corrected_path_topic
        self._status_rate = float(status_rate)
        self._health_limits = HealthLimits(
            stall_s=float(params["diagnostics_stall_s"]),
            max_drop_fraction=float(params["diagnostics_max_drop_fraction"]),
        )
        self.export_dir = str(params["export_dir"]) or f"{self.cfg.output_dir.rstrip('/')}/export"
        # Built by configure_node, dropped by cleanup_node (lerf_ros.ros.lifecycle).
        self.trainer: Optional[OnlineTrainer] = None
        self.cameras: List[CameraInput] = []
        self._last_relevancy: Optional[PointCloud2] = None
        self.start_lifecycle(bool(params["autostart"]))

    # ------------------------------------------------------------------ lifecycle (lerf_ros.ros.lifecycle)
    def configure_node(self) -> None:
        """Load the teacher, build the session (resumed from the newest checkpoint with ``resume``),
        the cameras' inputs, the publishers and the services."""
        self.trainer = OnlineTrainer(
            self.cfg, teacher=self._teacher, log=self._log_from_trainer, snapshot_every=self.cfg.trainer.snapshot_every
        )
        if self.resume:
            resumed = self.trainer.resume_latest()
            if resumed:
                self.get_logger().info(f"resumed from checkpoint {resumed} (step {self.trainer.step})")

        sensors = MutuallyExclusiveCallbackGroup()
        several = len(self._camera_specs) > 1
        self.cameras = []
        for i, spec in enumerate(self._camera_specs):
            # The first camera uses the session's selector; each other camera judges its own motion.
            selector = self.trainer.session.selector if i == 0 else KeyframeSelector(self.cfg.keyframes)
            self.cameras.append(CameraInput(self, spec, selector, self._sensor_qos, self._queue_size, several, sensors))
        if self.pose_source == "tf":
            # The process's one TF buffer, kept by a listener process of its own (lerf_ros.ros.tf):
            # /tf costs this process nothing; lookups are one round trip.
            self._tf = acquire_tf_feed(self, self._tf_cache)

        self.status_pub = self.create_publisher(TrainingStatus, STATUS_TOPIC, STATUS_QOS)
        self.keyframes_pub = self.create_publisher(PoseArray, "/lerf/keyframes", LATCHED_QOS)
        self._published_store_version = -1
        self.changes_pub = self.create_publisher(PointCloud2, "/lerf/changes", LATCHED_QOS)
        self._published_changes_version = 0
        self._published_step = 0
        control = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "/lerf/save_checkpoint", self._on_save, callback_group=control)
        self.create_service(SetBool, "/lerf/pause", self._on_pause, callback_group=control)
        self.create_service(Trigger, "/lerf/reset", self._on_reset, callback_group=control)
        # /lerf/export writes the live map as files (lerf_ros.query.export), with the query node's last
        # answer (latched on /lerf/relevancy_cloud); it takes seconds, so it has its own group.
        self._exporting = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "/lerf/export", self._on_export, callback_group=self._exporting)
        self._health = TrainerHealth(self._health_limits)
        # With several cameras, an input check per camera besides the node's totals.
        self._camera_health = (
            {c.name: TrainerHealth(self._health.limits) for c in self.cameras} if len(self.cameras) > 1 else {}
        )
        self.get_logger().info(
            f"preset '{self.cfg.preset}', teacher: {self.trainer.teacher_description}; pose from {self.pose_source}; "
            f"world frame '{self.world_frame}'; output {self.cfg.output_dir}"
            + (
                "; cameras "
                + ", ".join(f"{c.name} ({self.resolve_topic_name(c.spec.image_topic)})" for c in self.cameras)
                if len(self.cameras) > 1
                else ""
            )
        )

    def activate_node(self) -> None:
        """Subscribe to the inputs, start ingestion and training, publish status and diagnostics."""
        for camera in self.cameras:
            camera.subscribe()
        corrections = MutuallyExclusiveCallbackGroup()
        if self._corrected_path_topic:
            self.create_subscription(
                Path, self._corrected_path_topic, self._on_corrected_path, 2, callback_group=corrections
            )
        if self.pose_source == "tf" and self.tf_relookup_period > 0:
            self.create_timer(self.tf_relookup_period, self._relookup_keyframes, callback_group=corrections)
        self.create_subscription(
            PointCloud2, "/lerf/relevancy_cloud", self._on_relevancy, LATCHED_QOS, callback_group=self._exporting
        )
        # Status has its own group: a status timer that is due again whenever the group frees up would
        # otherwise keep the control services (save, pause, reset) from ever being taken.
        self.create_timer(
            1.0 / max(0.1, self._status_rate), self._publish_status, callback_group=MutuallyExclusiveCallbackGroup()
        )
        names = ("input", "training", "keyframes") + tuple(f"camera {n}" for n in self._camera_health)
        names += ("tf",) if self.pose_source == "tf" else ()
        self.diagnostics = DiagnosticsPublisher(self, self._health_checks, names)
        with self._queue_cv:
            for camera in self.cameras:
                camera.queue.clear()  # images that arrived while the node was being deactivated
        self._ingest_stop = threading.Event()
        self._ingest_thread = threading.Thread(
            target=self._ingest_loop, args=(self._ingest_stop,), name="lerf_ingest", daemon=True
        )
        self._ingest_thread.start()
        self.trainer.start()

    def deactivate_node(self) -> None:
        """Stop ingestion, then training after the step in flight, and write a checkpoint of the current
        step when it has steps not saved yet (``OnlineTrainer.stop``); bounded. The session stays."""
        # A frame being handed over finishes first (its keyframe and change checks may take a while);
        # none is handed over after this.
        with self._submit_lock:
            with self._queue_cv:
                self._ingest_stop.set()
                self._queue_cv.notify_all()
        thread, self._ingest_thread = self._ingest_thread, None
        if thread is not None and thread is not threading.current_thread():
            # A TF lookup in flight is given up (its cancel event is the stop event): the thread ends
            # at once; a frame it still converts is discarded (the stop event, under the lock).
            thread.join(timeout=2.0)
        if self.trainer is not None:
            # a step slowed down by a loaded machine still gets its checkpoint (it usually takes < 1 s)
            self.trainer.stop(save=True, timeout_s=DEACTIVATE_SAVE_TIMEOUT_S)

    def cleanup_node(self) -> None:
        """Drop the session (model, keyframes, teacher features, snapshots) and the cameras' inputs."""
        trainer, self.trainer = self.trainer, None
        if trainer is not None:
            trainer.close(save=False, timeout_s=3.0)
        self.cameras = []
        self._camera_health = {}
        self._last_relevancy = None
        tf, self._tf = getattr(self, "_tf", None), None
        if tf is not None:
            tf.release()

    # ------------------------------------------------------------------ shared by the cameras
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
            "pose, depth, TF and keyframe-selection buffers cleared"
        )
        for camera in self.cameras:
            camera.clear_time_base()
        tf = getattr(self, "_tf", None)
        if tf is not None:
            tf.clear()  # transforms of the old time base would make tf2 refuse the new ones as old

    # ------------------------------------------------------------------ ingestion (own thread)
    def _ingest_loop(self, stop: threading.Event) -> None:
        while True:
            item = self._next_image(stop)
            if item is None:
                return
            camera, msg = item
            try:
                frame, reason = camera.to_frame(msg, cancel=stop)
                with self._submit_lock:
                    if stop.is_set():
                        return  # deactivated meanwhile: the frame is discarded, the session gets nothing more
                    if frame is None:
                        camera.drop(reason)
                        continue
                    result = self.trainer.submit(frame, selector=camera.selector)
                if result.rejected:
                    camera.drop(result.reason)
                elif result.kept:
                    camera.keyframes += 1
            except Exception as exc:  # one bad message must never kill ingestion
                camera.drop(f"unexpected error: {exc!r}")

    def _next_image(self, stop: threading.Event) -> Optional[Tuple[CameraInput, object]]:
        """The oldest queued image of any camera once it can be processed (None when closing). With
        poses from a topic, an image newer than every buffered pose of its camera waits for its pose
        up to ``pose_tolerance_s`` after its arrival (the pose callback wakes this thread), as
        message_filters' caches do; meanwhile the other cameras' images go ahead."""
        with self._queue_cv:
            while not stop.is_set():
                best, wait = None, 0.5
                for camera in self.cameras:
                    if not camera.queue:
                        continue
                    arrived, msg = camera.queue[0]
                    w = camera.pose_wait(msg, arrived)
                    if w > 0.0:
                        wait = min(wait, w)
                    elif best is None or arrived < best[0]:
                        best = (arrived, camera)
                if best is not None:
                    camera = best[1]
                    return camera, camera.queue.popleft()[1]
                self._queue_cv.wait(timeout=wait)
            return None

    # ------------------------------------------------------------------ late pose corrections
    def _relookup_keyframes(self) -> None:
        """Timer (poses from TF): look every stored keyframe up again, without waiting: the camera at the
        keyframe's stamp in ``odom_frame`` (held fixed in time), then ``odom_frame`` in ``world_frame`` at
        the latest time. A loop closure does not rewrite the TF history, it publishes a new
        ``map -> odom``: this is how it reaches past keyframes. Keyframes whose TF is no longer buffered
        (older than ``tf_cache_s``) keep their pose."""
        trainer, tf = self.trainer, self._tf  # cleanup (another thread) may clear them meanwhile
        if not self.active or trainer is None or tf is None:
            return
        keyframes = list(trainer.keyframes.keyframes())
        requests = []
        for kf in keyframes:
            ns = kf.meta.get("stamp_ns")
            ns = int(ns) if ns is not None else int(round(kf.stamp * 1e9))
            requests.append((self.world_frame, kf.frame_id, ns, self.odom_frame))
        # One round trip to the TF listener process for all keyframes (lerf_ros.ros.tf).
        found = tf.lookup_full_many(requests)
        pairs = [(kf.stamp, T) for kf, T in zip(keyframes, found) if T is not None]
        missing = len(keyframes) - len(pairs)
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
        trainer, cameras = self.trainer, self.cameras  # cleanup (another thread) may clear them meanwhile
        if not self.active or trainer is None:  # a tick already due when the node was deactivated
            return
        s = trainer.status()
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
        msg.pose_corrections = int(trainer.session.pose_corrections)
        msg.changes_detected = int(s.changes_detected)
        msg.keyframes_retired = int(s.keyframes_retired)
        msg.features_pending = int(s.features_pending)
        msg.camera_names = [c.name for c in cameras]
        msg.camera_frames_received = [int(c.frames_received) for c in cameras]
        msg.camera_frames_dropped = [int(c.dropped) for c in cameras]
        msg.camera_keyframes = [int(c.keyframes) for c in cameras]
        msg.rays_per_second = float(s.rays_per_second)
        msg.loss_rgb, msg.loss_lang, msg.loss_dino, msg.psnr = (
            float(s.losses.get(k, 0.0)) for k in ("rgb", "lang", "dino", "psnr")
        )
        # One read of the corrections for both messages (training moves them between two reads).
        poses, pc = trainer.session.corrected_poses()
        msg.pose_correction_mean_m, msg.pose_correction_max_m = pc["translation_mean_m"], pc["translation_max_m"]
        msg.pose_correction_mean_deg, msg.pose_correction_max_deg = pc["rotation_mean_deg"], pc["rotation_max_deg"]
        msg.checkpoint = s.checkpoint
        msg.message = s.message
        self.status_pub.publish(msg)
        self._publish_changes(trainer, msg.header)
        self._publish_keyframes(trainer, msg.header, int(s.step), poses)

    def _health_checks(self) -> List[Check]:
        """The trainer's checks for /diagnostics (``lerf_ros.mapping.health``)."""
        trainer, cameras = self.trainer, self.cameras  # cleanup (another thread) may clear them meanwhile
        if not self.active or trainer is None:
            return []
        s = trainer.status()
        with self._queue_cv:
            depths = {c.name: len(c.queue) for c in cameras}
        kcfg = self.cfg.keyframes
        checks = self._health.checks(
            TrainerCounters(
                frames_received=int(self.frames_received),
                drops=self.drops.counts(),
                queue_depth=sum(depths.values()),
                queue_size=sum(int(c.queue.maxlen or 0) for c in cameras),
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
        for camera in cameras:
            health = self._camera_health.get(camera.name)
            if health is None:
                continue
            counters = TrainerCounters(
                frames_received=int(camera.frames_received),
                drops=camera.drops.counts(),
                queue_depth=depths[camera.name],
                queue_size=int(camera.queue.maxlen or 0),
                state=s.state.value,
                error="",
                step=int(s.step),
                rays_per_second=0.0,
                keyframes=int(camera.keyframes),
                max_keyframes=int(kcfg.max_keyframes),
                memory_mb=0.0,
                max_memory_mb=float(kcfg.max_memory_mb),
                teacher_backlog=0,
            )
            check = next(c for c in health.checks(counters) if c.name == "input")
            topic = self.resolve_topic_name(camera.spec.image_topic)
            values = (("image topic", topic), ("keyframes taken", str(camera.keyframes))) + tuple(check.values)
            checks.append(dataclasses.replace(check, name=f"camera {camera.name}", values=values))
        tf = getattr(self, "_tf", None) if self.pose_source == "tf" else None
        if tf is not None:
            checks.append(tf.check())  # the TF listener: running or restarting, its restarts (lerf_ros.ros.tf)
        return checks

    def _publish_keyframes(self, trainer, header, step: int, keyframe_poses) -> None:
        """Camera poses of the current keyframes (the trajectory RViz shows), with their learned pose
        corrections: when the store changed, or every ``KEYFRAME_REPUBLISH_STEPS`` training steps while
        the corrections are being learned."""
        version = trainer.keyframes.version
        refining = self.cfg.trainer.pose_refinement and step >= self._published_step + KEYFRAME_REPUBLISH_STEPS
        if version == self._published_store_version and not refining:
            return
        self._published_store_version, self._published_step = version, step
        poses = PoseArray(header=header)
        poses.poses = [matrix_to_pose(c2w) for _, c2w in keyframe_poses]
        self.keyframes_pub.publish(poses)

    def _publish_changes(self, trainer, header) -> None:
        """Surface points of the latest confirmed scene changes (x y z, kind: 0 gone, 1 new), when
        they changed."""
        detector = trainer.session.changes
        if detector is None or detector.version == self._published_changes_version:
            return
        self._published_changes_version = detector.version
        points, kinds = detector.changed_points()
        self.changes_pub.publish(
            points_to_pointcloud2(points, fields={"kind": kinds}, frame_id=self.world_frame, stamp=header.stamp)
        )

    def _on_save(self, _req, resp):
        trainer = self.trainer  # cleanup (another thread) may clear it meanwhile
        if not self.active or trainer is None:
            return self._refuse_inactive(resp)
        try:
            path = trainer.save_checkpoint()
            resp.success, resp.message = True, f"saved {path} (step {trainer.step})"
        except Exception as exc:
            resp.success, resp.message = False, f"could not save a checkpoint: {exc}"
        return resp

    def _on_relevancy(self, msg: PointCloud2) -> None:
        self._last_relevancy = msg  # only the newest is kept

    def _on_export(self, _req, resp):
        """Write the live map and the last answer's relevancy cloud to ``export_dir``."""
        from lerf_ros.query.export import ExportError, export_map
        from lerf_ros.ros.convert import ConversionError, pointcloud2_to_numpy

        trainer = self.trainer  # cleanup (another thread) may clear it meanwhile
        if not self.active or trainer is None:
            return self._refuse_inactive(resp)
        snapshot = trainer.latest_snapshot
        note = ""
        try:
            if snapshot is None:
                raise ExportError("no model yet (no training step so far)")
            relevancy, msg = None, self._last_relevancy
            if msg is not None and msg.header.frame_id not in ("", self.world_frame):
                note = f"; the last relevancy cloud is in '{msg.header.frame_id}', not '{self.world_frame}': left out"
            elif msg is not None:
                try:
                    fields = pointcloud2_to_numpy(msg)
                    relevancy = {"xyz": fields["xyz"], "relevancy": fields["relevancy"]}
                except (ConversionError, KeyError) as exc:
                    note = f"; the last relevancy cloud is unreadable ({exc}): left out"
            result = export_map(snapshot, self.cfg.query, self.export_dir, relevancy=relevancy)
            resp.success, resp.message = True, f"exported {result.summary()}{note}"
            self.get_logger().info(resp.message)
        except Exception as exc:  # nothing to export yet, a full disk: answer with the reason
            resp.success, resp.message = False, f"could not export: {exc}"
            self.get_logger().warning(resp.message)
        return resp

    def _on_pause(self, req, resp):
        if not self.active:
            return self._refuse_inactive(resp)
        self.trainer.set_paused(bool(req.data))
        resp.success, resp.message = True, "paused" if req.data else "resumed"
        return resp

    def _on_reset(self, _req, resp):
        if not self.active:
            return self._refuse_inactive(resp)
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
        """For an in-process query node: the newest immutable model snapshot (None before the first
        training step and while the node is unconfigured)."""
        trainer = self.trainer
        return None if trainer is None else trainer.latest_snapshot

    def query_priority(self):
        """For an in-process query node: a context manager around one answer, during which training
        starts no new step (``OnlineTrainer.priority``, within ``trainer.query_yield_share``)."""
        trainer = self.trainer
        return contextlib.nullcontext() if trainer is None else trainer.priority.answering()

    def teacher_provider(self):
        """For an in-process query node: the loaded teacher (its text encoder), None while unconfigured."""
        trainer = self.trainer
        return None if trainer is None else trainer.session.teacher

    def _refuse_inactive(self, resp):
        """The answer of a control service while the node is not active (lerf_ros.ros.lifecycle)."""
        resp.success, resp.message = False, self.inactive_message()
        return resp


def main(args=None) -> int:
    return main_for([TrainerNode], args)


if __name__ == "__main__":
    raise SystemExit(main())
