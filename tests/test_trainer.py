"""Ray sampling from the keyframe store, the trainer, the session, snapshots, checkpoints and the ``train``
command, on tiny scenes."""

import os
import threading

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.rays import estimate_scene_bounds
from lerf_ros.mapping.trainer import Trainer, learning_rate
from lerf_ros.teachers.features import compute_frame_features
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=2, width=48, height=36, n_frames=8, nthreads=1)


def tiny_cfg(scene, **over):
    center, scale = estimate_scene_bounds(scene.frames)
    base = {
        "model.scene_center": center,
        "model.scene_scale": scale,
        "trainer.rays_per_batch": 256,
        "teacher.kind": "ground_truth",
    }
    base.update(over)
    return preset("tiny").override(base)


def make_views(scene, teacher=None, cfg=None, recency_boost=0.0, n=None):
    """An unbounded keyframe store holding the scene's frames (keys 0, 1, ... in frame order)."""
    views = KeyframeStore(bounded=False, recency_boost=recency_boost)
    for f in scene.frames[:n]:
        feats = compute_frame_features(teacher, f, cfg.teacher) if teacher is not None else None
        views.add(f, feats)
    return views


# ---------------------------------------------------------------------------------- views
def test_sampled_rays_carry_their_pixels(scene):
    views = make_views(scene)
    b = views.sample(500, torch.Generator().manual_seed(0))
    assert len(b) == 500 and b.depth is not None and b.clip is None and b.feature_rows.numel() == 0
    frames = scene.frames
    for r in range(0, 500, 7):
        f = frames[int(b.view_index[r])]
        px, py = int(b.u[r] - 0.5), int(b.v[r] - 0.5)
        np.testing.assert_allclose(b.rgb[r].numpy() * 255.0, f.rgb[py, px], atol=1e-3)
        z = float(f.depth[py, px])
        assert float(b.depth[r]) == pytest.approx(z)
        # the point at ray distance z / dir_z projects back onto the pixel centre with depth z
        p = b.origins[r].double().numpy() + b.directions[r].double().numpy() * z / float(b.dir_z[r])
        cam = np.linalg.inv(f.c2w) @ np.append(p, 1.0)
        assert cam[2] == pytest.approx(z, rel=1e-4)
        uv = f.K @ (cam[:3] / cam[2])
        np.testing.assert_allclose(uv[:2], [px + 0.5, py + 0.5], atol=1e-3)
    # reproducible for a seeded generator
    b2 = views.sample(500, torch.Generator().manual_seed(0))
    assert torch.equal(b.u, b2.u) and torch.equal(b.view_index, b2.view_index)


def test_view_weighting_favours_new_views_without_starving_old(scene):
    views = make_views(scene, recency_boost=4.0)
    w = views.view_weights()
    assert w.shape == (8,) and torch.all(w[1:] >= w[:-1]) and float(w[-1]) == pytest.approx(5.0)
    assert float(w.min()) >= 1.0
    counts = torch.bincount(views.sample(20000, torch.Generator().manual_seed(1)).view_index, minlength=8).double()
    share = counts / counts.sum()
    torch.testing.assert_close(share, w / w.sum(), rtol=0, atol=0.02)
    assert float(share[0]) > 0.05  # the oldest view still gets its share
    key, _ = views.add(scene.frames[0])  # an added keyframe is the newest
    assert float(views.view_weights()[-1]) == pytest.approx(5.0) and views.keys()[-1] == key == 8
    uniform = make_views(scene, recency_boost=0.0).view_weights()
    assert torch.all(uniform == 1.0)


def test_add_remove_and_errors(scene):
    views = make_views(scene, n=3)
    assert len(views) == 3 and 1 in views
    views.remove(1)
    assert len(views) == 2 and 1 not in views
    with pytest.raises(KeyError):
        views.remove(1)
    assert views.set_features(99, np.zeros(4, np.float32)) is False  # not stored: nothing happens
    with pytest.raises(RuntimeError, match="no keyframes"):
        KeyframeStore().sample(4)
    bad = scene.frames[0]
    from lerf_ros.data.frame import Frame, FrameError

    with pytest.raises(FrameError):
        views.add(Frame(rgb=bad.rgb[..., :2], K=bad.K, c2w=bad.c2w))


