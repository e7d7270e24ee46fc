"""The benchmark: its metric kernels on hand-built cases, and a tiny end-to-end run whose JSON must
hold every metric with values in range."""

import json

import numpy as np
import pytest
import torch

from lerf_ros.bench import BenchSettings, run_benchmark  # the names bench/pyramid_study.py imports
from lerf_ros.bench.cli import settings_from_args
from lerf_ros.bench.metrics import (
    AGGREGATE_KEYS,
    FRACTION_KEYS,
    box_2d,
    grasp_checks,
    in_box_2d,
    min_distances,
    precision_recall,
)
from lerf_ros.bench.settings import build_config, mode_settings
from lerf_ros.cli import build_parser
from lerf_ros.data.synthetic import make_scene
from lerf_ros.geometry.camera import backproject
from lerf_ros.query.grasp import GripperModel


@pytest.fixture(autouse=True, scope="module")
def _threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, width=48, height=36, n_frames=8, nthreads=1)


# ------------------------------------------------------------------------------ metric kernels
def test_min_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(170, 3))
    brute = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(min_distances(a, b, chunk=64), brute, rtol=1e-9, atol=1e-12)
    assert np.all(np.isinf(min_distances(a, np.zeros((0, 3)))))


def test_precision_recall(scene):
    surf = scene.objects[0].surface_points
    p, r = precision_recall(surf, surf, 0.02)
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(surf + [0.0, 0.0, 0.5], surf, 0.02)  # 50 cm above: all wrong
    assert p == 0.0 and r == 0.0
    # half the object (one side of a plane through its centre): all precise, about half recalled
    half = surf[surf[:, 0] < np.median(surf[:, 0])]
    p, r = precision_recall(half, surf, 0.005)
    assert p == 1.0 and 0.4 < r < 0.7
    assert precision_recall(np.zeros((0, 3)), surf, 0.02) == (None, 0.0)
    with pytest.raises(ValueError, match="surface samples"):
        precision_recall(surf, np.zeros((0, 3)), 0.02)


def _top_down(position, width_axis=(1.0, 0.0, 0.0)):
    """Gripper-to-world pose approaching along world -z, closing along ``width_axis``."""
    z = np.array([0.0, 0.0, -1.0])
    y = np.asarray(width_axis, float)
    x = np.cross(y, z)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], 1)
    pose[:3, 3] = position
    return pose


def test_grasp_checks(scene):
    obj = scene.objects[0]
    g = GripperModel()
    top = obj.center + [0.0, 0.0, obj.size[2] / 2 - 0.01]
    ok = grasp_checks(_top_down(top), 0.05, obj, g, 0.08, 0.01, 0.0, 0.005)
    assert ok["valid"] and ok["in_object"] and ok["clear_of_table"] and ok["width_ok"]
    assert ok["lowest_z"] == pytest.approx(top[2], abs=1e-9)  # the fingertips are the lowest point
    too_wide = grasp_checks(_top_down(top), 0.09, obj, g, 0.08, 0.01, 0.0, 0.005)
    assert too_wide["in_object"] and too_wide["clear_of_table"] and not too_wide["width_ok"] and not too_wide["valid"]
    outside = grasp_checks(_top_down(obj.center + [0.5, 0.0, 0.0]), 0.05, obj, g, 0.08, 0.01, 0.0, 0.005)
    assert not outside["in_object"] and not outside["valid"]
    # approaching upwards from under the table: the corridor behind the palm goes through it
    up = _top_down(obj.center)
    up[:3, 2] *= -1
    up[:3, 0] *= -1
    below = grasp_checks(up, 0.05, obj, g, 0.08, 0.01, 0.0, 0.005)
    assert below["in_object"] and not below["clear_of_table"] and not below["valid"]
    # a side grasp at mid height: the fingers' breadth (+-1 cm along the vertical) stays above the table
    side = np.eye(4)
    side[:3, :3] = np.stack([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], 1)
    side[:3, 3] = [obj.center[0], obj.center[1], 0.004]
    low = grasp_checks(side, 0.05, obj, g, 0.08, 0.01, 0.0, 0.005)
    assert low["lowest_z"] == pytest.approx(0.004 - g.finger_breadth / 2) and not low["clear_of_table"]


def test_boxes_and_backprojection(scene):
    f = scene.frames[0]
    inst = np.zeros((5, 7), np.int32)
    inst[1:3, 2:6] = 4
    assert box_2d(inst, 4) == (2, 1, 5, 2)
    assert box_2d(inst, 4, min_pixels=9) is None and box_2d(inst, 1) is None
    assert in_box_2d((2, 5), (2, 1, 5, 2)) and not in_box_2d((3, 5), (2, 1, 5, 2))
    # back-projected ground-truth depth lands on the labelled objects
    pts = backproject(f.depth, f.K, f.c2w).reshape(f.height, f.width, 3)
    seen = 0
    for o in scene.objects:
        mask = f.instance == o.instance_id
        if mask.sum() < 5:
            continue
        seen += 1
        assert o.contains(pts[mask], 0.01).mean() > 0.95, o.name
    assert seen >= 1
    with pytest.raises(ValueError, match="depth"):
        backproject(f.depth[0], f.K, f.c2w)


