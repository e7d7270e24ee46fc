"""Real cameras: a clean synthetic scene against the same scene as a real camera delivers it (lens
distortion of each model, pose noise and drift, exposure and white-balance changes), trained with
the condition handled and not handled.

    python bench/real_cameras.py [--quick] [--seeds 17,23] [--steps 300] [--threads 2]

For each seed (fresh scenes: the main benchmark uses seeds 0 to 4) the scene is made once
(``lerf_ros.data.synthetic``, ground-truth teacher, ``tiny`` preset, every 8th frame held out), and
each condition is applied to it with ``apply_conditions`` (seeded from the scene seed, the ground
truth kept clean). Each condition is trained three ways, the same seed and steps for all:

- ``clean``: the clean frames, handling off (and on, to compare against the handled rows);
- ``not handled``: the corrupted frames with every handling off: the lens ignored (frames without
  their ``distortion``), ``trainer.pose_refinement`` off, ``model.appearance_dim`` 0;
- ``handled``: the corrupted frames with every handling on: the lens modelled, pose refinement on,
  the appearance embedding on (the package's defaults).

Every row is measured against the clean ground truth: held-out PSNR of renders at the true poses
against the clean pinhole images (``bench_model.heldout_psnr``), 3D localization and best-grasp
validity from ``lerf_ros.bench.evaluate.evaluate_snapshot`` (names only, no 2D views, no physics),
and for the pose condition the camera pose error of the training keyframes against the ground truth
before (the input poses) and after refinement (the corrected poses), raw and after the best rigid
alignment of the camera centres (the world of a refined map may sit slightly off the truth as a
whole). Training rays/s with every handling on against every handling off is timed on the clean
scene in alternating blocks of steps (two trainers, so a change of machine load hits both).

Results: ``bench/results/real_cameras.json`` and ``.md`` (``--out`` changes the stem).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import heldout_psnr  # noqa: E402  (bench/, the script's own folder)

from lerf_ros.bench.evaluate import evaluate_snapshot  # noqa: E402
from lerf_ros.bench.machine import Progress, machine_info  # noqa: E402
from lerf_ros.bench.offline import train_offline  # noqa: E402
from lerf_ros.bench.report import plain  # noqa: E402
from lerf_ros.bench.settings import BenchSettings, build_config  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.data.synthetic.conditions import DEFAULT_LENSES, Conditions  # noqa: E402
from lerf_ros.data.synthetic.scene import apply_conditions  # noqa: E402
from lerf_ros.geometry.poses import pose_distance  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402

CONDITIONS: Dict[str, Conditions] = {
    "poses": Conditions(pose_noise_m=0.02, pose_noise_deg=1.0, pose_drift_m=0.05),
    "exposure": Conditions(exposure_stops=1.0, white_balance_stops=0.2),
    "plumb_bob": Conditions(distortion=DEFAULT_LENSES["plumb_bob"]),
    "equidistant": Conditions(distortion=DEFAULT_LENSES["equidistant"]),
    "rational_polynomial": Conditions(distortion=DEFAULT_LENSES["rational_polynomial"]),
}
"""The conditions measured: each lens model, pose noise (2 cm and 1 degree per axis per frame) plus a
5 cm drift, exposure within +-1 stop plus white balance within +-0.2 stops."""

HFOV = 70.0
"""Horizontal field of view of the scenes (degrees): wide enough for the lenses to matter."""

HANDLING_OFF = {"trainer.pose_refinement": False, "model.appearance_dim": 0}
"""Overrides that switch every handling off (the lens is ignored by dropping it from the frames)."""

TARGETS = {
    "distortion": "handled within 0.5 dB PSNR and 2 points of 3D localization of clean",
    "poses": "handled within 1.5 dB and 3 points of clean; refined poses closer to the truth "
    "(translation and rotation)",
    "exposure": "handled within 1 dB of clean",
    "rays_per_s": "all handling on at most 15% slower than all off",
}


def handling_on(steps: int) -> Dict[str, Any]:
    """Overrides that switch every handling on: the package's defaults for pose refinement and the
    appearance embedding (the lens is modelled when the frames carry it); the pose warm-up is cut to
    a third of a run shorter than three times the default warm-up (else refinement would never start)."""
    from lerf_ros.config import preset

    cfg = preset("tiny")
    return {
        "trainer.pose_refinement": True,
        "trainer.pose_warmup_steps": min(int(cfg.trainer.pose_warmup_steps), steps // 3),
        "model.appearance_dim": max(int(cfg.model.appearance_dim), 8),
    }


# ---------------------------------------------------------------------------- pose errors
def rigid_alignment(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 4x4 rigid transform (no scale) best mapping points ``src`` (N, 3) onto ``dst`` (N, 3) in
    the least-squares sense (Kabsch)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    H = (src - mu_s).T @ (dst - mu_d)
    U, _, Vt = np.linalg.svd(H)
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ S @ U.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = mu_d - R @ mu_s
    return T


def pose_errors(est: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """Camera pose error of ``est`` (N, 4, 4) against ``truth``: mean and max translation (cm) and
    rotation (degrees), raw and after the best rigid alignment of the camera centres."""
    out: Dict[str, float] = {}
    for name, poses in (("raw", est), ("aligned", rigid_alignment(est[:, :3, 3], truth[:, :3, 3]) @ est)):
        dt, da = pose_distance(poses, truth)
        out[f"{name}_translation_cm_mean"] = float(100 * dt.mean())
        out[f"{name}_translation_cm_max"] = float(100 * dt.max())
        out[f"{name}_rotation_deg_mean"] = float(np.degrees(da).mean())
        out[f"{name}_rotation_deg_max"] = float(np.degrees(da).max())
    return out


def refined_poses(trainer, n: int) -> np.ndarray:
    """The corrected camera-to-world poses (n, 4, 4) of the ``n`` keyframes added to a fresh session,
    in the order they were added (keys 0 .. n-1; ``Trainer.keyframe_poses``)."""
    poses = dict(trainer.keyframe_poses())
    missing = [k for k in range(n) if k not in poses]
    if missing:
        raise RuntimeError(f"keyframes {missing} are no longer stored: the pose errors would not be comparable")
    return np.stack([np.asarray(poses[k], np.float64) for k in range(n)])


# ---------------------------------------------------------------------------- one run
def run_one(scene, truth_scene, teacher, overrides: Dict[str, Any], settings: BenchSettings, log) -> Dict[str, Any]:
    """Train on ``scene``'s frames with ``overrides``, evaluate against ``truth_scene`` (the clean
    ground truth). Returns the row's numbers."""
    st = dataclasses.replace(settings, overrides={**settings.overrides, **overrides})
    cfg = build_config(st)
    progress = Progress(False)
    trainer, off = train_offline(scene, cfg, teacher, st, 1e9, progress, lambda text: None)
    t0 = time.perf_counter()
    psnr = heldout_psnr(trainer, truth_scene.frames)
    ev = evaluate_snapshot(
        truth_scene, trainer.snapshot(), cfg, teacher, st, progress, with_2d=False, with_physics=False
    )
    m = ev["metrics"]
    row: Dict[str, Any] = {
        "heldout_psnr": round(psnr, 2),
        "loc3d_accuracy_name": m["loc3d_accuracy_name"],
        "grasp_valid_rate": m["grasp_valid_rate"],
        "steps": off["steps"],
        "train_s": round(off["train_s"], 1),
        "rays_per_s": round(off["rays_per_s"]),
        "eval_s": round(time.perf_counter() - t0, 1),
        "wrong": [o["name"] for o in ev["objects"] if not o["correct"]],
    }
    if scene.ground_truth_poses is not None:
        train_idx = [i for i in range(len(scene.frames)) if i % st.holdout_every != 0]
        frames = [scene.frames[i] for i in train_idx]
        truth = scene.ground_truth_poses[train_idx]
        row["pose_error_input"] = pose_errors(np.stack([f.c2w for f in frames]), truth)
        if cfg.trainer.pose_refinement:
            row["pose_error_refined"] = pose_errors(refined_poses(trainer, len(frames)), truth)
    log(
        f"    PSNR {row['heldout_psnr']:.2f} dB, 3D {row['loc3d_accuracy_name']:.0%}, "
        f"grasp valid {row['grasp_valid_rate']:.0%}, {row['rays_per_s']} rays/s, "
        f"{row['train_s']:.0f} s training + {row['eval_s']:.0f} s evaluation"
    )
    return row


