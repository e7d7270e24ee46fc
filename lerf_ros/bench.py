"""The benchmark: how well the whole system finds, localises and grasps objects, and how fast.

One run (``lerf-ros bench`` or ``python bench/run_bench.py``) measures, on seeded synthetic tabletop
scenes (``lerf_ros.data.synthetic``) whose ground truth is known:

Offline, per scene (every ``holdout_every``-th frame held out, the rest train a LERF for a step or
time budget, then the final snapshot is queried through ``lerf_ros.query.QueryEngine``):

- 3D localization: a query is correct when its most relevant returned point lies inside the object's
  oriented box grown by ``grow_3d`` (2 cm). Every object is queried by its class name and by each
  listed synonym. A query that returns nothing (no point above the threshold) is wrong; for those
  the most relevant point at any relevancy is also checked ("argmax" accuracy), which separates a
  threshold problem from a field problem.
- absent objects: a few vocabulary classes not in the scene and a few words outside the vocabulary;
  the highest relevancy they reach and whether anything clears the default threshold (a false
  positive).
- 2D localization on the held-out views, as the LERF paper evaluates it: the field's rendered depth
  is back-projected to 3D points, the language field is evaluated there at each candidate scale,
  relevancy against the canonical negatives gives a map per query (the scale with the highest
  maximum wins), and the query is correct when the map's highest pixel lies inside the object's 2D
  box (from the ground-truth instance map). Only objects with at least ``min_box_pixels`` visible
  pixels in a view are asked about in it.
- relevancy-cloud precision (returned points within ``surface_tol`` (2 cm) of the object's
  ground-truth surface samples) and recall (surface samples within ``surface_tol`` of a returned
  point; the samples cover the whole surface, including the bottom face no camera sees, so recall
  stays below 1 even for a perfect answer).
- grasp validity of the best grasp of each object's name query: its position inside the object's
  box grown by ``grow_grasp`` (1 cm); the fingertips, the palm and the approach corridor behind it
  (gripper box corners, ``lerf_ros.query.grasp`` geometry) all above the table top minus
  ``table_tol``; the opening within the gripper's maximum width.
- query latency (text embeddings already cached, the snapshot's surface and projected features
  already prepared: those one-off costs are reported apart), training rays/s (wall clock and per
  second of process CPU time), teacher seconds per keyframe.

Online (``lerf_ros.mapping.online.OnlineTrainer``, no ROS): the scene's frames are submitted from a
thread at ``online_rate_hz`` (5 Hz) as a live stream, cycling through the trajectory so frames keep
arriving; every ``online_check_every_s`` the newest snapshot answers every object's name query. It
reports the time from the first frame to the first correct answer per object and to all of them
(the check cadence is the time resolution), the training rays/s while frames arrive (measured only
between checks, so the queries' CPU use does not count against training) against the offline rate,
and the resident memory as frames keep streaming (topped up to ``stream_frames`` frames): the
keyframe store is bounded, so memory must level off.

Scene bounds: with ``model.auto_bounds`` (the default) the offline trainer gets them from its
training frames, as ``lerf-ros train`` does, and the online trainer from its first keyframes; set
``model.auto_bounds=false`` with ``model.scene_center``/``model.scene_scale`` to fix both.

The teacher is the synthetic scene's ground truth (``GroundTruthTeacher``: its instance maps and
class labels as seeded embedding vectors), standing in for CLIP and DINO: the numbers measure the
3D system (field, training, surface extraction, relevancy, grasps), not a 2D model's mistakes.

Outputs: ``bench.json`` (``bench_quick.json`` in quick mode) with the settings, the configuration,
the machine, per-scene and aggregate metrics and the targets met, and a short Markdown table
(``bench.md`` / ``bench_quick.md``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

LogFn = Callable[[str], None]

TEACHER_NOTE = ("teacher: the synthetic scene's ground truth (instance maps and class labels as seeded 512-d "
                "vectors) stands in for CLIP/DINO; these numbers measure the 3D system, not a 2D model")

#: Words outside the synthetic vocabulary (and none of its synonyms) used as absent-object queries.
NON_VOCABULARY_WORDS: Tuple[str, ...] = ("giraffe", "laptop", "umbrella", "guitar")

#: Keys of ``result["aggregate"]`` (the test checks every one is present).
AGGREGATE_KEYS: Tuple[str, ...] = (
    "loc3d_accuracy", "loc3d_accuracy_name", "loc3d_accuracy_synonym", "loc3d_argmax_accuracy_name",
    "loc3d_answered_name", "loc2d_accuracy", "loc2d_queries", "precision_mean", "recall_mean",
    "grasp_valid_rate", "grasp_none_rate", "grasp_in_object_rate", "grasp_clear_of_table_rate",
    "grasp_width_ok_rate", "objects_on_surface_fraction", "absent_false_positive_rate", "absent_max_relevancy",
    "present_max_relevancy_median", "query_latency_ms_p50", "query_latency_ms_p95", "query_prepare_ms_mean",
    "teacher_s_per_keyframe",
    "offline_steps_mean", "offline_rays_per_s", "offline_rays_per_cpu_s", "online_rays_per_s",
    "online_rays_per_cpu_s", "online_overhead_pct", "online_overhead_cpu_pct", "online_first_correct_s",
    "online_all_correct_s", "online_objects_correct_fraction", "online_query_latency_ms_p95",
    "online_each_correct_s", "stream_frames", "stream_rss_mb", "stream_rss_growth_after_full_mb",
    "stream_rss_growth_second_half_mb", "stream_store_bounded", "peak_rss_mb",
)

#: Aggregate keys whose values are fractions in [0, 1] (or None when nothing was measured).
FRACTION_KEYS: Tuple[str, ...] = (
    "loc3d_accuracy", "loc3d_accuracy_name", "loc3d_accuracy_synonym", "loc3d_argmax_accuracy_name",
    "loc3d_answered_name", "loc2d_accuracy", "precision_mean", "recall_mean", "grasp_valid_rate",
    "grasp_none_rate", "objects_on_surface_fraction", "grasp_in_object_rate", "grasp_clear_of_table_rate",
    "grasp_width_ok_rate", "absent_false_positive_rate", "absent_max_relevancy", "present_max_relevancy_median",
    "online_objects_correct_fraction",
)


# =============================================================================== settings
@dataclass
class BenchSettings:
    """What one benchmark run does. Distances in metres, times in seconds."""

    mode: str = "quick"
    """'quick' or 'full' (names the output files); 'custom' for anything else."""
    seeds: Tuple[int, ...] = (0, 1)
    """Synthetic scene seeds (one offline evaluation each)."""
    width: int = 96
    height: int = 72
    n_frames: int = 30
    """Frames of each scene's trajectory."""
    preset: str = "tiny"
    overrides: Dict[str, Any] = field(default_factory=dict)
    """Configuration overrides (dotted keys) applied on top of the preset."""
    max_steps: int = 600
    """Offline training steps per scene (fewer when the time budget runs out first)."""
    budget_s: float = 420.0
    """Wall-clock budget of the whole run; training phases shrink to fit it."""
    online_fraction: float = 0.4
    """Share of the budget given to the online phase (the rest: offline scenes)."""
    online_min_s: float = 30.0
    """The online phase runs at least this long (when its checks have not all succeeded)."""
    online_max_s: float = 600.0
    """... and at most this long."""
    online_rate_hz: float = 5.0
    """Frame rate of the emulated live stream."""
    online_check_every_s: float = 10.0
    """Seconds of undisturbed training between two online checks."""
    online_snapshot_every: int = 20
    """Training steps between the online trainer's snapshots."""
    stream_frames: int = 1000
    """Frames streamed in total (the online phase's, then topped up as fast as the trainer takes
    them) before the resident memory is read."""
    holdout_every: int = 8
    """Every this-many-th frame (index 0, 8, ...) is held out of offline training for 2D evaluation."""
    n_absent_vocabulary: int = 3
    """Absent vocabulary classes queried per scene."""
    non_vocabulary_words: Tuple[str, ...] = NON_VOCABULARY_WORDS
    grow_3d: float = 0.02
    grow_grasp: float = 0.01
    surface_tol: float = 0.02
    table_tol: float = 0.005
    min_box_pixels: int = 10
    curve_steps: Tuple[int, ...] = ()
    """Offline steps at which the snapshot is also evaluated (3D queries only): a learning curve."""
    online: bool = True
    """Run the online phase."""
    eval_reserve_s: float = 35.0
    """Initial guess of one scene's non-training time (scene, features, evaluation); later scenes use
    the measured time."""
    threads: int = 2
    """torch intra-op threads."""
    progress: bool = True
    """tqdm progress bars (else log lines only)."""

    def check(self) -> "BenchSettings":
        if not self.seeds:
            raise ValueError("seeds: give at least one scene seed")
        if self.width < 16 or self.height < 12:
            raise ValueError(f"image size {self.width}x{self.height} too small: at least 16x12")
        if self.n_frames < 4:
            raise ValueError(f"n_frames = {self.n_frames}: need at least 4 (some are held out)")
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every = {self.holdout_every}: must be >= 2")
        if self.max_steps < 1:
            raise ValueError(f"max_steps = {self.max_steps}: must be >= 1")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s = {self.budget_s}: must be > 0")
        if not 0 <= self.online_fraction < 1:
            raise ValueError(f"online_fraction = {self.online_fraction}: must be in [0, 1)")
        if self.online_rate_hz <= 0 or self.online_check_every_s <= 0:
            raise ValueError("online_rate_hz and online_check_every_s must be > 0")
        if self.online_max_s < self.online_min_s or self.online_min_s < 0:
            raise ValueError(f"online_min_s ({self.online_min_s}) must be in [0, online_max_s ({self.online_max_s})]")
        if self.threads < 1:
            raise ValueError(f"threads = {self.threads}: must be >= 1")
        return self