def test_settings_from_the_command_line():
    args = build_parser(with_subcommand_args="bench").parse_args(
        ["bench", "--quick", "--seeds", "4", "5", "--budget", "100", "--set", "query.threshold=0.6"]
    )
    s = settings_from_args(args)
    assert s.mode == "quick" and s.seeds == (4, 5) and s.budget_s == 100.0 and s.overrides == {"query.threshold": 0.6}
    assert build_config(s).query.threshold == 0.6 and build_config(s).teacher.kind == "ground_truth"
    assert (
        s.physics
        and not settings_from_args(
            build_parser(with_subcommand_args="bench").parse_args(["bench", "--quick", "--no-physics"])
        ).physics
    )
    full = settings_from_args(build_parser(with_subcommand_args="bench").parse_args(["bench"]))
    assert full.mode == "full" and len(full.seeds) >= 5 and (full.width, full.height, full.n_frames) == (160, 120, 60)
    with pytest.raises(ValueError, match="seeds"):
        BenchSettings(seeds=()).check()
    with pytest.raises(ValueError, match="unknown benchmark mode"):
        mode_settings("slow")


# ------------------------------------------------------------------------------ end to end
def test_tiny_run_writes_every_metric(tmp_path):
    settings = BenchSettings(
        mode="quick",
        seeds=(3,),
        width=48,
        height=36,
        n_frames=8,
        max_steps=3,
        budget_s=30.0,
        online_fraction=0.5,
        online_min_s=0.0,
        online_max_s=5.0,
        online_check_every_s=2.0,
        online_snapshot_every=2,
        stream_frames=30,
        n_absent_vocabulary=2,
        eval_reserve_s=5.0,
        threads=1,
        progress=False,
    )
    logs = []
    res = run_benchmark(settings, str(tmp_path), log=logs.append, command="test")
    on_disk = json.loads((tmp_path / "bench_quick.json").read_text())
    assert on_disk["aggregate"] == res["aggregate"]
    md = (tmp_path / "bench_quick.md").read_text()
    assert "3D localization, names" in md and "| 3 |" in md

    agg = res["aggregate"]
    missing = [k for k in AGGREGATE_KEYS if k not in agg]
    assert not missing
    for k in FRACTION_KEYS:
        assert agg[k] is None or 0.0 <= agg[k] <= 1.0, (k, agg[k])
    for k in (
        "query_latency_ms_p50",
        "query_latency_ms_p95",
        "teacher_s_per_keyframe",
        "offline_rays_per_s",
        "peak_rss_mb",
        "stream_rss_mb",
    ):
        assert agg[k] is not None and agg[k] > 0, k
    assert agg["query_latency_ms_p50"] <= agg["query_latency_ms_p95"]
    assert agg["peak_rss_mb"] >= agg["stream_rss_mb"] * 0.99

    m = res["machine"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] == 1 and m["torch_version"] == torch.__version__
    assert res["config"]["teacher"]["kind"] == "ground_truth" and "ground truth" in res["teacher"]

    # every object by its name and each synonym, plus the absent words
    (sc,) = res["scenes"]
    scene = make_scene(seed=3, width=48, height=36, n_frames=8, nthreads=1)
    n_phrases = sum(1 + len(o.synonyms) for o in scene.objects)
    n_absent = 2 + len(settings.non_vocabulary_words)
    assert len(sc["objects"]) == len(scene.objects) and len(sc["absent"]) == n_absent
    assert len(sc["queries"]) == n_phrases + n_absent
    assert {a["text"] for a in sc["absent"]}.isdisjoint(scene.present_classes())
    assert sc["offline"]["steps"] == 3 and sc["offline"]["train_frames"] == 7  # frame 0 held out
    held_out_boxes = sum(
        box_2d(scene.frames[0].instance, o.instance_id, settings.min_box_pixels) is not None for o in scene.objects
    )
    assert sc["metrics"]["loc2d_queries"] == held_out_boxes == len(sc["views_2d"])
    for q in sc["queries"]:
        assert q["correct"] in (True, False) and 0.0 <= q["max_relevancy"] <= 1.0 and q["latency_ms"] >= 0
    for o in sc["objects"]:
        assert o["precision"] is None or 0.0 <= o["precision"] <= 1.0
        assert 0.0 <= o["recall"] <= 1.0 and isinstance(o["grasp"]["valid"], bool)

    on = res["online"]
    assert on["frames_streamed"] >= settings.stream_frames and on["store"]["count"] <= on["store"]["max_keyframes"]
    assert on["store_bounded"] is True and len(on["checks"]) >= 1 and len(on["memory_samples"]) >= 2
    assert set(on["first_correct_s"]) == {o.name for o in scene.objects}
    assert set(res["targets"]) >= {"loc3d_name", "grasp_valid", "first_correct_s", "query_p95_ms"}
    assert any("seed 3" in line for line in logs)
