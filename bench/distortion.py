"""Lens distortion: held-out PSNR of a clean scene against the same scene seen through a distorting
lens, trained with the distortion modelled and with it ignored.

    python bench/distortion.py [--steps 600] [--threads 1] [--out bench/results/distortion.json]

The synthetic tabletop scene (``tiny`` preset, ground-truth teacher, every 8th frame held out) is
rendered three ways for training:

- ``clean``: pinhole images (the scene as ``make_scene`` renders it);
- ``distorted_handled``: every raw pixel of a distorting lens rendered exactly, by casting the
  pixel's own undistorted ray into the scene geometry (no resampling, so the ground truth is exact
  at every pixel: ``lerf_ros.data.synthetic.apply_conditions`` with a lens), and the frames carry
  their ``Distortion``: training rays go through its inverse;
- ``distorted_ignored``: the same raw images, frames without the distortion (what the package did
  before: camera_info ``D`` was dropped).

All three use the scene bounds of the clean frames and the same seed and steps. Held-out PSNR is
measured on clean pinhole renders of the held-out poses against the pinhole ground truth, so all
three answer the same question: how well was the scene learnt. For each lens model the JSON also
records how far (pixels) ignoring the distortion moves rays at most.

``bench/real_cameras.py`` measures the same for all three lens models next to the other real-camera
conditions (shorter runs); this script is the longer, lens-only run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from bench_model import heldout_psnr  # noqa: E402  (bench/, the script's own folder)

from lerf_ros.config import preset  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.data.synthetic.conditions import DEFAULT_LENSES, Conditions  # noqa: E402
from lerf_ros.data.synthetic.scene import apply_conditions  # noqa: E402
from lerf_ros.mapping.rays import estimate_scene_bounds  # noqa: E402
from lerf_ros.mapping.session import Session  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402

LENSES = DEFAULT_LENSES


def train(scene, train_frames, clean_frames, bounds, steps: int, seed: int) -> dict:
    center, scale = bounds
    cfg = preset("tiny").override(
        {
            "device": "cpu",
            "seed": seed,
            "teacher.kind": "ground_truth",
            "model.auto_bounds": False,
            "model.scene_center": center,
            "model.scene_scale": scale,
        }
    )
    teacher = GroundTruthTeacher(scene, clip_dim=64, dino_dim=16)
    session = Session(cfg, teacher, online=False, log=lambda level, text: None)
    for i, f in enumerate(train_frames):
        if i % 8 != 0:
            session.add(f)
    trainer = session.ensure_model()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    seconds = time.perf_counter() - t0
    return {"heldout_psnr": round(heldout_psnr(trainer, clean_frames), 2), "train_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--height", type=int, default=72)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--lenses", default=",".join(LENSES), help="comma-separated: " + ", ".join(LENSES))
    ap.add_argument("--out", default="bench/results/distortion.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scene = make_scene(seed=0, width=args.width, height=args.height, n_frames=args.frames, hfov_deg=70.0)
    clean = list(scene.frames)
    bounds = estimate_scene_bounds(clean)
    results = {
        "scene": {"width": args.width, "height": args.height, "frames": args.frames, "hfov_deg": 70.0, "seed": 0},
        "preset": "tiny",
        "steps": args.steps,
        "threads": args.threads,
        "evaluation": "held-out (every 8th) pinhole renders against the clean pinhole ground truth",
        "clean": train(scene, clean, clean, bounds, args.steps, 0),
        "lenses": {},
    }
    print(f"clean: {results['clean']}", flush=True)
    for name in args.lenses.split(","):
        dist = LENSES[name]
        raw = apply_conditions(scene, Conditions(distortion=dist)).frames
        ignored = [dataclasses.replace(f, distortion=None) for f in raw]
        row = {
            "model": dist.model,
            "coefficients": dist.as_dict(),
            "max_ray_shift_px_if_ignored": round(dist.max_displacement_px(clean[0].K, args.width, args.height), 1),
            "distorted_handled": train(scene, raw, clean, bounds, args.steps, 0),
            "distorted_ignored": train(scene, ignored, clean, bounds, args.steps, 0),
        }
        row["handled_minus_clean_db"] = round(
            row["distorted_handled"]["heldout_psnr"] - results["clean"]["heldout_psnr"], 2
        )
        results["lenses"][name] = row
        print(f"{name}: {row}", flush=True)
        write(args.out, results)  # after each lens: a long run interrupted keeps what it measured
    print(f"wrote {args.out}")


def write(path: str, results: dict) -> None:
    """Write the results JSON (the folder is created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
