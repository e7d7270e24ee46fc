"""The `lerf-ros` command.

Each subcommand lives in ``lerf_ros/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``, imported only when that subcommand runs (so ``lerf-ros --help`` is fast and
ROS-free subcommands never import rclpy).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("lerf_ros.commands.demo", "end-to-end demo: nodes + replayed synthetic scene + queries"),
    "run": ("lerf_ros.commands.run", "start the trainer and query nodes from a params YAML (no ros2 launch needed)"),
    "scene": ("lerf_ros.commands.scene", "render a synthetic tabletop scene with ground truth to a folder"),
    "replay": (
        "lerf_ros.commands.replay",
        "publish a posed-frame source (scene, transforms.json, rosbag2) as a live stream",
    ),
    "train": ("lerf_ros.commands.train", "train a LERF offline from a posed-frame source"),
    "query": ("lerf_ros.commands.query", "query a checkpoint (offline) or a running /lerf/query service"),
    "bench": ("lerf_ros.commands.bench", "run the benchmark and write JSON + Markdown results"),
    "weights": (
        "lerf_ros.commands.weights",
        "fetch and verify the CLIP/DINO weights a preset needs (--check: what is missing; --from: import a file)",
    ),
    "export": (
        "lerf_ros.commands.export",
        "write a checkpoint's map as files other tools open: coloured surface cloud, mesh, cameras",
    ),
}


def build_parser(with_subcommand_args: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lerf-ros", description="Language Embedded Radiance Fields for ROS 2 robots.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == with_subcommand_args:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in COMMANDS:
        parser = build_parser()
        if name is not None:
            parser.error(f"unknown command '{name}'")
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    args = build_parser(with_subcommand_args=name).parse_args(argv)
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
