"""The benchmark: how well the whole system finds, localises and grasps objects, and how fast.

One run (``lerf-ros bench``, the only entry point) measures, on seeded synthetic tabletop scenes
(``lerf_ros.data.synthetic``) whose ground truth is known:

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

Modules: ``settings`` (``BenchSettings``, the quick and full modes, the configuration), ``metrics``
(pure metric functions and the aggregate), ``evaluate`` (one snapshot on its scene), ``offline``
(``train_offline``), ``online`` (``run_online`` and its frame feeder), ``run`` (``run_benchmark``),
``report`` (JSON and Markdown), ``machine`` (memory readings, machine description, progress bars),
``cli`` (the options of ``lerf-ros bench``).
"""

from lerf_ros.bench.cli import add_arguments, main_from_args, settings_from_args
from lerf_ros.bench.evaluate import absent_words, curve_point, evaluate_snapshot, relevancy_maps_2d
from lerf_ros.bench.machine import Progress, machine_info, peak_rss_mb, rss_mb
from lerf_ros.bench.metrics import (
    AGGREGATE_KEYS,
    FRACTION_KEYS,
    aggregate,
    answer_metrics,
    box_2d,
    fraction,
    grasp_checks,
    gripper_corners,
    in_box_2d,
    mean_or_none,
    min_distances,
    percentile,
    precision_recall,
    targets,
)
from lerf_ros.bench.offline import train_offline
from lerf_ros.bench.online import run_online
from lerf_ros.bench.report import markdown, plain, write_results
from lerf_ros.bench.run import run_benchmark
from lerf_ros.bench.settings import (
    NON_VOCABULARY_WORDS,
    TEACHER_NOTE,
    BenchSettings,
    LogFn,
    build_config,
    mode_settings,
)

__all__ = [
    "AGGREGATE_KEYS",
    "FRACTION_KEYS",
    "NON_VOCABULARY_WORDS",
    "TEACHER_NOTE",
    "BenchSettings",
    "LogFn",
    "Progress",
    "absent_words",
    "add_arguments",
    "aggregate",
    "answer_metrics",
    "box_2d",
    "build_config",
    "curve_point",
    "evaluate_snapshot",
    "fraction",
    "grasp_checks",
    "gripper_corners",
    "in_box_2d",
    "machine_info",
    "main_from_args",
    "markdown",
    "mean_or_none",
    "min_distances",
    "mode_settings",
    "peak_rss_mb",
    "percentile",
    "plain",
    "precision_recall",
    "relevancy_maps_2d",
    "rss_mb",
    "run_benchmark",
    "run_online",
    "settings_from_args",
    "targets",
    "train_offline",
    "write_results",
]