def mode_settings(mode: str) -> BenchSettings:
    """The named mode's settings: 'quick' (under 10 minutes on 2 CPU cores) or 'full'."""
    if mode == "quick":
        return BenchSettings()
    if mode == "full":
        return BenchSettings(mode="full", seeds=(0, 1, 2, 3, 4), width=160, height=120, n_frames=60,
                             max_steps=1200, budget_s=4800.0, online_fraction=0.2, online_min_s=60.0,
                             online_max_s=600.0, online_check_every_s=15.0,
                             eval_reserve_s=90.0)
    raise ValueError(f"unknown benchmark mode {mode!r}: 'quick' or 'full'")


# =============================================================================== small helpers
def rss_mb() -> float:
    """Resident memory of this process now (MiB; Linux /proc, else the peak)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB, ``getrusage`` maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (1024.0 if sys.platform != "darwin" else 1024.0 ** 2)


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None


def mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def fraction(flags: Sequence[bool]) -> Optional[float]:
    flags = list(flags)
    return float(np.mean(flags)) if flags else None


def machine_info(threads: int) -> Dict[str, Any]:
    import torch

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch_threads_asked": threads,
            "torch_version": torch.__version__, "cuda_available": bool(torch.cuda.is_available()),
            "python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    try:
        import open3d

        info["open3d"] = open3d.__version__
    except ImportError:
        pass
    try:
        info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# =============================================================================== metric kernels
def min_distances(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N,) distance from each of the (N, 3) points ``a`` to the nearest of the (M, 3) points ``b``
    (inf when ``b`` is empty). Chunked over ``a`` to bound memory at chunk * M."""
    import torch

    a = np.asarray(a, np.float64).reshape(-1, 3)
    b = np.asarray(b, np.float64).reshape(-1, 3)
    if len(a) == 0:
        return np.zeros(0)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    tb = torch.from_numpy(b)
    out = np.empty(len(a))
    for i in range(0, len(a), chunk):
        ta = torch.from_numpy(a[i:i + chunk])
        out[i:i + chunk] = torch.cdist(ta, tb).min(dim=1).values.numpy()
    return out


def precision_recall(returned: np.ndarray, surface: np.ndarray, tol: float) -> Tuple[Optional[float], float]:
    """Precision (fraction of the returned (N, 3) points within ``tol`` of the object's surface
    samples (M, 3); None when nothing was returned) and recall (fraction of the surface samples
    within ``tol`` of a returned point)."""
    returned = np.asarray(returned, np.float64).reshape(-1, 3)
    surface = np.asarray(surface, np.float64).reshape(-1, 3)
    if len(surface) == 0:
        raise ValueError("the object has no ground-truth surface samples")
    if len(returned) == 0:
        return None, 0.0
    precision = float(np.mean(min_distances(returned, surface) <= tol))
    recall = float(np.mean(min_distances(surface, returned) <= tol))
    return precision, recall


def gripper_corners(pose: np.ndarray, width: float, gripper) -> np.ndarray:
    """(8, 3) world corners of the volume a grasp's gripper sweeps: the fingertips (gripper z = 0)
    and the far end of the approach corridor behind the palm (z = -(finger_depth +
    approach_clearance)), each at +-(width / 2 + finger_thickness) along the closing axis y and
    +-finger_breadth / 2 along x. The volume is a box, so its lowest point is a corner."""
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"grasp pose must be 4x4, got shape {pose.shape}")
    y = width / 2.0 + gripper.finger_thickness
    x = gripper.finger_breadth / 2.0
    back = -(gripper.finger_depth + gripper.approach_clearance)
    local = np.array([[sx * x, sy * y, z] for z in (0.0, back) for sx in (-1, 1) for sy in (-1, 1)])
    return local @ pose[:3, :3].T + pose[:3, 3]


def grasp_checks(pose: np.ndarray, width: float, obj, gripper, max_width: float, grow: float,
                 table_z: float, table_tol: float) -> Dict[str, Any]:
    """Validity of one grasp on ``obj`` (a ``SceneObject``): 'in_object' (origin inside the box
    grown by ``grow``), 'clear_of_table' (every gripper corner (``gripper_corners``) at or above
    ``table_z - table_tol``), 'width_ok' (opening <= ``max_width``), 'valid' (all three), and
    'lowest_z' (m)."""
    pose = np.asarray(pose, np.float64)
    in_object = bool(obj.contains(pose[None, :3, 3], grow)[0])
    lowest = float(gripper_corners(pose, float(width), gripper)[:, 2].min())
    clear = lowest >= table_z - table_tol
    width_ok = float(width) <= max_width + 1e-9
    return {"in_object": in_object, "clear_of_table": bool(clear), "width_ok": bool(width_ok),
            "valid": bool(in_object and clear and width_ok), "lowest_z": lowest, "width": float(width)}


