"""Real cameras: a clean synthetic scene against the same scene as a real camera delivers it (lens
distortion of each model, pose noise and drift, exposure and white-balance changes, a drift that a
late loop closure corrects), trained with the condition handled and not handled.

    python bench/real_cameras.py [--quick] [--seeds 51,52,53] [--steps 400] [--threads 1]
        [--conditions clean,poses,...] [--pose-variant LABEL:KEY=VALUE,...]
        [--variant-conditions clean,poses,...] [--timing-steps 60]
    python bench/real_cameras.py --combine A.json B.json ... [--out STEM]

For each seed (fresh scenes: the main benchmark uses seeds 0 to 4, pose refinement was developed on
17 and 23) the scene is made once (``lerf_ros.data.synthetic``, ground-truth teacher, ``tiny``
preset, every 8th frame held out), and each condition is applied to it with ``apply_conditions``
(seeded from the scene seed, the ground truth kept clean). Every run trains a fixed number of steps
(default 400) with the same seed, so the accuracy figures do not depend on machine load:

- ``clean``: the clean frames, handling off and on (the references of the rows below; with
  refinement on, how far it moves exact input poses is recorded too);
- ``not handled``: the corrupted frames with every handling off: the lens ignored (frames without
  their ``distortion``), ``trainer.pose_refinement`` off, ``model.appearance_dim`` 0; for the late
  correction, the drifting poses throughout;
- ``handled``: the corrupted frames with every handling on: the lens modelled, pose refinement on,
  the appearance embedding on (the package's defaults, the pose warm-up cut to a third of the run);
  for the late correction, the corrected poses reach the session (``Session.correct_poses``) at half
  the run, as a loop closure reaches a running trainer.

Every row is measured against the clean ground truth: held-out PSNR of renders at the true poses
against the clean pinhole images (``bench_model.heldout_psnr``), 3D localization and best-grasp
validity from ``lerf_ros.bench.evaluate.evaluate_snapshot`` (the benchmark's own scoring: names
only, no 2D views, no physics), and for the pose conditions the camera pose error of the training
keyframes against the ground truth before (the input poses) and after (the corrected poses), raw and
after the best rigid alignment of the camera centres (the world of a refined map may sit slightly
off the truth as a whole). The same scores are also taken in the map's world (``map_alignment``):
a map trained from drifting poses sits in their world, which no refinement can observe, so, as
pose-refinement papers evaluate (BARF), the held-out views' true poses and the ground-truth objects
are moved by the best rigid alignment of the training keyframes' true camera centres onto the
map's; it uses the training poses only, never a held-out image, and is the identity when the map's
poses are the truth (clean, handling off). The pose target is judged on these aligned scores. Every
row also gets BARF's second step, test-time poses (``lerf_ros.bench.view_poses``): each held-out
view's aligned true pose is refined against the frozen map with its own image (``TEST_TIME``), and
the held-out PSNR is taken again at the refined poses (3D localization does not use the views). The
summary averages over the seeds and checks the issue's targets (for poses, with the aligned PSNR
and, beside it, with the test-time one).
Training rays/s with every handling on against every handling off is timed on the clean scene in
alternating blocks of steps (two trainers, so a change of machine load hits both).

A pose variant (``--pose-variant LABEL:KEY=VALUE``) adds rows with every handling on plus its
overrides: 'handling on (LABEL)' on clean and 'handled (LABEL)' on each other condition named by
``--variant-conditions`` (default: poses); each is compared with clean trained with the same variant.

Conditions (and seeds) can run in separate processes (``--conditions``, ``--seeds``) and be merged
with ``--combine``. Results: ``bench/results/real_cameras.json`` and ``.md`` (``--out`` changes the stem).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
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
from lerf_ros.bench.view_poses import refine_view_poses  # noqa: E402
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
    "late_correction": Conditions(pose_drift_m=0.05, pose_drift_deg=2.0, late_correction=True),
}
"""The conditions measured: each lens model, pose noise (2 cm and 1 degree per axis per frame) plus a
5 cm drift, exposure within +-1 stop plus white balance within +-0.2 stops, and a drift of 5 cm and 2
degrees of yaw that a loop closure corrects (``late_correction``: handled, the corrected poses reach
the session at half the run, ``Session.correct_poses``; not handled, the drifting poses throughout)."""

TEST_TIME = {"iterations": 100, "rays_per_view": 512, "lr": 1e-3, "lr_final": 1e-4}
"""Test-time pose optimisation of the held-out views (``refine_view_poses``), the same for every row."""

CORRECTION_AT = 0.5
"""Fraction of the run after which a late correction reaches the session (handled rows)."""

HFOV = 70.0
"""Horizontal field of view of the scenes (degrees): wide enough for the lenses to matter."""

HANDLING_OFF = {"trainer.pose_refinement": False, "model.appearance_dim": 0}
"""Overrides that switch every handling off (the lens is ignored by dropping it from the frames)."""

TARGETS = {
    "distortion": "handled within 0.5 dB PSNR and 2 points of 3D localization of clean",
    "poses": "handled within 1.5 dB and 3 points of clean; refined poses closer to the truth "
    "(translation and rotation)",
    "exposure": "handled within 1 dB of clean",
    "late_correction": "corrected poses closer to the truth than the drifting input",
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


def map_alignment(map_poses: np.ndarray, truth_poses: np.ndarray) -> np.ndarray:
    """The 4x4 rigid transform from the true world to the map's world: the best rigid alignment of
    the training keyframes' true camera centres onto their centres in the map (``map_poses``, the
    corrected poses the field was trained with; both (N, 4, 4)).

    A map built from drifting, noisy poses sits in the world of those poses: refinement can make
    the keyframes agree with each other, never find where the true world is (moving every camera and
    the scene together explains the images equally well; the corrections are kept zero-mean over
    the keyframes, so the map stays where the input poses put it on average). As pose-refinement
    papers do (BARF: Procrustes alignment of the trajectories before held-out evaluation), the
    aligned scores read the held-out views and the objects through this transform; it uses only the
    training keyframes' poses, never a held-out image."""
    return rigid_alignment(truth_poses[:, :3, 3], map_poses[:, :3, 3])


