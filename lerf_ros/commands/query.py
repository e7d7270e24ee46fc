"""`lerf-ros query`: ask a trained field where something is.

Two ways:
- offline, from a checkpoint file or folder (``--checkpoint``): loads the field, builds the teacher's
  text encoder from the checkpoint's config (or ``--scene`` for a synthetic scene's ground truth),
  and answers with the same engine the query node uses;
- online, from a running ``/lerf/query`` service (``--service``), over ROS; ``--frame-id`` asks for the
  answer in another TF frame (stamped, in a moving frame, with the time of the transform used).

Prints the answer and the grasps; ``--ply`` writes the relevancy cloud.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from lerf_ros.commands import checkpoint_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="+", help="what to look for (several queries: several arguments)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint",
        help="a checkpoint file, or a folder of checkpoints (the highest step is used: step-*.ckpt or final.ckpt)",
    )
    src.add_argument("--service", action="store_true", help="call the running /lerf/query service")
    p.add_argument("--scene", help="synthetic scene folder (ground-truth teacher) instead of the checkpoint's teacher")
    p.add_argument("--negatives", nargs="*", default=[], help="extra negative phrases")
    p.add_argument("--threshold", type=float, default=0.0, help="relevancy threshold (0 = default)")
    p.add_argument("--max-grasps", type=int, default=0, help="number of grasps (0 = default)")
    p.add_argument("--ply", help="write the relevancy cloud of each query to this folder as PLY")
    p.add_argument(
        "--frame-id",
        default="",
        help="with --service: the frame of the answer's cloud and grasps (a TF frame such as base_link; "
        "default: the world frame). In a moving frame the answer is stamped with the time of the transform used",
    )


def _print(text: str, r, ms: float, frame: str = "") -> None:
    """One answer (a ``lerf_ros.query.QueryResult``, computed here or by the service) and its grasps;
    ``frame``: where its positions are (printed when given)."""
    from lerf_ros.geometry.poses import matrix_to_quat

    print(f"'{text}': {'ok' if r.success else 'no answer'} ({ms:.0f} ms, model step {r.step}): {r.message}")
    if frame:
        print(f"  positions in {frame}")
    for i, g in enumerate(r.grasps):
        pos, quat = g.pose[:3, 3], matrix_to_quat(g.pose)
        print(
            f"  grasp {i + 1}: position ({pos[0]:+.3f}, {pos[1]:+.3f}, {pos[2]:+.3f}) m, quaternion xyzw "
            f"({quat[0]:+.3f}, {quat[1]:+.3f}, {quat[2]:+.3f}, {quat[3]:+.3f}), width {g.width * 100:.1f} cm, "
            f"score {g.score:.2f}"
        )


def write_relevancy_ply(path: str, xyz: np.ndarray, rel: np.ndarray) -> None:
    """A relevancy cloud as PLY, coloured by relevancy (dark blue -> yellow) for any viewer, with the
    relevancy itself as a float property (``lerf_ros.query.export.write_relevancy_ply``)."""
    from lerf_ros.query.export import write_relevancy_ply as write

    write(str(path), xyz, rel)


def _write_ply(folder: str, text: str, xyz: np.ndarray, rel: np.ndarray) -> None:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "".join(c if c.isalnum() else "_" for c in text)[:40] + ".ply")
    write_relevancy_ply(path, xyz, rel)
    print(f"  wrote {path}")


def _offline(args) -> int:
    from lerf_ros.mapping.checkpoint import (
        CheckpointError,
        config_of,
        load_snapshot,
        read_checkpoint,
    )
    from lerf_ros.query import QueryEngine
    from lerf_ros.teachers import make_teacher

    if args.frame_id:
        print("--frame-id needs --service: frames other than the world frame come from the robot's TF", file=sys.stderr)
        return 2
    path = checkpoint_argument(args.checkpoint)
    if path is None:
        return 2
    try:
        payload = read_checkpoint(path)
        cfg = config_of(payload)
        snap = load_snapshot(path, payload=payload)
    except (CheckpointError, OSError, KeyError) as exc:
        print(f"cannot load the checkpoint: {exc}", file=sys.stderr)
        return 2
    tcfg = cfg.teacher
    if args.scene:
        tcfg = cfg.override({"teacher.kind": "ground_truth", "teacher.scene_dir": args.scene}).teacher
    teacher = make_teacher(tcfg, device=cfg.device)
    print(f"field: {path} (step {snap.step}); text encoder: {teacher.description}")
    engine = QueryEngine(cfg.query, teacher.encode_text)
    engine.set_snapshot(snap)
    code = 0
    for text in args.text:
        t0 = time.perf_counter()
        r = engine.query(text, negatives=args.negatives, threshold=args.threshold, max_grasps=args.max_grasps)
        ms = 1000 * (time.perf_counter() - t0)
        _print(text, r, ms)
        if args.ply and r.success:
            _write_ply(args.ply, text, r.points, r.relevancy)
        code = code or (0 if r.success else 1)
    return code


def _online(args) -> int:
    from lerf_ros.query.request import control_character, excerpt
    from lerf_ros.ros.client import LerfClient, answer_frame, response_to_result

    # The node refuses control characters too (a NUL would not even reach it: ROS strings end there).
    for value in list(args.text) + list(args.negatives) + [args.frame_id]:
        i = control_character(value)
        if i >= 0:
            print(
                f"{excerpt(value)} holds a control character (U+{ord(value[i]):04X}): give printable text",
                file=sys.stderr,
            )
            return 2
    with LerfClient("lerf_query_cli") as client:
        if not client.wait_for_service(10.0):
            print("/lerf/query is not available (are the nodes running, on the same ROS_DOMAIN_ID?)", file=sys.stderr)
            return 2
        code = 0
        for text in args.text:
            t0 = time.perf_counter()
            resp = client.query_response(
                text,
                negatives=args.negatives,
                threshold=args.threshold,
                max_grasps=args.max_grasps,
                frame_id=args.frame_id,
                timeout=60.0,
            )
            ms = 1000 * (time.perf_counter() - t0)
            if resp is None:
                print(f"'{text}': no reply within 60 s", file=sys.stderr)
                return 2
            r = response_to_result(resp)
            frame, stamp = answer_frame(resp)
            _print(text, r, ms, f"frame '{frame}', stamp {stamp:.3f} s" if frame else "")
            if args.ply and r.success:
                _write_ply(args.ply, text, r.points, r.relevancy)
            code = code or (0 if r.success else 1)
        return code


def run(args: argparse.Namespace) -> int:
    """Answer each text from the checkpoint (``--checkpoint``) or the running service (``--service``)."""
    return _online(args) if args.service else _offline(args)