def box_2d(instance: np.ndarray, instance_id: int, min_pixels: int = 1) -> Optional[Tuple[int, int, int, int]]:
    """Inclusive pixel box (col0, row0, col1, row1) of the pixels labelled ``instance_id``, or None
    when fewer than ``min_pixels`` are."""
    rows, cols = np.nonzero(np.asarray(instance) == instance_id)
    if len(rows) < max(1, min_pixels):
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def in_box_2d(pixel: Tuple[int, int], box: Tuple[int, int, int, int]) -> bool:
    """Whether (row, col) lies in the inclusive box (col0, row0, col1, row1)."""
    r, c = pixel
    return box[0] <= c <= box[2] and box[1] <= r <= box[3]


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """(H * W, 3) world points of every pixel centre of a z-depth image (H, W) (OpenCV camera,
    pixel centres at i + 0.5), row-major."""
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    H, W = depth.shape
    K = np.asarray(K, np.float64)
    c2w = np.asarray(c2w, np.float64)
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = np.stack([x * depth, y * depth, depth], axis=-1).reshape(-1, 3)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def relevancy_maps_2d(snapshot, K: np.ndarray, c2w: np.ndarray, height: int, width: int, texts: Sequence[str],
                      text_cache, canonical: Sequence[str], scales: Sequence[float], temperature: float
                      ) -> Dict[str, Tuple[np.ndarray, float]]:
    """LERF 2D relevancy maps of a view: rendered depth -> back-projected points -> the language
    field at each candidate scale -> relevancy against the canonical negatives (the query left
    out). Per text: ((H, W) map at the scale whose map peaks highest, that scale)."""
    import torch

    from lerf_ros.teachers.text import relevancy

    if not texts:
        return {}
    rendered = snapshot.render(K, c2w, height, width)
    pts = torch.from_numpy(backproject(rendered["depth"].cpu().numpy(), K, c2w).astype(np.float32))
    embs = {t: (text_cache.query(t), text_cache.negatives(canonical=canonical, exclude=[t])) for t in texts}
    best: Dict[str, Tuple[np.ndarray, float]] = {}
    for s in scales:
        phi = snapshot.language(pts, torch.tensor(float(s))).float().cpu()
        for t, (q, negs) in embs.items():
            rel = relevancy(phi, q, negs, temperature=temperature).numpy()
            if t not in best or rel.max() > best[t][0].max():
                best[t] = (rel.reshape(height, width), float(s))
    return best