def scene_in_map(scene, T: np.ndarray):
    """``scene`` (the clean ground truth) moved into the map's world by ``T`` (``map_alignment``):
    every frame's pose, object box and surface point; the table height moves with the table's
    centre (the origin)."""
    R, t = T[:3, :3], T[:3, 3]
    objects = [
        dataclasses.replace(
            o, center=R @ o.center + t, rotation=R @ o.rotation, surface_points=o.surface_points @ R.T + t
        )
        for o in scene.objects
    ]
    frames = [dataclasses.replace(f, c2w=T @ f.c2w) for f in scene.frames]
    return dataclasses.replace(scene, frames=frames, objects=objects, table_height=float(scene.table_height + t[2]))


def refined_poses(trainer, n: int) -> np.ndarray:
    """The corrected camera-to-world poses (n, 4, 4) of the ``n`` keyframes added to a fresh session,
    in the order they were added (keys 0 .. n-1; ``Trainer.keyframe_poses``)."""
    poses = dict(trainer.keyframe_poses())
    missing = [k for k in range(n) if k not in poses]
    if missing:
        raise RuntimeError(f"keyframes {missing} are no longer stored: the pose errors would not be comparable")
    return np.stack([np.asarray(poses[k], np.float64) for k in range(n)])


# ---------------------------------------------------------------------------- one run
def train_with_correction(scene, cfg, teacher, settings: BenchSettings, at_step: int):
    """``train_offline``'s training (the same keyframes, steps and seed) with the scene's late pose
    corrections handed to the session after ``at_step`` steps (``Session.correct_poses``, by stamp).
    Returns (trainer, stats with 'steps', 'train_s', 'rays_per_s', 'pose_corrections')."""
    from lerf_ros.mapping.session import Session

    session = Session(cfg, teacher, online=False, log=lambda level, text: None)
    for i in range(len(scene.frames)):
        if i % settings.holdout_every != 0:
            session.add(scene.frames[i])
    trainer = session.ensure_model()
    stamps = [f.stamp for f in scene.frames]
    train_s, applied = 0.0, 0
    while trainer.step_count < settings.max_steps:
        if trainer.step_count == at_step:
            applied = session.correct_poses(
                list(zip(stamps, scene.corrected_poses)), tolerance_m=0.002, tolerance_deg=0.1
            )
        t0 = time.perf_counter()
        session.step()
        train_s += time.perf_counter() - t0
    rays = trainer.step_count * cfg.trainer.rays_per_batch
    return trainer, {
        "steps": trainer.step_count,
        "train_s": train_s,
        "rays_per_s": rays / max(train_s, 1e-9),
        "pose_corrections": applied,
    }