def time_handling(scene, teacher, settings: BenchSettings, on: Dict[str, Any], steps: int, block: int = 10):
    """Training rays/s with every handling on and every handling off on ``scene``, measured in
    alternating blocks of ``block`` steps after a warm-up. Returns a dict."""
    from lerf_ros.mapping.session import Session

    trainers = {}
    for name, ov in (("off", HANDLING_OFF), ("on", on)):
        cfg = build_config(dataclasses.replace(settings, overrides={**settings.overrides, **ov}))
        session = Session(cfg, teacher, online=False, log=lambda level, text: None)
        for i, f in enumerate(scene.frames):
            if i % settings.holdout_every:
                session.add(f)
        trainers[name] = (session, session.ensure_model(), cfg.trainer.rays_per_batch)
    seconds = {"off": 0.0, "on": 0.0}
    done = {"off": 0, "on": 0}
    for session, _, _ in trainers.values():
        for _ in range(5):  # warm-up
            session.step()
    while min(done.values()) < steps:
        for name, (session, _, _) in trainers.items():
            t0 = time.perf_counter()
            for _ in range(block):
                session.step()
            seconds[name] += time.perf_counter() - t0
            done[name] += block
    rps = {k: done[k] * trainers[k][2] / seconds[k] for k in seconds}
    return {
        "steps_each": steps,
        "block": block,
        "rays_per_s_all_off": round(rps["off"]),
        "rays_per_s_all_on": round(rps["on"]),
        "slowdown_pct": round(100 * (1 - rps["on"] / rps["off"]), 1),
    }


