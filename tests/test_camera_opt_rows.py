"""Pose updates spread over rays (``trainer.pose_ray_subset``): the two-pass render gives the batch's
output and only the chosen rays' gradient, and training that way recovers a known perturbation."""

import numpy as np
import pytest
import torch
from test_pose_refine import perturbed_errors, perturbed_store, scene, tiny_cfg  # noqa: F401  (scene: a fixture)

from lerf_ros.config import ConfigError, preset
from lerf_ros.field.model import LerfModel
from lerf_ros.mapping.camera_opt import CameraCorrections, pose_grad_rows, render_with_pose_rows
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pose_grad_rows_turn_with_the_step_and_cover_the_batch():
    seen = torch.cat([pose_grad_rows(10, 4, step) for step in range(4)])
    assert sorted(seen.tolist()) == list(range(10))
    assert pose_grad_rows(10, 4, 5).tolist() == [1, 5, 9]
    assert pose_grad_rows(10, 1, 3).tolist() == list(range(10))
    with pytest.raises(ValueError, match="every"):
        pose_grad_rows(10, 0, 0)


def test_render_with_pose_rows_matches_one_pass_and_only_those_rows_carry_gradient():
    """Two passes give the one-pass render of the batch (deterministic samples) in the batch's order,
    and the pose table's gradient equals the one-pass gradient with the other rays detached."""
    torch.manual_seed(0)
    cfg = preset("tiny").override({"model.appearance_dim": 4})
    model = LerfModel(cfg.model, 4, 4)
    n = 37
    cams = CameraCorrections(pose=True, appearance_dim=4)
    cams.resize(3)
    with torch.no_grad():
        cams.tables["pose"].normal_(0.0, 0.02)
        cams.tables["appearance"].normal_(0.0, 0.1)
    slot = torch.randint(0, 3, (n,))
    origins = torch.randn(n, 3) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    background = torch.rand(n, 3)
    rows = pose_grad_rows(n, 4, 2)
    target = torch.rand(n, 3)

    def grad_of(render_fn):
        cams.zero_grad()
        o, d = cams.correct_rays(origins, dirs, slot)
        out = render_fn(o, d)
        ((out.rgb - target).square().sum() + out.depth.sum()).backward()
        return out, cams.tables["pose"].grad.clone()

    kw = dict(background=background, appearance=cams.appearance_at(slot).detach())
    split, g_split = grad_of(lambda o, d: render_with_pose_rows(model.render_rays, o, d, rows, **kw))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rows] = True

    def one_pass(o, d):
        m = mask[:, None]
        return model.render_rays(torch.where(m, o, o.detach()), torch.where(m, d, d.detach()), **kw)

    whole, g_whole = grad_of(one_pass)
    for name in ("rgb", "accumulation", "depth", "weights", "t_edges", "s_edges", "origins", "dirs"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), msg=name)
    for a, b in zip(split.prop_weights, whole.prop_weights):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_split, g_whole, rtol=1e-4, atol=1e-7)
    # the slots of the chosen rays get a gradient; a slot none of them uses gets none
    used = set(slot[rows].tolist())
    assert all(g_split[s].abs().sum() > 0 for s in used)
    _, g_all = grad_of(lambda o, d: model.render_rays(o, d, **kw))
    assert not torch.allclose(g_all, g_split)


def test_pose_ray_subset_takes_a_boolean():
    assert preset("tiny").override({"trainer.pose_ray_subset": "false"}).trainer.pose_ray_subset is False
    with pytest.raises(ConfigError):
        preset("tiny").override({"trainer.pose_ray_subset": "sometimes"})


def test_refinement_spread_over_rays_recovers_a_known_perturbation(scene):  # noqa: F811
    """As test_pose_refine's recovery test, with the pose updates spread over rays: every step
    learns the poses from a quarter of its rays (trainer.pose_update_every 4), 80 steps after the warm-up."""
    store, truth = perturbed_store(scene)
    cfg = tiny_cfg(
        scene,
        **{
            "trainer.pose_warmup_steps": 150,
            "trainer.pose_update_every": 4,
            "trainer.pose_ray_subset": True,
            "trainer.pose_lr": 2e-3,
            "trainer.pose_regularization": 1e-2,  # as test_pose_refine's: the mechanism, not the pull
            "trainer.decay_steps": 400,
            "model.num_proposal_samples": (32,),
            "model.num_nerf_samples": 16,
        },
    )
    trainer = Trainer(cfg, 4, 4, store)
    for _ in range(230):
        trainer.step()
    t_in, t_out, r_in, r_out = perturbed_errors(trainer, store, truth)
    kfs = store.keyframes()
    assert np.mean(t_out) < 0.75 * np.mean(t_in) and np.mean(r_out) < 0.9 * np.mean(r_in)
    assert float(trainer.corrections.tables["pose"].detach()[: len(kfs)].mean(0).abs().max()) < 1e-6


@pytest.mark.parametrize("subset", [True, False])
def test_poses_move_between_update_steps_only_when_spread_over_rays(scene, subset):  # noqa: F811
    """With pose_update_every 4, a step that is not an update step leaves the pose table alone unless
    the updates are spread over rays (then every step moves it): the trainer really takes the path."""
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for f in scene.frames:
        store.add(f)
    cfg = tiny_cfg(
        scene,
        **{
            "trainer.pose_warmup_steps": 3,
            "trainer.pose_update_every": 4,
            "trainer.pose_ray_subset": subset,
            "model.num_proposal_samples": (16,),
            "model.num_nerf_samples": 8,
        },
    )
    trainer = Trainer(cfg, 4, 4, store)
    for _ in range(5):  # steps 0-4: warm-up, then the update step 3 and step 4 (not an update step)
        trainer.step()
    before = trainer.corrections.tables["pose"].detach().clone()
    assert float(before.abs().max()) > 0  # step 3 updated the poses in both modes
    trainer.step()  # step 5: (5 - 3) % 4 != 0
    moved = float((trainer.corrections.tables["pose"].detach() - before).abs().max())
    assert (moved > 0) == subset