def run_one(
    scene, truth_scene, teacher, overrides: Dict[str, Any], settings: BenchSettings, log, correct: bool = False
) -> Dict[str, Any]:
    """Train on ``scene``'s frames with ``overrides`` (``correct``: the scene's late corrections
    applied at ``CORRECTION_AT`` of the run), evaluate against ``truth_scene`` (the clean ground
    truth). Returns the row's numbers."""
    st = dataclasses.replace(settings, overrides={**settings.overrides, **overrides})
    cfg = build_config(st)
    progress = Progress(False)
    if correct:
        trainer, off = train_with_correction(scene, cfg, teacher, st, int(CORRECTION_AT * st.max_steps))
    else:
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
        "wrong": [o["name"] for o in ev["objects"] if not o["correct"]],
    }
    train_idx = [i for i in range(len(scene.frames)) if i % st.holdout_every != 0]
    truth = (
        scene.ground_truth_poses[train_idx]
        if scene.ground_truth_poses is not None
        else np.stack([scene.frames[i].c2w for i in train_idx])
    )
    map_poses = refined_poses(trainer, len(train_idx))
    # The same scores in the map's world (``map_alignment``); the identity when the map's poses are the truth.
    T = map_alignment(map_poses, truth)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))
    aligned: Dict[str, Any] = {
        "translation_cm": round(100 * float(np.linalg.norm(T[:3, 3])), 3),
        "rotation_deg": round(angle, 4),
    }
    moved = truth_scene
    if np.allclose(T, np.eye(4), atol=1e-9):
        aligned.update({k: row[k] for k in ("heldout_psnr", "loc3d_accuracy_name", "grasp_valid_rate", "wrong")})
    else:
        moved = scene_in_map(truth_scene, T)
        ev = evaluate_snapshot(moved, trainer.snapshot(), cfg, teacher, st, progress, with_2d=False, with_physics=False)
        aligned.update(
            {
                "heldout_psnr": round(heldout_psnr(trainer, moved.frames), 2),
                "loc3d_accuracy_name": ev["metrics"]["loc3d_accuracy_name"],
                "grasp_valid_rate": ev["metrics"]["grasp_valid_rate"],
                "wrong": [o["name"] for o in ev["objects"] if not o["correct"]],
            }
        )
    # Test-time poses (BARF's second step): each held-out view's aligned true pose refined against the
    # frozen map with its own image, then scored; the same for every row, the map is not changed.
    views = moved.frames
    held = [i for i in range(len(views)) if i % st.holdout_every == 0]
    start = np.stack([views[i].c2w for i in held])
    fitted = refine_view_poses(trainer.model, [views[i] for i in held], **TEST_TIME)
    fitted_frames = list(views)
    for i, c2w in zip(held, fitted):
        fitted_frames[i] = dataclasses.replace(views[i], c2w=c2w)
    dt, da = pose_distance(fitted, start)
    row["test_time"] = {
        "heldout_psnr": round(heldout_psnr(trainer, fitted_frames), 2),
        "moved_cm_mean": round(100 * float(dt.mean()), 3),
        "moved_deg_mean": round(float(np.degrees(da).mean()), 4),
        **TEST_TIME,
    }
    row["aligned"] = aligned
    row["eval_s"] = round(time.perf_counter() - t0, 1)
    if scene.ground_truth_poses is not None:
        frames = [scene.frames[i] for i in train_idx]
        row["pose_error_input"] = pose_errors(np.stack([f.c2w for f in frames]), truth)
        if cfg.trainer.pose_refinement or correct:
            row["pose_error_refined"] = pose_errors(map_poses, truth)
    elif cfg.trainer.pose_refinement:  # exact input poses: how far refinement moves them (it should not)
        row["pose_error_input"] = pose_errors(truth, truth)
        row["pose_error_refined"] = pose_errors(map_poses, truth)
    if correct:
        row["pose_corrections"] = off["pose_corrections"]
    log(
        f"    PSNR {row['heldout_psnr']:.2f} dB (aligned {aligned['heldout_psnr']:.2f}), "
        f"test-time poses {row['test_time']['heldout_psnr']:.2f} dB, "
        f"3D {row['loc3d_accuracy_name']:.0%} (aligned {aligned['loc3d_accuracy_name']:.0%}), "
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


GROUPS = {
    "distortion": ("plumb_bob", "equidistant", "rational_polynomial"),
    "poses": ("poses",),
    "exposure": ("exposure",),
    "late_correction": ("late_correction",),
}
"""Which conditions each target of ``TARGETS`` speaks of."""

LIMITS = {"distortion": (0.5, 2.0), "poses": (1.5, 3.0), "exposure": (1.0, None), "late_correction": (None, None)}
"""(PSNR dB, localization points) a handled condition may lose against clean handled (None: no target)."""


def reference(rows: Dict[str, Any], var: str) -> Dict[str, Any]:
    """The clean row a variant is compared with: clean with every handling on (with the same pose
    variant when measured) for 'handled', off else; NaNs when the clean rows are missing."""
    clean = rows.get("clean", {})
    if var.startswith("handl") and var not in ("handling off",):
        label = var[var.index("(") :] if "(" in var else ""
        ref = clean.get(f"handling on {label}".strip(), clean.get("handling on"))
    else:
        ref = clean.get("handling off")
    return ref or {"heldout_psnr": float("nan"), "loc3d_accuracy_name": float("nan")}


def summary(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per condition and variant, over the seeds: mean held-out PSNR, 3D localization and grasp
    validity, their mean differences from clean, and (handled rows) whether the target is met."""
    out = []
    seeds = res["seeds"]
    names = [n for n in next(iter(seeds.values()), {}) if n != "clean"] if seeds else []
    for name in ["clean"] + names:
        variants = []
        for rows in seeds.values():
            variants += [v for v, r in rows.get(name, {}).items() if isinstance(r, dict) and v not in variants]
        for var in variants:
            per = [(rows[name][var], reference(rows, var)) for rows in seeds.values() if var in rows.get(name, {})]
            if not per:
                continue
            d_psnr = float(np.mean([r["heldout_psnr"] - ref["heldout_psnr"] for r, ref in per]))
            d_loc = float(np.mean([100 * (r["loc3d_accuracy_name"] - ref["loc3d_accuracy_name"]) for r, ref in per]))
            row = {
                "condition": name,
                "variant": var,
                "seeds": len(per),
                "seed_list": [s for s, rows in seeds.items() if var in rows.get(name, {})],
                "heldout_psnr": float(np.mean([r["heldout_psnr"] for r, _ in per])),
                "d_psnr": d_psnr,
                "loc3d": float(np.mean([r["loc3d_accuracy_name"] for r, _ in per])),
                "d_loc_points": d_loc,
                "grasp_valid": float(np.mean([r["grasp_valid_rate"] for r, _ in per])),
            }
            if all("aligned" in r and "aligned" in ref for r, ref in per):  # the scores in the map's world
                row["aligned"] = {
                    "heldout_psnr": float(np.mean([r["aligned"]["heldout_psnr"] for r, _ in per])),
                    "d_psnr": float(
                        np.mean([r["aligned"]["heldout_psnr"] - ref["aligned"]["heldout_psnr"] for r, ref in per])
                    ),
                    "loc3d": float(np.mean([r["aligned"]["loc3d_accuracy_name"] for r, _ in per])),
                    "d_loc_points": float(
                        np.mean(
                            [
                                100 * (r["aligned"]["loc3d_accuracy_name"] - ref["aligned"]["loc3d_accuracy_name"])
                                for r, ref in per
                            ]
                        )
                    ),
                    "grasp_valid": float(np.mean([r["aligned"]["grasp_valid_rate"] for r, _ in per])),
                }
            if all("test_time" in r and "test_time" in ref for r, ref in per):  # test-time poses of the views
                row["test_time"] = {
                    "heldout_psnr": float(np.mean([r["test_time"]["heldout_psnr"] for r, _ in per])),
                    "d_psnr": float(
                        np.mean([r["test_time"]["heldout_psnr"] - ref["test_time"]["heldout_psnr"] for r, ref in per])
                    ),
                    "moved_cm_mean": float(np.mean([r["test_time"]["moved_cm_mean"] for r, _ in per])),
                    "moved_deg_mean": float(np.mean([r["test_time"]["moved_deg_mean"] for r, _ in per])),
                }
            for key in ("pose_error_input", "pose_error_refined"):
                errs = [r[key] for r, _ in per if key in r]
                if errs:
                    row[key] = {k: float(np.mean([e[k] for e in errs])) for k in errs[0]}
            group = next((g for g, members in GROUPS.items() if name in members), None)
            if var.startswith("handled") and group is not None:
                lim_db, lim_pts = LIMITS[group]
                if group == "poses" and "aligned" in row:  # judged in the map's world (``map_alignment``)
                    d_psnr, d_loc = row["aligned"]["d_psnr"], row["aligned"]["d_loc_points"]
                ok = (lim_db is None or d_psnr >= -lim_db) and (lim_pts is None or d_loc >= -lim_pts)
                # with test-time poses of the held-out views (PSNR only: 3D localization does not use them)
                ok_tt = None
                if group == "poses" and "aligned" in row and "test_time" in row:
                    ok_tt = row["test_time"]["d_psnr"] >= -lim_db and d_loc >= -lim_pts
                if "pose_error_refined" in row and group in ("poses", "late_correction"):
                    # refinement: closer after the best rigid alignment (the world of a refined map may sit
                    # slightly off the truth as a whole); a late correction: closer as it stands
                    kind = "aligned" if group == "poses" else "raw"
                    a, b = row["pose_error_input"], row["pose_error_refined"]
                    closer = all(
                        b[f"{kind}_{k}_mean"] < a[f"{kind}_{k}_mean"] for k in ("translation_cm", "rotation_deg")
                    )
                    ok = ok and closer
                    ok_tt = None if ok_tt is None else ok_tt and closer
                row["target_met"] = ok
                if ok_tt is not None:
                    row["target_met_test_time"] = ok_tt
            out.append(row)
    return out


def markdown(res: Dict[str, Any]) -> str:
    seeds = ", ".join(res["seeds"])
    lines = [
        "# Real cameras: clean vs corrupted vs handled",
        "",
        f"`{res['command']}`"
        + (
            f" and {len(res['combined_from']) - 1} more runs (`combined_from` in the JSON)"
            if len(res.get("combined_from", [])) > 1
            else ""
        )
        + f": {res['scene']['width']}x{res['scene']['height']}, {res['scene']['frames']} frames "
        f"(every {res['holdout_every']}th held out), hfov {res['scene']['hfov_deg']} deg, preset tiny, "
        f"{res['steps']} steps (fixed: the numbers do not depend on machine load), ground-truth teacher, "
        f"{res['threads']} threads; seeds {seeds}; {res['total_s']:.0f} s in all.",
        "Held-out PSNR: renders at the true poses against the clean pinhole images. 3D localization: the "
        "most relevant point of each object's name inside the object. Grasp: best grasp geometrically valid. "
        "'not handled' is compared with clean with every handling off, 'handled' with clean with every "
        "handling on (pose refinement, appearance embedding, lens modelled). Pose errors: mean over the "
        "training keyframes against the ground truth, after the best rigid alignment of the camera centres "
        "(raw in the JSON). 'In the map's world': the same scores with the held-out views' true poses and the "
        "objects moved by the best rigid alignment of the training keyframes' true camera centres onto the "
        "map's (refined) ones, as pose-refinement papers evaluate (a map built from drifting poses sits in "
        "their world, which no refinement can observe); the pose target is judged there, where measured.",
        *(
            [
                "Pose variants (rows '(LABEL)', every handling on plus these overrides): "
                + "; ".join(f"{k}: {json.dumps(v)}" for k, v in res["pose_variants"].items())
            ]
            if res.get("pose_variants")
            else []
        ),
        "",
        "## Summary (mean over the seeds each row was measured on)",
        "",
        "| condition | variant | seeds | held-out PSNR (dB) | vs clean (dB) | 3D localization | vs clean (points) "
        "| best grasp valid | in the map's world: PSNR (vs clean) | 3D (vs clean, points) "
        "| test-time poses: PSNR (vs clean) | pose error input -> refined (cm / deg) | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary(res):
        pe = "-"
        if r["condition"] not in ("clean", "poses", "late_correction"):
            pass  # exact input poses: the drift of refinement is the clean row's
        elif "pose_error_refined" in r:
            a, b = r["pose_error_input"], r["pose_error_refined"]
            pe = (
                f"{a['aligned_translation_cm_mean']:.2f} / {a['aligned_rotation_deg_mean']:.2f} -> "
                f"{b['aligned_translation_cm_mean']:.2f} / {b['aligned_rotation_deg_mean']:.2f}"
            )
        elif "pose_error_input" in r:
            a = r["pose_error_input"]
            pe = f"{a['aligned_translation_cm_mean']:.2f} / {a['aligned_rotation_deg_mean']:.2f} (input)"
        met = {True: "yes", False: "no", None: "-"}[r.get("target_met")]
        if "target_met_test_time" in r:
            met += f" (test-time poses: {'yes' if r['target_met_test_time'] else 'no'})"
        tt = r.get("test_time")
        tt_psnr = f"{tt['heldout_psnr']:.2f} ({tt['d_psnr']:+.2f})" if tt else "-"
        al = r.get("aligned")
        al_psnr = f"{al['heldout_psnr']:.2f} ({al['d_psnr']:+.2f})" if al else "-"
        al_loc = f"{100 * al['loc3d']:.0f}% ({al['d_loc_points']:+.1f})" if al else "-"
        lines.append(
            f"| {r['condition']} | {r['variant']} | {', '.join(r['seed_list'])} | {r['heldout_psnr']:.2f} "
            f"| {r['d_psnr']:+.2f} "
            f"| {100 * r['loc3d']:.0f}% | {r['d_loc_points']:+.1f} | {100 * r['grasp_valid']:.0f}% "
            f"| {al_psnr} | {al_loc} | {tt_psnr} | {pe} | {met} |"
        )
    lines.append("")
    for seed, rows in res["seeds"].items():
        lines += [
            f"## Seed {seed}",
            "",
            "| condition | variant | held-out PSNR (dB) | vs clean (dB) | 3D localization | vs clean (points) "
            "| best grasp valid | wrong names | in the map's world: PSNR / 3D / grasp (alignment cm / deg) "
            "| test-time poses: PSNR (views moved cm / deg) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cond, variants in rows.items():
            label = cond
            if "max_ray_shift_px_if_ignored" in variants:
                label += f" (rays move {variants['max_ray_shift_px_if_ignored']} px if ignored)"
            for var, r in variants.items():
                if not isinstance(r, dict):
                    continue
                ref = reference(rows, var)
                d_psnr = r["heldout_psnr"] - ref["heldout_psnr"]
                d_loc = 100 * (r["loc3d_accuracy_name"] - ref["loc3d_accuracy_name"])
                al, al_ref = r.get("aligned"), ref.get("aligned")
                al_text = "-"
                if al:
                    d_al = f" ({al['heldout_psnr'] - al_ref['heldout_psnr']:+.2f})" if al_ref else ""
                    al_text = (
                        f"{al['heldout_psnr']:.2f}{d_al} / {fmt(al['loc3d_accuracy_name'], 'pct')} / "
                        f"{fmt(al['grasp_valid_rate'], 'pct')} ({al['translation_cm']:.2f} / {al['rotation_deg']:.2f})"
                    )
                tt, tt_ref = r.get("test_time"), ref.get("test_time")
                tt_text = "-"
                if tt:
                    d_tt = f" ({tt['heldout_psnr'] - tt_ref['heldout_psnr']:+.2f})" if tt_ref else ""
                    tt_text = f"{tt['heldout_psnr']:.2f}{d_tt} ({tt['moved_cm_mean']:.2f} / {tt['moved_deg_mean']:.2f})"
                lines.append(
                    f"| {label} | {var} | {fmt(r['heldout_psnr'], 'db')} | {d_psnr:+.2f} "
                    f"| {fmt(r['loc3d_accuracy_name'], 'pct')} | {d_loc:+.0f} "
                    f"| {fmt(r['grasp_valid_rate'], 'pct')} | {', '.join(r.get('wrong', [])) or '-'} | {al_text} "
                    f"| {tt_text} |"
                )
        for cond in ("poses", "late_correction"):
            pose_rows = [
                (var, r) for var, r in rows.get(cond, {}).items() if isinstance(r, dict) and "pose_error_input" in r
            ]
            if not pose_rows:
                continue
            lines += [
                "",
                f"| {cond}: camera pose error (training keyframes) | translation mean / max (cm) "
                "| rotation mean / max (deg) | aligned translation mean (cm) | aligned rotation mean (deg) |",
                "|---|---|---|---|---|",
            ]
            entries = [("input poses", pose_rows[0][1]["pose_error_input"])]
            entries += [
                (f"after ({var})", r["pose_error_refined"]) for var, r in pose_rows if "pose_error_refined" in r
            ]
            for label, e in entries:
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
            f"({t['slowdown_pct']:.1f}% slower; {res.get('timing_note', 'timed on this machine')}).",
            "",
        ]
    study = res.get("pose_refinement_study")
    if study:
        lines += [
            "## Pose refinement settings",
            "",
            study["setup"],
            "",
            "| seed | settings | perturbed keyframes: translation (cm) | rotation (deg) "
            "| exact keyframes moved by: translation (cm) | rotation (deg) | CPU s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in study["rows"]:
            lines.append(
                f"| {r['seed']} | {r['settings']} | {r['pert_in_cm']:.2f} -> {r['pert_out_cm']:.2f} "
                f"| {r['pert_in_deg']:.2f} -> {r['pert_out_deg']:.2f} | {r['exact_drift_cm']:.2f} "
                f"| {r['exact_drift_deg']:.2f} | {r['cpu_s']} |"
            )
        lines.append("")
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
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
    extra = [(label, {**on, **ov}) for label, ov in args.pose_variants]
    rows: Dict[str, Any] = {}
    if "clean" in names:
        rows["clean"] = {}
        variants = [("handling off", HANDLING_OFF), ("handling on", on)]
        for var, ov in variants + [(f"handling on ({label})", ov) for label, ov in extra]:
            if args.variants and not any(var.startswith(v) for v in args.variants):
                continue
            log(f"  clean, {var}")
            rows["clean"][var] = run_one(clean, clean, teacher, ov, settings, log)
            save(rows)
    for name in [n for n in names if n != "clean"]:
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
        variants = [("not handled", ignored, HANDLING_OFF), ("handled", scene, on)]
        if name in args.variant_conditions:
            variants += [(f"handled ({label})", scene, ov) for label, ov in extra]
        for var, sc, ov in variants:
            if args.variants and not any(var.startswith(v) for v in args.variants):
                continue
            log(f"  {name}, {var}")
            correct = var.startswith("handled") and scene.corrected_poses is not None
            rows[name][var] = run_one(sc, truth, teacher, ov, settings, log, correct=correct)
            save(rows)
    timing = None
    if args.timing_steps > 0:
        log(f"  rays/s, all handling on vs off ({args.timing_steps} steps each)")
        timing = time_handling(clean, teacher, settings, on, args.timing_steps)
        log(f"    {timing}")
    return {"rows": rows, "timing": timing}


def combine(paths: List[str], stem: str) -> Dict[str, Any]:
    """One result from the JSON results of runs over different seeds or conditions (same settings
    otherwise): the rows of one seed are merged."""
    docs = [json.load(open(p)) for p in paths]
    res = dict(docs[0])
    res["seeds"] = {}
    for d in docs:
        for seed, rows in d["seeds"].items():
            for name, variants in rows.items():
                res["seeds"].setdefault(seed, {}).setdefault(name, {}).update(variants)
    order = ["clean", *CONDITIONS]
    rank = {
        v: i
        for i, v in enumerate(("max_ray_shift_px_if_ignored", "handling off", "handling on", "not handled", "handled"))
    }
    for rows in res["seeds"].values():
        off = rows.get("clean", {}).get("handling off")
        if off and "aligned" not in off:  # measured before the aligned scores: its map's poses are the truth,
            # so the alignment is the identity and its scores in the map's world are its own
            off["aligned"] = {
                "translation_cm": 0.0,
                "rotation_deg": 0.0,
                **{k: off[k] for k in ("heldout_psnr", "loc3d_accuracy_name", "grasp_valid_rate", "wrong")},
            }
    for seed, rows in res["seeds"].items():  # the conditions and variants in their usual order
        res["seeds"][seed] = {
            name: dict(sorted(rows[name].items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
            for name in sorted(rows, key=lambda n: order.index(n) if n in order else len(order))
        }
    res["conditions"] = {k: v for d in docs for k, v in d.get("conditions", {}).items()}
    measured = {v for rows in res["seeds"].values() for variants in rows.values() for v in variants}
    res["pose_variants"] = {
        k: v
        for d in docs
        for k, v in d.get("pose_variants", {}).items()
        if {f"handling on ({k})", f"handled ({k})"} & measured
    }
    res["timing"] = next((d["timing"] for d in docs if d.get("timing")), None)
    res["total_s"] = sum(d["total_s"] for d in docs)
    # a result that was itself merged names the runs it came from
    res["combined_from"] = [c for d in docs for c in d.get("combined_from", [d["command"]])]
    write(stem, res)
    return res


def run_command(argv: List[str]) -> str:
    """The command line of a run as a shell would take it, without its output path (which names
    this machine's folders)."""
    kept: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            kept.append(a)
    return shlex.join(["python", "bench/real_cameras.py", *kept])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 120 steps per run")
    ap.add_argument("--seeds", default=None, help="comma-separated scene seeds (default 51,52,53; --quick: 51)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 400; --quick: 120)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--height", type=int, default=72)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument(
        "--timing-steps", type=int, default=60, help="steps each of the rays/s comparison (0: skip; first seed only)"
    )
    ap.add_argument(
        "--conditions",
        default=",".join(["clean", *CONDITIONS]),
        help="comma-separated: clean (the reference rows), " + ", ".join(CONDITIONS),
    )
    ap.add_argument(
        "--variants",
        default="",
        help="comma-separated: train only these variants ('handling off', 'handling on', 'not handled', "
        "'handled'; a prefix matches) to spread one seed over processes (default: all)",
    )
    ap.add_argument(
        "--pose-variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
        help="also train clean and the --variant-conditions with every handling on and these overrides "
        "(rows 'handling on (LABEL)', 'handled (LABEL)'), e.g. lr4:trainer.pose_lr=0.0024 (repeatable)",
    )
    ap.add_argument(
        "--variant-conditions",
        default="poses",
        help="comma-separated conditions (besides clean) that get a 'handled (LABEL)' row for each "
        "--pose-variant (default: poses; e.g. " + ",".join(CONDITIONS) + ")",
    )
    ap.add_argument("--out", default="bench/results/real_cameras", help="output stem (.json and .md)")
    ap.add_argument(
        "--combine", nargs="+", metavar="JSON", help="only merge these results (runs of other seeds) into --out"
    )
    args = ap.parse_args(argv)
    if args.combine:
        res = combine(args.combine, args.out)
        print(f"wrote {args.out}.json and {args.out}.md (seeds {', '.join(res['seeds'])})")
        return 0
    seeds = tuple(int(s) for s in (args.seeds or ("51" if args.quick else "51,52,53")).split(","))
    steps = args.steps or (120 if args.quick else 400)
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONDITIONS and c != "clean"]
    if unknown:
        ap.error(f"unknown condition(s) {', '.join(unknown)} (known: {', '.join(CONDITIONS)})")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.variant_conditions = [c.strip() for c in args.variant_conditions.split(",") if c.strip()]
    unknown = [c for c in args.variant_conditions if c not in CONDITIONS]
    if unknown:
        ap.error(f"--variant-conditions: unknown condition(s) {', '.join(unknown)} (known: {', '.join(CONDITIONS)})")
    args.pose_variants = []
    for item in args.pose_variant:
        label, _, items = item.partition(":")
        try:
            ov = {k.strip(): json.loads(v) for k, v in (kv.split("=", 1) for kv in items.split(",") if kv.strip())}
        except ValueError:
            ap.error(f"--pose-variant {item!r}: expected LABEL:KEY=VALUE[,KEY=VALUE] with JSON values")
        if not label or not ov:
            ap.error(f"--pose-variant {item!r}: expected LABEL:KEY=VALUE[,KEY=VALUE]")
        args.pose_variants.append((label, ov))
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
        "command": run_command(argv if argv is not None else sys.argv[1:]),
        "scene": {"width": args.width, "height": args.height, "frames": args.frames, "hfov_deg": HFOV},
        "holdout_every": settings.holdout_every,
        "preset": "tiny",
        "steps": steps,
        "threads": args.threads,
        "handling_on": on,
        "handling_off": HANDLING_OFF,
        "pose_variants": dict(args.pose_variants),
        "conditions": {n: CONDITIONS[n].to_json() for n in names if n != "clean"},
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