def test_add_remove_while_sampling_is_safe(scene):
    views = make_views(scene)
    errors = []
    stop = threading.Event()

    def churn():
        try:
            k = 100
            while not stop.is_set():
                key, _ = views.add(scene.frames[k % 8])
                views.remove(key)
                k += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    g = torch.Generator().manual_seed(0)
    try:
        for _ in range(200):
            b = views.sample(64, g)
            assert len(b) == 64 and torch.isfinite(b.origins).all()
    finally:
        stop.set()
        t.join()
    assert not errors


def test_scene_bounds_cover_cameras_and_content(scene):
    center, scale = estimate_scene_bounds(scene.frames)
    cams = np.stack([f.c2w[:3, 3] for f in scene.frames])
    assert np.all(np.abs(cams - np.array(center)).max(1) <= scale)
    for o in scene.objects:  # table-top objects inside the linear region
        assert np.abs(np.asarray(o.center) - np.array(center)).max() <= scale


# ---------------------------------------------------------------------------------- trainer
def test_learning_rate_schedules():
    assert learning_rate(1e-2, 1e-4, 100, 0, "exponential", 0) == pytest.approx(1e-2)
    assert learning_rate(1e-2, 1e-4, 100, 50, "exponential", 0) == pytest.approx(1e-3)
    assert learning_rate(1e-2, 1e-4, 100, 500, "exponential", 0) == pytest.approx(1e-4)
    assert learning_rate(1e-2, 0.0 + 1e-4, 100, 50, "cosine", 0) == pytest.approx(0.5 * (1e-2 + 1e-4))
    assert learning_rate(1e-2, 1e-4, 100, 0, "exponential", 10) == pytest.approx(1e-3)


def test_rgb_only_views_then_features(scene):
    cfg = tiny_cfg(scene)
    teacher = GroundTruthTeacher(scene)
    views = make_views(scene)
    tr = Trainer(cfg, teacher.clip_dim, teacher.dino_dim, views, teacher=teacher.description)
    s = tr.step()
    assert s["lang_rays"] == 0 and "lang" not in s and "depth" in s and s["step"] == 1
    views.set_features(3, compute_frame_features(teacher, scene.frames[3], cfg.teacher))
    s = tr.step()
    assert 0 < s["lang_rays"] < 256 and "lang" in s and "dino" in s
    assert tr.rays_per_second > 0


def test_training_reduces_the_loss(scene):
    cfg = tiny_cfg(scene)
    teacher = GroundTruthTeacher(scene)
    tr = Trainer(cfg, teacher.clip_dim, teacher.dino_dim, make_views(scene, teacher, cfg), teacher.description)
    first = [tr.step() for _ in range(3)]
    for _ in range(30):
        last = tr.step()
    assert last["rgb"] < 0.6 * np.mean([s["rgb"] for s in first])
    assert last["lang"] < np.mean([s["lang"] for s in first])


