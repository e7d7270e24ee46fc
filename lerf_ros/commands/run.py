"""`lerf-ros run`: start the trainer and query nodes from a params YAML without the launch system.

Equivalent to ``ros2 launch lerf_ros lerf.launch.py`` on machines that have rclpy from PyPI but no
``ros2`` command line: the same executables, the same YAML, the same remappings.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARAMS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "config", "lerf.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params-file", default=DEFAULT_PARAMS, help="ROS parameters YAML (default: config/lerf.yaml)")
    p.add_argument("--preset", help="override the preset (tiny, lerf-lite, lerf, lerf-big)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--world-frame", help="override world_frame")
    p.add_argument("--separate-processes", action="store_true",
                   help="run the query node as its own process (it then loads the trainer's checkpoints)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="topic remapping, e.g. image:=/camera/color/image_raw (repeatable)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra parameter override, e.g. query.threshold:=0.6 (repeatable)")


def ros_args(args: argparse.Namespace) -> list:
    out = ["--ros-args", "--params-file", args.params_file]
    for name, value in (("preset", args.preset), ("output_dir", args.output_dir), ("world_frame", args.world_frame)):
        if value:
            out += ["-p", f"{name}:={value}"]
    for item in args.param:
        out += ["-p", item]
    for item in args.remap:
        out += ["-r", item]
    return out


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.params_file):
        print(f"params file not found: {args.params_file}", file=sys.stderr)
        return 2
    extra = ros_args(args)
    if not args.separate_processes:
        from lerf_ros.ros.lerf_node import main

        return main([sys.argv[0]] + extra)
    procs = [subprocess.Popen([sys.executable, "-m", f"lerf_ros.ros.{n}"] + extra)
             for n in ("trainer_node", "query_node")]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(subprocess.signal.SIGINT)
        codes = [p.wait(timeout=30) for p in procs]
    return max(codes)