# ---------------------------------------------------------------------------- report
def fmt(x: Any, kind: str = "") -> str:
    if x is None:
        return "-"
    if kind == "pct":
        return f"{100 * x:.0f}%"
    if kind == "db":
        return f"{x:.2f}"
    return str(x)


def markdown(res: Dict[str, Any]) -> str:
    lines = [
        "# Real cameras: clean vs corrupted vs handled",
        "",
        f"`{res['command']}`: {res['scene']['width']}x{res['scene']['height']}, {res['scene']['frames']} frames "
        f"(every {res['holdout_every']}th held out), hfov {res['scene']['hfov_deg']} deg, preset tiny, "
        f"{res['steps']} steps, ground-truth teacher, {res['threads']} threads; {res['total_s']:.0f} s in all.",
        "Held-out PSNR: renders at the true poses against the clean pinhole images. 3D localization: the "
        "most relevant point of each object's name inside the object. Grasp: best grasp geometrically valid.",
        "",
    ]
    for seed, rows in res["seeds"].items():
        lines += [
            f"## Seed {seed}",
            "",
            "| condition | variant | held-out PSNR (dB) | vs clean (dB) | 3D localization | vs clean (points) "
            "| best grasp valid | training rays/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cond, variants in rows.items():
            label = cond
            if "max_ray_shift_px_if_ignored" in variants:
                label += f" (rays move {variants['max_ray_shift_px_if_ignored']} px if ignored)"
            for var, r in variants.items():
                if not isinstance(r, dict):
                    continue
                ref = rows["clean"]["handling on" if var in ("handled", "handling on") else "handling off"]
                d_psnr = r["heldout_psnr"] - ref["heldout_psnr"]
                d_loc = 100 * (r["loc3d_accuracy_name"] - ref["loc3d_accuracy_name"])
                lines.append(
                    f"| {label} | {var} | {fmt(r['heldout_psnr'], 'db')} | {d_psnr:+.2f} "
                    f"| {fmt(r['loc3d_accuracy_name'], 'pct')} | {d_loc:+.0f} "
                    f"| {fmt(r['grasp_valid_rate'], 'pct')} | {r['rays_per_s']} |"
                )
        pose_rows = [
            (var, r) for var, r in rows.get("poses", {}).items() if "pose_error_input" in r or "pose_error_refined" in r
        ]
        if pose_rows:
            lines += [
                "",
                "| camera pose error (training keyframes) | translation mean / max (cm) | rotation mean / max (deg) "
                "| aligned translation mean (cm) | aligned rotation mean (deg) |",
                "|---|---|---|---|---|",
            ]
            done_input = False
            for var, r in pose_rows:
                for label, key in (("input poses", "pose_error_input"), (f"refined ({var})", "pose_error_refined")):
                    e = r.get(key)
                    if e is None or (key == "pose_error_input" and done_input):
                        continue
                    done_input = done_input or key == "pose_error_input"
                    lines.append(
                        f"| {label} | {e['raw_translation_cm_mean']:.2f} / {e['raw_translation_cm_max']:.2f} "
                        f"| {e['raw_rotation_deg_mean']:.2f} / {e['raw_rotation_deg_max']:.2f} "
                        f"| {e['aligned_translation_cm_mean']:.2f} | {e['aligned_rotation_deg_mean']:.2f} |"
                    )
        lines.append("")
    t = res.get("timing")
    if t:
        lines += [
            "## Cost",
            "",
            f"Training rays/s on the clean scene, {t['steps_each']} steps each in alternating blocks of {t['block']}: "
            f"all handling off {t['rays_per_s_all_off']}, all on {t['rays_per_s_all_on']} "
            f"({t['slowdown_pct']:.1f}% slower).",
            "",
        ]
    lines += ["## Targets (issue 14)", ""] + [f"- {k}: {v}" for k, v in TARGETS.items()] + [""]
    return "\n".join(lines)


def write(stem: str, res: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as fh:
        json.dump(plain(res), fh, indent=1)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown(res))


def run_seed(seed: int, names: List[str], settings: BenchSettings, on, args, log, save) -> Dict[str, Any]:
    """Every row of one scene seed (and the rays/s comparison on its clean scene when asked);
    ``save(rows)`` is called after each row, so an interrupted run keeps what it measured."""
    clean = make_scene(
        seed=seed, width=args.width, height=args.height, n_frames=args.frames, hfov_deg=HFOV, nthreads=args.threads
    )
    teacher = GroundTruthTeacher(clean)
    log(f"seed {seed}: {len(clean.objects)} objects ({', '.join(clean.present_classes())})")
    rows: Dict[str, Any] = {"clean": {}}
    for var, ov in (("handling off", HANDLING_OFF), ("handling on", on)):
        log(f"  clean, {var}")
        rows["clean"][var] = run_one(clean, clean, teacher, ov, settings, log)
        save(rows)
    for name in names:
        cond = CONDITIONS[name]
        scene = apply_conditions(clean, cond)
        truth = scene.ground_truth_scene()
        rows[name] = {}
        ignored = scene
        if cond.lens is not None:
            ignored = dataclasses.replace(scene, frames=[dataclasses.replace(f, distortion=None) for f in scene])
            rows[name]["max_ray_shift_px_if_ignored"] = round(
                cond.lens.max_displacement_px(clean.K, args.width, args.height), 1
            )
        for var, sc, ov in (("not handled", ignored, HANDLING_OFF), ("handled", scene, on)):
            log(f"  {name}, {var}")
            rows[name][var] = run_one(sc, truth, teacher, ov, settings, log)
            save(rows)
    timing = None
    if args.timing_steps > 0:
        log(f"  rays/s, all handling on vs off ({args.timing_steps} steps each)")
        timing = time_handling(clean, teacher, settings, on, args.timing_steps)
        log(f"    {timing}")
    return {"rows": rows, "timing": timing}


def combine(paths: List[str], stem: str) -> Dict[str, Any]:
    """One result from the JSON results of runs over different seeds (same settings otherwise)."""
    docs = [json.load(open(p)) for p in paths]
    res = dict(docs[0])
    res["seeds"] = {k: v for d in docs for k, v in d["seeds"].items()}
    res["timing"] = next((d["timing"] for d in docs if d.get("timing")), None)
    res["total_s"] = sum(d["total_s"] for d in docs)
    res["combined_from"] = [d["command"] for d in docs]
    write(stem, res)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 120 steps per run")
    ap.add_argument("--seeds", default=None, help="comma-separated scene seeds (default 17,23; --quick: 17)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 200; --quick: 120)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--height", type=int, default=72)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument(
        "--timing-steps", type=int, default=60, help="steps each of the rays/s comparison (0: skip; first seed only)"
    )
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated: " + ", ".join(CONDITIONS))
    ap.add_argument("--out", default="bench/results/real_cameras", help="output stem (.json and .md)")
    ap.add_argument(
        "--combine", nargs="+", metavar="JSON", help="only merge these results (runs of other seeds) into --out"
    )
    args = ap.parse_args(argv)
    if args.combine:
        res = combine(args.combine, args.out)
        print(f"wrote {args.out}.json and {args.out}.md (seeds {', '.join(res['seeds'])})")
        return 0
    seeds = tuple(int(s) for s in (args.seeds or ("17" if args.quick else "17,23")).split(","))
    steps = args.steps or (120 if args.quick else 200)
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown:
        ap.error(f"unknown condition(s) {', '.join(unknown)} (known: {', '.join(CONDITIONS)})")
    torch.set_num_threads(args.threads)
    settings = BenchSettings(
        mode="custom",
        seeds=seeds,
        width=args.width,
        height=args.height,
        n_frames=args.frames,
        max_steps=steps,
        physics=False,
        progress=False,
        threads=args.threads,
    ).check()
    on = handling_on(steps)

    def log(text: str) -> None:
        print(text, flush=True)

    t_start = time.perf_counter()
    res: Dict[str, Any] = {
        "command": "python bench/real_cameras.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scene": {"width": args.width, "height": args.height, "frames": args.frames, "hfov_deg": HFOV},
        "holdout_every": settings.holdout_every,
        "preset": "tiny",
        "steps": steps,
        "threads": args.threads,
        "handling_on": on,
        "handling_off": HANDLING_OFF,
        "conditions": {n: CONDITIONS[n].to_json() for n in names},
        "targets": TARGETS,
        "machine": machine_info(args.threads),
        "seeds": {},
        "timing": None,
    }
    for k, seed in enumerate(seeds):
        if k > 0:
            args.timing_steps = 0  # once is enough

        def save(rows, seed=seed):
            res["seeds"][str(seed)] = rows
            res["total_s"] = time.perf_counter() - t_start
            write(args.out, res)

        out = run_seed(seed, names, settings, on, args, log, save)
        res["seeds"][str(seed)] = out["rows"]
        res["timing"] = res["timing"] or out["timing"]
        res["total_s"] = time.perf_counter() - t_start
        write(args.out, res)
    log(f"wrote {args.out}.json and {args.out}.md in {res['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
