"""Scripted changes in synthetic scenes (lerf_ros.data.synthetic.events) and ``lerf-ros scene --event``."""

import numpy as np
import pytest

from lerf_ros.data.synthetic import load_scene, make_scene
from lerf_ros.data.synthetic.events import (
    SceneEvent,
    changed_objects,
    make_changing_scene,
    objects_at,
    parse_event,
    scene_events,
)

SEED = 21  # objects: mug, teapot, potted plant, computer mouse, phone, bowl
SIZE = dict(width=48, height=36, n_frames=12)


def test_parse_event_forms_and_errors():
    assert parse_event("remove:mug@30") == SceneEvent("remove", "mug", 30)
    assert parse_event(" move : coffee mug @ 7 = 0.2,-0.1") == SceneEvent("move", "coffee mug", 7, (0.2, -0.1))
    assert parse_event("add:banana@45=0.1,0.2,90") == SceneEvent("add", "banana", 45, (0.1, 0.2), 90.0)
    assert parse_event("add:banana@45=0.1,0.2,90").text() == "add:banana@45=0.1,0.2,90"
    for bad, words in [
        ("remove:mug", "KIND:NAME@FRAME"),
        ("explode:mug@3", "one of remove, move, add"),
        ("move:mug@3=1", "X,Y"),
        ("move:mug@3=a,b", "numbers"),
        ("remove:mug@0", ">= 1"),
        ("remove:mug@4=0,0", "no position"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_event(bad)


def test_changing_scene_renders_each_state_with_ground_truth(tmp_path):
    static = make_scene(seed=SEED, **SIZE)
    scene = make_changing_scene(
        seed=SEED, events=["remove:mug@12", "move:teapot@12", "add:banana@15"], cycles=2, **SIZE
    )
    assert len(scene) == 24 and scene.params["n_frames"] == 24 and scene.params["cycles"] == 2
    # before the first event: the static scene's frames, pixel for pixel
    for i in range(12):
        assert np.array_equal(scene[i].rgb, static[i].rgb) and np.array_equal(scene[i].instance, static[i].instance)
    ids = {o.class_name: o.instance_id for o in scene.objects}
    mug, teapot, banana = ids["mug"], ids["teapot"], ids["banana"]
    assert banana == len(static.objects) + 1
    seen_before = set(np.unique(np.stack([f.instance for f in scene.frames[:12]])))
    seen_after = set(np.unique(np.stack([f.instance for f in scene.frames[15:]])))
    assert mug in seen_before and banana not in seen_before
    assert mug not in seen_after and banana in seen_after and teapot in seen_after
    # the same view before and after: the mug's pixels changed, the moved teapot is elsewhere
    a, b = scene[3], scene[15]
    assert np.array_equal(a.c2w, b.c2w)
    assert not np.any(b.instance == mug)
    assert np.any(a.instance != b.instance)
    # ground truth per frame
    assert {o.class_name for o in objects_at(scene, 11)} == {o.class_name for o in static.objects}
    after = {o.class_name: o for o in objects_at(scene, 23)}
    assert "mug" not in after and "banana" in after
    before_tp, after_tp = changed_objects(scene)["teapot"]
    assert np.linalg.norm(before_tp.center[:2] - after_tp.center[:2]) > 0.1
    # the teapot's pixels after the move back-project into its new box, not its old one
    f = scene[23]
    v, u = np.nonzero(f.instance == teapot)
    assert len(u) > 20
    rays = np.stack([(u + 0.5 - f.K[0, 2]) / f.K[0, 0], (v + 0.5 - f.K[1, 2]) / f.K[1, 1], np.ones(len(u))], 1)
    pts = (rays * f.depth[v, u, None]) @ f.c2w[:3, :3].T + f.c2w[:3, 3]
    assert after_tp.contains(pts, 0.01).mean() > 0.95 and before_tp.contains(pts, 0.01).mean() < 0.05
    # saved and loaded: frames and events come back
    scene.save(tmp_path / "s", preview=False)
    loaded = load_scene(tmp_path / "s")
    assert scene_events(loaded) == scene_events(scene)
    assert np.array_equal(loaded[20].rgb, scene[20].rgb)
    assert [o.class_name for o in objects_at(loaded, 23)] == [o.class_name for o in objects_at(scene, 23)]


def test_events_that_cannot_happen_are_refused():
    with pytest.raises(ValueError, match="no book on the table"):
        make_changing_scene(seed=SEED, events=["remove:book@3"], **SIZE)
    with pytest.raises(ValueError, match="already has a mug"):
        make_changing_scene(seed=SEED, events=["add:mug@3"], **SIZE)
    with pytest.raises(ValueError, match="past the last frame"):
        make_changing_scene(seed=SEED, events=["remove:mug@12"], **SIZE)
    with pytest.raises(ValueError, match="no mug on the table at frame 5"):
        make_changing_scene(seed=SEED, events=["remove:mug@3", "move:mug@5"], **SIZE)
    with pytest.raises(ValueError, match="off the table"):
        make_changing_scene(seed=SEED, events=["move:mug@3=2.0,0"], **SIZE)


def test_scene_command_event_option(tmp_path, capsys):
    from lerf_ros.cli import main

    out = tmp_path / "scene"
    rc = main(
        ["scene", "--seed", str(SEED), "--width", "32", "--height", "24", "--frames", "8", "--cycles", "2"]
        + ["--event", "remove:mug@8", "--out", str(out)]
    )
    assert rc == 0
    assert "event at frame 8: remove mug" in capsys.readouterr().out
    loaded = load_scene(out)
    assert len(loaded) == 16 and scene_events(loaded)[0]["kind"] == "remove"
    rc = main(["scene", "--seed", str(SEED), "--out", str(tmp_path / "x"), "--event", "remove:mug"])
    assert rc == 2 and "KIND:NAME@FRAME" in capsys.readouterr().err
