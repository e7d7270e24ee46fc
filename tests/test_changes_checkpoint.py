"""Pixels retired for a scene change stay retired in a resumed session (checkpoint ``retired_pixels``)."""

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.session import Session
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, width=32, height=24, n_frames=5, nthreads=1)


def _session(scene, folder, frames=()):
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "trainer.rays_per_batch": 64,
            "output_dir": str(folder),
            "keyframes.min_keyframes_to_train": 2,
        }
    )
    s = Session(cfg, GroundTruthTeacher(scene), online=False, log=lambda *a: None)
    for f in frames:
        s.add(f)
    return s


def _retired(session):
    """{(stamp, index): (H, W) retired mask} of the stored keyframes that retired pixels."""
    out = {}
    for kf in session.keyframes.keyframes():
        if kf.trusted is not None:
            m = np.ones(kf.height * kf.width, bool)
            m[kf.trusted.numpy()] = False
            out[(kf.stamp, kf.index)] = m.reshape(kf.height, kf.width)
    return out


def test_retired_pixels_survive_a_checkpoint(scene, tmp_path):
    a = _session(scene, tmp_path / "a", scene.frames)
    a.step()
    left = np.zeros((24, 32), bool)
    left[:, :10] = True
    ring = np.zeros((24, 32), bool)
    ring[5:15, 8:20] = True
    keys = a.keyframes.keys()
    assert a.keyframes.retire_pixels(keys[1], left) == 24 * 22
    assert a.keyframes.retire_pixels(keys[3], ring) == 24 * 32 - 120
    expected = _retired(a)
    assert len(expected) == 2
    path = a.save_checkpoint()
    saved = ckpt.read_checkpoint(path)["retired_pixels"]
    assert sorted(e["index"] for e in saved) == sorted(k[1] for k in expected)

    # frames stored before the resume: retired at once
    b = _session(scene, tmp_path / "a", scene.frames)
    assert _retired(b) == {}
    assert b.resume(path) == path
    got = _retired(b)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])

    # resumed first, the frames seen again afterwards (a replayed stream): retired as they come back
    c = _session(scene, tmp_path / "a")
    c.resume(path)
    for f in scene.frames:
        c.add(f)
    got = _retired(c)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    # retired pixels are never drawn for training
    batch = c.keyframes.sample(4000, torch.Generator().manual_seed(0))
    kf_ids = [(kf.stamp, kf.index) for kf in c.keyframes.keyframes()]
    first = batch.view_index == kf_ids.index(next(k for k in expected if k[1] == scene.frames[1].index))
    assert first.sum() > 100 and batch.u[first].min() >= 10

    # a checkpoint written before those keyframes came back still holds them
    d = _session(scene, tmp_path / "d", scene.frames[:3])
    d.resume(path)
    d.step()
    again = ckpt.read_checkpoint(d.save_checkpoint())["retired_pixels"]
    assert sorted(e["index"] for e in again) == sorted(e["index"] for e in saved)


def test_a_checkpoint_without_retired_pixels_still_loads(scene, tmp_path):
    a = _session(scene, tmp_path / "a", scene.frames)
    a.step()
    path = a.save_checkpoint()
    payload = ckpt.read_checkpoint(path)
    del payload["retired_pixels"]  # as written before scene changes were followed
    ckpt.write_atomic(path, payload)
    b = _session(scene, tmp_path / "a", scene.frames)
    assert b.resume(path) == path and b.step_count == 1
    assert _retired(b) == {}
    b.step()
