"""Late pose corrections: a keyframe's input pose replaced after the fact (a SLAM loop closure).

ROS-free: ``KeyframeStore.set_pose`` (rigid poses only, nothing changed otherwise; the store version
and the slot's pose version move; training rays and snapshots follow) and ``Session.correct_poses``
(matched by stamp, updated only beyond the tolerance, bad poses skipped, counted).
Over DDS: the trainer node receives frames whose poses drifted, then a ``nav_msgs/Path`` of corrected
poses on ``corrected_path_topic``; ``/lerf/keyframes`` then shows the corrected poses and
``/lerf/status`` counts the corrections.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.frame import FrameError
from lerf_ros.data.synthetic import make_scene
from lerf_ros.geometry.poses import make_pose, pose_distance
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=6, n_objects=3, width=40, height=30, n_frames=8, nthreads=1)


def drift(c2w, i, per_frame_m=0.01, per_frame_deg=0.5):
    """``c2w`` moved by i * 1 cm along x and turned by i * 0.5 degrees about the world z axis."""
    a = math.radians(per_frame_deg * i)
    q = np.array([0.0, 0.0, math.sin(a / 2), math.cos(a / 2)])
    return make_pose(np.array([per_frame_m * i, 0.0, 0.0]), q) @ c2w


def test_set_pose_checks_and_replaces(scene):
    store = KeyframeStore(preset("tiny").keyframes, bounded=False, recency_boost=0.0)
    key, _ = store.add(scene.frames[0])
    slot = store.get(key).slot
    v0, (_, pose_versions) = store.version, store.slot_generations()
    bad = np.eye(4)
    bad[0, 0] = 2.0  # not a rotation
    for pose in (bad, np.full((4, 4), np.nan), np.eye(3)):
        with pytest.raises(FrameError):
            store.set_pose(key, pose)
    assert store.version == v0 and np.array_equal(store.get(key).c2w, scene.frames[0].c2w)

    new = drift(scene.frames[0].c2w, 5)
    assert store.set_pose(key, new)
    assert store.version > v0 and store.slot_generations()[1][slot] == pose_versions[slot] + 1
    np.testing.assert_array_equal(store.get(key).c2w, new)
    np.testing.assert_array_equal(store.cameras()[0].c2w, new)
    batch = store.sample(64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.origins, torch.as_tensor(new[:3, 3], dtype=torch.float32).expand(64, 3))
    assert not store.set_pose(key + 1, new)  # not stored: nothing to correct


def quiet_log(lines):
    return lambda level, text: lines.append((level, text))


def test_correct_poses_by_stamp_beyond_tolerance(scene, tmp_path):
    lines = []
    cfg = preset("tiny").override({"teacher.kind": "none", "output_dir": str(tmp_path), "trainer.rays_per_batch": 128})
    session = Session(cfg, online=False, log=quiet_log(lines))
    frames = scene.frames
    for i, f in enumerate(frames):
        session.add(dataclasses.replace(f, c2w=drift(f.c2w, i)))
    session.step()  # a model exists: corrections arrive while it trains
    truth = {f.stamp: f.c2w for f in frames}
    kfs = session.keyframes.keyframes()
    # Frames 0 (no drift) and 1 (1 cm, 0.5 deg: not beyond 2 cm / 1 deg) stay; 2..7 move.
    # Stamps slightly off still match; a stamp 1 s off matches nothing.
    corrections = [(f.stamp + 0.001, f.c2w) for f in frames[:6]] + [(frames[6].stamp + 1.0, frames[6].c2w)]
    bad = np.eye(4)
    bad[:3, :3] *= 2.0
    corrections.append((frames[7].stamp, bad))
    version = session.keyframes.version
    n = session.correct_poses(corrections, tolerance_m=0.02, tolerance_deg=1.0, stamp_tolerance_s=0.005)
    assert n == 4  # frames 2, 3, 4, 5
    assert session.pose_corrections == 4 and session.keyframes.version > version
    after = {kf.stamp: kf.c2w for kf in session.keyframes.keyframes()}
    for i, kf in enumerate(kfs):
        if 2 <= i <= 5:
            np.testing.assert_allclose(after[kf.stamp], truth[kf.stamp])
        else:
            np.testing.assert_array_equal(after[kf.stamp], kf.c2w)
    assert [t for lv, t in lines if lv == "warning"] == [
        "late pose corrections: 1 pose(s) are not rigid transforms; skipped"
    ]
    # The snapshot's cameras are the corrected ones, and training goes on.
    snap_poses = np.stack([c.c2w for c in session.snapshot().cameras])
    dt, _ = pose_distance(snap_poses[2:6], np.stack([truth[kf.stamp] for kf in kfs[2:6]]))
    assert np.all(dt < 1e-6)
    assert np.isfinite(session.step()["rgb"])
    # Applying the same corrections again changes nothing; a mapping works as well as pairs.
    assert session.correct_poses(dict(corrections[:6]), tolerance_m=0.02, tolerance_deg=1.0) == 0
    assert session.correct_poses({}) == 0
    with pytest.raises(ValueError, match="tolerances"):
        session.correct_poses(corrections, tolerance_m=-1.0)
