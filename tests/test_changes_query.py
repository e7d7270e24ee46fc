"""After a scene change the query scores the surface the field has relearnt, not the one of before.

The query's candidate points (``lerf_ros.query.surface``) are extracted from a snapshot and kept for
``query.refresh_every_steps`` steps. A flat object moved onto the table left only table points at
its new place in the kept surface, 3.5 cm under its top, where the language field seldom learns it:
it was found at its new place only at the next regular refresh. Snapshots now carry the step of the
newest scene change (``scene_change_step``) and the surface is refreshed after it as for a young
field. Here a field of a table that gains a flat box at step 1005 (exact geometry) shows the rule;
the same snapshots without a change keep the old surface.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lerf_ros.config import QueryConfig, preset
from lerf_ros.field.snapshot import CameraView
from lerf_ros.query.surface import CHANGE_REFRESH_STEPS, SurfaceCache, _relearning

TABLE = 0.5  # half side of the table (m)
BOX = (0.10, 0.22, -0.06, 0.06, 0.035)  # x0, x1, y0, y1, height: a flat object (a banana's height)


def _look_at(eye: np.ndarray) -> np.ndarray:
    """Camera-to-world (OpenCV: z forward, y down) at ``eye`` looking at the origin."""
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], 1)
    c2w[:3, 3] = eye
    return c2w


class TableWorld:
    """A ``FieldSnapshot`` with exact geometry (no language: the surface is all these tests read): a
    table top at z = 0, with or without the flat box, seen by a ring of 8 cameras."""

    def __init__(self, step: int, box: bool, scene_change_step: int = -1) -> None:
        self.step, self.box, self.clip_dim = int(step), bool(box), 0
        self.scene_change_step = int(scene_change_step)
        self.device = torch.device("cpu")
        K = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
        ring = [np.array([0.8 * np.cos(a), 0.8 * np.sin(a), 0.6]) for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
        self.cameras = [CameraView(K, _look_at(e), 24, 32) for e in ring]

    def render(self, K, c2w, height, width):
        v, u = np.mgrid[0:height, 0:width]
        d_cam = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1)
        d = d_cam @ np.asarray(c2w)[:3, :3].T  # z-depth 1 along each ray
        o = np.asarray(c2w)[:3, 3]
        depth = np.zeros((height, width))
        rgb = np.zeros((height, width, 3))
        for z, half, colour in ((0.0, None, (0.6, 0.5, 0.4)), (BOX[4] if self.box else None, BOX, (0.9, 0.8, 0.1))):
            if z is None:
                continue
            t = (z - o[2]) / np.where(np.abs(d[..., 2]) > 1e-9, d[..., 2], -1e-9)
            p = o + t[..., None] * d
            if half is None:
                hit = (t > 0) & (np.abs(p[..., 0]) <= TABLE) & (np.abs(p[..., 1]) <= TABLE)
            else:
                hit = (t > 0) & (p[..., 0] >= half[0]) & (p[..., 0] <= half[1])
                hit &= (p[..., 1] >= half[2]) & (p[..., 1] <= half[3])
            near = hit & ((depth == 0) | (t < depth))
            depth[near], rgb[near] = t[near], colour
        return {
            "rgb": torch.from_numpy(rgb).float(),
            "depth": torch.from_numpy(depth).float(),
            "accumulation": torch.from_numpy((depth > 0).astype(np.float32)),
        }


def _on_box(surface) -> int:
    """Surface points on the box's top."""
    x, y, z = surface.xyz.T
    return int(np.count_nonzero((x > BOX[0]) & (x < BOX[1]) & (y > BOX[2]) & (y < BOX[3]) & (z > 0.02)))


@pytest.fixture()
def cache():
    cfg = QueryConfig(surface_stride=1, min_views=2, refresh_every_steps=500)
    return SurfaceCache(cfg)


