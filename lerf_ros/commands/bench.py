"""``lerf-ros bench``: the benchmark (localization, grasps, online timing, memory) on synthetic scenes.

    lerf-ros bench --quick                 # 2 small scenes, under 10 minutes on 2 CPU cores
    lerf-ros bench [--seeds 0 1 2 3 4] [--budget 3600] [--out bench/results]

Writes ``bench_quick.json`` / ``bench_quick.md`` (quick) or ``bench.json`` / ``bench.md`` (full) into
``--out``. The metrics and the protocol are described in ``lerf_ros.bench``; the teacher is the
synthetic scene's ground truth, not CLIP. This is the benchmark's only entry point.
"""

from __future__ import annotations

import argparse
import os

# PyTorch's worker threads sleep instead of spinning while they wait (a shared CPU); effective
# only before torch starts its thread pool, i.e. before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (``lerf_ros.bench.cli``)."""
    from lerf_ros.bench.cli import add_arguments as bench_arguments

    bench_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; the exit code (2 for bad arguments)."""
    from lerf_ros.bench.cli import main_from_args

    return main_from_args(args, prog="lerf-ros bench")
