"""`lerf-ros run`: start the trainer and query nodes from a params YAML without the launch system.

Equivalent to ``ros2 launch lerf_ros lerf.launch.py`` on machines that have rclpy from PyPI but no
``ros2`` command line: the same executables, the same YAML, the same remappings, and the same rule
for overrides (``lerf_ros.ros.launch_args``): ``--preset``, ``--output-dir``, ``--world-frame`` and
``--param`` override the file only when given. The file is checked before any node starts, so an
unknown or invalid key stops the command with a message naming it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARAMS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "config", "lerf.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params-file", default=DEFAULT_PARAMS, help="ROS parameters YAML (default: config/lerf.yaml)")
    p.add_argument("--preset", help="override the file's preset (tiny, lerf-lite, lerf, lerf-big)")
    p.add_argument("--output-dir", help="override the file's output_dir")
    p.add_argument("--world-frame", help="override the file's world_frame")
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
    return {k: v for k, v in values.items() if v}


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
    procs = [
        subprocess.Popen([sys.executable, "-m", f"lerf_ros.ros.{n}"] + extra) for n in ("trainer_node", "query_node")
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(subprocess.signal.SIGINT)
        codes = [p.wait(timeout=30) for p in procs]
    return max(codes)
