"""The cost of the per-keyframe camera corrections: training rays/s with pose refinement and the
appearance embedding both on, against both off.

    python bench/camera_corrections_cost.py [--rounds 6] [--steps 20] [--rays 1024] [--threads 1]
        [--set KEY=VALUE ...] [--out PATH]

Both trainers live in one process on the same keyframes (``tiny`` preset, a synthetic scene with
depth, ground-truth teacher features) and take turns: each round times ``--steps`` steps of one,
then of the other, after one untimed round; the pose warm-up is 0, so every timed step learns the
pose corrections. The ratio is the median over rounds of (time on / time off), so a load change on
the machine touches both sides of a round alike; it is given for the process's CPU time (what a
shared machine disturbs least; with one thread it is the wall time of an idle machine) and for the
wall time. Results in ``bench/results/camera_corrections_cost.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from lerf_ros.config import preset  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.mapping.keyframes import KeyframeStore  # noqa: E402
from lerf_ros.mapping.rays import estimate_scene_bounds  # noqa: E402
from lerf_ros.mapping.trainer import Trainer  # noqa: E402
from lerf_ros.teachers.features import compute_frame_features  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per trainer per round")
    ap.add_argument("--rays", type=int, default=1024, help="rays per step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7, help="synthetic scene seed")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override of the 'on' trainer (repeatable), e.g. trainer.pose_update_every=1",
    )
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "camera_corrections_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    scene = make_scene(seed=args.seed, width=80, height=60, n_frames=16, nthreads=args.threads)
    center, scale = estimate_scene_bounds(scene.frames)
    base = preset("tiny").override(
        {
            "model.scene_center": center,
            "model.scene_scale": scale,
            "trainer.rays_per_batch": args.rays,
            "teacher.kind": "ground_truth",
            "trainer.pose_warmup_steps": 0,
        }
    )
    teacher = GroundTruthTeacher(scene)
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for f in scene.frames:
        store.add(f, compute_frame_features(teacher, f, base.teacher))
    on = {"trainer.pose_refinement": True, "model.appearance_dim": 8}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        on[key.strip()] = value.strip()
    configs = {
        "on": base.override(on),
        "off": base.override({"trainer.pose_refinement": False, "model.appearance_dim": 0}),
    }
    trainers = {k: Trainer(c, teacher.clip_dim, teacher.dino_dim, store) for k, c in configs.items()}
    wall = {k: [] for k in trainers}
    cpu = {k: [] for k in trainers}
    for r in range(args.rounds + 1):
        for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                trainers[name].step()
            if r > 0:  # the first round warms both up
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    rays = args.steps * args.rays

    def ratios(t):
        return [on / off for on, off in zip(t["on"], t["off"])]

    result = {
        "rays_per_step": args.rays,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "on_overrides": on,
        "rays_per_cpu_second_on": rays / statistics.median(cpu["on"]),
        "rays_per_cpu_second_off": rays / statistics.median(cpu["off"]),
        "median_cpu_time_ratio_on_over_off": statistics.median(ratios(cpu)),
        "rays_per_second_on": rays / statistics.median(wall["on"]),
        "rays_per_second_off": rays / statistics.median(wall["off"]),
        "median_wall_time_ratio_on_over_off": statistics.median(ratios(wall)),
        "cpu_time_ratios": ratios(cpu),
        "wall_time_ratios": ratios(wall),
        "device": str(trainers["on"].device),
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
