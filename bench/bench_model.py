"""Benchmark of the LERF model on the CPU: convergence, throughput and memory per preset.

    python bench/bench_model.py [--budget 600] [--threads 2] [--out bench/results/model.json]

Measures, on a synthetic tabletop scene (160x120, 60 frames; every 8th frame held out) with the
scene's ground-truth teacher standing in for CLIP/DINO:

1. ``convergence``: the ``tiny`` preset's held-out PSNR against training wall-clock time (the
   clock stops while evaluating), full LERF training (RGB + depth + language + DINO losses).
2. ``sampler``: why proposal networks: held-out PSNR after the same training time with the
   proposal sampler and with the same number of samples per ray spread uniformly (no
   proposals), plus the cost of one refresh of an occupancy grid (density at every cell of a
   64^3 and a 128^3 grid), the work an occupancy-grid sampler repeats every few steps.
3. ``presets``: rays per second of a training step and peak resident memory (each preset in a
   fresh process), for every preset at full size on the CPU.

The numbers depend on the machine and its load: the JSON records the thread count, the CPU count
and the load average before and after.
"""

from __future__ import annotations

import os

# Worker threads that sleep instead of spinning when they wait: on a CPU shared with other
# processes (a robot's ROS nodes, or other users) spinning OpenMP threads slow PyTorch down many
# times over. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lerf_ros.config import preset  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.mapping.rays import estimate_scene_bounds  # noqa: E402
from lerf_ros.mapping.session import Session  # noqa: E402
from lerf_ros.mapping.trainer import Trainer  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402

PRESET_DIMS = {"tiny": (512, 64), "lerf-lite": (512, 384), "lerf": (512, 384), "lerf-big": (768, 384)}
"""(clip_dim, dino_dim) a real teacher gives each preset (the tiny preset trains against the
synthetic scene's ground-truth teacher: 512-d classes, 64-d instance features)."""


def load_avg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def build(scene, name: str, overrides: dict, clip_dim: int, dino_dim: int):
    """A mapping session over the scene's training frames (every 8th held out) with the scene bounds
    of all its frames; returns (its trainer, the configuration)."""
    center, scale = estimate_scene_bounds(scene.frames)
    cfg = preset(name).override(
        {
            "device": "cpu",
            "teacher.kind": "ground_truth",
            "model.auto_bounds": False,
            "model.scene_center": center,
            "model.scene_scale": scale,
            **overrides,
        }
    )
    teacher = GroundTruthTeacher(scene, clip_dim=clip_dim, dino_dim=dino_dim)
    session = Session(cfg, teacher, online=False, log=lambda level, text: None)
    for i, f in enumerate(scene.frames):
        if i % 8 != 0:
            session.add(f)
    return session.ensure_model(), cfg


def heldout_psnr(trainer: Trainer, frames) -> float:
    vals = []
    for i, f in enumerate(frames):
        if i % 8:
            continue
        r = trainer.render_view(f.K, f.c2w, f.height, f.width)
        mse = float(((r["rgb"].numpy() - f.rgb / 255.0) ** 2).mean())
        vals.append(-10.0 * math.log10(max(mse, 1e-10)))
    return float(np.mean(vals))


def train_for(trainer: Trainer, frames, budget_s: float, eval_every_s: float) -> list:
    """Train for ``budget_s`` seconds of training time; evaluate every ``eval_every_s``."""
    curve = []
    t_train, next_eval = 0.0, eval_every_s
    while t_train < budget_s:
        t0 = time.perf_counter()
        trainer.step()
        t_train += time.perf_counter() - t0
        if t_train >= next_eval or t_train >= budget_s:
            psnr = heldout_psnr(trainer, frames)
            curve.append(
                {
                    "train_seconds": round(t_train, 1),
                    "step": trainer.step_count,
                    "heldout_psnr": round(psnr, 2),
                    "load_avg_1m": load_avg()[:1],
                }
            )
            print(f"  {t_train:6.0f} s  step {trainer.step_count:5d}  held-out PSNR {psnr:.2f} dB", flush=True)
            next_eval += eval_every_s
    return curve


def occupancy_refresh_seconds(trainer: Trainer, res: int) -> float:
    """Seconds to evaluate the density at every cell centre of a res^3 grid over the contracted
    scene cube (what an occupancy-grid sampler recomputes every few steps)."""
    model = trainer.model
    lin = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    t0 = time.perf_counter()
    with torch.no_grad():
        for z in range(res):
            zz = torch.full((res * res,), float(lin[z]))
            yy, xx = torch.meshgrid(lin, lin, indexing="ij")
            pts = torch.stack([xx.reshape(-1), yy.reshape(-1), zz], dim=1)
            model.field.density(pts)
    return time.perf_counter() - t0


