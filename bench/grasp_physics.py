"""Grasps that hold: the query engine's grasps executed in MuJoCo, on the full benchmark's scenes.

For each scene of the full benchmark (seeds 0-4, 60 views at 160x120, see
``lerf_ros.bench.settings.mode_settings('full')``) the real ``QueryEngine`` answers each object's
class name from the scene's GROUND-TRUTH field (``tests/analytic_field.py``: exact geometry and
exact language, not a trained field), and the object's best grasp and its top 3 are executed in
physics (``lerf_ros.sim``). Reports per object, per class and pooled: geometric validity of the
best grasp (the benchmark's ``grasp_checks``), physics success of the best grasp and of any of the
top 3, the failure reasons, the physics time per grasp (wall clock and this process's CPU time:
the machine may be shared) and the planning time per query (the engine's 'cluster' timing,
clustering and grasps). Writes JSON and Markdown (default bench/results/grasp_physics.{json,md})
and a few pictures (bench/results/grasps/).

    python bench/grasp_physics.py --tag after
    python bench/grasp_physics.py --tag before --planner-commit 0dada35   # an older planner, same physics
    python bench/grasp_physics.py --seeds 1000 1001 1002 1003 1004 --tag fresh   # scenes never tuned on
    python bench/grasp_physics.py --gripper-max-width 0.14 --tag wide   # a 14 cm opening, planner and physics
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the grasp planner's files (git pathspecs, and the pattern of their paths)
PLANNER_PATHS = ("lerf_ros/query/grasp.py", "lerf_ros/query/grasp_*.py")
PLANNER_FILE = re.compile(r"lerf_ros/query/grasp(_\w+)?\.py")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from lerf_ros.sim import offscreen_gl  # noqa: E402

offscreen_gl()

import torch  # noqa: E402

from lerf_ros.bench.metrics import grasp_checks  # noqa: E402
from lerf_ros.bench.settings import build_config, mode_settings  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.query import QueryEngine  # noqa: E402
from lerf_ros.sim import SimWorld, grasp_physics, objects_from_scene  # noqa: E402
from lerf_ros.sim.pictures import save_attempt_picture  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402

from analytic_field import AnalyticSnapshot  # noqa: E402


def rate(values: List[bool]) -> Optional[float]:
    return round(float(np.mean(values)), 4) if values else None


def summarise(rows: List[Dict]) -> Dict:
    """Pooled rates of a list of per-object rows."""
    return {
        "objects": len(rows),
        "grasp_returned": rate([r["returned"] for r in rows]),
        "geometric_valid": rate([r["valid"] for r in rows]),
        "physics_best": rate([r["physics"]["best_success"] for r in rows]),
        "physics_any_top3": rate([r["physics"]["any_success"] for r in rows]),
    }


def use_planner_from_commit(commit: str) -> None:
    """Answer with the grasp planner of an older commit (``lerf_ros/query/grasp.py`` and its
    ``grasp_*.py`` modules where it has them): its ``plan_grasps`` and ``GripperModel`` (its
    defaults) replace the engine's (the rest of the engine and the physics stay as they are). The
    commit's planner files are imported as a package of their own, their imports of each other
    pointed at it, so no module of the current planner answers for them."""
    import importlib

    import lerf_ros.query.engine as engine_module

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout

    files = [f for f in git("ls-tree", "--name-only", commit, "lerf_ros/query/").split() if PLANNER_FILE.fullmatch(f)]
    package = "planner_" + re.sub(r"\W", "_", commit)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, package))
        open(os.path.join(tmp, package, "__init__.py"), "w").close()
        for f in files:
            with open(os.path.join(tmp, package, os.path.basename(f)), "w") as out:
                out.write(git("show", f"{commit}:{f}").replace("lerf_ros.query.grasp", f"{package}.grasp"))
        sys.path.insert(0, tmp)
        try:
            module = importlib.import_module(f"{package}.grasp")
        finally:
            sys.path.remove(tmp)
    engine_module.plan_grasps = module.plan_grasps
    engine_module.GripperModel = module.GripperModel  # that commit's gripper defaults too


def last_commit(*paths: str) -> str:
    """Short id of the last commit that changed ``paths`` ('' outside a git checkout); ``+`` marks
    uncommitted changes to them."""
    try:
        out = [
            subprocess.run(
                ["git", "-C", ROOT, *cmd, "--", *paths], check=True, capture_output=True, text=True
            ).stdout.strip()
            for cmd in (["log", "-1", "--format=%h"], ["status", "--porcelain"])
        ]
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out[0] + ("+" if out[1] else "")


def run(
    seeds, tag: str, pictures: int, out_dir: str, planner_commit: str = "", gripper_max_width: Optional[float] = None
) -> Dict:
    s = mode_settings("full")
    cfg = build_config(s)
    if gripper_max_width is not None:
        # one gripper: the planner's GripperModel (and the geometric check) and the simulated fingers
        # (SimWorld is built from the engine's GripperModel) both take this opening
        cfg = cfg.override({"query.gripper_max_width": float(gripper_max_width)})
    qc = cfg.query
    # the code this run answers with: read now, not after the run (the files may change meanwhile)
    physics_commit = last_commit("lerf_ros/sim")
    planner_commit = planner_commit or last_commit(*PLANNER_PATHS)
    rows, per_grasp_s, per_grasp_cpu, plan_ms, pic_left = [], [], [], [], pictures
    t_all = time.perf_counter()
    for seed in seeds:
        scene = make_scene(seed=seed, n_frames=s.n_frames, width=s.width, height=s.height)
        teacher = GroundTruthTeacher(scene)
        engine = QueryEngine(qc, teacher.encode_text)
        engine.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=1000))
        engine.prepare()
        world = SimWorld(objects_from_scene(scene), engine.gripper)
        for obj in scene.objects:
            r = engine.query(obj.class_name, max_grasps=3)
            grasps = r.grasps if r.success else []
            if r.success:
                plan_ms.append(r.timings.get("cluster", 0.0))
            tc, cc = time.perf_counter(), time.process_time()
            phys = grasp_physics(world, grasps, obj.name, top_k=3)
            if grasps:
                per_grasp_s.append((time.perf_counter() - tc) / min(3, len(grasps)))
                per_grasp_cpu.append((time.process_time() - cc) / min(3, len(grasps)))
            row = {
                "seed": seed,
                "object": obj.name,
                "class": obj.class_name,
                "answered": bool(r.success),
                "returned": bool(grasps),
                "valid": False,
                "note": "" if grasps else (r.message.split("; ")[-1] if r.success else r.message),
                "physics": phys,
            }
            if grasps:
                g = grasps[0]
                chk = grasp_checks(
                    g.pose, g.width, obj, engine.gripper, qc.gripper_max_width, s.grow_grasp, 0.0, s.table_tol
                )
                row.update({"valid": chk["valid"], "kind": g.kind, "width": round(float(g.width), 4)})
                if not phys["best_success"] and pic_left > 0:
                    name = f"{tag}_seed{seed}_{obj.class_name.replace(' ', '_').replace(chr(39), '')}.png"
                    save_attempt_picture(world, g.pose, g.width, obj.name, os.path.join(out_dir, "grasps", name))
                    pic_left -= 1
            rows.append(row)
            print(
                f"seed {seed} {obj.class_name:15s} grasps {len(grasps)} valid {row['valid']!s:5s} "
                f"best {phys['best_success']!s:5s} any3 {phys['any_success']!s:5s} {phys.get('best_reason', '')}",
                flush=True,
            )
    classes = collections.defaultdict(list)
    for r in rows:
        classes[r["class"]].append(r)
    reasons = collections.Counter(r["physics"]["best_reason"] for r in rows if not r["physics"]["best_success"])
    return {
        "tag": tag,
        "physics_commit": physics_commit,
        "planner_commit": planner_commit,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "field": "ground truth (tests/analytic_field.py), not a trained field",
        "scenes": {"seeds": list(seeds), "width": s.width, "height": s.height, "n_frames": s.n_frames},
        "gripper_max_width": float(qc.gripper_max_width),
        "pooled": summarise(rows),
        "per_class": {c: summarise(v) for c, v in sorted(classes.items())},
        "best_failure_reasons": dict(reasons),
        "physics_s_per_grasp": {
            "mean": round(float(np.mean(per_grasp_s)), 4) if per_grasp_s else None,
            "p95": round(float(np.percentile(per_grasp_s, 95)), 4) if per_grasp_s else None,
            "cpu_mean": round(float(np.mean(per_grasp_cpu)), 4) if per_grasp_cpu else None,
        },
        "planning_ms_per_query": {
            "mean": round(float(np.mean(plan_ms)), 1) if plan_ms else None,
            "p95": round(float(np.percentile(plan_ms, 95)), 1) if plan_ms else None,
        },
        "wall_s": round(time.perf_counter() - t_all, 1),
        "objects": rows,
    }


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def markdown(runs: Dict[str, Dict]) -> str:
    """Before/after tables of the runs (keyed by tag)."""
    lines = [
        "# Grasps in physics (MuJoCo), full benchmark scenes",
        "",
        "Measured on the scenes' GROUND-TRUTH field (exact geometry and language), not a trained field:",
        "these numbers isolate the grasp planner. Anchors (real robots, trained fields): LERF-TOGO 69%,",
        "F3RM 62% language-guided grasp success. Planning ms per query and physics s per grasp are wall clock",
        "on a shared 2-core machine (busy: mostly waiting for a CPU); the CPU time per grasp is in brackets.",
        "The planner's CPU time on the same inputs was about 90 ms per query (mean, p95 about 140 ms) with its loops",
        "over slices and depths; as arrays (from 60a0b60 on) about 12 ms (p95 about 20 ms), the same grasps.",
        "",
        "| run | planner / physics commit | gripper opening (m) | seeds | objects | grasp returned | "
        "geometric valid (best) | physics best | physics any of top 3 | physics s per grasp (CPU) | "
        "planning ms per query |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tag, r in runs.items():
        p, t = r["pooled"], r["physics_s_per_grasp"]
        seeds = r["scenes"]["seeds"]
        cpu = f" ({t['cpu_mean']})" if t.get("cpu_mean") is not None else ""
        plan = (r.get("planning_ms_per_query") or {}).get("mean")
        commits = f"{r.get('planner_commit', '?')} / {r.get('physics_commit', '?')}"
        lines.append(
            f"| {tag} | {commits} | {r.get('gripper_max_width', 0.08):g} | {seeds[0]}-{seeds[-1]} | {p['objects']} | "
            f"{pct(p['grasp_returned'])} | "
            f"{pct(p['geometric_valid'])} | {pct(p['physics_best'])} | {pct(p['physics_any_top3'])} | "
            f"{t['mean']}{cpu} | {'n/a' if plan is None else plan} |"
        )
    for tag, r in runs.items():
        lines += [
            "",
            f"## {tag}: per class",
            "",
            f"Gripper opening {r.get('gripper_max_width', 0.08):g} m. Best-grasp failures: {r['best_failure_reasons']}",
            "",
            "| class | objects | geometric valid | physics best | any of top 3 |",
            "|---|---|---|---|---|",
        ]
        for c, v in r["per_class"].items():
            lines.append(
                f"| {c} | {v['objects']} | {pct(v['geometric_valid'])} | {pct(v['physics_best'])} | "
                f"{pct(v['physics_any_top3'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(mode_settings("full").seeds))
    ap.add_argument("--tag", default="after", help="name of this run in the results (e.g. before, after)")
    ap.add_argument("--pictures", type=int, default=4, help="pictures of failed best grasps to save")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--planner-commit", default="", help="answer with the grasp planner of this git commit (a before row)"
    )
    ap.add_argument(
        "--gripper-max-width",
        type=float,
        default=None,
        help="opening of the gripper in metres, for the planner (query.gripper_max_width) and the simulated "
        "fingers alike (default: the configuration's, 0.08)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.planner_commit:
        use_planner_from_commit(args.planner_commit)
    res = run(args.seeds, args.tag, args.pictures, args.out_dir, args.planner_commit, args.gripper_max_width)
    path = os.path.join(args.out_dir, "grasp_physics.json")
    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f).get("runs", {})
    runs[args.tag] = res
    with open(path, "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    with open(os.path.join(args.out_dir, "grasp_physics.md"), "w") as f:
        f.write(markdown(runs))
    p = res["pooled"]
    print(
        f"{args.tag}: {p['objects']} objects, geometric {pct(p['geometric_valid'])}, physics best "
        f"{pct(p['physics_best'])}, any of top 3 {pct(p['physics_any_top3'])}, "
        f"{res['physics_s_per_grasp']['mean']} s/grasp (CPU {res['physics_s_per_grasp']['cpu_mean']}), planning "
        f"{res['planning_ms_per_query']['mean']} ms/query, reasons {res['best_failure_reasons']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
