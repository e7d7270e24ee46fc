"""Coarse-to-fine hash levels for pose refinement (``trainer.pose_coarse_to_fine_steps``): the schedule,
the encoding's level weights (features and gradients of a switched-off level are zero) and the
trainer applying them only while the schedule runs."""

import pytest
import torch
from test_pose_refine import scene, tiny_cfg  # noqa: F401  (scene: a fixture)

from lerf_ros.config import ConfigError
from lerf_ros.field.hash_encoding import HashEncoding, coarse_to_fine_weights
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_switches_levels_on_from_coarse_to_fine():
    levels, total = 8, 200
    ws = [coarse_to_fine_weights(s, total, levels) for s in range(total)]
    assert all(float(w[0]) == 1.0 for w in ws)  # the coarsest level always on
    assert torch.equal(ws[0], torch.tensor([1.0] + [0.0] * (levels - 1)))
    stacked = torch.stack(ws)
    assert bool((stacked.diff(dim=0) >= 0).all())  # a level never switches off again
    assert bool((stacked.diff(dim=1) <= 0).all())  # a finer level is never further on than a coarser
    assert float(ws[total // 2][levels // 2 - 1]) == 1.0 and float(ws[total // 2][-1]) == 0.0
    assert float(ws[-1][-1]) > 0.9
    assert coarse_to_fine_weights(total, total, levels) is None  # done: every level as it is
    assert coarse_to_fine_weights(5, 0, levels) is None  # off
    assert coarse_to_fine_weights(5, total, 1) is None  # one level: nothing to schedule


def test_a_level_at_weight_zero_gives_no_features_and_gets_no_gradient():
    torch.manual_seed(0)
    enc = HashEncoding(4, 2, 12, 4, 64, backend="torch", init_scale=0.1)
    x = torch.rand(64, 3)
    full = enc(x)
    enc.set_level_weights(torch.tensor([1.0, 0.5, 0.0, 0.0]))
    out = enc(x)
    torch.testing.assert_close(out[:, :2], full[:, :2])
    torch.testing.assert_close(out[:, 2:4], 0.5 * full[:, 2:4])
    assert float(out[:, 4:].detach().abs().max()) == 0.0
    out.sum().backward()
    grad = enc.params.grad
    start = [o * enc.layout.features_per_level for o in enc.layout.offsets]  # params of level l: start[l]..
    assert float(grad[start[0] : start[1]].abs().max()) > 0
    assert float(grad[start[2] :].abs().max()) == 0.0  # switched-off levels do not learn
    enc.set_level_weights(None)
    torch.testing.assert_close(enc(x), full)
    for bad in ([1.0, 0.0], [1.0, float("nan"), 0.0, 0.0], [1.0, 2.0, 0.0, 0.0], [1.0, -0.5, 0.0, 0.0]):
        with pytest.raises(ValueError, match="4 values in"):
            enc.set_level_weights(torch.tensor(bad))


def test_the_trainer_eases_the_levels_in_only_while_the_schedule_runs(scene):  # noqa: F811
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for f in scene.frames:
        store.add(f)
    over = {"trainer.pose_coarse_to_fine_steps": 6, "model.num_proposal_samples": (16,), "model.num_nerf_samples": 8}
    trainer = Trainer(tiny_cfg(scene, **over), 4, 4, store)
    enc = trainer.model.field.encoding
    trainer.step()  # step 0
    assert enc.level_weights is not None and float(enc.level_weights[-1]) == 0.0
    snap = trainer.snapshot()  # renders the field as trained at its step: with the same levels
    assert torch.equal(snap._model.field.encoding.level_weights, enc.level_weights)
    for _ in range(6):
        trainer.step()
    assert enc.level_weights is None  # steps 6 and on: every level
    assert snap._model.field.encoding.level_weights is not None  # the snapshot is not changed
    off = Trainer(tiny_cfg(scene, **over, **{"trainer.pose_refinement": False}), 4, 4, store)
    off.step()
    assert off.model.field.encoding.level_weights is None  # only with pose refinement
    with pytest.raises(ConfigError, match="pose_coarse_to_fine_steps"):
        tiny_cfg(scene, **{"trainer.pose_coarse_to_fine_steps": -1})