def _proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the process's peak-RSS watermark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def preset_child(name: str, n_rays: int, n_steps: int, threads: int) -> dict:
    """Runs in a fresh process: build the preset at full size, time training steps."""
    torch.set_num_threads(threads)
    scene = make_scene(seed=0, width=160, height=120, n_frames=16, nthreads=threads)
    clip_dim, dino_dim = PRESET_DIMS[name]
    import gc

    gc.collect()
    rss0 = _proc_status_mb("VmRSS")
    reset = _reset_peak_rss()  # the scene's ray caster peaks higher than small models: start afresh
    t0 = time.perf_counter()
    trainer, cfg = build(scene, name, {"trainer.rays_per_batch": n_rays}, clip_dim, dino_dim)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trainer.step()  # warm-up (allocates optimiser state)
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t0)
    peak = _proc_status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    trainer.snapshot()
    snapshot_s = time.perf_counter() - t0
    return {
        "preset": name,
        "snapshot_seconds": snapshot_s,
        "rays_per_batch": n_rays,
        "timed_steps": n_steps,
        "seconds_per_step_median": float(np.median(times)),
        "rays_per_second": float(n_rays / np.median(times)),
        "build_seconds": build_s,
        "parameters": int(n_params),
        "parameter_mb": n_params * 4 / 2**20,
        "peak_rss_mb": peak,
        "rss_before_model_mb": rss0,
        "peak_over_baseline_mb": peak - rss0,
        "peak_is_since_model_build": reset,
        "samples_per_ray": list(cfg.model.num_proposal_samples) + [cfg.model.num_nerf_samples],
        "lang_samples_per_ray": cfg.model.num_lang_samples,
        "clip_dim": clip_dim,
        "dino_dim": dino_dim,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds of the convergence run")
    ap.add_argument("--eval-every", type=float, default=60.0, help="training seconds between evaluations")
    ap.add_argument(
        "--sampler-budget", type=float, default=150.0, help="training seconds of each sampler run (0 skips)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--preset-rays", type=int, default=1024, help="rays per step when timing presets")
    ap.add_argument("--preset-steps", type=int, default=3, help="timed steps per preset")
    ap.add_argument(
        "--presets", default="tiny,lerf-lite,lerf,lerf-big", help="comma-separated presets to time ('' skips)"
    )
    ap.add_argument("--skip-convergence", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "model.json"))
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the sections of an existing --out file that this run does not measure",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(preset_child(args.child, args.preset_rays, args.preset_steps, args.threads)))
        return 0

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_avg_start": load_avg(),
            "note": "shared CPU: other users' jobs ran at the same time; timings are noisy and "
            "pessimistic compared with a dedicated machine",
        },
        "scene": {
            "generator": "lerf_ros.data.synthetic.make_scene",
            "seed": 0,
            "width": 160,
            "height": 120,
            "frames": 60,
            "heldout": "every 8th frame (8 views)",
            "teacher": "ground-truth teacher of the synthetic scene (not CLIP/DINO)",
        },
    }
    scene = make_scene(seed=0, width=160, height=120, n_frames=60, nthreads=args.threads)

    if not args.skip_convergence:
        print(f"convergence: tiny preset, {args.budget:.0f} s of training on {args.threads} thread(s)", flush=True)
        trainer, cfg = build(scene, "tiny", {}, 512, 64)
        curve = train_for(trainer, scene.frames, args.budget, args.eval_every)
        hit = next((c for c in curve if c["heldout_psnr"] >= 25.0), None)
        result["convergence"] = {
            "preset": "tiny",
            "rays_per_batch": cfg.trainer.rays_per_batch,
            "curve": curve,
            "final_heldout_psnr": curve[-1]["heldout_psnr"],
            "seconds_to_25db": hit["train_seconds"] if hit else None,
            "steps_to_25db": hit["step"] if hit else None,
            "mean_rays_per_second": trainer.step_count * cfg.trainer.rays_per_batch / args.budget,
        }

    if args.sampler_budget > 0:
        samp = {}
        for label, over in (
            ("proposal", {}),
            (
                "uniform",
                {
                    "model.num_proposal_samples": [],
                    "model.num_nerf_samples": sum(preset("tiny").model.num_proposal_samples)
                    + preset("tiny").model.num_nerf_samples,
                },
            ),
        ):
            print(f"sampler '{label}': {args.sampler_budget:.0f} s of training", flush=True)
            trainer, cfg = build(scene, "tiny", over, 512, 64)
            curve = train_for(trainer, scene.frames, args.sampler_budget, args.sampler_budget)
            samp[label] = {
                "samples_per_ray": list(cfg.model.num_proposal_samples) + [cfg.model.num_nerf_samples],
                "steps": trainer.step_count,
                "heldout_psnr": curve[-1]["heldout_psnr"],
            }
            if label == "proposal":
                samp["occupancy_grid_refresh_seconds"] = {
                    str(r): round(occupancy_refresh_seconds(trainer, r), 3) for r in (64, 128)
                }
                t0 = time.perf_counter()
                for _ in range(5):
                    trainer.step()
                samp["proposal_step_seconds"] = round((time.perf_counter() - t0) / 5, 3)
        result["sampler"] = samp

    names = [n for n in args.presets.split(",") if n]
    if names:
        result["presets"] = {}
        for name in names:
            print(
                f"preset {name}: timing {args.preset_steps} steps of {args.preset_rays} rays (fresh process)",
                flush=True,
            )
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                name,
                "--threads",
                str(args.threads),
                "--preset-rays",
                str(args.preset_rays),
                "--preset-steps",
                str(args.preset_steps),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                result["presets"][name] = {"error": proc.stderr.strip().splitlines()[-1:]}
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            result["presets"][name] = rec
            print(
                f"  {rec['rays_per_second']:.0f} rays/s, peak RSS {rec['peak_rss_mb']:.0f} MB "
                f"({rec['peak_over_baseline_mb']:.0f} MB over the process before the model), "
                f"{rec['parameters'] / 1e6:.1f} M parameters",
                flush=True,
            )
        result["presets_gpu"] = "not measured: no GPU on this machine (the tinycudann path needs CUDA)"
    result["machine"]["load_avg_end"] = load_avg()
    if args.merge and os.path.isfile(args.out):
        with open(args.out) as fh:
            old = json.load(fh)
        machine = {
            **old.get("machine", {}),
            "load_avg_end_" + "+".join(k for k in result if k not in ("machine", "scene")): result["machine"][
                "load_avg_end"
            ],
        }
        old.update({k: v for k, v in result.items() if k not in ("machine", "scene")})
        old["machine"] = machine
        result = old
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
