"""``/diagnostics`` for the nodes: their checks (``lerf_ros.mapping.health``) once a second.

Each node hands a ``collect()`` that returns its checks now; they are published as
``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``, one ``DiagnosticStatus`` per check named
``<node name>: <check>`` (as ``diagnostic_updater`` names its tasks), so ``rqt_robot_monitor``,
``diagnostic_aggregator`` and fleet monitors read them as they read any driver's. With
``diagnostic_updater`` importable its ``Updater`` publishes them (its period, its
``/diagnostics`` publisher); without it this module publishes the same array itself.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from lerf_ros.mapping.health import ERROR, Check

DIAGNOSTICS_TOPIC = "/diagnostics"
#: seconds between two publications
DIAGNOSTICS_PERIOD_S = 1.0

try:  # optional: the ROS 2 diagnostics stack (not on PyPI)
    import diagnostic_updater  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    diagnostic_updater = None

UPDATER_PERIOD_PARAMETER = "diagnostic_updater.period"
"""The parameter ``diagnostic_updater.Updater`` declares on its node."""


def to_status(check: Check, node_name: str, hardware_id: str) -> DiagnosticStatus:
    """One check as a DiagnosticStatus named ``<node_name>: <check.name>``."""
    return DiagnosticStatus(
        level=bytes([int(check.level)]),
        name=f"{node_name}: {check.name}",
        message=check.message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in check.values],
    )


class DiagnosticsPublisher:
    """Publishes ``collect()``'s checks on ``/diagnostics`` every ``period_s`` (see the module doc).

    ``names``: the check names ``collect`` returns (``diagnostic_updater`` registers one task per
    name up front). A failing ``collect`` is logged once and published as one ERROR status, so a
    monitor sees it instead of silence."""

    def __init__(
        self,
        node: Node,
        collect: Callable[[], List[Check]],
        names: Sequence[str],
        hardware_id: str = "lerf_ros",
        period_s: float = DIAGNOSTICS_PERIOD_S,
    ) -> None:
        self._node = node
        self._collect = collect
        self._hardware_id = hardware_id
        self._lock = threading.Lock()
        self._cache: Dict[str, Check] = {}
        self._cache_t = -float("inf")
        self._period_s = float(period_s)
        self._failed_logged = False
        if diagnostic_updater is not None:
            # The Updater declares this parameter and never undeclares it: a managed node that is
            # activated again (a new Updater on the same node) would otherwise fail to declare it.
            if node.has_parameter(UPDATER_PERIOD_PARAMETER):
                node.undeclare_parameter(UPDATER_PERIOD_PARAMETER)
            self._updater = diagnostic_updater.Updater(node, period=self._period_s)
            self._updater.setHardwareID(hardware_id)
            for name in names:
                self._updater.add(name, lambda stat, name=name: self._fill(stat, name))
            self._pub = None
        else:
            self._updater = None
            self._pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
            node.create_timer(self._period_s, self.publish, callback_group=MutuallyExclusiveCallbackGroup())

    def checks(self) -> List[Check]:
        """``collect()``, or one ERROR check saying why it failed."""
        try:
            return list(self._collect())
        except Exception as exc:  # a monitor should see the failure, not silence
            if not self._failed_logged:
                self._node.get_logger().error(f"could not collect diagnostics: {exc!r}")
                self._failed_logged = True
            return [Check("diagnostics", ERROR, f"could not collect diagnostics: {type(exc).__name__}: {exc}")]

    def publish(self) -> None:
        """Publish the checks now (the timer's callback)."""
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [to_status(c, self._node.get_name(), self._hardware_id) for c in self.checks()]
        self._pub.publish(msg)

    def _fill(self, stat, name: str):
        """A ``diagnostic_updater`` task: the check ``name`` from one ``collect()`` per period."""
        with self._lock:
            if time.monotonic() - self._cache_t > 0.5 * self._period_s:
                self._cache = {c.name: c for c in self.checks()}
                self._cache_t = time.monotonic()
            check = self._cache.get(name) or self._cache.get("diagnostics")
        if check is None:
            stat.summary(ERROR, f"no check named {name}")
            return stat
        stat.summary(int(check.level), check.message)
        for k, v in check.values:
            stat.add(k, v)
        return stat
