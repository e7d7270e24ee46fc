"""The per-keyframe appearance embedding: it reaches the colour head only, renders without a
keyframe use the neutral embedding, it is learned per keyframe, and checkpoints from before it load."""

import dataclasses

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.field.model import LerfModel
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.rays import estimate_scene_bounds
from lerf_ros.mapping.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, width=40, height=30, n_frames=6, nthreads=1)


def tiny_cfg(scene, **over):
    center, scale = estimate_scene_bounds(scene.frames)
    base = {"model.scene_center": center, "model.scene_scale": scale, "trainer.rays_per_batch": 256}
    base.update(over)
    return preset("tiny").override(base)


def rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.1
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def test_appearance_reaches_colour_only(scene):
    cfg = tiny_cfg(scene)
    assert cfg.model.appearance_dim == 8
    torch.manual_seed(0)
    model = LerfModel(cfg.model, 4, 4).eval()
    o, d = rays()
    app = torch.randn(64, 8, requires_grad=True)
    out = model.render_rays(o, d, appearance=app)
    # the density (weights, depth) does not depend on it, the colour does
    ref = model.render_rays(o, d)
    torch.testing.assert_close(out.weights, ref.weights, rtol=0, atol=0)
    torch.testing.assert_close(out.depth, ref.depth, rtol=0, atol=0)
    assert (out.rgb - ref.rgb).abs().max() > 1e-4
    (g_depth,) = torch.autograd.grad(out.depth.sum() + out.accumulation.sum(), app, allow_unused=True)
    assert g_depth is None or torch.all(g_depth == 0)
    (g_rgb,) = torch.autograd.grad(out.rgb.sum(), app)
    assert g_rgb.abs().sum() > 0
    # nor the language field: its inputs are positions and scale alone
    lang = model.render_language(out, None, scale=torch.tensor(0.1))
    torch.testing.assert_close(lang["clip"], model.render_language(ref, None, scale=torch.tensor(0.1))["clip"])
    # the neutral embedding is zero
    torch.testing.assert_close(model.render_rays(o, d, appearance=torch.zeros(64, 8)).rgb, ref.rgb)
    with pytest.raises(ValueError, match="appearance must be"):
        model.render_rays(o, d, appearance=torch.zeros(64, 3))


def test_embeddings_learn_per_keyframe_and_renders_stay_neutral(scene):
    """Two keyframes with the same view but a +-1 stop exposure: their embeddings move apart, stay
    zero-mean, and a render at a pose uses the neutral embedding whatever the table holds."""
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for i, f in enumerate(scene.frames[:4]):
        gain = 2.0 if i % 2 == 0 else 0.5
        bright = np.clip(f.rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        store.add(dataclasses.replace(f, rgb=bright))
    cfg = tiny_cfg(scene, **{"trainer.pose_refinement": False, "model.background_color": "black"})
    trainer = Trainer(cfg, 4, 4, store)
    for _ in range(60):
        trainer.step()
    table = trainer.corrections.tables["appearance"].detach()[:4]
    assert float(table.mean(0).abs().max()) < 1e-6  # zero-mean over the live keyframes
    bright_rows, dark_rows = table[[0, 2]], table[[1, 3]]
    assert (bright_rows.mean(0) - dark_rows.mean(0)).norm() > 0.05
    # the embedding explains the exposure: the colour of a training ray is brighter with a bright
    # keyframe's embedding than with a dark one's
    b = store.sample(512, torch.Generator().manual_seed(3))
    model = trainer.model.eval()
    with torch.no_grad():
        rgb_bright = model.render_rays(b.origins, b.directions, appearance=table[[0]].expand(512, -1)).rgb
        rgb_dark = model.render_rays(b.origins, b.directions, appearance=table[[1]].expand(512, -1)).rgb
    assert float(rgb_bright.mean()) > float(rgb_dark.mean()) + 0.02
    cam = scene.frames[5]
    before = trainer.render_view(cam.K, cam.c2w, 30, 40)["rgb"]
    with torch.no_grad():
        trainer.corrections.tables["appearance"].normal_()
    after = trainer.render_view(cam.K, cam.c2w, 30, 40)["rgb"]
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_checkpoint_from_before_the_embedding_loads(scene, tmp_path):
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for f in scene.frames[:3]:
        store.add(f)
    cfg = tiny_cfg(scene, **{"model.appearance_dim": 0})
    trainer = Trainer(cfg, 4, 4, store)
    trainer.step()
    path = trainer.save_checkpoint(str(tmp_path / "a.ckpt"))
    payload = ckpt.read_checkpoint(path)
    # what a checkpoint written before the embedding holds: no such key, no corrections
    del payload["config"]["model"]["appearance_dim"]
    del payload["camera_corrections"]
    old = str(tmp_path / "old.ckpt")
    ckpt.write_atomic(old, payload)
    snap = ckpt.load_snapshot(old, device="cpu")
    cam = scene.frames[4]
    torch.testing.assert_close(
        snap.render(cam.K, cam.c2w, 30, 40)["rgb"], trainer.render_view(cam.K, cam.c2w, 30, 40)["rgb"]
    )
    resumed = Trainer.from_checkpoint(old, store)
    assert resumed.cfg.model.appearance_dim == 0 and resumed.step_count == 1
    resumed.step()
    # a trainer with the embedding takes it up (same renders) and its embeddings learn on
    upgraded = Trainer(tiny_cfg(scene), 4, 4, store)
    assert upgraded.load_checkpoint(old) == 1
    torch.testing.assert_close(
        upgraded.render_view(cam.K, cam.c2w, 30, 40)["rgb"], trainer.render_view(cam.K, cam.c2w, 30, 40)["rgb"]
    )
    upgraded.step()
    assert upgraded.corrections.tables["appearance"].detach().abs().sum() > 0
    # another architecture change is still refused by name
    with pytest.raises(ckpt.CheckpointError, match="model.hidden_dim"):
        Trainer(tiny_cfg(scene, **{"model.hidden_dim": 16}), 4, 4, store).load_checkpoint(old)
