"""Trainer and query node in one process (the default launch): the query node answers from the
trainer's in-memory snapshots, sharing its teacher (one copy of the CLIP weights).

SIGINT/SIGTERM: the query node stops first, then the trainer writes a checkpoint of its current
step; the process exits with 0 (``lerf_ros.ros.common``). Both are managed nodes
(``lerf_ros.ros.lifecycle``): with ``autostart`` false, configure lerf_trainer before lerf_query
(which shares its text encoder); the process ends when both have been shut down."""

from __future__ import annotations

from typing import List

from lerf_ros.ros.common import run_nodes
from lerf_ros.ros.query_node import QueryNode
from lerf_ros.ros.trainer_node import TrainerNode


def _build(nodes: List) -> None:
    trainer = TrainerNode()
    nodes.append(trainer)
    nodes.append(
        QueryNode(
            snapshot_provider=trainer.snapshot_provider,
            teacher_source=trainer.teacher_provider,
            cfg=trainer.cfg,
            priority=trainer.query_priority,
        )
    )


def main(args=None) -> int:
    return run_nodes(_build, args)


if __name__ == "__main__":
    raise SystemExit(main())
