"""``lerf-ros export``: write a checkpoint's map as files other tools open.

    lerf-ros export --checkpoint PATH --out DIR [--no-mesh] [--poisson-depth 8]

``PATH`` is a checkpoint file, or a folder whose newest checkpoint is used (the rule the trainer's
resume and the query node use). Writes ``surface.ply`` (coloured surface points with normals),
``mesh.ply`` (Poisson mesh with vertex colours), ``cameras.json`` and ``cameras.ply`` (keyframe
cameras and their frustums): see ``lerf_ros.query.export``. The surface is extracted with the
checkpoint's own query settings (``--set query.voxel_size=0.005`` and the like override them).
The running trainer writes the same, plus the last answer's relevancy cloud, on ``/lerf/export``.
"""

from __future__ import annotations

import argparse
import sys

from lerf_ros.commands import checkpoint_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint file, or a folder of checkpoints (the newest: step-*.ckpt or final.ckpt)",
    )
    p.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    p.add_argument("--no-mesh", action="store_true", help="skip the Poisson mesh")
    p.add_argument(
        "--poisson-depth", type=int, default=8, help="octree depth of the Poisson mesh (finer: +1; default 8)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a query setting of the checkpoint's configuration, e.g. query.voxel_size=0.005 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint's field and write its map to ``--out``."""
    from lerf_ros.commands import key_values
    from lerf_ros.config import ConfigError
    from lerf_ros.mapping.checkpoint import (
        CheckpointError,
        config_of,
        load_snapshot,
        read_checkpoint,
    )
    from lerf_ros.query.export import ExportError, export_map

    if not 1 <= args.poisson_depth <= 12:
        print(f"--poisson-depth {args.poisson_depth}: expected 1..12", file=sys.stderr)
        return 2
    path = checkpoint_argument(args.checkpoint)
    if path is None:
        return 2
    try:
        payload = read_checkpoint(path)
        cfg = config_of(payload)
        overrides = key_values(args.set, "--set", ConfigError, prefix="query.")
        if overrides:
            cfg = cfg.override(overrides)
        snap = load_snapshot(path, payload=payload)
    except (CheckpointError, ConfigError, OSError, KeyError) as exc:
        print(f"cannot load the checkpoint: {exc}", file=sys.stderr)
        return 2
    print(f"field: {path} (step {snap.step}, {len(snap.cameras)} keyframe cameras)")
    try:
        result = export_map(snap, cfg.query, args.out, mesh=not args.no_mesh, poisson_depth=args.poisson_depth)
    except (ExportError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"exported {result.summary()}")
    for kind, file in result.files.items():
        print(f"  {kind:9s} {file}")
    return 0
