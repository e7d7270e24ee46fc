"""The benchmark's command line (``lerf-ros bench``): its options, the settings they give, and the run."""

from __future__ import annotations

import argparse
import sys

from lerf_ros.bench.run import run_benchmark
from lerf_ros.bench.settings import BenchSettings, build_config, mode_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the benchmark's options (those of ``lerf-ros bench``) to ``p``."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="quick mode: 2 small scenes, under 10 minutes on 2 CPU cores (default: full mode, >= 5 scenes at 160x120)",
    )
    p.add_argument("--out", default="bench/results", help="results folder (default bench/results)")
    p.add_argument("--seeds", type=int, nargs="+", help="scene seeds (default: 0 1 quick, 0..4 full)")
    p.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="wall-clock budget of the run (default: 420 quick, 4800 full); training shrinks to fit",
    )
    p.add_argument("--steps", type=int, help="offline training steps per scene (default: 600 quick, 1200 full)")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("W", "H"), help="image size (default: 96 72 quick, 160 120 full)"
    )
    p.add_argument("--frames", type=int, help="frames per scene (default: 30 quick, 60 full)")
    p.add_argument("--stream-frames", type=int, help="frames streamed before the memory reading (default 1000)")
    p.add_argument("--online-max", type=float, metavar="SECONDS", help="longest online phase")
    p.add_argument(
        "--curve",
        type=int,
        nargs="+",
        default=[],
        metavar="STEP",
        help="also evaluate the offline snapshots at these steps (3D queries): a learning curve",
    )
    p.add_argument("--no-online", action="store_true", help="skip the online phase (streaming, timing, memory)")
    p.add_argument("--no-physics", action="store_true", help="skip executing the grasps in physics (MuJoCo)")
    p.add_argument("--preset", default="tiny", help="configuration preset (default tiny)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override with a dotted key, e.g. query.threshold=0.6 (repeatable)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The settings of the mode the arguments name, with their explicit options applied; checked."""
    import yaml

    s = mode_settings("quick" if args.quick else "full")
    if args.seeds:
        s.seeds = tuple(args.seeds)
    if args.budget is not None:
        s.budget_s = float(args.budget)
    if args.steps is not None:
        s.max_steps = int(args.steps)
    if args.size:
        s.width, s.height = int(args.size[0]), int(args.size[1])
    if args.frames is not None:
        s.n_frames = int(args.frames)
    if args.stream_frames is not None:
        s.stream_frames = int(args.stream_frames)
    if args.online_max is not None:
        s.online_max_s = float(args.online_max)
        s.online_min_s = min(s.online_min_s, s.online_max_s)
    s.preset = args.preset
    s.curve_steps = tuple(sorted(set(int(c) for c in args.curve)))
    s.online = not args.no_online
    s.physics = s.physics and not args.no_physics
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        s.overrides[key.strip()] = yaml.safe_load(value.strip())
    s.threads = int(args.threads)
    s.progress = not args.no_progress
    return s.check()


def main_from_args(args: argparse.Namespace, prog: str = "lerf-ros bench") -> int:
    """Run from parsed arguments; returns the exit code (2 for bad arguments). ``prog`` names the
    command in the results (followed by this process's arguments)."""
    from lerf_ros.config import ConfigError

    try:
        settings = settings_from_args(args)
        build_config(settings)  # fail early on a bad preset or override
    except (ValueError, ConfigError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        argv = argv[1:]
    run_benchmark(settings, args.out, command=" ".join([prog] + argv))
    return 0
