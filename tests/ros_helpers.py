"""Helpers for tests that talk to real ROS 2 processes over DDS.

- ``unique_domain_id()``: a ROS_DOMAIN_ID of this test process's own, so parallel runs do not
  cross-talk (1..101: the range whose DDS ports stay below the Linux ephemeral port range).
- ``ros_env(domain_id)``: environment for a child process (and the values the test process
  itself needs): that domain, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (a process with a
  different discovery range does not see the others), unbuffered output, the repository first on
  ``PYTHONPATH`` (so children run this source tree; ``lerf_ros/__init__`` joins the generated
  ``lerf_ros.msg``/``srv`` from the colcon install space onto it).
- ``ros_context(domain_id)``: context manager that applies that environment to this process and
  yields an initialised ``rclpy`` Context; nodes must be created with ``context=ctx``.
- ``start_process(argv, env)`` / ``stop_process(p, timeout)``: a child in its own process group
  (signals reach it and its children; a background job of a shell would ignore SIGINT), output
  captured to a log file (``p.log_path``; ``process_output(p)`` reads it).
- ``spin_until(node, predicate, timeout)``, ``wait_for_publisher``, ``wait_for_service``.
- ``call(node, client, request, timeout)``: a service call that asks again when an answer is lost
  (the product's ``call_service``), spinning ``node``.
- ``Lifecycle(node, target, proc)``: ``ros2 lifecycle get / set`` of a managed node, over DDS;
  ``rss_mb(pid)``: a process's resident memory.
- ``write_node_params(path, scene_dir, output_dir, ...)``: the nodes' params file for a synthetic
  scene, with each test's own values merged over it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def unique_domain_id() -> int:
    """A ROS domain id derived from the pid, in 1..101 (domain 0 is everybody's default)."""
    return 1 + os.getpid() % 101


def ros_env(domain_id: Optional[int] = None, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """A copy of ``os.environ`` set up for a ROS process on ``domain_id`` (see the module doc)."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(unique_domain_id() if domain_id is None else int(domain_id))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the discovery range
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    paths = [str(REPO_ROOT)]
    old = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths + old)
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def ros_context(domain_id: Optional[int] = None) -> Iterator["object"]:
    """Apply ``ros_env(domain_id)``'s ROS variables to this process and yield an initialised rclpy
    Context (shut down and the environment restored on exit)."""
    import rclpy
    from rclpy.context import Context

    env = ros_env(domain_id)
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        if k in env:
            os.environ[k] = env[k]
        else:
            os.environ.pop(k, None)
    ctx = Context()
    # Signal handlers stay with pytest: the test process must not turn SIGINT into a shutdown.
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]), signal_handler_options=SignalHandlerOptions.NO)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _merged(base: Dict[str, Any], over: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in (over or {}).items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_node_params(
    path: os.PathLike,
    scene_dir: os.PathLike,
    output_dir: os.PathLike,
    common: Optional[Dict[str, Any]] = None,
    trainer: Optional[Dict[str, Any]] = None,
    query: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write the nodes' params file for a synthetic scene saved in ``scene_dir`` and return ``path``.

    Every node (``/**``): preset tiny, ``output_dir``, world frame ``map``, the scene's ground-truth
    semantics as the teacher, no periodic checkpoints, training from 2 keyframes; ``lerf_trainer``:
    poses from a topic, status at 5 Hz. ``common``, ``trainer`` and ``query`` (nested dicts, merged
    key by key over those) add or change values of every node, of ``lerf_trainer`` and of
    ``lerf_query`` (a section only when given)."""
    from lerf_ros.ros.params import write_params_file

    sections = {
        "/**": _merged(
            {
                "preset": "tiny",
                "output_dir": str(output_dir),
                "world_frame": "map",
                "teacher": {"kind": "ground_truth", "scene_dir": str(scene_dir)},
                "trainer": {"checkpoint_every": 0},
                "keyframes": {"min_keyframes_to_train": 2},
            },
            common,
        ),
        "lerf_trainer": _merged({"pose_source": "pose", "status_rate_hz": 5.0}, trainer),
    }
    if query is not None:
        sections["lerf_query"] = dict(query)
    write_params_file(path, sections)
    return Path(path)


def python_argv(*args: str) -> List[str]:
    """argv running this interpreter (the venv's python) with ``args``."""
    return [sys.executable, *args]


def lerf_ros_argv(*args: str) -> List[str]:
    """argv of the ``lerf-ros`` command (through ``python -m lerf_ros.cli``, no install needed)."""
    return python_argv("-m", "lerf_ros.cli", *args)


def start_process(
    argv: Sequence[str],
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[os.PathLike] = None,
    log_path: Optional[os.PathLike] = None,
) -> subprocess.Popen:
    """Start ``argv`` in a new session (its own process group), stdout+stderr to a log file.

    The returned Popen has ``log_path`` (str) set; read it with ``process_output``.
    """
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="ros_test_", suffix=".log")
        os.close(fd)
    log = open(log_path, "wb")
    try:
        p = subprocess.Popen(
            list(argv),
            env=env if env is not None else ros_env(),
            cwd=str(cwd or REPO_ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()
    p.log_path = str(log_path)  # type: ignore[attr-defined]
    return p


def process_output(p: subprocess.Popen, tail: int = 8000) -> str:
    """The last ``tail`` characters of what the process wrote."""
    try:
        text = Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return ""
    return text[-tail:]


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def stop_process(p: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGINT) -> int:
    """Send ``sig`` to the process group and wait up to ``timeout`` s for the exit code.

    If it does not exit in time, escalates to SIGTERM, then SIGKILL (a few seconds' grace each)
    and sets ``p.escalated = True``; the code returned then is never 0 (the child's own code if it
    is non-zero, else minus the escalation signal), so a test asserting a clean exit fails.
    Already exited: returns its code.
    """
    p.escalated = False  # type: ignore[attr-defined]
    if p.poll() is not None:
        return p.returncode
    _signal_group(p, sig)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    p.escalated = True  # type: ignore[attr-defined]
    used = signal.SIGTERM
    for used in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(p, used)
        try:
            p.wait(timeout=5.0)
            break
        except subprocess.TimeoutExpired:
            continue
    return p.returncode if p.returncode not in (None, 0) else -int(used)


def spin_until(node, predicate: Callable[[], bool], timeout: float, executor=None, step: float = 0.05) -> bool:
    """Spin ``node`` (through ``executor``, or a temporary single-threaded executor on the node's
    context) until ``predicate()`` is true or ``timeout`` s pass. Returns ``predicate()``."""
    from rclpy.executors import SingleThreadedExecutor

    own = executor is None
    if own:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return bool(predicate())
            executor.spin_once(timeout_sec=step)
        return True
    finally:
        if own:
            executor.remove_node(node)
            executor.shutdown(timeout_sec=0)


def wait_for_publisher(node, topic: str, timeout: float, count: int = 1) -> bool:
    """Spin until ``topic`` has at least ``count`` publishers (discovery takes a moment)."""
    return spin_until(node, lambda: node.count_publishers(topic) >= count, timeout)


def wait_for_service(client, timeout: float) -> bool:
    """Wait for a service client's server (polls; no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.wait_for_service(timeout_sec=0.2):
            return True
    return False


def call(node, client, request, timeout: float = 60.0):
    """The response to ``request`` (``call_service``, spinning ``node``); fails the test on no answer."""
    from rclpy.executors import SingleThreadedExecutor

    from lerf_ros.ros.common import call_service

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        resp = call_service(client, request, lambda s: executor.spin_once(timeout_sec=s), timeout=timeout)
    finally:
        executor.remove_node(node)
        executor.shutdown(timeout_sec=0)
    assert resp is not None, f"no answer from {client.srv_name} within {timeout:g} s"
    return resp


def rss_mb(pid: int) -> float:
    """Resident set size of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for pid {pid}")


class Lifecycle:
    """``ros2 lifecycle get / set`` of one managed node, over DDS."""

    def __init__(self, node, target: str, proc) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self.node, self.target, self.proc = node, target, proc
        self.get_client = node.create_client(GetState, f"/{target}/get_state")
        self.change_client = node.create_client(ChangeState, f"/{target}/change_state")
        ok = spin_until(node, lambda: self.get_client.service_is_ready() or proc.poll() is not None, 120.0)
        assert ok and proc.poll() is None, process_output(proc)
        assert wait_for_service(self.change_client, 30.0)

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return call(self.node, self.get_client, GetState.Request()).current_state.label

    def set(self, transition: int, timeout: float = 120.0, exits: bool = False) -> bool:
        """Ask for ``transition`` once (a transition is not idempotent: no second request) and return
        whether it succeeded. ``exits``: the process may end right after answering."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        self.state()  # a call that may be repeated first, so the reply path is matched
        future = self.change_client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        done = lambda: future.done() or (exits and self.proc.poll() is not None)  # noqa: E731
        if not spin_until(self.node, done, timeout):
            # No reply: either the transition hangs in the node, or its reply was lost on the way. The
            # node's state tells them apart; a hang (or a node that no longer answers) fails the test.
            goal = {
                Transition.TRANSITION_CONFIGURE: "inactive",
                Transition.TRANSITION_CLEANUP: "unconfigured",
                Transition.TRANSITION_ACTIVATE: "active",
                Transition.TRANSITION_DEACTIVATE: "inactive",
            }.get(transition)
            state = self.state()
            assert goal is not None and state == goal, (
                f"{self.target}: no answer to transition {transition} within {timeout:g} s, state {state!r}\n"
                + process_output(self.proc)
            )
            print(f"{self.target}: the reply to transition {transition} was lost; the node is {state}")
            return True
        if not future.done():
            return False
        return bool(future.result().success)
