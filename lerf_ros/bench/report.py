"""The benchmark's outputs: the JSON result (``plain`` makes it JSON-safe) and its short Markdown
report, written side by side (``write_results``)."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict

import numpy as np

from lerf_ros.bench.settings import TEACHER_NOTE, LogFn


def fmt(x: Any, kind: str = "") -> str:
    """``x`` for a report line: 'n/a' for None; ``kind`` 'pct' (a fraction as a percentage), 'ms' or 's'
    (whole units); else yes/no for booleans and three significant digits for floats."""
    if x is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * x:.0f}%"
    if kind == "ms":
        return f"{x:.0f} ms"
    if kind == "s":
        return f"{x:.0f} s"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def markdown(result: Dict[str, Any]) -> str:
    """The short Markdown report of a result."""
    a = result["aggregate"]
    s = result["settings"]
    on = result.get("online") or {}
    lines = [
        f"# lerf_ros benchmark ({s['mode']})",
        "",
        f"{len(result['scenes'])} synthetic scenes (seeds {', '.join(map(str, s['seeds']))}), "
        f"{s['width']}x{s['height']}, {s['n_frames']} frames, preset `{s['preset']}`, "
        f"{result['machine']['cpu_count']} CPUs, torch {result['machine']['torch_version']} "
        f"({result['machine']['torch_threads']} threads); run took {result['wall_s']:.0f} s.",
        f"Teacher: {TEACHER_NOTE.split(': ', 1)[1]}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| metric | value | target (full mode) |",
        "|---|---|---|",
    ]
    tg = result["targets"]
    rows = [
        ("3D localization, names", fmt(a["loc3d_accuracy_name"], "pct"), tg["loc3d_name"]),
        ("3D localization, synonyms", fmt(a["loc3d_accuracy_synonym"], "pct"), None),
        ("3D argmax (ignoring threshold), names", fmt(a["loc3d_argmax_accuracy_name"], "pct"), None),
        ("2D localization, held-out views", f"{fmt(a['loc2d_accuracy'], 'pct')} of {a['loc2d_queries']}", None),
        ("relevancy cloud precision / recall", f"{fmt(a['precision_mean'])} / {fmt(a['recall_mean'])}", None),
        (
            "best grasp valid",
            f"{fmt(a['grasp_valid_rate'], 'pct')} (no grasp returned for {fmt(a['grasp_none_rate'], 'pct')})",
            tg["grasp_valid"],
        ),
        (
            "best grasp holds in physics / any of top 3",
            f"{fmt(a.get('grasp_physics_best_rate'), 'pct')} / {fmt(a.get('grasp_physics_any_top3_rate'), 'pct')} "
            f"({fmt(a.get('grasp_physics_s_per_grasp'))} s per grasp)",
            None,
        ),
        ("objects with extracted surface points", fmt(a["objects_on_surface_fraction"], "pct"), None),
        (
            "absent queries above threshold",
            f"{fmt(a['absent_false_positive_rate'], 'pct')} (max relevancy {fmt(a['absent_max_relevancy'])})",
            tg["absent_never_above_threshold"],
        ),
        (
            "query latency p50 / p95",
            f"{fmt(a['query_latency_ms_p50'], 'ms')} / {fmt(a['query_latency_ms_p95'], 'ms')}",
            tg["query_p95_ms"],
        ),
        (
            "teacher per keyframe",
            fmt(1000 * a["teacher_s_per_keyframe"] if a["teacher_s_per_keyframe"] else None, "ms"),
            None,
        ),
        (
            "offline training",
            f"{fmt(a['offline_rays_per_s'])} rays/s ({fmt(a['offline_rays_per_cpu_s'])} per CPU-s), "
            f"{fmt(a['offline_steps_mean'])} steps/scene",
            None,
        ),
        (
            "online training (frames arriving)",
            f"{fmt(a['online_rays_per_s'])} rays/s ({fmt(a['online_rays_per_cpu_s'])} per CPU-s)",
            None,
        ),
        (
            "online overhead wall / CPU",
            f"{fmt(a['online_overhead_pct'])}% / {fmt(a['online_overhead_cpu_pct'])}%",
            tg["online_overhead_pct"],
        ),
        (
            "online: first correct answer, first object / each object / all at once",
            f"{fmt(a['online_first_correct_s'], 's')} / {fmt(a['online_each_correct_s'], 's')} / "
            f"{fmt(a['online_all_correct_s'], 's')} ({fmt(a['online_objects_correct_fraction'], 'pct')} of objects "
            f"within {fmt(on.get('online_s'), 's')})",
            tg["first_correct_s"],
        ),
        (
            "RSS after streamed frames",
            f"{fmt(a['stream_rss_mb'])} MB after {a['stream_frames']} frames "
            f"({fmt(a['stream_rss_growth_second_half_mb'])} MB over the second half, "
            f"{fmt(a['stream_rss_growth_after_full_mb'])} MB since the store filled)",
            tg["store_bounded"],
        ),
        ("peak RSS", f"{fmt(a['peak_rss_mb'])} MB", None),
    ]
    for name, val, target in rows:
        goal = "" if target is None else f"{target['goal']}: {'met' if target['met'] else 'not met'}"
        lines.append(f"| {name} | {val} | {goal} |")
    last = next((c for c in reversed(on.get("checks") or []) if "surface_step" in c), None)
    if last is not None:
        lines += [
            "",
            f"Online (seed {on['seed']}, {on['rate_hz']:g} Hz): checks every {on['check_every_s']:g} s of "
            f"training; the last answered from the snapshot of step {last['snapshot_step']} with surface "
            f"points of step {last['surface_step']} (query.refresh_every_steps = "
            f"{result['config']['query']['refresh_every_steps']}); first correct per object (s): "
            + ", ".join(f"{k} {fmt(v, 's')}" for k, v in on["first_correct_s"].items())
            + ".",
        ]
    lines += [
        "",
        "| seed | objects | steps | 3D names | 2D | precision | recall | grasp | absent FP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in result["scenes"]:
        m = sc["metrics"]
        lines.append(
            f"| {sc['seed']} | {len(sc['objects'])} | {sc['offline']['steps']} | "
            f"{fmt(m['loc3d_accuracy_name'], 'pct')} | {fmt(m['loc2d_accuracy'], 'pct')} | "
            f"{fmt(m['precision_mean'])} | {fmt(m['recall_mean'])} | {fmt(m['grasp_valid_rate'], 'pct')} | "
            f"{fmt(m['absent_false_positive_rate'], 'pct')} |"
        )
    per_class = a.get("grasp_physics_per_class") or {}
    if per_class:
        lines += [
            "",
            "Grasps in physics (MuJoCo: approach, close, lift 15 cm, hold 2 s; success = lifted 10 cm "
            f"and held). Best-grasp failures: {a.get('grasp_physics_reasons') or 'none'}.",
            "",
            "| class | objects | best grasp valid | physics best | physics any of top 3 |",
            "|---|---|---|---|---|",
        ]
        for c, v in per_class.items():
            lines.append(
                f"| {c} | {v['objects']} | {fmt(v['valid'], 'pct')} | {fmt(v['best'], 'pct')} | "
                f"{fmt(v['any_top3'], 'pct')} |"
            )
    curves = [(sc["seed"], sc["curve"]) for sc in result["scenes"] if sc.get("curve")]
    if curves:
        lines += [
            "",
            "Learning curve (offline, 3D name queries):",
            "",
            "| seed | step | train s | 3D names | wrong |",
            "|---|---|---|---|---|",
        ]
        for seed, curve in curves:
            for c in curve:
                lines.append(
                    f"| {seed} | {c['step']} | {c['train_s']:.0f} | {fmt(c['loc3d_accuracy_name'], 'pct')} | "
                    f"{', '.join(c['wrong']) or '-'} |"
                )
    return "\n".join(lines) + "\n"


def plain(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def write_results(result: Dict[str, Any], out_dir: str, log: LogFn) -> str:
    """Write ``result`` as ``bench_quick.json`` (quick mode; else ``bench.json``, atomically) and its
    Markdown report (``.md``) into ``out_dir``; returns the JSON path."""
    os.makedirs(out_dir, exist_ok=True)
    stem = "bench_quick" if result["mode"] == "quick" else "bench"
    path = os.path.join(out_dir, stem + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1, allow_nan=False)
    os.replace(tmp, path)
    with open(os.path.join(out_dir, stem + ".md"), "w") as fh:
        fh.write(markdown(result))
    log(f"wrote {path} and {stem}.md ({result['wall_s']:.0f} s)")
    return path