def test_the_rule():
    assert not _relearning(1030, 1000, -1)  # no change
    assert not _relearning(1004, 1000, 1005)  # the change is later than the snapshot
    assert not _relearning(1005 + CHANGE_REFRESH_STEPS - 1, 1000, 1005)  # too soon after it
    assert _relearning(1005 + CHANGE_REFRESH_STEPS, 1000, 1005)
    # then whenever the steps since the change have doubled since the last extraction
    assert not _relearning(1005 + 49, 1005 + 25, 1005)
    assert _relearning(1005 + 50, 1005 + 25, 1005)
    assert _relearning(1005 + 400, 1005 + 200, 1005) and not _relearning(1005 + 399, 1005 + 200, 1005)


def test_a_new_surface_is_extracted_after_a_scene_change(cache):
    first, computed = cache.get(TableWorld(1000, box=False))
    assert computed and len(first) > 200 and _on_box(first) == 0
    # the field has learnt the box, but no change was reported: the old surface is kept
    same, computed = cache.get(TableWorld(1030, box=True))
    assert not computed and same is first
    # with the change (step 1005) reported by the snapshot it is refreshed, and shows the box
    new, computed = cache.get(TableWorld(1030, box=True, scene_change_step=1005))
    assert computed and new.step == 1030 and _on_box(new) >= 10
    # 25 steps after the change at the last extraction: the next one 50 steps after it
    assert not cache.get(TableWorld(1054, box=True, scene_change_step=1005))[1]
    assert cache.get(TableWorld(1055, box=True, scene_change_step=1005))[1]


def test_a_static_field_keeps_its_surface(cache):
    """No change: refreshed only every refresh_every_steps, as before."""
    cache.get(TableWorld(1000, box=False))
    computed = [cache.get(TableWorld(step, box=False))[1] for step in range(1020, 1500, 20)]
    assert not any(computed)
    assert cache.get(TableWorld(1500, box=False))[1]


def test_snapshots_and_checkpoints_carry_the_newest_change(tmp_path):
    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.mapping import checkpoint as ckpt
    from lerf_ros.mapping.session import Session
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    scene = make_scene(seed=3, width=32, height=24, n_frames=4, nthreads=1)
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "trainer.rays_per_batch": 64,
            "output_dir": str(tmp_path),
            "keyframes.min_keyframes_to_train": 2,
            "changes.enabled": True,
        }
    )
    s = Session(cfg, GroundTruthTeacher(scene), online=True, log=lambda *a: None)
    for f in scene.frames:
        s.add(f)
    s.step()
    assert s.snapshot().scene_change_step == -1 and s.change_stats()["last_change_step"] == -1
    assert ckpt.load_snapshot(s.save_checkpoint()).scene_change_step == -1
    s.changes.last_change_step = 7  # as a confirmed change at step 7 sets it
    assert s.snapshot().scene_change_step == 7
    assert ckpt.load_snapshot(s.save_checkpoint(str(tmp_path / "b.ckpt"))).scene_change_step == 7
    # a resumed session keeps it (and writes it again), a reset model starts without one
    again = Session(cfg, GroundTruthTeacher(scene), online=True, log=lambda *a: None)
    assert again.resume(str(tmp_path / "b.ckpt")) is not None
    assert again.scene_change_step() == 7 and again.snapshot().scene_change_step == 7
    again.reset()
    assert again.scene_change_step() == -1
    # a checkpoint written before the step was kept: no change known
    payload = ckpt.read_checkpoint(str(tmp_path / "b.ckpt"))
    del payload["scene_change_step"]
    ckpt.write_atomic(str(tmp_path / "old.ckpt"), payload)
    assert ckpt.load_snapshot(str(tmp_path / "old.ckpt")).scene_change_step == -1
    s.resume(str(tmp_path / "old.ckpt"))
    assert s.scene_change_step() == -1
    off = Session(cfg.override({"changes.enabled": False}), GroundTruthTeacher(scene), online=True, log=lambda *a: None)
    assert off.scene_change_step() == -1
    s.close()
    again.close()
    off.close()
