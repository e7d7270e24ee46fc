"""`lerf-ros run`: start the trainer and query nodes from a params YAML without the launch system.

Equivalent to ``ros2 launch lerf_ros lerf.launch.py`` on machines that have rclpy from PyPI but no
``ros2`` command line: the same executables, the same YAML, the same remappings, and the same rule
for overrides (``lerf_ros.ros.launch_args``): ``--preset``, ``--output-dir``, ``--world-frame``,
``--no-autostart`` and ``--param`` override the file only when given. The nodes are managed (lifecycle)
nodes: ``--no-autostart`` leaves them unconfigured for a lifecycle manager, and the command ends once
they have been shut down through their lifecycle services. The file is checked before any node starts, so an
unknown or invalid key stops the command with a message naming it.

With ``--separate-processes`` the trainer and the query node run as child processes. SIGINT or
SIGTERM to this process is forwarded to both; they are waited for (``CHILD_STOP_TIMEOUT_S``, then
killed) and the command exits with 0 when they stopped cleanly. The children also get SIGTERM if
this process dies without that chance (Linux), so none is left running. When one child ends on its
own, the other is stopped the same way and the command exits with the first one's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARAMS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "config", "lerf.yaml")

CHILD_STOP_TIMEOUT_S = 4.5
"""Seconds the children get to exit after the forwarded signal before they are killed (the whole
command stays within the 5 s that ``ros2 launch`` allows)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params-file", default=DEFAULT_PARAMS, help="ROS parameters YAML (default: config/lerf.yaml)")
    p.add_argument("--preset", help="override the file's preset (tiny, lerf-lite, lerf, lerf-big)")
    p.add_argument("--output-dir", help="override the file's output_dir")
    p.add_argument("--world-frame", help="override the file's world_frame")
    p.add_argument(
        "--no-autostart",
        dest="autostart",
        action="store_false",
        default=None,
        help="leave the managed nodes unconfigured for a lifecycle manager (ROS 2 lifecycle services "
        "/lerf_trainer/change_state, /lerf_query/change_state) instead of configuring and activating them",
    )
    p.add_argument(
        "--separate-processes",
        action="store_true",
        help="run the query node as its own process (it then loads the trainer's checkpoints)",
    )
    p.add_argument(
        "--remap",
        action="append",
        default=[],
        metavar="FROM:=TO",
        help="topic remapping, e.g. image:=/camera/color/image_raw (repeatable)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra parameter override, e.g. query.threshold:=0.6 (repeatable)",
    )


def given_arguments(args: argparse.Namespace) -> Dict[str, str]:
    """The parameter arguments given on the command line ({} when none): launch_args' input."""
    values = {"preset": args.preset, "output_dir": args.output_dir, "world_frame": args.world_frame}
    out = {k: v for k, v in values.items() if v}
    if args.autostart is False:
        out["autostart"] = "false"
    return out


def param_overrides(items: List[str]) -> Dict[str, Any]:
    """``--param NAME:=VALUE`` items as {name: value}, values read as YAML (as ROS reads ``-p``)."""
    import yaml

    from lerf_ros.config import ConfigError

    out: Dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition(":=")
        if not sep or not name.strip():
            raise ConfigError(f"--param {item!r}: expected NAME:=VALUE")
        try:
            out[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[name.strip()] = text
    return out


def ros_args(args: argparse.Namespace) -> list:
    """The ``--ros-args`` of the nodes: the params file, then only the overrides that were given."""
    out = ["--ros-args", "--params-file", args.params_file]
    for name, value in given_arguments(args).items():
        out += ["-p", f"{name}:={value}"]
    for item in args.param:
        out += ["-p", item]
    for item in args.remap:
        out += ["-r", item]
    return out


def check(args: argparse.Namespace) -> str:
    """'' when the params file and the overrides give a valid configuration, else the reason."""
    from lerf_ros.config import ConfigError
    from lerf_ros.ros.launch_args import launch_plan

    if not os.path.isfile(args.params_file):
        return f"params file not found: {args.params_file}"
    try:
        launch_plan(args.params_file, given_arguments(args), extra=param_overrides(args.param))
    except (ConfigError, OSError) as exc:
        return f"{args.params_file}: {exc}"
    return ""


def run(args: argparse.Namespace) -> int:
    problem = check(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    extra = ros_args(args)
    if not args.separate_processes:
        from lerf_ros.ros.lerf_node import main

        return main([sys.argv[0]] + extra)
    return run_children([[sys.executable, "-m", f"lerf_ros.ros.{n}"] + extra for n in ("trainer_node", "query_node")])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when this process dies (even by SIGKILL), so it is never orphaned."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass


def run_children(argvs: List[List[str]], stop_timeout: float = CHILD_STOP_TIMEOUT_S) -> int:
    """Run the processes ``argvs`` until SIGINT/SIGTERM reaches this process or one of them ends;
    then stop the others (the signal forwarded, ``stop_timeout`` s, then SIGKILL). Returns 0 after a
    requested stop in which every child exited cleanly, else the first failing child's code."""
    received: List[int] = []

    def on_signal(signum, _frame) -> None:
        if not received:
            received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: List[subprocess.Popen] = []
    try:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        for argv in argvs:
            if received:
                break
            procs.append(subprocess.Popen(argv, preexec_fn=preexec))
        first_exit: Optional[int] = None
        while not received and first_exit is None:
            time.sleep(0.1)
            first_exit = next((p.returncode for p in procs if p.poll() is not None), None)
        codes = _stop_children(procs, received[0] if received else signal.SIGINT, stop_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if first_exit is not None:  # a child ended by itself: that is the command's outcome
        return first_exit if first_exit > 0 else (128 - first_exit if first_exit < 0 else max(codes, default=0))
    failed = [c for c in codes if c not in (0, -signal.SIGINT, -signal.SIGTERM)]
    if not failed:
        return 0
    return failed[0] if failed[0] > 0 else 128 - failed[0]  # killed by a signal: the shell's 128 + N


def _stop_children(procs: List[subprocess.Popen], sig: int, timeout: float) -> List[int]:
    """Send ``sig`` to the children still running, wait up to ``timeout`` s, SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[lerf_ros] {' '.join(p.args[1:3])} did not stop within {timeout:g} s: killed", file=sys.stderr)
            p.kill()
            p.wait()
    return [p.returncode for p in procs]