# =============================================================================== phases
class _Progress:
    """tqdm bars when enabled, else nothing (log lines carry the rates)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def bar(self, **kw):
        from tqdm import tqdm

        return tqdm(disable=not self.enabled, dynamic_ncols=True, leave=False, **kw)


def build_config(settings: BenchSettings):
    """The LERF configuration of every phase: the preset, the ground-truth teacher, the overrides."""
    from lerf_ros.config import preset

    cfg = preset(settings.preset).override({"teacher.kind": "ground_truth", "device": "cpu"})
    if settings.overrides:
        cfg = cfg.override(settings.overrides)
    return cfg


def train_offline(scene, cfg, teacher, settings: BenchSettings, time_cap_s: float, progress: _Progress,
                  log: LogFn):
    """Teacher features for the training frames, then up to ``settings.max_steps`` steps (or
    ``time_cap_s`` seconds of training). Returns (trainer, stats dict)."""
    from lerf_ros.mapping.dataset import TrainingViews, estimate_scene_bounds
    from lerf_ros.mapping.trainer import Trainer
    from lerf_ros.teachers.features import compute_frame_features

    train_idx = [i for i in range(len(scene.frames)) if i % settings.holdout_every != 0]
    if cfg.model.auto_bounds:  # as ``lerf-ros train`` does: bounds from all the training frames
        center, scale = estimate_scene_bounds([scene.frames[i] for i in train_idx])
        cfg = cfg.override({"model.scene_center": center, "model.scene_scale": scale})
    views = TrainingViews(recency_boost=0.0)
    teacher_times = []
    for i in train_idx:
        t0 = time.perf_counter()
        feats = compute_frame_features(teacher, scene.frames[i], cfg.teacher)
        teacher_times.append(time.perf_counter() - t0)
        views.add(i, scene.frames[i], feats)
    trainer = Trainer(cfg, teacher.clip_dim, teacher.dino_dim, views, teacher=teacher.description)
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
            stats = trainer.step()
            dt = time.perf_counter() - t0
            train_s += dt
            if trainer.step_count > warmup:
                wall_meas += dt
                cpu_meas += time.process_time() - c0
                steps_meas += 1
            bar.update(1)
            bar.set_postfix({"rays/s": f"{trainer.rays_per_second:.0f}", "psnr": f"{stats['psnr']:.1f}"},
                            refresh=False)
            if trainer.step_count in settings.curve_steps and trainer.step_count < settings.max_steps:
                ev = evaluate_snapshot(scene, trainer.snapshot(), cfg, teacher, settings, progress, with_2d=False)
                curve.append(_curve_point(trainer.step_count, train_s, ev))
                log(f"seed {scene.seed} step {trainer.step_count}: 3D names "
                    f"{_fmt(curve[-1]['loc3d_accuracy_name'], 'pct')}, wrong: {', '.join(curve[-1]['wrong']) or '-'}")
            if train_s >= time_cap_s:
                break
    finally:
        bar.close()
    rays = cfg.trainer.rays_per_batch
    if steps_meas > 0:
        rps, rpc = steps_meas * rays / wall_meas, steps_meas * rays / max(cpu_meas, 1e-9)
    else:
        rps, rpc = trainer.step_count * rays / max(train_s, 1e-9), None
    out = {"steps": trainer.step_count, "train_s": train_s, "rays_per_s": rps, "rays_per_cpu_s": rpc,
           "scene_center": list(cfg.model.scene_center), "scene_scale": cfg.model.scene_scale,
           "final_batch_psnr": stats.get("psnr"), "final_loss": stats.get("loss"),
           "train_frames": len(train_idx), "teacher_s_per_keyframe": float(np.mean(teacher_times)),
           "teacher_s_per_keyframe_max": float(np.max(teacher_times)), "stopped_by": (
               "steps" if trainer.step_count >= settings.max_steps else "time budget"), "curve": curve}
    log(f"seed {scene.seed}: {trainer.step_count} steps in {train_s:.0f} s ({out['stopped_by']}), "
        f"{rps:.0f} rays/s" + (f", {rpc:.0f} rays per CPU-s" if rpc else "") +
        f"; teacher {1000 * out['teacher_s_per_keyframe']:.1f} ms/keyframe")
    return trainer, out


def _curve_point(step: int, train_s: float, ev: Dict[str, Any]) -> Dict[str, Any]:
    m = ev["metrics"]
    return {"step": step, "train_s": train_s,
            **{k: m[k] for k in ("loc3d_accuracy_name", "loc3d_argmax_accuracy_name", "precision_mean", "recall_mean",
                                 "grasp_valid_rate", "absent_false_positive_rate", "objects_on_surface_fraction")},
            "max_relevancy": {o["name"]: o["max_relevancy"] for o in ev["objects"]},
            "wrong": [o["name"] for o in ev["objects"] if not o["correct"]]}


def absent_words(scene, teacher, settings: BenchSettings) -> List[Tuple[str, str]]:
    """[(word, kind)] of absent-object queries: 'absent_class' (vocabulary classes not in the scene,
    chosen by the scene seed) and 'non_vocabulary' (words the teacher maps to no class)."""
    absent = scene.absent_classes()
    rng = np.random.default_rng([int(scene.seed), 0xAB5])
    pick = [absent[i] for i in sorted(rng.choice(len(absent), size=min(settings.n_absent_vocabulary, len(absent)),
                                                 replace=False))]
    words = [(w, "absent_class") for w in pick]
    for w in settings.non_vocabulary_words:
        if getattr(teacher, "class_index", lambda _t: None)(w) is not None:
            raise ValueError(f"'{w}' names a class of the synthetic vocabulary: not a non-vocabulary word")
        words.append((w, "non_vocabulary"))
    return words


def evaluate_snapshot(scene, snapshot, cfg, teacher, settings: BenchSettings, progress: _Progress,
                      with_2d: bool = True) -> Dict[str, Any]:
    """Every metric of one trained snapshot on its scene (see the module docstring); ``with_2d``
    False skips the held-out 2D evaluation."""
    from lerf_ros.query import QueryEngine

    qc = cfg.query
    engine = QueryEngine(qc, teacher.encode_text)
    engine.set_snapshot(snapshot)
    absent = absent_words(scene, teacher, settings)
    phrases = [p for o in scene.objects for p in o.phrases()] + [w for w, _ in absent]
    engine.texts.embed(list(dict.fromkeys(phrases + list(qc.canonical_phrases))))  # latency excludes text encoding
    t0 = time.perf_counter()
    prep = engine.prepare()
    prep_ms = 1000 * (time.perf_counter() - t0)
    surface = engine.surface()
    n_surface = 0 if surface is None else len(surface)
    surface_xyz = np.zeros((0, 3)) if surface is None else surface.xyz

    queries: List[Dict[str, Any]] = []
    objects: List[Dict[str, Any]] = []
    for obj in scene.objects:
        rec: Dict[str, Any] = {
            "name": obj.name, "instance_id": obj.instance_id, "size_m": [round(float(s), 4) for s in obj.size],
            # candidate surface points on the object: 0 means surface extraction missed it
            "surface_points_on_object": int(obj.contains(surface_xyz, settings.grow_3d).sum())}
        for j, phrase in enumerate(obj.phrases()):
            r = engine.query(phrase)
            top = r.points[0] if r.success and len(r.points) else None
            correct = bool(top is not None and obj.contains(top[None], settings.grow_3d)[0])
            q = {"object": obj.name, "text": phrase, "kind": "name" if j == 0 else "synonym", "answered": r.success,
                 "correct": correct, "max_relevancy": r.max_relevancy, "scale": r.scale, "points": int(len(r.points)),
                 "latency_ms": r.timings.get("total", 0.0), "field_ms": r.timings.get("field", 0.0),
                 "cluster_ms": r.timings.get("cluster", 0.0), "text_ms": r.timings.get("text", 0.0)}
            if top is not None:
                q["top_point"] = [round(float(x), 4) for x in top]
                q["top_distance_to_center_m"] = float(np.linalg.norm(top - obj.center))
            queries.append(q)
            if j != 0:
                continue
            rec.update({"answered": r.success, "correct": correct, "max_relevancy": r.max_relevancy,
                        "scale": r.scale, "points": int(len(r.points)), "message": r.message})
            # argmax accuracy: the most relevant surface point whatever its relevancy
            if r.success:
                rec["argmax_correct"] = correct
            elif r.step >= 0 and n_surface:
                d = engine.query(phrase, threshold=1e-6, max_grasps=1)
                rec["argmax_correct"] = bool(d.success and len(d.points)
                                             and obj.contains(d.points[:1], settings.grow_3d)[0])
            else:
                rec["argmax_correct"] = False
            prec, recall = precision_recall(r.points, obj.surface_points, settings.surface_tol)
            rec["precision"], rec["recall"] = prec, recall
            if r.grasps:
                g = r.grasps[0]
                rec["grasp"] = grasp_checks(g.pose, g.width, obj, engine.gripper, qc.gripper_max_width,
                                            settings.grow_grasp, float(scene.table_height), settings.table_tol)
                rec["grasp"].update({"returned": True, "kind": g.kind, "score": float(g.score)})
            else:
                # the planner's reason is the tail of the answer's message (or why nothing was answered)
                note = r.message.split("; ")[-1] if r.success else f"query not answered: {r.message}"
                rec["grasp"] = {"returned": False, "valid": False, "in_object": False, "clear_of_table": False,
                                "width_ok": False, "note": note}
        objects.append(rec)

    absent_res = []
    for word, kind in absent:
        r = engine.query(word)
        absent_res.append({"text": word, "kind": kind, "max_relevancy": r.max_relevancy,
                           "above_threshold": bool(r.success), "points": int(len(r.points)),
                           "latency_ms": r.timings.get("total", 0.0)})
        queries.append({"object": None, "text": word, "kind": kind, "answered": r.success, "correct": not r.success,
                        "max_relevancy": r.max_relevancy, "latency_ms": r.timings.get("total", 0.0),
                        "field_ms": r.timings.get("field", 0.0), "cluster_ms": r.timings.get("cluster", 0.0),
                        "text_ms": r.timings.get("text", 0.0)})

    # 2D localization on the held-out views
    views2d = []
    held = [i for i in range(len(scene.frames)) if i % settings.holdout_every == 0] if with_2d else []
    bar = progress.bar(total=len(held), desc=f"2D held-out seed {scene.seed}", unit="view")
    t2d = time.perf_counter()
    try:
        for i in held:
            f = scene.frames[i]
            boxes = {o.name: box_2d(f.instance, o.instance_id, settings.min_box_pixels) for o in scene.objects}
            visible = [n for n, b in boxes.items() if b is not None]
            maps = relevancy_maps_2d(snapshot, f.K, f.c2w, f.height, f.width, visible, engine.texts,
                                     qc.canonical_phrases, qc.scales, qc.temperature)
            for name in visible:
                rel, s = maps[name]
                r_, c_ = np.unravel_index(int(np.argmax(rel)), rel.shape)
                views2d.append({"view": i, "object": name, "correct": in_box_2d((int(r_), int(c_)), boxes[name]),
                                "max_relevancy": float(rel.max()), "scale": s, "argmax_pixel": [int(r_), int(c_)],
                                "box": list(boxes[name])})
            bar.update(1)
    finally:
        bar.close()
    t2d = time.perf_counter() - t2d

    lat = [q["latency_ms"] for q in queries]
    metrics = {
        **_answer_metrics(objects, queries, views2d, absent_res),
        "query_latency_ms_p50": percentile(lat, 50),
        "query_latency_ms_p95": percentile(lat, 95),
        "query_field_ms_p50": percentile([q["field_ms"] for q in queries], 50),
        "query_cluster_ms_p50": percentile([q["cluster_ms"] for q in queries], 50),
        "query_text_ms_p50": percentile([q["text_ms"] for q in queries], 50),
        "query_prepare_ms": prep_ms,
        "query_prepare_surface_ms": prep["surface"],
        "query_prepare_features_ms": prep["features"],
        "surface_points": n_surface,
        "eval_2d_s": t2d,
        "threshold": qc.threshold,
    }
    return {"metrics": metrics, "objects": objects, "absent": absent_res, "queries": queries, "views_2d": views2d}


def _stream_frame(scene, k: int, rate_hz: float, start_stamp: float):
    """Frame ``k`` of an endless stream cycling through the scene's trajectory: fresh arrays (as a
    camera driver would deliver) and a stamp ``k / rate_hz`` after the start."""
    f = scene.frames[k % len(scene.frames)]
    return dataclasses.replace(f, rgb=f.rgb.copy(), depth=None if f.depth is None else f.depth.copy(),
                               instance=None if f.instance is None else f.instance.copy(),
                               stamp=start_stamp + k / rate_hz, index=k, meta=dict(f.meta, stream_index=k))


class _Feeder:
    """Submits stream frames to an online trainer from a thread, at a fixed rate or as fast as it
    takes them (``rate_hz`` None)."""

    def __init__(self, trainer, scene, rate_hz: Optional[float], start_index: int = 0,
                 limit: Optional[int] = None, stamp_rate_hz: float = 5.0) -> None:
        self.trainer, self.scene, self.rate_hz, self.limit = trainer, scene, rate_hz, limit
        self.stamp_rate_hz = stamp_rate_hz
        self.next_index = start_index
        self.kept = 0
        self.rejected = 0
        self.last_reason = ""
        self.first_submit: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench_feeder", daemon=True)

    def start(self) -> "_Feeder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30.0)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        t0 = time.perf_counter()
        n0 = self.next_index
        while not self._stop.is_set():
            if self.limit is not None and self.next_index >= self.limit:
                return
            frame = _stream_frame(self.scene, self.next_index, self.stamp_rate_hz, 100.0)
            if self.first_submit is None:
                self.first_submit = time.perf_counter()
            res = self.trainer.submit(frame)
            self.kept += int(res.kept)
            self.rejected += int(res.rejected)
            if res.rejected:
                self.last_reason = res.reason
            self.next_index += 1
            if self.rate_hz:
                wait = t0 + (self.next_index - n0) / self.rate_hz - time.perf_counter()
                if wait > 0:
                    self._stop.wait(wait)


def run_online(scene, cfg, settings: BenchSettings, time_cap_s: float, progress: _Progress, log: LogFn
               ) -> Dict[str, Any]:
    """The online phase (see the module docstring) on one scene."""
    from lerf_ros.mapping.online import OnlineTrainer
    from lerf_ros.query import QueryEngine
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    tmp = tempfile.mkdtemp(prefix="lerf_bench_")
    messages: List[str] = []

    def trainer_log(level: str, text: str) -> None:
        if level != "info":
            messages.append(f"{level}: {text}")
            log(f"online trainer {level}: {text}")

    # Periodic checkpoints off (they would cost the online side time the offline side does not
    # pay) and no step limit within the phase.
    ocfg = cfg.override({"output_dir": tmp, "trainer.checkpoint_every": 0,
                         "trainer.max_steps": max(cfg.trainer.max_steps, 10 ** 7)})
    teacher = GroundTruthTeacher(scene)
    ot = OnlineTrainer(ocfg, teacher=teacher, log=trainer_log, snapshot_every=settings.online_snapshot_every)
    engine = QueryEngine(ocfg.query, teacher.encode_text)
    names = [o.name for o in scene.objects]
    engine.texts.embed(names + list(ocfg.query.canonical_phrases))
    rays = ocfg.trainer.rays_per_batch
    first_correct: Dict[str, Optional[float]] = {n: None for n in names}
    checks: List[Dict[str, Any]] = []
    windows: List[Dict[str, float]] = []
    memory: List[Dict[str, float]] = []
    latencies: List[float] = []
    all_correct_s: Optional[float] = None
    rss0 = rss_mb()
    ot.start()
    feeder = _Feeder(ot, scene, settings.online_rate_hz, stamp_rate_hz=settings.online_rate_hz).start()
    t_begin = time.perf_counter()
    bar = progress.bar(total=int(time_cap_s), desc=f"online seed {scene.seed}", unit="s")

    origin: List[float] = []  # time of the stream's first frame

    def sample_memory(tag: str) -> None:
        if not origin:
            origin.append(feeder.first_submit or t_begin)
        st = ot.store.stats()
        memory.append({"t_s": time.perf_counter() - origin[0], "frames": feeder.next_index,
                       "rss_mb": rss_mb(), "keyframes": st["count"], "store_mb": st["bytes"] / 2**20,
                       "evicted": st["evicted"], "phase": tag})

    try:
        while True:
            elapsed = time.perf_counter() - t_begin
            if elapsed >= time_cap_s or (all_correct_s is not None and elapsed >= settings.online_min_s):
                break
            # undisturbed training while frames arrive
            w0, s0, c0 = time.perf_counter(), ot.step, time.process_time()
            time.sleep(min(settings.online_check_every_s, max(0.5, time_cap_s - elapsed)))
            w1, s1, c1 = time.perf_counter(), ot.step, time.process_time()
            if s0 > 0 and s1 > s0:
                windows.append({"wall_s": w1 - w0, "cpu_s": c1 - c0, "steps": s1 - s0})
            sample_memory("online")
            snap = ot.latest_snapshot
            t_rel = time.perf_counter() - (feeder.first_submit or t_begin)
            if snap is None:
                checks.append({"t_s": t_rel, "step": ot.step, "note": "no snapshot yet",
                               "keyframes": ot.status().keyframes})
                bar.update(int(time.perf_counter() - t_begin) - bar.n)
                continue
            engine.set_snapshot(snap)
            tp = time.perf_counter()
            prep = engine.prepare()
            prep_ms = 1000 * (time.perf_counter() - tp)
            correct = {}
            for obj in scene.objects:
                r = engine.query(obj.name)
                latencies.append(r.timings.get("total", 0.0))
                correct[obj.name] = bool(r.success and len(r.points)
                                         and obj.contains(r.points[:1], settings.grow_3d)[0])
            t_ans = time.perf_counter() - (feeder.first_submit or t_begin)
            for n, ok in correct.items():
                if ok and first_correct[n] is None:
                    first_correct[n] = t_ans
            if all(correct.values()) and all_correct_s is None:
                all_correct_s = t_ans
            surf = engine.surface()
            checks.append({"t_s": t_ans, "snapshot_step": int(snap.step), "step_now": ot.step,
                           "surface_step": -1 if surf is None else int(surf.step),
                           "surface_points": 0 if surf is None else len(surf), "prepare_ms": prep_ms,
                           "prepare_surface_ms": prep["surface"], "keyframes": ot.status().keyframes,
                           "frames": feeder.next_index, "correct": sorted(n for n, ok in correct.items() if ok)})
            bar.update(int(time.perf_counter() - t_begin) - bar.n)
            bar.set_postfix({"step": ot.step, "correct": f"{sum(correct.values())}/{len(correct)}",
                             "kf": ot.status().keyframes}, refresh=False)
            log(f"online t={t_ans:5.0f} s: snapshot step {snap.step} (surface of step "
                f"{checks[-1]['surface_step']}), {sum(correct.values())}/{len(correct)} objects correct, "
                f"{ot.status().keyframes} keyframes, {feeder.next_index} frames streamed")
        online_s = time.perf_counter() - (feeder.first_submit or t_begin)
        feeder.stop()
        frames_online = feeder.next_index
        kept, rejected = feeder.kept, feeder.rejected
        # top up the stream for the memory number: as fast as the trainer takes frames
        t_mem = time.perf_counter()
        if feeder.next_index < settings.stream_frames:
            feeder = _Feeder(ot, scene, None, start_index=feeder.next_index, limit=settings.stream_frames,
                             stamp_rate_hz=settings.online_rate_hz).start()
            mbar = progress.bar(total=settings.stream_frames, initial=feeder.next_index, desc="stream (memory)",
                                unit="frame")
            while not feeder.done():
                time.sleep(1.0)
                mbar.update(feeder.next_index - mbar.n)
                if not memory or feeder.next_index - memory[-1]["frames"] >= 50:
                    sample_memory("top-up")
            mbar.close()
            feeder.stop()
            kept, rejected = kept + feeder.kept, rejected + feeder.rejected
        stream_s = time.perf_counter() - t_mem
        sample_memory("end")
        st = ot.store.stats()
        status = ot.status()
        bounds = {"scene_center": list(ot.cfg.model.scene_center), "scene_scale": ot.cfg.model.scene_scale}
    finally:
        bar.close()
        feeder.stop()
        ot.close()
        shutil.rmtree(tmp, ignore_errors=True)

    wall = sum(w["wall_s"] for w in windows)
    cpu = sum(w["cpu_s"] for w in windows)
    steps = sum(w["steps"] for w in windows)
    full_at = next((m for m in memory if m["keyframes"] >= ocfg.keyframes.max_keyframes), None)
    growth = (memory[-1]["rss_mb"] - full_at["rss_mb"]) if full_at is not None else None
    # over the second half of the stream (the query engine's caches are warm by then)
    half = next((m for m in memory if m["frames"] >= memory[-1]["frames"] / 2), None) if memory else None
    growth_half = memory[-1]["rss_mb"] - half["rss_mb"] if half is not None and half is not memory[-1] else None
    times = list(first_correct.values())
    res = {
        "seed": scene.seed, "rate_hz": settings.online_rate_hz, "time_cap_s": time_cap_s, "online_s": online_s,
        "first_correct_s": first_correct,
        "first_correct_any_s": min([t for t in first_correct.values() if t is not None], default=None),
        "each_correct_s": max(times) if times and all(t is not None for t in times) else None,
        "all_correct_s": all_correct_s,
        "objects_correct_fraction": float(np.mean([t is not None for t in first_correct.values()])),
        "check_every_s": settings.online_check_every_s, "checks": checks,
        "rays_per_s": steps * rays / wall if wall > 0 and steps else None,
        "rays_per_cpu_s": steps * rays / cpu if cpu > 0 and steps else None,
        "measured_steps": steps, "measured_wall_s": wall, "final_step": status.step,
        "query_latency_ms_p50": percentile(latencies, 50), "query_latency_ms_p95": percentile(latencies, 95),
        "frames_streamed_online": frames_online, "frames_streamed": feeder.next_index, "frames_kept": kept,
        "frames_rejected": rejected,
        "stream_topup_s": stream_s, "store": {k: st[k] for k in ("count", "bytes", "with_features", "feature_bytes",
                                                                 "max_keyframes", "max_bytes", "added", "evicted")},
        "rss_start_mb": rss0, "rss_end_mb": memory[-1]["rss_mb"] if memory else rss_mb(),
        "rss_growth_after_store_full_mb": growth, "rss_growth_second_half_mb": growth_half,
        "memory_samples": memory,
        "store_bounded": bool(st["count"] <= st["max_keyframes"] and st["bytes"] <= st["max_bytes"]),
        "trainer_messages": messages[:20], **bounds,
    }
    return res


# =============================================================================== the run
def _answer_metrics(objects: List[Dict[str, Any]], queries: List[Dict[str, Any]], views2d: List[Dict[str, Any]],
                    absent: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Localization, relevancy-cloud and grasp metrics of a set of evaluated objects, queries, 2D
    views and absent-object queries (one scene's, or all scenes' pooled)."""
    names = [q for q in queries if q["kind"] == "name"]
    syn = [q for q in queries if q["kind"] == "synonym"]
    return {
        "loc3d_accuracy": fraction([q["correct"] for q in names + syn]),
        "loc3d_accuracy_name": fraction([q["correct"] for q in names]),
        "loc3d_accuracy_synonym": fraction([q["correct"] for q in syn]),
        "loc3d_argmax_accuracy_name": fraction([o["argmax_correct"] for o in objects]),
        "loc3d_answered_name": fraction([o["answered"] for o in objects]),
        "loc2d_accuracy": fraction([v["correct"] for v in views2d]),
        "loc2d_queries": len(views2d),
        "precision_mean": mean_or_none([o["precision"] for o in objects]),
        "recall_mean": mean_or_none([o["recall"] for o in objects]),
        "grasp_valid_rate": fraction([o["grasp"]["valid"] for o in objects]),
        "grasp_none_rate": fraction([not o["grasp"].get("returned", False) for o in objects]),
        "objects_on_surface_fraction": fraction([o["surface_points_on_object"] > 0 for o in objects]),
        "grasp_in_object_rate": fraction([o["grasp"]["in_object"] for o in objects]),
        "grasp_clear_of_table_rate": fraction([o["grasp"]["clear_of_table"] for o in objects]),
        "grasp_width_ok_rate": fraction([o["grasp"]["width_ok"] for o in objects]),
        "absent_false_positive_rate": fraction([a["above_threshold"] for a in absent]),
        "absent_max_relevancy": max([a["max_relevancy"] for a in absent], default=None),
        "present_max_relevancy_median": percentile([o["max_relevancy"] for o in objects], 50),
    }


