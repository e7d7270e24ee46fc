"""The query node: serves /lerf/query from a consistent snapshot of the field.

Two ways to get the field:
- in-process (the default launch): the trainer node hands over a snapshot provider; the node polls it
  and never touches the live model, so training does not stall while a query runs;
- as its own process: it watches the trainer's checkpoint folder and reloads the newest checkpoint
  (``lerf_ros.mapping.checkpoint.latest_checkpoint``: the highest step among ``step-*.ckpt`` and
  ``final.ckpt``, unreadable files skipped with a warning).

A new snapshot is prepared (surface points, projected language features) off to the side, on a
background thread of lower priority that pauses between chunks (``lerf_ros.query.preparer``:
parameters ``prepare_cpu_share``, ``prepare_niceness``), and swapped in atomically: queries never
wait for a preparation, they are answered from the previous snapshot meanwhile, and each answer
says which snapshot answered and how old it is ("; snapshot #k, age S s" after the message;
``model_step`` is its training step). Only before the first snapshot is prepared does a query wait
for it. The node reports on ``/diagnostics`` (``lerf_ros.ros.diagnostics``). Preparation stops at its
next chunk boundary when the node is closed (``close``, called by the executor's shutdown on
SIGINT/SIGTERM), so the process exits promptly.

A managed (lifecycle) node (``lerf_ros.ros.lifecycle``): configure loads the text encoder (in the
trainer's process: the trainer's, so lerf_trainer is configured first) and builds the engine, the
publishers and ``/lerf/query``; activate starts the snapshot preparation and answers; while inactive
``/lerf/query`` answers ``success: false`` with "lerf_query is inactive ..." (the prepared snapshot
stays); cleanup drops the engine and the text encoder. ``autostart`` (default true) goes to active
at start.

Requests are bounded: text, each negative phrase and frame_id at most ``query.max_text_length``
characters without control characters, at most ``query.max_negatives`` negative phrases;
``max_grasps`` and ``max_points`` are clamped (``query.max_grasps_limit``,
``query.max_candidate_points``). Answers quote bad input by a short excerpt only.

Outputs for RViz (transient-local, so a late RViz still gets the last answer):
``/lerf/relevancy_cloud`` (PointCloud2: x y z rgb relevancy), ``/lerf/grasp_markers`` (MarkerArray),
``/lerf/best_grasp`` (PoseStamped) and ``/lerf/scene_cloud`` (PointCloud2: x y z rgb).

Parameters: the ``query.*`` section of the configuration is declared here (``ros2 param describe
/lerf_query query.threshold``); as its own process the node also declares ``preset``, ``output_dir``,
``device`` and ``teacher.*`` (its text encoder), while in the trainer's process it shares those with
the trainer (``lerf_ros.ros.params``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import Callable, ContextManager, Dict, List, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import ReentrantCallbackGroup
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from lerf_ros.config import LerfConfig
from lerf_ros.field.snapshot import FieldSnapshot
from lerf_ros.mapping.health import Check, query_checks
from lerf_ros.query.preparer import SnapshotPreparer
from lerf_ros.query.request import EXCERPT_CHARS, excerpt, text_problem
from lerf_ros.ros.common import LATCHED_QOS, QUERY_SERVICE, main_for
from lerf_ros.ros.convert import matrix_to_pose, points_to_pointcloud2
from lerf_ros.ros.diagnostics import DiagnosticsPublisher
from lerf_ros.ros.lifecycle import ManagedNode
from lerf_ros.ros.markers import grasp_markers
from lerf_ros.ros.params import QUERY_OWN_PARAMETERS, QUERY_PARAMETERS, declare_config, declare_node_parameters
from lerf_ros.ros.tf import FrameResolver
from lerf_ros.srv import Query

SnapshotProvider = Callable[[], Optional[FieldSnapshot]]

#: queries remembered for the latency figures of ``QueryNode.status`` (the most recent ones) ...
LATENCY_WINDOW = 1000
#: ... within this many seconds
LATENCY_WINDOW_S = 60.0


class QueryNode(ManagedNode):
    """Serves ``/lerf/query``; see the module docstring.

    ``cfg``: the configuration of the trainer this node shares a process with (its ``query`` section
    is then declared on this node on top of it); None: this node declares everything it reads.
    """

    def __init__(
        self,
        snapshot_provider: Optional[SnapshotProvider] = None,
        teacher_source: Optional[Callable[[], object]] = None,
        cfg: Optional[LerfConfig] = None,
        name: str = "lerf_query",
        priority: Optional[Callable[[], ContextManager]] = None,
        **kwargs,
    ) -> None:
        super().__init__(name, **kwargs)
        if cfg is None:
            self.cfg = declare_config(self, QUERY_PARAMETERS)
        else:
            self.cfg = declare_config(self, QUERY_OWN_PARAMETERS, base=cfg)
        params = declare_node_parameters(self, "query")  # names, defaults, descriptions: config.NODE_PARAMETERS
        self.map_frame = params["world_frame"]
        self.checkpoint_dir = params["checkpoint_dir"]
        self._provider = snapshot_provider
        self._teacher_source = teacher_source
        # In the trainer's process: training steps aside while a query is answered (trainer.query_yield_share).
        self._priority = priority if priority is not None else contextlib.nullcontext
        self._teacher = None
        self._engine = None
        self._engine_error = ""
        self._engine_lock = threading.Lock()
        self._loaded_checkpoint: Optional[tuple] = None  # (path, mtime_ns, size) of the last one loaded
        self._closing = threading.Event()
        self._latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)  # (monotonic, ms)
        share = float(params["prepare_cpu_share"])
        if not 0.0 < share <= 1.0:
            raise ValueError(f"prepare_cpu_share {share} is outside (0, 1]: give the share of wall time, e.g. 0.5")
        self._prepare_settings = dict(
            period_s=float(params["reload_period_s"]),
            min_interval_s=float(params["snapshot_min_interval_s"]),
            cpu_share=share,
            niceness=int(params["prepare_niceness"]),
        )
        # One per configure: paused while inactive (a preparation under way finishes), closed at cleanup.
        self._preparer: Optional[SnapshotPreparer] = None
        self._frames: Optional[FrameResolver] = None
        self.start_lifecycle(bool(params["autostart"]))

    # ------------------------------------------------------------------ lifecycle (lerf_ros.ros.lifecycle)
    def configure_node(self) -> None:
        """Load the text encoder (in the trainer's process: take the trainer's), build the query engine,
        the publishers and the service."""
        teacher = self._teacher_source() if self._teacher_source is not None else None
        if self._teacher_source is not None and teacher is None:
            raise RuntimeError(
                "the trainer of this process is not configured: configure lerf_trainer first (this node "
                "uses its text encoder)"
            )
        if teacher is None:
            from lerf_ros.teachers import make_teacher

            try:
                teacher = make_teacher(self.cfg.teacher, device=self.cfg.device)
            except Exception as exc:  # weights missing, bad config
                raise RuntimeError(f"the text encoder could not be loaded: {exc}") from exc
        from lerf_ros.query import QueryEngine

        engine = QueryEngine(self.cfg.query, teacher.encode_text)
        with self._engine_lock:
            self._closing = threading.Event()
            self._teacher, self._engine, self._engine_error = teacher, engine, ""
        self._loaded_checkpoint = None
        self.get_logger().info(f"text encoder: {teacher.description}")
        self._frames = FrameResolver(self, self.map_frame)
        self.cloud_pub = self.create_publisher(PointCloud2, "/lerf/relevancy_cloud", LATCHED_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "/lerf/grasp_markers", LATCHED_QOS)
        self.grasp_pub = self.create_publisher(PoseStamped, "/lerf/best_grasp", LATCHED_QOS)
        self.scene_pub = self.create_publisher(PointCloud2, "/lerf/scene_cloud", LATCHED_QOS)
        self.srv = self.create_service(Query, QUERY_SERVICE, self._on_query, callback_group=ReentrantCallbackGroup())

    def activate_node(self) -> None:
        """Start preparing snapshots (the trainer's in memory, or its newest checkpoint), answer queries,
        publish diagnostics. The preparer of an earlier activation (paused since) goes on."""
        if self._preparer is not None and self._preparer.alive:
            self._preparer.resume()
        else:
            self._preparer = SnapshotPreparer(
                self._get_engine,
                self._provider if self._provider is not None else self._load_newest_checkpoint,
                on_prepared=self._on_prepared,
                on_error=lambda message: self.get_logger().warning(message, throttle_duration_sec=30.0),
                **self._prepare_settings,
            ).start()
        self.diagnostics = DiagnosticsPublisher(self, self._health_checks, ("snapshot", "queries"))
        mode = "in-process snapshots" if self._provider is not None else f"checkpoints in {self._checkpoint_dir()}"
        self.get_logger().info(f"serving {QUERY_SERVICE} ({mode})")

    def deactivate_node(self) -> None:
        """Stop looking for new snapshots (a preparation under way finishes on its own; the preparer
        waits, paused, for the next activation); the prepared snapshot stays, queries are refused until
        the node is activated again."""
        if self._preparer is not None:
            self._preparer.pause()

    def cleanup_node(self) -> None:
        """Drop the engine (its prepared snapshot and feature cache) and the text encoder. A preparation
        still under way stops at its next chunk (waited for up to 2 s)."""
        self.close_engine()
        preparer, self._preparer = self._preparer, None
        if preparer is not None:
            preparer.close(timeout_s=2.0)
        with self._engine_lock:
            self._engine = self._teacher = None
        frames, self._frames = self._frames, None
        if frames is not None:
            frames.close()  # releases the process's shared TF feed

    # ------------------------------------------------------------------ model
    def _checkpoint_dir(self) -> str:
        return self.checkpoint_dir or os.path.join(self.cfg.output_dir, "checkpoints")

    def close_engine(self) -> None:
        """Stop the engine: a preparation in progress stops at its next chunk boundary, later queries
        are refused (the lifecycle's cleanup and shutdown)."""
        self._closing.set()
        with self._engine_lock:
            engine = self._engine
        if engine is not None:
            engine.close()

    def _get_engine(self):
        """The query engine (None while unconfigured or closing)."""
        with self._engine_lock:
            return None if self._closing.is_set() else self._engine

    def _on_prepared(self, snap: FieldSnapshot, ms: Dict[str, float]) -> None:
        self.get_logger().info(
            f"answering from the model at step {snap.step} (prepared in {sum(ms.values()):.0f} ms: surface "
            f"{ms['surface']:.0f}, features {ms['features']:.0f})"
        )
        with self._engine_lock:
            engine = self._engine
        if engine is not None and not self._closing.is_set():
            self._publish_scene(engine)

    def status(self) -> Dict[str, object]:
        """The engine's status (``QueryEngine.status``: answering step, snapshot version and age,
        preparation) plus the query latency over the recent window: 'queries' in it, 'latency_p50_ms'
        and 'latency_p95_ms' (0 when none), and 'preparing_step' (-1 when idle)."""
        with self._engine_lock:
            engine = self._engine
        st: Dict[str, object] = (
            dict(engine.status()) if engine is not None else {"step": -1, "error": self._engine_error}
        )
        now = time.monotonic()
        recent = [ms for t, ms in list(self._latencies) if now - t <= LATENCY_WINDOW_S]
        st["queries"] = len(recent)
        st["latency_p50_ms"] = float(np.percentile(recent, 50)) if recent else 0.0
        st["latency_p95_ms"] = float(np.percentile(recent, 95)) if recent else 0.0
        step = None if self._preparer is None else self._preparer.preparing_step
        st["preparing_step"] = -1 if step is None else step
        return st

    def _health_checks(self) -> List[Check]:
        """The query node's checks for /diagnostics (``lerf_ros.mapping.health.query_checks``)."""
        return query_checks(self.status(), self._engine_error)

    def _load_newest_checkpoint(self) -> Optional[FieldSnapshot]:
        """The newest checkpoint's snapshot when it is not the one loaded last, else None."""
        from lerf_ros.mapping.checkpoint import latest_checkpoint, load_snapshot

        path = latest_checkpoint(self._checkpoint_dir(), warn=self.get_logger().warning)
        if path is None:
            return None
        st = os.stat(path)
        identity = (path, st.st_mtime_ns, st.st_size)
        if identity == self._loaded_checkpoint:
            return None
        # Remembered before loading: a file that fails to load is reported once, not every period.
        self._loaded_checkpoint = identity
        snap = load_snapshot(path, device=self.cfg.resolved_device())
        self.get_logger().info(f"loaded checkpoint {path} (step {snap.step})")
        return snap

    def _publish_scene(self, engine) -> None:
        scene = engine.scene_points()
        if scene is None or len(scene[0]) == 0:
            return
        xyz, rgb = scene[0], scene[1]
        self.scene_pub.publish(points_to_pointcloud2(xyz, rgb, None, self.map_frame, self.get_clock().now().to_msg()))

    # ------------------------------------------------------------------ service
    def _current_step(self) -> int:
        """Training step of the snapshot the engine answers from (0 when none)."""
        with self._engine_lock:
            engine = self._engine
        return 0 if engine is None else max(engine.current_step(), 0)

    def _refuse(self, response: Query.Response, message: str, request: Query.Request) -> Query.Response:
        response.success, response.message = False, message
        response.model_step = self._current_step()
        self.get_logger().info(f"query {excerpt(request.text)}: refused ({message})")
        return response

    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        t0 = time.perf_counter()
        frames = self._frames
        if not self.active or frames is None:
            return self._refuse(response, self.inactive_message(), request)
        problem = text_problem(
            "frame_id", request.frame_id, self.cfg.query.max_text_length, "query.max_text_length", allow_empty=True
        )
        if problem:
            return self._refuse(response, problem, request)
        frame_id = request.frame_id or self.map_frame
        where = frames.resolve(frame_id)
        world_to_target, frame_error = where.world_to_frame, where.error
        # An answer in a moving frame is stamped with the time of the transform used (lerf_ros.ros.tf).
        stamp = where.stamp if where.stamp is not None else self.get_clock().now().to_msg()
        if frame_error:
            if len(frame_id) > EXCERPT_CHARS:  # quote a long frame name by its excerpt only
                frame_error = frame_error.replace(f"'{frame_id}'", excerpt(frame_id)).replace(frame_id, "(it)")
            return self._refuse(response, frame_error, request)
        engine = self._get_engine()
        if engine is None:
            message = "the query node is shutting down" if self._closing.is_set() else self._engine_error
            return self._refuse(response, message, request)
        with self._priority():
            result = engine.query(
                request.text,
                negatives=list(request.negatives),
                threshold=float(request.threshold),
                max_points=int(request.max_points),
                max_grasps=int(request.max_grasps),
                world_to_target=world_to_target,
            )
        response.success = bool(result.success)
        response.message = result.message
        if result.snapshot_version > 0:
            response.message += f"; snapshot #{result.snapshot_version}, age {result.snapshot_age_s:.1f} s"
        response.model_step = max(int(result.step), 0)
        response.scale = float(result.scale)
        response.max_relevancy = float(result.max_relevancy)
        header = Header(frame_id=frame_id, stamp=stamp)
        rel = None if result.relevancy is None else {"relevancy": np.asarray(result.relevancy, np.float32)}
        if result.points is not None:
            response.cloud = points_to_pointcloud2(result.points, result.colors, rel, frame_id, stamp)
        for g in result.grasps:
            response.grasps.append(PoseStamped(header=header, pose=matrix_to_pose(g.pose)))
            response.grasp_scores.append(float(g.score))
            response.grasp_widths.append(float(g.width))
        if result.success:
            self.cloud_pub.publish(response.cloud)
            self.marker_pub.publish(
                grasp_markers([g.pose for g in result.grasps], response.grasp_widths, response.grasp_scores, header)
            )
            if response.grasps:
                self.grasp_pub.publish(response.grasps[0])
        ms = 1000.0 * (time.perf_counter() - t0)
        self._latencies.append((time.monotonic(), ms))
        self.get_logger().info(
            f"query {excerpt(request.text)}: {'ok' if result.success else 'failed'} ({result.message}) in {ms:.0f} ms"
        )
        return response


def main(args=None) -> int:
    return main_for([QueryNode], args)


if __name__ == "__main__":
    raise SystemExit(main())
