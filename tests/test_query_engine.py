"""The query engine on the ground-truth field of a synthetic scene (tests/analytic_field.py).

With the ground-truth teacher a region scores ~1.0 for its own class and well below 0.5 for any
other text (the canonical phrases are equally similar to every class), so the default threshold
separates the named object from the rest of the scene.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.field.snapshot import language_per_scale
from lerf_ros.query import NO_MODEL_MESSAGE, QueryEngine
from lerf_ros.query.relevancy import FeatureCache, ProjectedFeatures, scale_search, text_basis
from lerf_ros.teachers.ground_truth import GroundTruthTeacher
from lerf_ros.teachers.text import relevancy

from analytic_field import AnalyticSnapshot, LanguageFromModel, ReferencePaths

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=0, n_frames=20, width=128, height=96)


@pytest.fixture(scope="module")
def teacher(scene):
    return GroundTruthTeacher(scene)


def qcfg(**kw):
    base = dict(surface_stride=1, surface_max_views=20, max_candidate_points=20000)
    base.update(kw)
    return dataclasses.replace(preset("tiny").query, **base).check()


@pytest.fixture(scope="module")
def engine(scene, teacher):
    eng = QueryEngine(qcfg(), teacher.encode_text)
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=100))
    eng.prepare()
    return eng


def nearest_scale(scales, size):
    return min(scales, key=lambda s: abs(np.log(s / size)))


def test_named_objects_most_relevant_points_and_best_grasp_lie_on_them(scene, engine):
    cfg = engine.cfg
    grasped = 0
    for obj in scene.objects:
        r = engine.query(obj.class_name)
        assert r.success, r.message
        assert r.step == 100 and r.num_candidates == len(engine.surface())
        assert np.all(np.diff(r.relevancy) <= 0)
        assert r.points.shape == (len(r.relevancy), 3) and r.colors.dtype == np.uint8
        top = r.points[:20]
        assert obj.contains(top, margin=0.02).all(), obj.name
        assert obj.contains(r.points, margin=0.02).mean() > 0.95
        assert r.max_relevancy > 0.99
        # The scale search lands on the candidate scale nearest the object's size.
        assert r.scale == pytest.approx(nearest_scale(cfg.scales, float(np.max(obj.size))))
        for g in r.grasps:
            assert g.width <= cfg.gripper_max_width
            np.testing.assert_allclose(np.linalg.det(g.pose[:3, :3]), 1.0, atol=1e-9)
        if r.grasps:
            grasped += 1
            best = r.grasps[0]
            assert obj.contains(best.position[None], margin=0.02)[0], obj.name
            # Approach never comes from below, and the fingertips and the corridor behind the
            # gripper stay above the table top.
            assert best.approach[2] <= 1e-6
            back = best.position - (engine.gripper.finger_depth + engine.gripper.approach_clearance) * best.approach
            assert min(best.position[2], back[2]) >= scene.table_height - 1e-6
            if best.kind == "top":
                np.testing.assert_allclose(best.approach, [0, 0, -1], atol=1e-6)
        else:
            assert "no feasible grasp" in r.message
    assert grasped >= 2


def test_synonym_finds_the_same_points(scene, engine):
    obj = next(o for o in scene.objects if o.synonyms)
    a = engine.query(obj.class_name)
    b = engine.query("  The " + obj.synonyms[0].upper() + " ")
    np.testing.assert_array_equal(a.points, b.points)
    assert a.scale == b.scale


def test_words_not_in_the_scene_score_low(scene, engine):
    for word in ("giraffe", "submarine engine"):
        r = engine.query(word)
        assert not r.success
        assert r.max_relevancy < engine.cfg.threshold
        assert f"best relevancy found is {r.max_relevancy:.3f}" in r.message
        assert "lower the threshold" in r.message and r.points.shape == (0, 3)
    # So do the vocabulary's classes that are absent from this scene.
    for word in scene.absent_classes():
        r = engine.query(word)
        assert r.max_relevancy < engine.cfg.threshold, word


def test_negatives_take_part(scene, engine):
    obj = next(o for o in scene.objects if o.synonyms)
    r = engine.query(obj.class_name, negatives=[obj.synonyms[0]])
    # The negative names the same class: phi.q == phi.c, so the object's relevancy is 0.5.
    assert not r.success
    assert r.max_relevancy == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize(
    "kwargs, expect",
    [
        (dict(text=""), "empty query text"),
        (dict(text="   "), "empty query text"),
        (dict(text="x" * 300), "too long (300 characters): at most 256"),
        (dict(text="mug", threshold=-0.1), "outside [0, 1]"),
        (dict(text="mug", threshold=1.5), "outside [0, 1]"),
        (dict(text="mug", threshold=float("nan")), "outside [0, 1]"),
        (dict(text="mug", negatives=[""]), "negative phrase 0 is empty"),
        (dict(text="mug", negatives=["ok", "y" * 999]), "negative phrase 1 too long"),
        (dict(text="mug", max_points=-1), "max_points -1 is negative"),
        (dict(text="mug", max_grasps=-2), "max_grasps -2 is negative"),
        (dict(text="mug", world_to_target=np.ones((4, 4))), "not a rigid 4x4 transform"),
        (dict(text="mug", world_to_target=np.eye(3)), "not a rigid 4x4 transform"),
    ],
)
def test_bad_requests_say_what_to_fix(engine, kwargs, expect):
    r = engine.query(**kwargs)
    assert not r.success
    assert expect in r.message
    assert r.points.shape == (0, 3) and r.grasps == []


def test_no_snapshot_yet(teacher):
    eng = QueryEngine(qcfg(), teacher.encode_text)
    r = eng.query("mug")
    assert not r.success and r.message == NO_MODEL_MESSAGE and r.step == -1
    assert eng.scene_points() is None and eng.prepare() == {"surface": 0.0, "features": 0.0}


def test_max_points_keeps_the_most_relevant(scene, engine):
    obj = scene.objects[0]
    full = engine.query(obj.class_name, threshold=0.6)
    capped = engine.query(obj.class_name, threshold=0.6, max_points=25)
    assert len(full.points) > 25 and len(capped.points) == 25
    np.testing.assert_array_equal(capped.points, full.points[:25])
    np.testing.assert_array_equal(capped.relevancy, full.relevancy[:25])
    assert capped.relevancy.min() >= full.relevancy[25:].max()


def test_grasps_are_planned_on_the_top_of_the_relevancy_range(scene, teacher):
    """query.grasp_focus: grasps use the points within the top share of [threshold, max]."""
    obj = scene.objects[0]
    answers = {}
    for focus in (1.0, 0.3):
        eng = QueryEngine(qcfg(grasp_focus=focus), teacher.encode_text)
        eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=100))
        answers[focus] = eng.query(obj.class_name, threshold=0.05)
    every, top = answers[1.0], answers[0.3]
    assert every.success and top.success
    assert every.grasp_points == len(every.points)
    cut = top.max_relevancy - 0.3 * (top.max_relevancy - 0.05)
    n = top.grasp_points
    assert 0 < n < every.grasp_points
    assert top.relevancy[n - 1] >= cut - 1e-6
    assert n == 3 * qcfg().dbscan_min_points or top.relevancy[n] < cut
    assert top.grasps and obj.contains(top.grasps[0].pose[None, :3, 3], margin=0.02)[0]


def test_world_to_target_moves_points_and_grasps(scene, engine):
    obj = next(o for o in scene.objects if o.class_name in ("soda can", "egg", "bottle"))
    T = np.eye(4)
    c, s = np.cos(0.7), np.sin(0.7)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = [0.5, -1.0, 0.2]
    a = engine.query(obj.class_name)
    b = engine.query(obj.class_name, world_to_target=T)
    assert a.grasps and len(a.grasps) == len(b.grasps)
    np.testing.assert_allclose(b.points, a.points @ T[:3, :3].T + T[:3, 3], atol=1e-5)
    for ga, gb in zip(a.grasps, b.grasps):
        np.testing.assert_allclose(gb.pose, T @ ga.pose, atol=1e-9)
        assert gb.width == ga.width and gb.score == ga.score


def test_fast_paths_match_the_plain_field(scene, teacher):
    """Projected features (guaranteed and estimated basis), multi-scale and per-scale evaluation agree."""
    snap = AnalyticSnapshot(scene, teacher.encode_text, step=5)
    variants = {
        "features, exact basis": (snap, qcfg(max_candidate_points=2000)),
        "features, estimated basis": (ReferencePaths(snap), qcfg(max_candidate_points=2000)),
        "multi-scale, no features": (snap, qcfg(max_candidate_points=2000, feature_cache_mb=0)),
        "per-scale, no features": (ReferencePaths(snap), qcfg(max_candidate_points=2000, feature_cache_mb=0)),
    }
    results = {}
    for name, (s, cfg) in variants.items():
        eng = QueryEngine(cfg, teacher.encode_text)
        eng.set_snapshot(s)
        prep = eng.prepare()
        assert (prep["features"] > 0) == (cfg.feature_cache_mb > 0), name
        st = eng.status()
        assert (st["features_rank"] > 0) == (cfg.feature_cache_mb > 0), st["features_note"]
        results[name] = [eng.query(o.class_name, threshold=0.6) for o in scene.objects[:3]]
    ref = results["per-scale, no features"]
    for name, res in results.items():
        for a, b in zip(res, ref):
            assert a.scale == b.scale, name
            np.testing.assert_allclose(a.relevancy, b.relevancy, atol=2e-5, err_msg=name)
            np.testing.assert_array_equal(a.points, b.points)


def test_projection_onto_text_span_keeps_relevancy_exact():
    g = torch.Generator().manual_seed(3)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    phi, emb = unit(300, 64), unit(6, 64)
    emb[5] = emb[1]  # a repeated negative: rank 5
    B = text_basis(emb)
    assert B.shape == (5, 64)
    torch.testing.assert_close(B @ B.T, torch.eye(5), atol=1e-5, rtol=0)
    e = emb @ B.T
    torch.testing.assert_close(
        relevancy(phi @ B.T, e[0], e[1:], 10.0), relevancy(phi, emb[0], emb[1:], 10.0), atol=1e-5, rtol=0
    )


def test_scale_search_picks_the_scale_with_the_highest_maximum():
    class TwoScales:
        """Point 0 matches the query best at 0.5 m, point 1 reaches a higher peak at 1.5 m."""

        step, clip_dim, device, cameras = 0, 3, torch.device("cpu"), []

        def language(self, xyz, scale):
            peak = torch.where(xyz[:, 0] < 0.5, 0.5, 1.5)
            height = torch.where(xyz[:, 0] < 0.5, 0.6, 0.9)
            w = height * torch.exp(-(((scale - peak) / 0.3) ** 2))
            return torch.nn.functional.normalize(torch.stack([w, 1 - w, torch.zeros_like(w)], -1), dim=-1)

        def language_multi_scale(self, xyz, scales, project=None):
            return language_per_scale(self, xyz, scales, project)

    q = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    xyz = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    res = scale_search(TwoScales(), xyz, [0.5, 1.0, 1.5], q, 10.0, chunk=1)
    assert res.index == 2 and res.scale == 1.5
    assert res.relevancy.shape == (3, 2)
    assert res.max_relevancy == pytest.approx(float(res.relevancy[:, 1].max()))
    assert float(res.relevancy[0, 0]) > float(res.relevancy[0, 1])  # at 0.5 m point 0 wins


def test_feature_cache_is_built_once_per_snapshot_and_surface(scene, teacher):
    snap = AnalyticSnapshot(scene, teacher.encode_text, step=1000)
    cfg = qcfg(max_candidate_points=1500, refresh_every_steps=500)
    eng = QueryEngine(cfg, teacher.encode_text)
    eng.set_snapshot(snap)
    first = eng.query(scene.objects[0].class_name)
    again = eng.query(scene.objects[1].class_name)
    assert first.timings["surface"] > 0 and first.timings["features"] > 0
    assert again.timings["surface"] == 0 and again.timings["features"] == 0
    calls = snap.calls["language_multi_scale"]
    eng.query(scene.objects[2].class_name)
    assert snap.calls["language_multi_scale"] == calls  # answered from the features
    assert first.snapshot_version == 1 and first.step == 1000
    newer = AnalyticSnapshot(scene, teacher.encode_text, step=1200)
    eng.set_snapshot(newer)
    r = eng.query(scene.objects[0].class_name)  # not prepared yet: the previous one answers
    assert r.step == 1000 and r.snapshot_version == 1 and r.timings["features"] == 0
    prep = eng.prepare()
    assert prep["surface"] == 0 and prep["features"] > 0  # same surface, new field
    r = eng.query(scene.objects[0].class_name)
    assert r.step == 1200 and r.surface_step == 1000 and r.snapshot_version == 2
    assert r.timings["surface"] == 0 and r.timings["features"] == 0
    assert eng.prepare() == {"surface": 0.0, "features": 0.0}  # nothing newer
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=1500))
    assert eng.prepare()["surface"] > 0
    r = eng.query(scene.objects[0].class_name)
    assert r.step == 1500 and r.surface_step == 1500 and r.snapshot_version == 3
    # Too small a budget: no features, same answer.
    small = FeatureCache(max_bytes=1000)
    xyz = torch.from_numpy(eng.surface().xyz)
    value, built = small.get(newer, eng.surface(), xyz, torch.tensor(cfg.scales), 512)
    assert value is None and built and "feature_cache_mb" in small.note
    feats, note = ProjectedFeatures.build(newer, xyz, torch.tensor(cfg.scales), 512, 10**9)
    assert note == "" and feats.coeffs.shape == (len(xyz), len(cfg.scales), feats.basis.shape[0])
    # The coefficients reproduce the field exactly.
    s = torch.tensor(cfg.scales[3:4] * len(xyz))
    torch.testing.assert_close(feats.coeffs[:, 3] @ feats.basis, newer.language(xyz, s), atol=1e-5, rtol=0)


def test_text_embeddings_are_cached(scene, teacher):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return teacher.encode_text(texts)

    eng = QueryEngine(qcfg(max_candidate_points=1500), encode)
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=0))
    name = scene.objects[0].class_name
    eng.query(name)
    n = len(calls)
    assert n >= 1 and name in calls[0]
    eng.query(name)
    eng.query(" " + name + " ")
    assert len(calls) == n
    eng.query(name, negatives=["wall"])
    assert calls[-1] == ["wall"]


def test_concurrent_queries_give_identical_results(scene, teacher, engine):
    names = [o.class_name for o in scene.objects] + ["giraffe"]
    expected = {n: engine.query(n) for n in names}
    errors, got = [], {}
    lock = threading.Lock()

    def worker(k):
        try:
            for i in range(len(names)):
                n = names[(i + k) % len(names)]
                r = engine.query(n)
                with lock:
                    got.setdefault(n, []).append(r)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n, rs in got.items():
        assert len(rs) == 4
        for r in rs:
            e = expected[n]
            assert (r.success, r.message, r.scale, r.step) == (e.success, e.message, e.scale, e.step)
            np.testing.assert_array_equal(r.points, e.points)
            np.testing.assert_array_equal(r.relevancy, e.relevancy)
            assert len(r.grasps) == len(e.grasps)
            for a, b in zip(r.grasps, e.grasps):
                np.testing.assert_array_equal(a.pose, b.pose)


def test_queries_during_snapshot_swaps_are_consistent(scene, teacher):
    eng = QueryEngine(qcfg(max_candidate_points=1500, refresh_every_steps=10**6), teacher.encode_text)
    snaps = [AnalyticSnapshot(scene, teacher.encode_text, step=s) for s in (1000, 1010, 1020)]
    eng.set_snapshot(snaps[0])
    eng.prepare()
    name = scene.objects[0].class_name
    ref = eng.query(name)
    stop = threading.Event()
    steps, errors = [], []

    def swapper():
        i = 0
        while not stop.is_set():
            eng.set_snapshot(snaps[i % 3])
            i += 1

    def asker():
        try:
            for _ in range(8):
                r = eng.query(name)
                steps.append(r.step)
                np.testing.assert_array_equal(r.points, ref.points)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t_swap = threading.Thread(target=swapper)
    askers = [threading.Thread(target=asker) for _ in range(2)]
    t_swap.start()
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    stop.set()
    t_swap.join()
    assert not errors
    assert set(steps) <= {1000, 1010, 1020} and len(steps) == 16


def test_scene_points_are_the_surface(engine):
    xyz, rgb = engine.scene_points()
    surf = engine.surface()
    assert xyz is surf.xyz and rgb is surf.rgb and len(xyz) == engine.cfg.max_candidate_points


def test_real_language_field_features_match_direct_evaluation(scene, teacher):
    """An untrained tiny-preset LERF language field: its guaranteed output basis (the output layer's
    columns and bias: last hidden width + 1 dimensions) gives the same answers as direct evaluation."""
    from lerf_ros.field.frozen import FrozenField
    from lerf_ros.field.model import LerfModel

    torch.manual_seed(0)
    model = LerfModel(preset("tiny").model, teacher.clip_dim, teacher.dino_dim)
    geometry = AnalyticSnapshot(scene, teacher.encode_text, step=0)
    snap = LanguageFromModel(FrozenField(model, geometry.cameras, step=42), geometry)
    answers = {}
    for mb in (512.0, 0.0):
        eng = QueryEngine(qcfg(max_candidate_points=800, surface_max_views=6, feature_cache_mb=mb), teacher.encode_text)
        eng.set_snapshot(snap)
        eng.prepare()
        if mb:
            st = eng.status()
            assert st["features_rank"] == preset("tiny").model.lang_hidden_dim + 1, st["features_note"]
        answers[mb] = [eng.query(t, threshold=0.01) for t in ("mug", "bottle", "giraffe")]
    for a, b in zip(answers[512.0], answers[0.0]):
        assert a.success and a.step == 42 and a.scale == b.scale
        np.testing.assert_allclose(a.relevancy, b.relevancy, atol=1e-4)


def test_field_failures_and_mismatched_teachers_become_messages(scene, teacher, caplog):
    class Broken(AnalyticSnapshot):
        def language_multi_scale(self, xyz, scales, project=None):
            raise RuntimeError("field exploded")

        def language_basis(self):
            raise RuntimeError("field exploded")

    eng = QueryEngine(qcfg(max_candidate_points=500, surface_max_views=4), teacher.encode_text)
    eng.set_snapshot(Broken(scene, teacher.encode_text, step=7))
    with caplog.at_level("ERROR"):
        r = eng.query("mug")
    assert not r.success and r.message == "query failed: RuntimeError: field exploded" and r.step == 7
    assert "field exploded" in caplog.text

    small = GroundTruthTeacher(scene, clip_dim=64)
    eng = QueryEngine(qcfg(max_candidate_points=500, surface_max_views=4), small.encode_text)
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=3))
    r = eng.query("mug")
    assert not r.success and "64-dim embeddings but the model's language field has 512" in r.message


def test_set_snapshot_rejects_what_is_not_a_field_snapshot(scene, teacher):
    class NoFastPath:
        step, clip_dim, device, cameras = 0, 3, torch.device("cpu"), []

        def language(self, xyz, scale):
            return torch.zeros(len(xyz), 3)

        def density(self, xyz):
            return torch.zeros(len(xyz))

        def render(self, K, c2w, height, width):
            return {}

    eng = QueryEngine(qcfg(), teacher.encode_text)
    with pytest.raises(TypeError, match="NoFastPath is not a FieldSnapshot.*language_multi_scale"):
        eng.set_snapshot(NoFastPath())
    assert eng.snapshot is None


# ---------------------------------------------------------------------------------- bounded requests
def test_negatives_are_capped_in_number_and_length(scene, engine):
    cfg = engine.cfg
    obj = scene.objects[0]
    allowed = [f"distractor number {i}" for i in range(cfg.max_negatives)]
    r = engine.query(obj.class_name, negatives=allowed)
    assert r.success, r.message
    r = engine.query(obj.class_name, negatives=allowed + ["one more"])
    assert not r.success and r.step == 100
    assert f"too many negative phrases ({cfg.max_negatives + 1}): at most {cfg.max_negatives}" in r.message
    assert "query.max_negatives" in r.message
    huge = "n" * 10_000
    r = engine.query(obj.class_name, negatives=["ok", huge])
    assert not r.success and "negative phrase 1 too long (10000 characters)" in r.message
    assert len(r.message) < 300 and huge[:100] not in r.message


def test_long_and_control_character_text_is_refused_with_an_excerpt(engine):
    text = "mug " * 2500
    r = engine.query(text)
    assert not r.success and r.step == 100
    assert "too long (10000 characters)" in r.message and len(r.message) < 300
    for bad, code in (("bot\x00tle", "U+0000"), ("blue\x1b[31m mug", "U+001B"), ("mug\n", "U+000A")):
        r = engine.query(bad)
        assert not r.success, bad
        assert f"control character ({code}" in r.message and r.step == 100
        r = engine.query("mug", negatives=["plate", bad])
        assert not r.success and "negative phrase 1 holds a control character" in r.message


def test_max_grasps_and_max_points_are_clamped(scene, engine):
    cfg = engine.cfg
    obj = next(o for o in scene.objects if engine.query(o.class_name).grasps)
    r = engine.query(obj.class_name, max_grasps=2**32 - 1, max_points=2**32 - 1)
    assert r.success, r.message
    assert len(r.grasps) <= cfg.max_grasps_limit
    assert f"max_grasps {2**32 - 1} capped at {cfg.max_grasps_limit} (query.max_grasps_limit)" in r.message
    assert len(r.points) <= cfg.max_candidate_points
    assert "capped" not in engine.query(obj.class_name, max_grasps=cfg.max_grasps_limit).message


def test_relevancy_is_printed_with_enough_digits_to_differ_from_the_threshold(scene, engine):
    from lerf_ros.query.request import format_relevancy

    assert format_relevancy(0.9996, 1.0) == "0.9996"
    assert format_relevancy(0.54999, 0.55) == "0.54999"
    assert format_relevancy(0.3, 0.55) == "0.300" and format_relevancy(1.0, 1.0) == "1.000"
    r = engine.query(scene.objects[0].class_name, threshold=1.0)
    assert not r.success and r.max_relevancy < 1.0
    shown = r.message.split("best relevancy found is ")[1].split(" ")[0]
    assert float(shown) < 1.0 and shown != "1.000", r.message
    assert "threshold 1.000" in r.message


def test_refused_requests_report_the_loaded_models_step(engine, teacher):
    assert engine.query("").step == 100
    assert engine.query("mug", threshold=2.0).step == 100
    assert QueryEngine(qcfg(), teacher.encode_text).query("").step == -1


def test_query_config_checks_the_new_bounds():
    from lerf_ros.config import ConfigError

    with pytest.raises(ConfigError, match="query.max_grasps"):
        qcfg(max_grasps=30, max_grasps_limit=20)
    with pytest.raises(ConfigError, match="query.max_negatives"):
        qcfg(max_negatives=-1)


# ---------------------------------------------------------------------------------- interruptible preparation
def test_views_rendered_in_strips_equal_the_whole_view(scene, teacher, monkeypatch):
    from lerf_ros.query import surface as surface_mod

    snap = AnalyticSnapshot(scene, teacher.encode_text, step=1)
    cam = snap.cameras[0]
    whole = surface_mod._render_view(snap, cam, 1)
    monkeypatch.setitem(surface_mod.STRIP_RAYS, "cpu", 3 * cam.width + 5)  # strips of 3 rows, the last shorter
    calls = []
    render = snap.render
    monkeypatch.setattr(snap, "render", lambda K, c2w, h, w: calls.append(h) or render(K, c2w, h, w))
    strips = surface_mod._render_view(snap, cam, 1)
    assert len(calls) == -(-cam.height // 3) and max(calls) == 3
    for key in ("depth", "rgb", "acc"):
        np.testing.assert_allclose(strips[key], whole[key], atol=1e-5)
    # The real field too (deterministic samples per ray): strips of a FrozenField equal its whole view.
    from lerf_ros.field.frozen import FrozenField
    from lerf_ros.field.model import LerfModel

    torch.manual_seed(0)
    field = FrozenField(LerfModel(preset("tiny").model, 16, 8), [cam], step=1)
    monkeypatch.setitem(surface_mod.STRIP_RAYS, "cpu", 10**9)
    whole = surface_mod._render_view(field, cam, 4)
    monkeypatch.setitem(surface_mod.STRIP_RAYS, "cpu", 2 * whole["depth"].shape[1])
    strips = surface_mod._render_view(field, cam, 4)
    assert whole["depth"].std() > 0 and whole["rgb"].std() > 0  # not a constant image
    for key in ("depth", "rgb", "acc"):
        torch.testing.assert_close(torch.from_numpy(strips[key]), torch.from_numpy(whole[key]), atol=1e-5, rtol=1e-5)


def test_close_stops_preparation_at_the_next_chunk(scene, teacher):
    """``close`` during ``prepare`` ends it within one chunk; later queries are refused, not answered."""
    import time

    from lerf_ros.query.cancel import Cancelled

    snap = AnalyticSnapshot(scene, teacher.encode_text, step=7)
    calls = []
    render = snap.render

    def slow_render(K, c2w, h, w):  # each strip takes a while, like a big field on a CPU
        calls.append(time.monotonic())
        time.sleep(0.05)
        return render(K, c2w, h, w)

    snap.render = slow_render
    eng = QueryEngine(qcfg(), teacher.encode_text)
    eng.set_snapshot(snap)
    outcome = {}

    def prepare():
        try:
            outcome["ms"] = eng.prepare()
        except Cancelled as exc:
            outcome["cancelled"] = (time.monotonic(), str(exc))

    t = threading.Thread(target=prepare)
    t.start()
    while len(calls) < 3:
        time.sleep(0.01)
    t_close = time.monotonic()
    eng.close()
    t.join(10.0)
    assert not t.is_alive() and "cancelled" in outcome, outcome
    assert outcome["cancelled"][0] - t_close < 0.5
    assert len(calls) < 20 * len(snap.cameras)  # far from all views were rendered
    r = eng.query(scene.objects[0].class_name)
    assert not r.success and "shutting down" in r.message and r.step == 7