def _aggregate(scenes: List[Dict[str, Any]], online: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    objs = [o for s in scenes for o in s["objects"]]
    queries = [q for s in scenes for q in s["queries"]]
    absent = [a for s in scenes for a in s["absent"]]
    v2d = [v for s in scenes for v in s["views_2d"]]
    off = [s["offline"] for s in scenes]
    offline_rps = mean_or_none([o["rays_per_s"] for o in off])
    offline_rpc = mean_or_none([o["rays_per_cpu_s"] for o in off])
    agg: Dict[str, Any] = {
        **_answer_metrics(objs, queries, v2d, absent),
        "query_latency_ms_p50": percentile([q["latency_ms"] for q in queries], 50),
        "query_latency_ms_p95": percentile([q["latency_ms"] for q in queries], 95),
        "query_prepare_ms_mean": mean_or_none([s["metrics"]["query_prepare_ms"] for s in scenes]),
        "teacher_s_per_keyframe": mean_or_none([o["teacher_s_per_keyframe"] for o in off]),
        "offline_steps_mean": mean_or_none([o["steps"] for o in off]),
        "offline_rays_per_s": offline_rps,
        "offline_rays_per_cpu_s": offline_rpc,
        "n_objects": len(objs), "n_queries": len(queries), "n_scenes": len(scenes),
    }
    on = online or {}
    agg["online_rays_per_s"] = on.get("rays_per_s")
    agg["online_rays_per_cpu_s"] = on.get("rays_per_cpu_s")
    # overhead against the offline rate of the same scene (same images, same machine load period)
    ref = next((s["offline"] for s in scenes if online and s["seed"] == online["seed"]), None)
    rps_ref = ref["rays_per_s"] if ref else offline_rps
    rpc_ref = ref["rays_per_cpu_s"] if ref else offline_rpc
    agg["online_overhead_pct"] = (100.0 * (1.0 - on["rays_per_s"] / rps_ref)
                                  if on.get("rays_per_s") and rps_ref else None)
    agg["online_overhead_cpu_pct"] = (100.0 * (1.0 - on["rays_per_cpu_s"] / rpc_ref)
                                      if on.get("rays_per_cpu_s") and rpc_ref else None)
    agg["online_first_correct_s"] = on.get("first_correct_any_s")
    agg["online_each_correct_s"] = on.get("each_correct_s")
    agg["online_all_correct_s"] = on.get("all_correct_s")
    agg["online_objects_correct_fraction"] = on.get("objects_correct_fraction")
    agg["online_query_latency_ms_p95"] = on.get("query_latency_ms_p95")
    agg["stream_frames"] = on.get("frames_streamed")
    agg["stream_rss_mb"] = on.get("rss_end_mb")
    agg["stream_rss_growth_after_full_mb"] = on.get("rss_growth_after_store_full_mb")
    agg["stream_rss_growth_second_half_mb"] = on.get("rss_growth_second_half_mb")
    agg["stream_store_bounded"] = on.get("store_bounded")
    agg["peak_rss_mb"] = peak_rss_mb()
    return agg


def _targets(agg: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's targets for the full mode, each with the value reached and whether it is met."""

    def t(value, ok, goal):
        return {"value": value, "goal": goal, "met": None if value is None else bool(ok)}

    v = agg
    return {
        "loc3d_name": t(v["loc3d_accuracy_name"], (v["loc3d_accuracy_name"] or 0) >= 0.95, ">= 0.95"),
        "absent_never_above_threshold": t(v["absent_false_positive_rate"], v["absent_false_positive_rate"] == 0, "== 0"),
        "grasp_valid": t(v["grasp_valid_rate"], (v["grasp_valid_rate"] or 0) >= 0.9, ">= 0.9"),
        "first_correct_s": t(v["online_each_correct_s"], (v["online_each_correct_s"] or 1e9) <= 300,
                             "<= 300 s (each object)"),
        "query_p95_ms": t(v["query_latency_ms_p95"], (v["query_latency_ms_p95"] or 1e9) < 300, "< 300 ms"),
        # per CPU-second: the wall-clock rates move with other processes' load on a shared machine
        "online_overhead_pct": t(v["online_overhead_cpu_pct"], (v["online_overhead_cpu_pct"] or 1e9) < 15,
                                 "< 15 % (per CPU-s)"),
        "store_bounded": t(v["stream_store_bounded"], bool(v["stream_store_bounded"]), "store within its bounds"),
    }


def _fmt(x: Any, kind: str = "") -> str:
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
    lines = [f"# lerf_ros benchmark ({s['mode']})", "",
             f"{len(result['scenes'])} synthetic scenes (seeds {', '.join(map(str, s['seeds']))}), "
             f"{s['width']}x{s['height']}, {s['n_frames']} frames, preset `{s['preset']}`, "
             f"{result['machine']['cpu_count']} CPUs, torch {result['machine']['torch_version']} "
             f"({result['machine']['torch_threads']} threads); run took {result['wall_s']:.0f} s.",
             f"Teacher: {TEACHER_NOTE.split(': ', 1)[1]}.", "",
             f"Command: `{result['command']}`", "",
             "| metric | value | target (full mode) |", "|---|---|---|"]
    tg = result["targets"]
    rows = [
        ("3D localization, names", _fmt(a["loc3d_accuracy_name"], "pct"), tg["loc3d_name"]),
        ("3D localization, synonyms", _fmt(a["loc3d_accuracy_synonym"], "pct"), None),
        ("3D argmax (ignoring threshold), names", _fmt(a["loc3d_argmax_accuracy_name"], "pct"), None),
        ("2D localization, held-out views", f"{_fmt(a['loc2d_accuracy'], 'pct')} of {a['loc2d_queries']}", None),
        ("relevancy cloud precision / recall", f"{_fmt(a['precision_mean'])} / {_fmt(a['recall_mean'])}", None),
        ("best grasp valid", f"{_fmt(a['grasp_valid_rate'], 'pct')} (no grasp returned for "
                             f"{_fmt(a['grasp_none_rate'], 'pct')})", tg["grasp_valid"]),
        ("objects with extracted surface points", _fmt(a["objects_on_surface_fraction"], "pct"), None),
        ("absent queries above threshold", f"{_fmt(a['absent_false_positive_rate'], 'pct')} "
                                           f"(max relevancy {_fmt(a['absent_max_relevancy'])})",
         tg["absent_never_above_threshold"]),
        ("query latency p50 / p95", f"{_fmt(a['query_latency_ms_p50'], 'ms')} / {_fmt(a['query_latency_ms_p95'], 'ms')}",
         tg["query_p95_ms"]),
        ("teacher per keyframe", _fmt(1000 * a["teacher_s_per_keyframe"] if a["teacher_s_per_keyframe"] else None, "ms"),
         None),
        ("offline training", f"{_fmt(a['offline_rays_per_s'])} rays/s ({_fmt(a['offline_rays_per_cpu_s'])} per CPU-s), "
                             f"{_fmt(a['offline_steps_mean'])} steps/scene", None),
        ("online training (frames arriving)", f"{_fmt(a['online_rays_per_s'])} rays/s "
                                              f"({_fmt(a['online_rays_per_cpu_s'])} per CPU-s)", None),
        ("online overhead wall / CPU", f"{_fmt(a['online_overhead_pct'])}% / {_fmt(a['online_overhead_cpu_pct'])}%",
         tg["online_overhead_pct"]),
        ("online: first correct answer, first object / each object / all at once",
         f"{_fmt(a['online_first_correct_s'], 's')} / {_fmt(a['online_each_correct_s'], 's')} / "
         f"{_fmt(a['online_all_correct_s'], 's')} ({_fmt(a['online_objects_correct_fraction'], 'pct')} of objects "
         f"within {_fmt(on.get('online_s'), 's')})", tg["first_correct_s"]),
        ("RSS after streamed frames", f"{_fmt(a['stream_rss_mb'])} MB after {a['stream_frames']} frames "
                                      f"({_fmt(a['stream_rss_growth_second_half_mb'])} MB over the second half, "
                                      f"{_fmt(a['stream_rss_growth_after_full_mb'])} MB since the store filled)",
         tg["store_bounded"]),
        ("peak RSS", f"{_fmt(a['peak_rss_mb'])} MB", None),
    ]
    for name, val, target in rows:
        goal = "" if target is None else f"{target['goal']}: {'met' if target['met'] else 'not met'}"
        lines.append(f"| {name} | {val} | {goal} |")
    last = next((c for c in reversed(on.get("checks") or []) if "surface_step" in c), None)
    if last is not None:
        lines += ["", f"Online (seed {on['seed']}, {on['rate_hz']:g} Hz): checks every {on['check_every_s']:g} s of "
                      f"training; the last answered from the snapshot of step {last['snapshot_step']} with surface "
                      f"points of step {last['surface_step']} (query.refresh_every_steps = "
                      f"{result['config']['query']['refresh_every_steps']}); first correct per object (s): "
                      + ", ".join(f"{k} {_fmt(v, 's')}" for k, v in on["first_correct_s"].items()) + "."]
    lines += ["", "| seed | objects | steps | 3D names | 2D | precision | recall | grasp | absent FP |",
              "|---|---|---|---|---|---|---|---|---|"]
    for sc in result["scenes"]:
        m = sc["metrics"]
        lines.append(f"| {sc['seed']} | {len(sc['objects'])} | {sc['offline']['steps']} | "
                     f"{_fmt(m['loc3d_accuracy_name'], 'pct')} | {_fmt(m['loc2d_accuracy'], 'pct')} | "
                     f"{_fmt(m['precision_mean'])} | {_fmt(m['recall_mean'])} | {_fmt(m['grasp_valid_rate'], 'pct')} | "
                     f"{_fmt(m['absent_false_positive_rate'], 'pct')} |")
    curves = [(sc["seed"], sc["curve"]) for sc in result["scenes"] if sc.get("curve")]
    if curves:
        lines += ["", "Learning curve (offline, 3D name queries):", "", "| seed | step | train s | 3D names | wrong |",
                  "|---|---|---|---|---|"]
        for seed, curve in curves:
            for c in curve:
                lines.append(f"| {seed} | {c['step']} | {c['train_s']:.0f} | {_fmt(c['loc3d_accuracy_name'], 'pct')} | "
                             f"{', '.join(c['wrong']) or '-'} |")
    return "\n".join(lines) + "\n"


def run_benchmark(settings: BenchSettings, out_dir: Optional[str] = "bench/results", log: Optional[LogFn] = None,
                  command: str = "") -> Dict[str, Any]:
    """Run the benchmark; write ``bench[_quick].json`` and ``.md`` into ``out_dir`` (None: write
    nothing). Returns the result dictionary."""
    import torch

    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    settings.check()
    log = log or (lambda text: print(f"[bench] {text}", flush=True))
    progress = _Progress(settings.progress)
    torch.set_num_threads(settings.threads)
    t_run = time.perf_counter()
    deadline = t_run + settings.budget_s
    offline_end = t_run + settings.budget_s * (1.0 - (settings.online_fraction if settings.online else 0.0))
    cfg = build_config(settings)
    log(f"mode {settings.mode}: seeds {list(settings.seeds)}, {settings.width}x{settings.height}, "
        f"{settings.n_frames} frames, preset {settings.preset}, budget {settings.budget_s:.0f} s, "
        f"torch threads {torch.get_num_threads()}")
    log(TEACHER_NOTE)
    scenes: List[Dict[str, Any]] = []
    reserve = settings.eval_reserve_s
    online_scene = None
    for k, seed in enumerate(settings.seeds):
        t_sc = time.perf_counter()
        scene = make_scene(seed=seed, width=settings.width, height=settings.height, n_frames=settings.n_frames,
                           nthreads=settings.threads)
        teacher = GroundTruthTeacher(scene)
        if online_scene is None:
            online_scene = scene
        cap = max(5.0, (offline_end - time.perf_counter()) / (len(settings.seeds) - k) - reserve)
        log(f"seed {seed}: {len(scene.objects)} objects ({', '.join(scene.present_classes())}); "
            f"training up to {settings.max_steps} steps or {cap:.0f} s")
        trainer, off = train_offline(scene, cfg, teacher, settings, cap, progress, log)
        t_ev = time.perf_counter()
        snap = trainer.snapshot()
        del trainer
        ev = evaluate_snapshot(scene, snap, cfg, teacher, settings, progress)
        m = ev["metrics"]
        log(f"seed {seed}: 3D names {_fmt(m['loc3d_accuracy_name'], 'pct')} (argmax "
            f"{_fmt(m['loc3d_argmax_accuracy_name'], 'pct')}), 2D {_fmt(m['loc2d_accuracy'], 'pct')}, "
            f"P/R {_fmt(m['precision_mean'])}/{_fmt(m['recall_mean'])}, grasp {_fmt(m['grasp_valid_rate'], 'pct')}, "
            f"absent FP {_fmt(m['absent_false_positive_rate'], 'pct')}, query p50/p95 "
            f"{_fmt(m['query_latency_ms_p50'], 'ms')}/{_fmt(m['query_latency_ms_p95'], 'ms')}, "
            f"evaluation {time.perf_counter() - t_ev:.0f} s")
        reserve = (time.perf_counter() - t_sc) - off["train_s"]
        if off["curve"]:
            ev["curve"] = off["curve"] + [_curve_point(off["steps"], off["train_s"], ev)]
        scenes.append({"seed": seed, "objects_present": scene.present_classes(), "offline": off,
                       "scene_timings": dict(scene.timings), **ev})
        del snap
    online = None
    if settings.online and online_scene is not None:
        topup_reserve = 0.05 * settings.budget_s if settings.stream_frames > 0 else 0.0
        cap = deadline - time.perf_counter() - topup_reserve
        cap = float(min(settings.online_max_s, max(settings.online_min_s, cap)))
        log(f"online: seed {online_scene.seed} streamed at {settings.online_rate_hz:g} Hz, checks every "
            f"{settings.online_check_every_s:g} s, up to {cap:.0f} s")
        online = run_online(online_scene, cfg, settings, cap, progress, log)
        log(f"online: first correct {_fmt(online['first_correct_any_s'], 's')}, all correct "
            f"{_fmt(online['all_correct_s'], 's')}, {_fmt(online['rays_per_s'])} rays/s while streaming, "
            f"RSS {online['rss_end_mb']:.0f} MB after {online['frames_streamed']} frames "
            f"({online['store']['count']} keyframes kept, {online['store']['evicted']} evicted)")
    agg = _aggregate(scenes, online)
    result = {
        "benchmark": "lerf_ros", "mode": settings.mode, "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command, "teacher": TEACHER_NOTE, "settings": _plain(dataclasses.asdict(settings)),
        "config": cfg.to_dict(), "machine": machine_info(settings.threads), "aggregate": agg,
        "targets": _targets(agg), "scenes": scenes, "online": online,
        "memory_note": ("peak_rss_mb is getrusage maxrss of the whole process (scene rendering, training, "
                        "queries); tracemalloc is not used: torch tensor memory is invisible to it."),
        "wall_s": time.perf_counter() - t_run,
    }
    result = _plain(result)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        stem = "bench_quick" if settings.mode == "quick" else "bench"
        path = os.path.join(out_dir, stem + ".json")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=1, allow_nan=False)
        os.replace(tmp, path)
        with open(os.path.join(out_dir, stem + ".md"), "w") as fh:
            fh.write(markdown(result))
        log(f"wrote {path} and {stem}.md ({result['wall_s']:.0f} s)")
    return result


def _plain(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# =============================================================================== command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``lerf-ros bench`` and ``bench/run_bench.py``)."""
    p.add_argument("--quick", action="store_true", help="quick mode: 2 small scenes, under 10 minutes on 2 CPU cores "
                                                        "(default: full mode, >= 5 scenes at 160x120)")
    p.add_argument("--out", default="bench/results", help="results folder (default bench/results)")
    p.add_argument("--seeds", type=int, nargs="+", help="scene seeds (default: 0 1 quick, 0..4 full)")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="wall-clock budget of the run (default: 420 quick, "
                                                                   "4800 full); training shrinks to fit")
    p.add_argument("--steps", type=int, help="offline training steps per scene (default: 600 quick, 1200 full)")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="image size (default: 96 72 quick, 160 120 full)")
    p.add_argument("--frames", type=int, help="frames per scene (default: 30 quick, 60 full)")
    p.add_argument("--stream-frames", type=int, help="frames streamed before the memory reading (default 1000)")
    p.add_argument("--online-max", type=float, metavar="SECONDS", help="longest online phase")
    p.add_argument("--curve", type=int, nargs="+", default=[], metavar="STEP",
                   help="also evaluate the offline snapshots at these steps (3D queries): a learning curve")
    p.add_argument("--no-online", action="store_true", help="skip the online phase (streaming, timing, memory)")
    p.add_argument("--preset", default="tiny", help="configuration preset (default tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="configuration override with a dotted key, e.g. query.threshold=0.6 (repeatable)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    import yaml

    s = mode_settings("quick" if args.quick else "full")
    if args.seeds:
        s.seeds = tuple(args.seeds)
    if args.budget is not None:
        s.budget_s = float(args.budget)
    if args.steps is not None:
        s.max_steps = int(args.steps)
    if args.size:
        s.width, s.height = int(args.size[0]), int(args.size[1])
    if args.frames is not None:
        s.n_frames = int(args.frames)
    if args.stream_frames is not None:
        s.stream_frames = int(args.stream_frames)
    if args.online_max is not None:
        s.online_max_s = float(args.online_max)
        s.online_min_s = min(s.online_min_s, s.online_max_s)
    s.preset = args.preset
    s.curve_steps = tuple(sorted(set(int(c) for c in args.curve)))
    s.online = not args.no_online
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        s.overrides[key.strip()] = yaml.safe_load(value.strip())
    s.threads = int(args.threads)
    s.progress = not args.no_progress
    return s.check()


def main_from_args(args: argparse.Namespace, prog: str = "lerf-ros bench") -> int:
    """Run from parsed arguments; returns the exit code (2 for bad arguments). ``prog`` names the
    command in the results (followed by this process's arguments)."""
    from lerf_ros.config import ConfigError

    try:
        settings = settings_from_args(args)
        build_config(settings)  # fail early on a bad preset or override
    except (ValueError, ConfigError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        argv = argv[1:]
    run_benchmark(settings, args.out, command=" ".join([prog] + argv))
    return 0