def test_snapshot_is_frozen_and_renders(scene):
    cfg = tiny_cfg(scene)
    tr = Trainer(cfg, 16, 4, make_views(scene), teacher="none")
    tr.step()
    snap = tr.snapshot()
    f = scene.frames[0]
    before = snap.render(f.K, f.c2w, f.height, f.width, scale=0.2)
    assert before["rgb"].shape == (36, 48, 3) and before["depth"].shape == (36, 48)
    assert before["clip"].shape == (36, 48, 16)
    assert float(before["rgb"].min()) >= 0.0 and float(before["rgb"].max()) <= 1.0
    assert snap.step == 1 and len(snap.cameras) == 8 and snap.clip_dim == 16
    pts = torch.randn(100, 3) * 0.3
    lang0, dens0 = snap.language(pts, torch.full((100,), 0.2)), snap.density(pts)
    for _ in range(3):
        tr.step()  # the live model moves on ...
    after = snap.render(f.K, f.c2w, f.height, f.width)
    assert torch.equal(after["rgb"], before["rgb"])  # ... the snapshot does not
    assert torch.equal(snap.language(pts, torch.full((100,), 0.2)), lang0) and torch.equal(snap.density(pts), dens0)
    assert not any(p.requires_grad for p in snap._model.parameters())
    torch.testing.assert_close(lang0.norm(dim=1), torch.ones(100))
    assert float(dens0.min()) >= 0.0


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_bit_exact(scene, tmp_path):
    cfg = tiny_cfg(scene)
    teacher = GroundTruthTeacher(scene, clip_dim=64, dino_dim=8)
    views = make_views(scene, teacher, cfg)
    tr = Trainer(cfg, 64, 8, views, teacher=teacher.description)
    for _ in range(2):
        tr.step()
    path = tr.save_checkpoint(str(tmp_path / "a.ckpt"))
    assert os.listdir(tmp_path) == ["a.ckpt"]  # no temp file left behind
    other = Trainer.from_checkpoint(path, views)
    assert other.step_count == 2 and other.teacher == teacher.description
    for (ka, va), (kb, vb) in zip(tr.model.state_dict().items(), other.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    sa, sb = tr.optimizer.state_dict(), other.optimizer.state_dict()
    for pid in sa["state"]:
        for key in sa["state"][pid]:
            assert torch.equal(torch.as_tensor(sa["state"][pid][key]), torch.as_tensor(sb["state"][pid][key]))
    # both continue identically: same rays, same jitter, same update
    a, b = tr.step(), other.step()
    assert a["loss"] == b["loss"] and a["psnr"] == b["psnr"]
    for pa, pb in zip(tr.model.parameters(), other.model.parameters()):
        assert torch.equal(pa, pb)
    payload = ckpt.read_checkpoint(path)
    assert payload["clip_dim"] == 64 and payload["dino_dim"] == 8 and payload["config"]["preset"] == "tiny"
    assert len(payload["cameras"]) == 8
    snap = ckpt.load_snapshot(path, device="cpu")
    f = scene.frames[1]
    other_snap = Trainer.from_checkpoint(path, views).snapshot()
    assert torch.equal(snap.render(f.K, f.c2w, 12, 16)["rgb"], other_snap.render(f.K, f.c2w, 12, 16)["rgb"])


def test_checkpoint_write_is_atomic_and_errors_are_clear(scene, tmp_path, monkeypatch):
    cfg = tiny_cfg(scene)
    tr = Trainer(cfg, 16, 4, make_views(scene, n=2))
    path = str(tmp_path / "c.ckpt")
    tr.save_checkpoint(path)
    good = open(path, "rb").read()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    tr.step()
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint(path)
    monkeypatch.undo()
    assert open(path, "rb").read() == good and os.listdir(tmp_path) == ["c.ckpt"]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ckpt.CheckpointError, match="bad.ckpt"):
        ckpt.read_checkpoint(str(bad))
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.read_checkpoint(str(tmp_path / "missing.ckpt"))
    wrong = Trainer(tiny_cfg(scene), 32, 4, make_views(scene, n=2))
    with pytest.raises(ckpt.CheckpointError, match="clip 16"):
        wrong.load_checkpoint(path)
    # periodic checkpoint names and pruning
    for s in (5, 10, 15):
        open(tmp_path / ckpt.checkpoint_name(s), "wb").close()
    open(tmp_path / "step_00000020.ckpt", "wb").close()
    assert ckpt.list_checkpoints(str(tmp_path))[-1].endswith("step_00000020.ckpt")  # by the name (empty files)
    ckpt.prune_checkpoints(str(tmp_path), keep=2)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == [
        "step-0000015.ckpt",
        "step_00000020.ckpt",
    ]


def test_checkpoint_files_follow_the_umask(tmp_path):
    """Created like any file of the process (0666 minus the umask), not 0600: a query node running
    as another user reads them."""
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
            os.umask(umask)
            path = tmp_path / f"u{umask:o}.ckpt"
            ckpt.write_atomic(str(path), {"x": torch.zeros(2)})
            assert os.stat(path).st_mode & 0o777 == mode, (oct(umask), oct(os.stat(path).st_mode))
    finally:
        os.umask(old)


