"""Pose refinement: the SO(3) exponential, keyframe slots and their reset, and a known pose
perturbation recovered by training on a small synthetic scene."""

import dataclasses
from typing import List, Tuple

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.camera_opt import CameraCorrections, so3_exp
from lerf_ros.mapping.keyframes import KeyframeStore
from lerf_ros.mapping.rays import estimate_scene_bounds
from lerf_ros.mapping.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=64, height=48, n_frames=12, nthreads=1)


def tiny_cfg(scene, **over):
    center, scale = estimate_scene_bounds(scene.frames)
    base = {
        "model.scene_center": center,
        "model.scene_scale": scale,
        "trainer.rays_per_batch": 512,
        "teacher.kind": "ground_truth",
    }
    base.update(over)
    return preset("tiny").override(base)


def skew(w: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3, 3) cross-product matrices."""
    out = np.zeros((len(w), 3, 3))
    out[:, 0, 1], out[:, 0, 2], out[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    return out - out.transpose(0, 2, 1)


def rotvec_matrix(w) -> np.ndarray:
    """The reference rotation of rotation vectors: the matrix exponential of their skew matrices
    (float64). (3,) -> (3, 3) or (N, 3) -> (N, 3, 3)."""
    w = np.asarray(w, dtype=np.float64)
    R = torch.linalg.matrix_exp(torch.as_tensor(skew(w.reshape(-1, 3)))).numpy()
    return R[0] if w.ndim == 1 else R


def rotation_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    cos = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


# ---------------------------------------------------------------------------------- exp map
def test_so3_exp_matches_the_matrix_exponential_at_every_angle():
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(64, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([[0.0, 1e-9, 1e-5, 1e-3], rng.uniform(0, np.pi - 1e-3, size=60)])
    w = axes * angles[:, None]
    ref = rotvec_matrix(w)
    np.testing.assert_allclose(so3_exp(torch.as_tensor(w, dtype=torch.float64)).numpy(), ref, atol=1e-12)
    # in float32, as training uses it
    np.testing.assert_allclose(so3_exp(torch.as_tensor(w, dtype=torch.float32)).numpy(), ref, atol=2e-6)
    # a rotation about z by 90 degrees, written out
    np.testing.assert_allclose(
        so3_exp(torch.tensor([[0.0, 0.0, np.pi / 2]], dtype=torch.float64))[0].numpy(),
        [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
        atol=1e-15,
    )


def test_so3_exp_gradient_is_finite_at_zero():
    w = torch.zeros(3, 3, requires_grad=True)
    so3_exp(w).sum().backward()
    assert torch.isfinite(w.grad).all()
    # d/dw of R at 0 is the skew generator: d(R[2,1])/dw_x = 1
    w2 = torch.zeros(1, 3, requires_grad=True)
    so3_exp(w2)[0, 2, 1].backward()
    torch.testing.assert_close(w2.grad, torch.tensor([[1.0, 0.0, 0.0]]))


def test_corrected_rays_and_poses_agree():
    """A ray of the corrected camera equals the corrected ray of the input camera."""
    corr = CameraCorrections(pose=True, appearance_dim=0)
    corr.resize(3)
    with torch.no_grad():
        corr.tables["pose"][1] = torch.tensor([0.02, -0.01, 0.03, 0.05, -0.02, 0.01])
    c2w = np.eye(4)
    c2w[:3, :3] = rotvec_matrix([0.3, 0.2, -0.1])
    c2w[:3, 3] = [1.0, 2.0, 0.5]
    d_cam = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
    o = torch.tensor(c2w[None, :3, 3], dtype=torch.float32)
    d = torch.tensor((c2w[:3, :3] @ d_cam)[None], dtype=torch.float32)
    o2, d2 = corr.correct_rays(o, d, torch.tensor([1]))
    fixed = corr.corrected_c2w(c2w[None], [1])[0]
    np.testing.assert_allclose(o2[0].detach().numpy(), fixed[:3, 3], atol=1e-6)
    np.testing.assert_allclose(d2[0].detach().numpy(), fixed[:3, :3] @ d_cam, atol=1e-6)
    assert not np.allclose(fixed, c2w)
    np.testing.assert_allclose(corr.corrected_c2w(c2w[None], [0])[0], c2w)  # a neutral slot changes nothing


# ---------------------------------------------------------------------------------- slots
def test_slots_are_reused_after_eviction_with_a_new_generation(scene):
    cfg = preset("tiny").override({"keyframes.max_keyframes": 3, "keyframes.protect_newest": 1}).keyframes
    store = KeyframeStore(cfg)
    slots = []
    for f in scene.frames[:6]:
        key, evicted = store.add(f)
        slots.append(store.get(key).slot)
        live = sorted(kf.slot for kf in store.keyframes())
        assert len(set(live)) == len(live) and all(0 <= s < store.num_slots for s in live)
    assert store.num_slots == 4  # max_keyframes + 1: the newest takes a slot before an eviction
    gens, poses = store.slot_generations()
    assert sum(gens) == 6 and max(gens) >= 2 and poses == [0] * 4
    b = store.sample(300, torch.Generator().manual_seed(0))
    kfs = store.keyframes()
    assert torch.equal(b.slot, torch.tensor([kfs[int(i)].slot for i in b.view_index]))


def test_slot_reuse_resets_learned_parameters(scene):
    cfg = tiny_cfg(scene, **{"keyframes.max_keyframes": 4, "keyframes.protect_newest": 1})
    store = KeyframeStore(cfg.keyframes, recency_boost=0.0)
    for f in scene.frames[:5]:
        store.add(f)  # the fifth takes slot 4, then one slot is freed by an eviction
    free = sorted(set(range(5)) - {kf.slot for kf in store.keyframes()})
    assert len(free) == 1
    trainer = Trainer(cfg, 4, 4, store)
    trainer.step()
    corr = trainer.corrections
    with torch.no_grad():
        corr.tables["pose"][:5] = 0.01
        corr.tables["appearance"][:5] = 0.5
        corr.pose_m[:5] = 1.0
        corr.pose_t[:5] = 7
    before = {kf.key: kf.slot for kf in store.keyframes()}
    key, evicted = store.add(scene.frames[7])
    reused = store.get(key).slot
    assert reused == free[0] and len(evicted) == 1
    trainer.pose_correction_stats()  # follows the store
    assert torch.all(corr.tables["pose"][reused] == 0) and torch.all(corr.tables["appearance"][reused] == 0)
    assert torch.all(corr.pose_m[reused] == 0) and int(corr.pose_t[reused]) == 0
    kept = [s for k, s in before.items() if k != evicted[0]]
    assert torch.all(corr.tables["pose"][kept] == 0.01) and torch.all(corr.tables["appearance"][kept] == 0.5)


def test_a_replaced_input_pose_resets_its_learned_correction_only(scene):
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for f in scene.frames[:4]:
        store.add(f)
    trainer = Trainer(tiny_cfg(scene, **{"trainer.rays_per_batch": 64}), 4, 4, store)
    trainer.step()
    corr = trainer.corrections
    with torch.no_grad():
        corr.tables["pose"][:4] = 0.01
        corr.tables["appearance"][:4] = 0.5
    kf = store.keyframes()[1]
    moved = kf.c2w.copy()
    moved[:3, 3] += 0.1
    assert store.set_pose(kf.key, moved)
    poses = dict(trainer.keyframe_poses())
    np.testing.assert_array_equal(poses[kf.key], moved)  # the new input pose, no stale correction
    assert torch.all(corr.tables["pose"][kf.slot] == 0) and torch.all(corr.tables["appearance"][kf.slot] == 0.5)
    others = [k.slot for k in store.keyframes() if k.key != kf.key]
    assert torch.all(corr.tables["pose"][others] == 0.01)


def test_no_pose_updates_during_warmup_and_none_when_off(scene):
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    for f in scene.frames[:4]:
        store.add(f)
    cfg = tiny_cfg(scene, **{"trainer.rays_per_batch": 128, "trainer.pose_warmup_steps": 3})
    trainer = Trainer(cfg, 4, 4, store)
    for _ in range(3):
        trainer.step()
    assert trainer.pose_correction_stats()["translation_max_m"] == 0.0
    trainer.step()
    assert trainer.pose_correction_stats()["translation_max_m"] > 0.0
    off = Trainer(cfg.override({"trainer.pose_refinement": False}), 4, 4, store)
    for _ in range(4):
        off.step()
    assert not off.corrections.has_pose and off.pose_correction_stats()["translation_max_m"] == 0.0
    np.testing.assert_array_equal(off.keyframe_poses()[1][1], store.keyframes()[1].c2w)


# ---------------------------------------------------------------------------------- recovery
def perturb(c2w: np.ndarray, rng: np.random.Generator, metres: float, degrees: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    shift = rng.normal(size=3)
    shift /= np.linalg.norm(shift)
    out = c2w.copy()
    out[:3, :3] = rotvec_matrix(axis * np.radians(degrees)) @ c2w[:3, :3]
    out[:3, 3] += metres * shift
    return out


PERTURBED = [2, 5, 8]


def perturbed_store(scene) -> Tuple[KeyframeStore, List[np.ndarray]]:
    """A store of the scene's frames with keyframes PERTURBED moved by 5 cm and turned by 3 degrees
    (seeded), and the true poses of all."""
    rng = np.random.default_rng(11)
    store = KeyframeStore(bounded=False, recency_boost=0.0)
    truth = []
    for i, f in enumerate(scene.frames):
        truth.append(f.c2w.copy())
        store.add(dataclasses.replace(f, c2w=perturb(f.c2w, rng, 0.05, 3.0)) if i in PERTURBED else f)
    return store, truth


def perturbed_errors(trainer: Trainer, store: KeyframeStore, truth: List[np.ndarray]) -> Tuple[np.ndarray, ...]:
    """Translation (m) and rotation (deg) errors of the PERTURBED keyframes: input and refined."""
    poses = dict(trainer.keyframe_poses())
    kfs = store.keyframes()
    t_in, t_out, r_in, r_out = [], [], [], []
    for i in PERTURBED:
        kf, gt = kfs[i], truth[i]
        t_in.append(np.linalg.norm(kf.c2w[:3, 3] - gt[:3, 3]))
        t_out.append(np.linalg.norm(poses[kf.key][:3, 3] - gt[:3, 3]))
        r_in.append(rotation_deg(kf.c2w[:3, :3], gt[:3, :3]))
        r_out.append(rotation_deg(poses[kf.key][:3, :3], gt[:3, :3]))
    print("translation cm", np.round(np.array(t_in) * 100, 2), "->", np.round(np.array(t_out) * 100, 2))
    print("rotation deg", np.round(r_in, 2), "->", np.round(r_out, 2))
    return tuple(np.array(x) for x in (t_in, t_out, r_in, r_out))


def test_refinement_recovers_a_known_perturbation(scene, tmp_path):
    """Three of twelve keyframes moved by 5 cm and turned by 3 degrees (64x48 images, where that is
    about 4 pixels): after a warm-up and a short refinement their corrected poses are closer to the
    truth than the input, in translation and rotation; checkpoints keep them."""
    store, truth = perturbed_store(scene)
    cfg = tiny_cfg(
        scene,
        **{
            "trainer.pose_warmup_steps": 150,
            "trainer.pose_update_every": 1,
            "trainer.pose_lr": 2e-3,
            # a 40-step refinement of a 5 cm error: the default pull toward zero (1.0, tuned for
            # drift of a few cm over a long run) would hold it back; this checks the mechanism
            "trainer.pose_regularization": 1e-2,
            "trainer.decay_steps": 400,
            "model.num_proposal_samples": (32,),
            "model.num_nerf_samples": 16,
        },
    )
    trainer = Trainer(cfg, 4, 4, store)
    for _ in range(190):
        trainer.step()
    t_in, t_out, r_in, r_out = perturbed_errors(trainer, store, truth)
    poses = dict(trainer.keyframe_poses())
    kfs = store.keyframes()
    assert np.mean(t_out) < 0.75 * np.mean(t_in) and np.mean(r_out) < 0.9 * np.mean(r_in)
    stats = trainer.pose_correction_stats()
    assert 0.01 < stats["translation_max_m"] < 0.1 and 0.5 < stats["rotation_max_deg"] < 6.0
    # the gauge anchor: corrections are zero-mean over the keyframes
    assert float(trainer.corrections.tables["pose"].detach()[: len(kfs)].mean(0).abs().max()) < 1e-6

    path = trainer.save_checkpoint(str(tmp_path / "refined.ckpt"))
    payload = ckpt.read_checkpoint(path)
    np.testing.assert_allclose(payload["cameras"][2]["c2w"], poses[kfs[2].key])
    assert not np.allclose(payload["cameras"][2]["c2w"], kfs[2].c2w)
    resumed = Trainer.from_checkpoint(path, store)
    for (k1, p1), (k2, p2) in zip(poses.items(), resumed.keyframe_poses()):
        assert k1 == k2
        np.testing.assert_array_equal(p1, p2)
    # an older checkpoint without corrections still loads, every keyframe neutral
    del payload["camera_corrections"]
    old = Trainer(cfg, 4, 4, store)
    old.load_checkpoint(path, payload=payload)
    assert old.pose_correction_stats()["translation_max_m"] == 0.0


def test_hash_grid_position_gradient_matches_autograd_through_a_gather():
    """Pose refinement back-propagates to sample positions through the fused hash-grid kernel: its
    position and table gradients equal plain autograd through a gather of the corners."""
    from lerf_ros.field.hash_encoding import HashEncoding, hash_grid_indices

    torch.manual_seed(0)
    enc = HashEncoding(6, 2, 10, 4, 128, backend="torch")
    params = next(enc.parameters())
    x = torch.rand(400, 3, requires_grad=True)
    out = enc(x)
    g_out = torch.randn_like(out)
    gx, gp = torch.autograd.grad((out * g_out).sum(), [x, params])
    x_ref = x.detach().clone().requires_grad_(True)
    rows, weights = hash_grid_indices(x_ref, enc.layout)
    ref = (params.view(-1, 2)[rows.long()] * weights[..., None]).sum(2).permute(1, 0, 2).reshape(400, -1)
    gx_ref, gp_ref = torch.autograd.grad((ref * g_out).sum(), [x_ref, params])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gp, gp_ref)
    assert gx.abs().max() > 0
