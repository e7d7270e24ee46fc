"""The offline phase of the benchmark: teacher features for a scene's training frames, then a
mapping session trained for a step or time budget (``train_offline``)."""

from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np

from lerf_ros.bench.evaluate import curve_point, evaluate_snapshot
from lerf_ros.bench.machine import Progress
from lerf_ros.bench.report import fmt
from lerf_ros.bench.settings import BenchSettings, LogFn


def train_offline(scene, cfg, teacher, settings: BenchSettings, time_cap_s: float, progress: Progress, log: LogFn):
    """Teacher features for the training frames, then up to ``settings.max_steps`` steps (or
    ``time_cap_s`` seconds of training). Returns (trainer, stats dict)."""
    from lerf_ros.mapping.session import Session

    # Bounds (with ``model.auto_bounds``) come from the training keyframes, as in ``lerf-ros train``.
    session = Session(cfg, teacher, online=False, log=lambda level, text: None)
    train_idx = [i for i in range(len(scene.frames)) if i % settings.holdout_every != 0]
    teacher_times = []
    for i in train_idx:
        t0 = time.perf_counter()
        session.add(scene.frames[i])  # teacher features computed here
        teacher_times.append(time.perf_counter() - t0)
    trainer = session.ensure_model()
    warmup = min(3, settings.max_steps - 1)
    train_s = 0.0  # time in training steps only (not in learning-curve evaluations)
    wall_meas = cpu_meas = 0.0
    steps_meas = 0
    curve: List[Dict[str, Any]] = []
    bar = progress.bar(total=settings.max_steps, desc=f"train seed {scene.seed}", unit="step")
    stats: Dict[str, float] = {}
    try:
        while trainer.step_count < settings.max_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            stats = session.step()
            dt = time.perf_counter() - t0
            train_s += dt
            if trainer.step_count > warmup:
                wall_meas += dt
                cpu_meas += time.process_time() - c0
                steps_meas += 1
            bar.update(1)
            bar.set_postfix({"rays/s": f"{trainer.rays_per_second:.0f}", "psnr": f"{stats['psnr']:.1f}"}, refresh=False)
            if trainer.step_count in settings.curve_steps and trainer.step_count < settings.max_steps:
                ev = evaluate_snapshot(scene, trainer.snapshot(), cfg, teacher, settings, progress, with_2d=False)
                curve.append(curve_point(trainer.step_count, train_s, ev))
                log(
                    f"seed {scene.seed} step {trainer.step_count}: 3D names "
                    f"{fmt(curve[-1]['loc3d_accuracy_name'], 'pct')}, wrong: {', '.join(curve[-1]['wrong']) or '-'}"
                )
            if train_s >= time_cap_s:
                break
    finally:
        bar.close()
    rays = cfg.trainer.rays_per_batch
    if steps_meas > 0:
        rps, rpc = steps_meas * rays / wall_meas, steps_meas * rays / max(cpu_meas, 1e-9)
    else:
        rps, rpc = trainer.step_count * rays / max(train_s, 1e-9), None
    out = {
        "steps": trainer.step_count,
        "train_s": train_s,
        "rays_per_s": rps,
        "rays_per_cpu_s": rpc,
        "scene_center": list(session.bounds[0]),
        "scene_scale": session.bounds[1],
        "final_batch_psnr": stats.get("psnr"),
        "final_loss": stats.get("loss"),
        "train_frames": len(train_idx),
        "teacher_s_per_keyframe": float(np.mean(teacher_times)),
        "teacher_s_per_keyframe_max": float(np.max(teacher_times)),
        "stopped_by": ("steps" if trainer.step_count >= settings.max_steps else "time budget"),
        "curve": curve,
    }
    log(
        f"seed {scene.seed}: {trainer.step_count} steps in {train_s:.0f} s ({out['stopped_by']}), "
        f"{rps:.0f} rays/s"
        + (f", {rpc:.0f} rays per CPU-s" if rpc else "")
        + f"; teacher {1000 * out['teacher_s_per_keyframe']:.1f} ms/keyframe"
    )
    return trainer, out
