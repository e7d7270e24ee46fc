"""Trainer and query node in one process (the default launch): the query node answers from the
trainer's in-memory snapshots, sharing its teacher (one copy of the CLIP weights)."""

from __future__ import annotations

import sys

import rclpy

from lerf_ros.ros.common import spin_nodes
from lerf_ros.ros.query_node import QueryNode
from lerf_ros.ros.trainer_node import TrainerNode


def main(args=None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        trainer = TrainerNode()
        query = QueryNode(
            snapshot_provider=trainer.snapshot_provider, teacher=trainer.trainer.session.teacher, cfg=trainer.cfg
        )
    except Exception as exc:
        print(f"[lerf_ros] failed to start: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    return spin_nodes([trainer, query])


if __name__ == "__main__":
    raise SystemExit(main())