def test_stale_temp_files_are_removed_and_files_being_written_kept(tmp_path):
    import fcntl

    stale = [".step-0000010.ckpt.k3v_9xq2.tmp", ".final.ckpt.123-deadbeef.tmp"]  # older and current names
    others = ["step-0000010.ckpt", "notes.tmp", ".hidden", ".step-0000010.ckpt.tmp", "x.ckpt.abc.tmp"]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"partial")
    writing = tmp_path / ".step-0000030.ckpt.456-cafebabe.tmp"
    with open(writing, "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as write_atomic holds it while writing
        removed = ckpt.remove_stale_temp_files(str(tmp_path))
        assert sorted(os.path.basename(p) for p in removed) == sorted(stale)
        assert sorted(os.listdir(tmp_path)) == sorted(others + [writing.name])
    assert ckpt.remove_stale_temp_files(str(tmp_path)) == [str(writing)]  # its writer is gone
    assert sorted(os.listdir(tmp_path)) == sorted(others)
    assert ckpt.remove_stale_temp_files(str(tmp_path / "missing")) == []


_SLOW_WRITER = """
import sys, time
from lerf_ros.mapping.checkpoint import write_atomic

class Slow:
    def __reduce__(self):
        time.sleep(120)  # the writer is killed here, in the middle of torch.save
        return (int, (0,))

write_atomic(sys.argv[1], {"x": Slow()})
"""


def test_a_writer_killed_mid_write_leaves_a_temp_file_the_next_session_removes(scene, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from lerf_ros.mapping.session import Session

    folder = tmp_path / "checkpoints"
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(folder / ckpt.checkpoint_name(7))])
    try:
        deadline = time.monotonic() + 60
        while not (folder.is_dir() and os.listdir(folder)) and time.monotonic() < deadline:
            time.sleep(0.05)
        temps = os.listdir(folder)
        assert len(temps) == 1 and ckpt.TEMP_NAME.match(temps[0]), temps
        assert ckpt.remove_stale_temp_files(str(folder)) == []  # being written: kept
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert os.listdir(folder) == temps  # the kill left it
    Session(tiny_cfg(scene, output_dir=str(tmp_path)), GroundTruthTeacher(scene), online=False, log=lambda *a: None)
    assert os.listdir(folder) == []


# ---------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", ["tiny", "lerf-lite", "lerf", "lerf-big"])
def test_each_preset_builds_and_trains_two_steps_on_cpu(name, scene):
    over = {"device": "cpu", "trainer.rays_per_batch": 32, "teacher.kind": "ground_truth", "teacher.pyramid_levels": 3}
    if name != "tiny":
        # the real network structure with smaller hash tables (the full tables are 0.1-1.3 GB)
        cfg0 = preset(name)
        over.update(
            {
                "model.log2_hashmap_size": 12,
                "model.proposal_log2_hashmap_size": 12,
                "model.lang_log2_hashmap_size": [12] * len(cfg0.model.lang_num_levels),
            }
        )
    center, scale = estimate_scene_bounds(scene.frames)
    cfg = preset(name).override({**over, "model.scene_center": center, "model.scene_scale": scale})
    clip_dim = 768 if name == "lerf-big" else 512
    teacher = GroundTruthTeacher(scene, clip_dim=clip_dim, dino_dim=384)
    views = make_views(scene, teacher, cfg, n=3)
    tr = Trainer(cfg, clip_dim, 384, views, teacher=teacher.description)
    m = tr.model
    assert [e.layout.num_levels for e in m.lang.encodings] == list(cfg.model.lang_num_levels)
    assert len(m.proposals) == len(cfg.model.num_proposal_samples)
    assert m.lang.clip_net[-1].out_features == clip_dim
    for _ in range(2):
        s = tr.step()
        assert np.isfinite(s["loss"]) and s["lang_rays"] > 0
    assert tr.step_count == 2
    groups = {g["name"] for g in tr.optimizer.param_groups}
    assert groups == {"fields", "proposal", "lang"}


# ---------------------------------------------------------------------------------- command
def test_train_command_end_to_end(tmp_path):
    from lerf_ros.cli import main

    src = tmp_path / "scene"
    make_scene(seed=4, width=40, height=30, n_frames=9, nthreads=1).save(str(src), preview=False)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--scene",
            str(src),
            "--steps",
            "4",
            "--out",
            str(out),
            "--query",
            "mug",
            "--no-progress",
            "--max-renders",
            "1",
            "--set",
            "trainer.rays_per_batch=128",
            "--set",
            "trainer.checkpoint_every=2",
        ]
    )
    assert rc == 0
    names = set(os.listdir(out))
    assert {"config.yaml", "metrics.json", "checkpoints", "renders"} <= names
    assert {"view_000_rgb.png", "view_000_depth.png", "view_000_relevancy_mug.png"} <= set(os.listdir(out / "renders"))
    cks = sorted(os.listdir(out / "checkpoints"))
    assert "final.ckpt" in cks and "step-0000004.ckpt" in cks
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["heldout_psnr"])
    assert set(metrics["heldout_psnr_per_view"]) == {"0", "8"}  # every 8th frame held out
    from lerf_ros.config import LerfConfig

    saved = LerfConfig.load_yaml(str(out / "config.yaml"))
    assert saved.teacher.kind == "ground_truth" and saved.trainer.rays_per_batch == 128
    assert main(["train", "--scene", str(tmp_path / "nothing"), "--steps", "1"]) == 2
