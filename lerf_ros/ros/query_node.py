"""The query node: serves /lerf/query from a consistent snapshot of the field.

Two ways to get the field:
- in-process (the default launch): the trainer node hands over a snapshot provider; the node polls it
  and never touches the live model, so training does not stall while a query runs;
- as its own process: it watches the trainer's checkpoint folder and reloads the newest checkpoint
  (``lerf_ros.mapping.checkpoint.latest_checkpoint``: the highest step among ``step-*.ckpt`` and
  ``final.ckpt``, unreadable files skipped with a warning).

A new snapshot is prepared (surface points, projected language features) by the reload timer,
off the service's path. Preparation stops at its next chunk boundary when the node is closed
(``close``, called by the executor's shutdown on SIGINT/SIGTERM), so the process exits promptly.

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

import os
import threading
import time
from typing import Callable, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from lerf_ros.config import LerfConfig
from lerf_ros.field.snapshot import FieldSnapshot
from lerf_ros.query.cancel import Cancelled
from lerf_ros.query.request import EXCERPT_CHARS, excerpt, text_problem
from lerf_ros.ros.common import LATCHED_QOS, QUERY_SERVICE, main_for
from lerf_ros.ros.convert import matrix_to_pose, points_to_pointcloud2
from lerf_ros.ros.markers import grasp_markers
from lerf_ros.ros.params import QUERY_OWN_PARAMETERS, QUERY_PARAMETERS, declare_config, declare_node_parameters
from lerf_ros.ros.tf import FrameResolver
from lerf_ros.srv import Query

SnapshotProvider = Callable[[], Optional[FieldSnapshot]]


class QueryNode(Node):
    """Serves ``/lerf/query``; see the module docstring.

    ``cfg``: the configuration of the trainer this node shares a process with (its ``query`` section
    is then declared on this node on top of it); None: this node declares everything it reads.
    """

    def __init__(
        self,
        snapshot_provider: Optional[SnapshotProvider] = None,
        teacher=None,
        cfg: Optional[LerfConfig] = None,
        name: str = "lerf_query",
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
        reload_s = params["reload_period_s"]
        self.min_swap_s = params["snapshot_min_interval_s"]
        self._last_swap = -float("inf")
        self._provider = snapshot_provider
        self._teacher = teacher
        self._engine = None
        self._engine_error = ""
        self._engine_lock = threading.Lock()
        self._last_step = -1
        self._loaded_checkpoint: Optional[tuple] = None  # (path, mtime_ns, size) of the last one loaded
        self._closing = threading.Event()
        self._refreshing = threading.Lock()  # held while a snapshot is fetched and prepared
        self._frames = FrameResolver(self, self.map_frame)

        self.cloud_pub = self.create_publisher(PointCloud2, "/lerf/relevancy_cloud", LATCHED_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "/lerf/grasp_markers", LATCHED_QOS)
        self.grasp_pub = self.create_publisher(PoseStamped, "/lerf/best_grasp", LATCHED_QOS)
        self.scene_pub = self.create_publisher(PointCloud2, "/lerf/scene_cloud", LATCHED_QOS)
        self.srv = self.create_service(Query, QUERY_SERVICE, self._on_query, callback_group=ReentrantCallbackGroup())
        self.create_timer(float(reload_s), self._refresh_snapshot, callback_group=MutuallyExclusiveCallbackGroup())
        mode = "in-process snapshots" if snapshot_provider is not None else f"checkpoints in {self._checkpoint_dir()}"
        self.get_logger().info(f"serving {QUERY_SERVICE} ({mode})")

    # ------------------------------------------------------------------ model
    def _checkpoint_dir(self) -> str:
        return self.checkpoint_dir or os.path.join(self.cfg.output_dir, "checkpoints")

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop serving: preparation in progress stops at its next chunk boundary (waited for up to
        ``timeout_s``), later queries are refused. Called by the executor's shutdown."""
        self._closing.set()
        with self._engine_lock:
            engine = self._engine
        if engine is not None:
            engine.close()
        if self._refreshing.acquire(timeout=timeout_s):
            self._refreshing.release()

    def _get_engine(self):
        """The query engine, built on first use (it needs the teacher's text encoder); None once closed."""
        with self._engine_lock:
            if self._closing.is_set():
                return None
            if self._engine is None and not self._engine_error:
                try:
                    from lerf_ros.query import QueryEngine
                    from lerf_ros.teachers import make_teacher

                    if self._teacher is None:
                        self._teacher = make_teacher(self.cfg.teacher, device=self.cfg.device)
                    self._engine = QueryEngine(self.cfg.query, self._teacher.encode_text)
                    self.get_logger().info(f"text encoder: {self._teacher.description}")
                except Exception as exc:  # weights missing, bad config: answer with the reason
                    self._engine_error = f"the text encoder could not be loaded: {exc}"
                    self.get_logger().error(self._engine_error)
            return self._engine

    def _refresh_snapshot(self) -> None:
        if self._closing.is_set() or not self._refreshing.acquire(blocking=False):
            return
        try:
            self._refresh_snapshot_locked()
        finally:
            self._refreshing.release()

    def _refresh_snapshot_locked(self) -> None:
        if self._last_step >= 0 and time.monotonic() - self._last_swap < float(self.min_swap_s):
            return
        try:
            snap = self._provider() if self._provider is not None else self._load_newest_checkpoint()
        except Exception as exc:
            self.get_logger().warning(f"could not get a model snapshot: {exc}", throttle_duration_sec=30.0)
            return
        if snap is None or snap.step == self._last_step:
            return
        engine = self._get_engine()
        if engine is None:
            return
        engine.set_snapshot(snap)
        self._last_step = snap.step
        self._last_swap = time.monotonic()
        # Extract the surface points and their features now, not in the next query.
        try:
            ms = engine.prepare()
        except Cancelled:  # the node is shutting down
            return
        except Exception as exc:  # the next query reports the reason to its caller
            self.get_logger().warning(
                f"could not prepare the model at step {snap.step}: {exc}", throttle_duration_sec=30.0
            )
            return
        self.get_logger().info(
            f"answering from the model at step {snap.step} (prepared in {sum(ms.values()):.0f} ms)",
            throttle_duration_sec=30.0,
        )
        self._publish_scene(engine)

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
        snap = None if engine is None else engine.snapshot
        return 0 if snap is None else max(int(snap.step), 0)

    def _refuse(self, response: Query.Response, message: str, request: Query.Request) -> Query.Response:
        response.success, response.message = False, message
        response.model_step = self._current_step()
        self.get_logger().info(f"query {excerpt(request.text)}: refused ({message})")
        return response

    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        t0 = time.perf_counter()
        problem = text_problem(
            "frame_id", request.frame_id, self.cfg.query.max_text_length, "query.max_text_length", allow_empty=True
        )
        if problem:
            return self._refuse(response, problem, request)
        frame_id = request.frame_id or self.map_frame
        stamp = self.get_clock().now().to_msg()
        world_to_target, frame_error = self._frames.world_to(frame_id)
        if frame_error:
            if len(frame_id) > EXCERPT_CHARS:  # quote a long frame name by its excerpt only
                frame_error = frame_error.replace(f"'{frame_id}'", excerpt(frame_id)).replace(frame_id, "(it)")
            return self._refuse(response, frame_error, request)
        engine = self._get_engine()
        if engine is None:
            message = "the query node is shutting down" if self._closing.is_set() else self._engine_error
            return self._refuse(response, message, request)
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
        self.get_logger().info(
            f"query {excerpt(request.text)}: {'ok' if result.success else 'failed'} ({result.message}) in {ms:.0f} ms"
        )
        return response


def main(args=None) -> int:
    return main_for([QueryNode], args)


if __name__ == "__main__":
    raise SystemExit(main())
