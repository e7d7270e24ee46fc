"""The mapping session: one owner of keyframes, features, bounds, trainer, snapshots and checkpoints."""

import time

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping.online import OnlineTrainer, TrainerState
from lerf_ros.mapping.rays import estimate_scene_bounds
from lerf_ros.mapping.session import Session
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, width=48, height=36, n_frames=10, nthreads=1)


def cfg_for(tmp_path, **over):
    base = {
        "teacher.kind": "ground_truth",
        "trainer.rays_per_batch": 128,
        "output_dir": str(tmp_path),
        "keyframes.min_keyframes_to_train": 2,
    }
    base.update(over)
    return preset("tiny").override(base)


def quiet(level, text):
    pass


def offline(scene, tmp_path, n=6, **over):
    s = Session(cfg_for(tmp_path, **over), GroundTruthTeacher(scene), online=False, log=quiet)
    for f in scene.frames[:n]:
        s.add(f)
    return s


def test_bounds_are_session_state_not_configuration(scene, tmp_path):
    s = offline(scene, tmp_path)
    cfg_before = s.cfg.to_dict()
    assert s.bounds is None and s.trainer is None and s.step_count == 0
    s.step()
    center, scale = estimate_scene_bounds(s.keyframes.keyframes())
    np.testing.assert_allclose(s.bounds[0], center, rtol=1e-6, atol=1e-7)
    assert s.bounds[1] == pytest.approx(scale)
    assert s.cfg.to_dict() == cfg_before and s.cfg.model.auto_bounds  # the configuration is never rewritten
    snap = s.snapshot()
    np.testing.assert_allclose(snap.scene_center, center, rtol=1e-6)
    assert snap.scene_scale == pytest.approx(scale)
    s.reset()
    assert s.bounds is None and s.step_count == 0 and s.trainer is None
    # fixed bounds from the configuration when auto_bounds is off
    fixed = offline(
        scene,
        tmp_path,
        n=3,
        **{"model.auto_bounds": False, "model.scene_center": [0.1, 0.2, 0.3], "model.scene_scale": 2.5},
    )
    fixed.step()
    np.testing.assert_allclose(fixed.bounds[0], [0.1, 0.2, 0.3], rtol=1e-6)
    assert fixed.bounds[1] == 2.5


def test_checkpoint_resume_restores_bounds_and_continues_exactly(scene, tmp_path):
    a = offline(scene, tmp_path / "a")
    for _ in range(3):
        a.step()
    path = a.save_checkpoint()
    assert path.endswith("step-0000003.ckpt") and a.last_checkpoint == path
    b = offline(scene, tmp_path / "a", n=6)
    assert b.resume() == path
    assert b.bounds == a.bounds and b.step_count == 3
    sa, sb = a.step(), b.step()
    assert sa["loss"] == sb["loss"]
    # a session configured with other (fixed) bounds takes the checkpoint's: they are part of the weights
    other = offline(scene, tmp_path / "a", n=3, **{"model.auto_bounds": False, "model.scene_scale": 9.0})
    assert other.resume(path) == path and other.bounds == a.bounds
    # nothing to resume from: None, and the session is untouched
    c = offline(scene, tmp_path / "empty", n=2)
    assert c.resume() is None and c.trainer is None
    with pytest.raises(RuntimeError, match="training has not started"):
        c.save_checkpoint()


def test_each_image_is_held_once(scene, tmp_path):
    s = offline(scene, tmp_path, n=4)
    kfs = s.keyframes.keyframes()
    for kf in kfs:
        frame = kf.frame
        assert np.shares_memory(frame.rgb, kf.rgb.numpy())  # a view, not a copy
        assert np.shares_memory(frame.depth, kf.depth.numpy())
        assert frame.instance is None  # only needed for the teacher's features
    h, w = scene.frames[0].height, scene.frames[0].width
    st = s.keyframes.stats()
    assert st["image_bytes"] == 4 * h * w * (3 + 4)
    assert st["bytes"] == st["image_bytes"] + st["feature_bytes"] and st["feature_bytes"] > 0
    # the store copies the caller's pixels once: changing the source does not change the keyframe
    src = scene.frames[5]
    key = s.add(src)
    before = s.keyframes.get(key).rgb.clone()
    src_rgb = src.rgb.copy()
    src.rgb[:] = 0
    try:
        assert torch.equal(s.keyframes.get(key).rgb, before)
    finally:
        src.rgb[:] = src_rgb


def test_online_store_stays_within_its_memory_bound(scene, tmp_path):
    h, w = scene.frames[0].height, scene.frames[0].width
    per_frame = h * w * 7
    bound_mb = 3.5 * per_frame / 2**20  # room for three keyframes without features
    s = Session(
        cfg_for(
            tmp_path,
            **{
                "keyframes.max_memory_mb": bound_mb,
                "keyframes.min_translation": 0.0,
                "keyframes.min_rotation_deg": 0.0,
                "keyframes.protect_newest": 1,
            },
        ),
        GroundTruthTeacher(scene),
        online=True,
        log=quiet,
    )
    try:
        kept = sum(s.submit(f).kept for f in scene.frames)
        assert kept == len(scene.frames)
        st = s.keyframes.stats()
        assert st["bytes"] <= bound_mb * 2**20 and st["evicted"] >= len(scene.frames) - 3
        with pytest.raises(RuntimeError, match="use add"):
            Session(cfg_for(tmp_path), GroundTruthTeacher(scene), online=False).submit(scene.frames[0])
    finally:
        s.close()


def test_online_trainer_is_the_session_plus_threads(scene, tmp_path):
    ot = OnlineTrainer(
        cfg_for(
            tmp_path,
            **{"keyframes.min_translation": 0.0, "keyframes.min_rotation_deg": 0.0, "trainer.checkpoint_every": 0},
        ),
        teacher=GroundTruthTeacher(scene),
        log=quiet,
        snapshot_every=2,
    )
    try:
        assert ot.status().state == TrainerState.WAITING
        for f in scene.frames[:4]:
            assert ot.submit(f).kept
        bad = scene.frames[4]
        r = ot.submit(type(bad)(rgb=bad.rgb, K=bad.K, c2w=bad.c2w * np.nan, stamp=99.0))
        assert r.rejected and r.kind == "invalid"
        ot.start()
        deadline = time.time() + 120
        while (ot.step < 4 or ot.latest_snapshot is None) and time.time() < deadline:
            time.sleep(0.05)
        assert ot.step >= 4 and ot.latest_snapshot is not None
        st = ot.status()
        assert st.state == TrainerState.TRAINING and st.keyframes == 4 and "rgb" in st.losses
        assert ot.session.bounds is not None
        ot.set_paused(True)
        path = ot.save_checkpoint()
        assert ot.status().checkpoint == path and ot.status().state == TrainerState.PAUSED
        ot.reset()
        assert ot.step == 0 and ot.latest_snapshot is None and ot.session.bounds is None
        assert ot.resume_latest() == path and ot.session.bounds is not None
    finally:
        ot.close()
