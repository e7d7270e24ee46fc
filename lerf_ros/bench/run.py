"""One benchmark run (``run_benchmark``): every scene's offline training and evaluation, then the
online phase on the first scene, pooled into the aggregate and its targets and written out."""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Dict, List, Optional

from lerf_ros.bench.evaluate import curve_point, evaluate_snapshot
from lerf_ros.bench.machine import Progress, machine_info, peak_rss_mb
from lerf_ros.bench.metrics import aggregate, targets
from lerf_ros.bench.offline import train_offline
from lerf_ros.bench.online import run_online
from lerf_ros.bench.report import fmt, plain, write_results
from lerf_ros.bench.settings import TEACHER_NOTE, BenchSettings, LogFn, build_config


def run_benchmark(
    settings: BenchSettings, out_dir: Optional[str] = "bench/results", log: Optional[LogFn] = None, command: str = ""
) -> Dict[str, Any]:
    """Run the benchmark; write ``bench[_quick].json`` and ``.md`` into ``out_dir`` (None: write
    nothing). Returns the result dictionary."""
    import torch

    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    settings.check()
    log = log or (lambda text: print(f"[bench] {text}", flush=True))
    progress = Progress(settings.progress)
    torch.set_num_threads(settings.threads)
    t_run = time.perf_counter()
    deadline = t_run + settings.budget_s
    offline_end = t_run + settings.budget_s * (1.0 - (settings.online_fraction if settings.online else 0.0))
    cfg = build_config(settings)
    log(
        f"mode {settings.mode}: seeds {list(settings.seeds)}, {settings.width}x{settings.height}, "
        f"{settings.n_frames} frames, preset {settings.preset}, budget {settings.budget_s:.0f} s, "
        f"torch threads {torch.get_num_threads()}"
    )
    log(TEACHER_NOTE)
    scenes: List[Dict[str, Any]] = []
    reserve = settings.eval_reserve_s
    online_scene = None
    for k, seed in enumerate(settings.seeds):
        t_sc = time.perf_counter()
        scene = make_scene(
            seed=seed,
            width=settings.width,
            height=settings.height,
            n_frames=settings.n_frames,
            nthreads=settings.threads,
        )
        teacher = GroundTruthTeacher(scene)
        if online_scene is None:
            online_scene = scene
        cap = max(5.0, (offline_end - time.perf_counter()) / (len(settings.seeds) - k) - reserve)
        log(
            f"seed {seed}: {len(scene.objects)} objects ({', '.join(scene.present_classes())}); "
            f"training up to {settings.max_steps} steps or {cap:.0f} s"
        )
        trainer, off = train_offline(scene, cfg, teacher, settings, cap, progress, log)
        t_ev = time.perf_counter()
        snap = trainer.snapshot()
        del trainer
        ev = evaluate_snapshot(scene, snap, cfg, teacher, settings, progress)
        m = ev["metrics"]
        log(
            f"seed {seed}: 3D names {fmt(m['loc3d_accuracy_name'], 'pct')} (argmax "
            f"{fmt(m['loc3d_argmax_accuracy_name'], 'pct')}), 2D {fmt(m['loc2d_accuracy'], 'pct')}, "
            f"P/R {fmt(m['precision_mean'])}/{fmt(m['recall_mean'])}, grasp {fmt(m['grasp_valid_rate'], 'pct')}, "
            f"absent FP {fmt(m['absent_false_positive_rate'], 'pct')}, query p50/p95 "
            f"{fmt(m['query_latency_ms_p50'], 'ms')}/{fmt(m['query_latency_ms_p95'], 'ms')}, "
            f"evaluation {time.perf_counter() - t_ev:.0f} s"
        )
        reserve = (time.perf_counter() - t_sc) - off["train_s"]
        if off["curve"]:
            ev["curve"] = off["curve"] + [curve_point(off["steps"], off["train_s"], ev)]
        scenes.append(
            {
                "seed": seed,
                "objects_present": scene.present_classes(),
                "offline": off,
                "scene_timings": dict(scene.timings),
                **ev,
            }
        )
        del snap
    online = None
    if settings.online and online_scene is not None:
        topup_reserve = 0.05 * settings.budget_s if settings.stream_frames > 0 else 0.0
        cap = deadline - time.perf_counter() - topup_reserve
        cap = float(min(settings.online_max_s, max(settings.online_min_s, cap)))
        log(
            f"online: seed {online_scene.seed} streamed at {settings.online_rate_hz:g} Hz, checks every "
            f"{settings.online_check_every_s:g} s, up to {cap:.0f} s"
        )
        online = run_online(online_scene, cfg, settings, cap, progress, log)
        log(
            f"online: first correct {fmt(online['first_correct_any_s'], 's')}, all correct "
            f"{fmt(online['all_correct_s'], 's')}, {fmt(online['rays_per_s'])} rays/s while streaming, "
            f"RSS {online['rss_end_mb']:.0f} MB after {online['frames_streamed']} frames "
            f"({online['store']['count']} keyframes kept, {online['store']['evicted']} evicted)"
        )
    agg = aggregate(scenes, online, peak_rss_mb())
    result = {
        "benchmark": "lerf_ros",
        "mode": settings.mode,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "teacher": TEACHER_NOTE,
        "settings": plain(dataclasses.asdict(settings)),
        "config": cfg.to_dict(),
        "machine": machine_info(settings.threads),
        "aggregate": agg,
        "targets": targets(agg),
        "scenes": scenes,
        "online": online,
        "memory_note": (
            "peak_rss_mb is getrusage maxrss of the whole process (scene rendering, training, "
            "queries); tracemalloc is not used: torch tensor memory is invisible to it."
        ),
        "wall_s": time.perf_counter() - t_run,
    }
    result = plain(result)
    if out_dir:
        write_results(result, out_dir, log)
    return result
