"""Which CLIP crop pyramid is cheapest without losing 3D localization?

Runs the benchmark's offline part (no online phase) once per candidate pyramid on the same seeded
synthetic scenes, with everything else fixed, and tabulates crops per keyframe (640x480, 1280x720
and the benchmark's own size) against 3D localization (names, synonyms, argmax), 2D localization
and relevancy-cloud precision/recall. The teacher is the scene's ground truth pushed through the
crop pyramid (a crop's embedding mixes the class embeddings of its pixels by area), so a coarser
pyramid blurs the supervision exactly as it would with CLIP; what it cannot show is CLIP's own
behaviour on small crops.

    python bench/pyramid_study.py                       # all candidates, seeds 0..4, ~40 min on 2 CPUs
    python bench/pyramid_study.py --only 4L-10 3L-10        # add rows to an earlier run's table
Writes bench/results/pyramid_study.json and .md (``--only`` keeps the rows of an earlier run with
the same seeds, steps, size and frames).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any, Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: name -> teacher overrides. "reference" is the LERF paper's pyramid (7 scales, 5% to 50% of the
#: image's short side, overlap ramped from 0 at 5% to 50% at 15%: the lerf_ros default).
CANDIDATES: Dict[str, Dict[str, Any]] = {
    "reference": {"teacher.pyramid_levels": 7, "teacher.pyramid_min": 0.05},
    "5L-05": {"teacher.pyramid_levels": 5, "teacher.pyramid_min": 0.05},
    "4L-05": {"teacher.pyramid_levels": 4, "teacher.pyramid_min": 0.05},
    "7L-05-no-overlap": {"teacher.pyramid_levels": 7, "teacher.pyramid_min": 0.05, "teacher.pyramid_overlap": 0.0},
    "5L-10": {"teacher.pyramid_levels": 5, "teacher.pyramid_min": 0.10},
    "4L-10": {"teacher.pyramid_levels": 4, "teacher.pyramid_min": 0.10},
    "3L-10": {"teacher.pyramid_levels": 3, "teacher.pyramid_min": 0.10},
}
METRICS = (
    "loc3d_accuracy_name",
    "loc3d_accuracy_synonym",
    "loc3d_argmax_accuracy_name",
    "loc2d_accuracy",
    "precision_mean",
    "recall_mean",
)


def crop_counts(overrides: Dict[str, Any], sizes) -> Dict[str, int]:
    from lerf_ros.config import preset
    from lerf_ros.teachers.pyramid import crops_per_frame

    cfg = preset("tiny").override(overrides)
    return {f"{w}x{h}": crops_per_frame(h, w, cfg.teacher) for w, h in sizes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=400, help="training steps per scene (default 400)")
    p.add_argument("--size", type=int, nargs=2, default=[160, 120], metavar=("W", "H"))
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="run only these candidates")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from lerf_ros.bench import BenchSettings, run_benchmark

    names = args.only or list(CANDIDATES)
    rows = _previous_rows(args) if args.only else []
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        overrides = dict(CANDIDATES[name])
        s = BenchSettings(
            mode="custom",
            seeds=tuple(args.seeds),
            width=args.size[0],
            height=args.size[1],
            n_frames=args.frames,
            max_steps=args.steps,
            budget_s=1e6,
            online=False,
            overrides=overrides,
            threads=args.threads,
            progress=False,
        )
        print(f"[pyramid] {i + 1}/{len(names)} {name}: {overrides}", flush=True)
        res = run_benchmark(s, out_dir=None, log=lambda text: print(f"[pyramid]   {text}", flush=True))
        agg = res["aggregate"]
        n_queries = sum(len(sc.get("objects", [])) for sc in res["scenes"])
        row = {
            "name": name,
            "overrides": overrides,
            "wall_s": res["wall_s"],
            "crops": crop_counts(overrides, [(640, 480), (1280, 720), tuple(args.size)]),
            "name_queries": n_queries,
            "steps": [sc["offline"]["steps"] for sc in res["scenes"]],
            "teacher_s_per_keyframe": agg.get("teacher_s_per_keyframe"),
            **{m: agg.get(m) for m in METRICS},
        }
        rows = [r for r in rows if r["name"] != name] + [row]
        print(
            f"[pyramid]   {name}: {row['crops']['640x480']} crops @640x480, 3D names "
            f"{row['loc3d_accuracy_name']}, argmax {row['loc3d_argmax_accuracy_name']}, 2D {row['loc2d_accuracy']}",
            flush=True,
        )
        _write(args, rows, time.perf_counter() - t0)
    return 0


def _previous_rows(args) -> List[Dict[str, Any]]:
    """Rows of an earlier run with the same seeds, steps, size and frames (``--only`` adds to them)."""
    path = os.path.join(args.out, "pyramid_study.json")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        doc = json.load(fh)
    same = (
        doc.get("seeds") == list(args.seeds)
        and doc.get("steps") == args.steps
        and doc.get("size") == list(args.size)
        and doc.get("frames") == args.frames
    )
    if not same:
        print(f"[pyramid] {path} was made with other seeds, steps, size or frames: its rows are replaced", flush=True)
    return list(doc.get("rows", [])) if same else []


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _write(args, rows, wall_s: float) -> None:
    os.makedirs(args.out, exist_ok=True)
    doc = {
        "study": "crop pyramid",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": (
            f"python bench/pyramid_study.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} "
            f"--size {args.size[0]} {args.size[1]} --frames {args.frames}"
        ),
        "seeds": args.seeds,
        "steps": args.steps,
        "size": args.size,
        "frames": args.frames,
        "wall_s": sum(r.get("wall_s", 0.0) for r in rows),
        "rows": rows,
    }
    with open(os.path.join(args.out, "pyramid_study.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
    ref = next((r for r in rows if r["name"] == "reference"), None)
    lines = [
        "# Crop pyramid study",
        "",
        f"Seeds {args.seeds}, {args.size[0]}x{args.size[1]}, {args.frames} frames, {args.steps} training steps per "
        f"scene, preset tiny, ground-truth teacher through the pyramid. Command: `{doc['command']}`",
        "",
        "| pyramid | crops 640x480 | crops 1280x720 | 3D names | vs reference | 3D synonyms | 3D argmax | "
        "2D | precision / recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = (
            ""
            if ref is None or r["loc3d_accuracy_name"] is None or ref["loc3d_accuracy_name"] is None
            else f"{100 * (r['loc3d_accuracy_name'] - ref['loc3d_accuracy_name']):+.1f} pt"
        )
        pr = "n/a" if r["precision_mean"] is None else f"{r['precision_mean']:.3f} / {r['recall_mean']:.3f}"
        lines.append(
            f"| {r['name']} | {r['crops']['640x480']} | {r['crops']['1280x720']} | "
            f"{_pct(r['loc3d_accuracy_name'])} | {d} | {_pct(r['loc3d_accuracy_synonym'])} | "
            f"{_pct(r['loc3d_argmax_accuracy_name'])} | {_pct(r['loc2d_accuracy'])} | {pr} |"
        )
    n = rows[0]["name_queries"] if rows else 0
    lines += [
        "",
        f"{n} named-object queries per row: one query is {100 / max(n, 1):.1f} points. Candidates run: "
        f"{', '.join(r['name'] for r in rows)} (of {', '.join(CANDIDATES)}; add more with --only NAME ...).",
    ]
    with open(os.path.join(args.out, "pyramid_study.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
