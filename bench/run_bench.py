"""The benchmark's one entry point: localization, grasps, online timing and memory on synthetic scenes.

    python bench/run_bench.py --quick      # 2 small scenes, under 10 minutes on 2 CPU cores
    python bench/run_bench.py              # full mode: 5 scenes at 160x120 (wall-clock budget --budget)

Same options and results as ``lerf-ros bench`` (``lerf_ros.bench`` documents the protocol):
``bench/results/bench_quick.json`` + ``.md`` or ``bench/results/bench.json`` + ``.md``.
"""
from __future__ import annotations

import argparse
import os
import sys

# Sleeping rather than spinning OpenMP workers (a shared CPU); must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lerf_ros.bench import add_arguments, main_from_args  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="run_bench.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(), prog="python bench/run_bench.py")


if __name__ == "__main__":
    sys.exit(main())
