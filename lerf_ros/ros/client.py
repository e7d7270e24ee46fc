"""A client of the running LERF nodes: ``/lerf/query`` calls and the ``/lerf/status`` stream.

``lerf-ros query --service`` and ``lerf-ros demo`` use it, so the command modules hold no rclpy
code. Answers come back as the ROS-free ``lerf_ros.query.QueryResult`` the query engine returns
offline (points, colours, relevancy, grasp poses as 4x4 matrices), so a caller prints or saves an
answer the same way whichever side computed it.

Calls go through ``call_service`` (``lerf_ros.ros.common``): a request whose answer is lost right
after discovery is asked again.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from lerf_ros.msg import TrainingStatus
from lerf_ros.query.engine import QueryResult
from lerf_ros.query.grasp import Grasp
from lerf_ros.ros.common import QUERY_SERVICE, STATUS_QOS, STATUS_TOPIC, call_service
from lerf_ros.ros.convert import pointcloud2_to_numpy, pose_to_matrix, stamp_to_sec
from lerf_ros.srv import Query

__all__ = ["Interrupted", "LerfClient", "answer_frame", "response_to_result"]


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM: rclpy's signal handlers shut the context
    down) while a client waited. A ``KeyboardInterrupt``, so a command line stops quietly."""


def response_to_result(resp: Query.Response) -> QueryResult:
    """The ``QueryResult`` a ``lerf_ros/srv/Query`` response carries (the inverse of the query
    node's packing): cloud fields x y z rgb relevancy -> points, colors, relevancy; each grasp pose
    -> a 4x4 ``Grasp`` with its score and width. ``step`` is the response's ``model_step``."""
    result = QueryResult(
        success=bool(resp.success),
        message=str(resp.message),
        step=int(resp.model_step),
        scale=float(resp.scale),
        max_relevancy=float(resp.max_relevancy),
    )
    if int(resp.cloud.width) * int(resp.cloud.height) > 0:
        cloud = pointcloud2_to_numpy(resp.cloud)
        n = len(cloud["xyz"])
        result.points = cloud["xyz"].astype(np.float32)
        result.colors = cloud.get("rgb", np.zeros((n, 3), np.uint8)).astype(np.uint8)
        result.relevancy = np.asarray(cloud.get("relevancy", np.zeros(n)), np.float32)
    result.grasps = [
        Grasp(pose=pose_to_matrix(g), score=float(s), width=float(w))
        for g, s, w in zip(resp.grasps, resp.grasp_scores, resp.grasp_widths)
    ]
    return result


def answer_frame(resp: Query.Response) -> Tuple[str, float]:
    """(frame_id, stamp in seconds) of a response's cloud and grasps ('' and 0.0 when it has none).
    In a moving frame the stamp is the time of the transform the node used, not the time of the call."""
    headers = [resp.cloud.header] + [g.header for g in resp.grasps]
    for h in headers:
        if h.frame_id:
            return str(h.frame_id), stamp_to_sec(h.stamp)
    return "", 0.0


class LerfClient:
    """A node that asks ``/lerf/query`` and (optionally) keeps the newest ``/lerf/status``.

    Args:
        node_name: name of the client node.
        follow_status: subscribe to ``/lerf/status``; ``status`` then holds the newest message.
        context: an initialised rclpy Context to create the node in. None: ``rclpy.init()`` the
            default context here and shut it down in ``close()`` (a command-line process).

    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self, node_name: str = "lerf_client", follow_status: bool = False, context: Optional[Context] = None
    ) -> None:
        self._owns_context = context is None
        if self._owns_context:
            rclpy.init()
        self.node = rclpy.create_node(node_name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.status: Optional[TrainingStatus] = None
        """The newest ``lerf_ros/msg/TrainingStatus`` (with ``follow_status``), or None."""
        self._client = self.node.create_client(Query, QUERY_SERVICE)
        if follow_status:
            self.node.create_subscription(TrainingStatus, STATUS_TOPIC, self._on_status, STATUS_QOS)

    def _on_status(self, msg: TrainingStatus) -> None:
        self.status = msg

    def spin_once(self, timeout: float) -> None:
        """Handle what arrived (status messages, answers), waiting at most ``timeout`` seconds.
        Raises ``Interrupted`` once a signal has shut the ROS context down."""
        try:
            self.executor.spin_once(timeout_sec=timeout)
        except ExternalShutdownException as exc:
            raise Interrupted("stopped by a signal") from exc

    def wait_for_service(self, timeout: float) -> bool:
        """Whether ``/lerf/query`` became available within ``timeout`` seconds."""
        return self._client.wait_for_service(timeout_sec=timeout)

    def query(
        self,
        text: str,
        negatives: Sequence[str] = (),
        threshold: float = 0.0,
        max_points: int = 0,
        max_grasps: int = 0,
        frame_id: str = "",
        timeout: float = 60.0,
    ) -> Optional[QueryResult]:
        """Ask ``/lerf/query`` (0 / empty fields: the node's defaults); the answer as a
        ``QueryResult``, or None when no answer came within ``timeout`` seconds. Raises ValueError for
        a control character in a string: ROS strings end at a NUL, so ``bot\\x00tle`` would be sent as
        ``bot``. ``query_response`` gives the response itself (with its frame and stamp)."""
        resp = self.query_response(text, negatives, threshold, max_points, max_grasps, frame_id, timeout)
        return None if resp is None else response_to_result(resp)

    def query_response(
        self,
        text: str,
        negatives: Sequence[str] = (),
        threshold: float = 0.0,
        max_points: int = 0,
        max_grasps: int = 0,
        frame_id: str = "",
        timeout: float = 60.0,
    ) -> Optional[Query.Response]:
        """As ``query``, but the ``lerf_ros/srv/Query`` response itself (None on no answer); its
        frame and stamp: ``answer_frame``."""
        from lerf_ros.query.request import control_character

        for what, value in [("text", text), ("frame_id", frame_id)] + [("negative", n) for n in negatives]:
            i = control_character(value)
            if i >= 0:
                raise ValueError(f"{what} has a control character {value[i]!r} at index {i}")
        req = Query.Request(
            text=text,
            negatives=list(negatives),
            threshold=float(threshold),
            max_points=int(max_points),
            max_grasps=int(max_grasps),
            frame_id=frame_id,
        )
        return call_service(self._client, req, self.spin_once, timeout=timeout)

    def close(self) -> None:
        """Destroy the node (and shut down the context this client initialised)."""
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown(timeout_sec=0)
        if self._owns_context:
            rclpy.try_shutdown()

    def __enter__(self) -> "LerfClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
