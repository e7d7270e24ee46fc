"""OpenCLIP / timm DINO teachers with real architectures and random weights (no weights exist offline).

LERF_SKIP_SLOW_TESTS=1 skips the full-size ViT-B-16 check (about 5 s on 2 cores).
"""

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lerf_ros.config import ConfigError, TeacherConfig
from lerf_ros.data.frame import Frame
from lerf_ros.teachers import (
    RANDOM_WEIGHTS_NOTE,
    ClipDinoTeacher,
    ClipEncoder,
    DinoEncoder,
    Teacher,
    TeacherWeightsError,
    compute_frame_features,
    make_teacher,
)
from lerf_ros.teachers.clip import extract_crops, find_cached_weights
from lerf_ros.teachers.dino import dino_input_size

torch.set_num_threads(1)
SLOW = os.environ.get("LERF_SKIP_SLOW_TESTS", "") not in ("", "0")


@pytest.fixture(scope="module")
def tiny_clip():
    return ClipEncoder("test-tiny-vit", random_weights=True, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def small_dino():
    torch.manual_seed(0)
    return DinoEncoder(random_weights=True, device="cpu", model_kwargs=dict(depth=2))


def _frame(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    K = np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return Frame(rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K=K, c2w=np.eye(4))


def _hf_cache_file(root, repo, filename, data: bytes = b"", src=None):
    """Lay out one file the way the Hugging Face hub cache stores it."""
    folder = os.path.join(root, "models--" + repo.replace("/", "--"))
    snap = os.path.join(folder, "snapshots", "0" * 40)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write("0" * 40)
    path = os.path.join(snap, filename)
    if src is not None:
        os.replace(src, path)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


# ---------------------------------------------------------------------------- crops
def test_extract_crops_copies_pads_and_resizes():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 10, 12, generator=g)
    boxes = np.array([[2, 3, 6, 7], [-2, -1, 2, 3], [0, 0, 12, 10]])
    out = extract_crops(img, boxes, out_size=4)
    assert out.shape == (3, 3, 4, 4)
    torch.testing.assert_close(out[0], img[:, 3:7, 2:6])  # same size: an exact copy
    torch.testing.assert_close(out[1][:, 1:, 2:], img[:, 0:3, 0:2])  # inside part
    assert torch.all(out[1][:, 0, :] == 0) and torch.all(out[1][:, :, :2] == 0)  # outside: zero padding
    expect = F.interpolate(img[None], size=(4, 4), mode="bicubic", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(out[2], expect)  # non-square box stretched to the output square
    flat = extract_crops(torch.full((3, 10, 12), 0.25), np.array([[1, 1, 8, 8]]), out_size=16)
    torch.testing.assert_close(flat, torch.full((1, 3, 16, 16), 0.25))  # resizing keeps a flat colour
    with pytest.raises(ValueError, match="x1 > x0"):
        extract_crops(img, np.array([[3, 3, 3, 5]]), 4)
    with pytest.raises(ValueError, match="shape"):
        extract_crops(img, np.array([1, 2, 3, 4]), 4)


# ---------------------------------------------------------------------------- CLIP
def test_tiny_clip_encodes_crops_like_manual_preprocessing(tiny_clip):
    assert RANDOM_WEIGHTS_NOTE in tiny_clip.description
    frame = _frame()
    boxes = np.array([[4, 4, 20, 20], [4, 4, 20, 20], [30, 10, 62, 42], [-8, -8, 8, 8]])
    emb = tiny_clip.encode_crops(frame.rgb, boxes)
    assert emb.shape == (4, tiny_clip.embed_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(emb[0], emb[1])
    assert (emb[0] - emb[2]).abs().max() > 1e-3
    # the same crop normalised by hand (OpenAI mean/std) and resized to the model input
    crop = torch.from_numpy(frame.rgb[10:42, 30:62]).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    x = (crop - mean) / std  # 32 px crop == 32 px model input: no resize
    assert tiny_clip.image_size == 32
    torch.testing.assert_close(tiny_clip.encode_images(x[None])[0], emb[2], atol=1e-5, rtol=1e-5)


def test_tiny_clip_text(tiny_clip):
    t = tiny_clip.encode_text(["a red mug", "object", "a red mug"])
    assert t.shape == (3, tiny_clip.embed_dim)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(t[0], t[2])
    assert (t[0] - t[1]).abs().max() > 1e-3
    with pytest.raises(TypeError):
        tiny_clip.encode_text("a red mug")


def test_clip_checkpoint_round_trip(tiny_clip, tmp_path):
    path = str(tmp_path / "tiny.pt")
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = ClipEncoder("test-tiny-vit", checkpoint=path, device="cpu")
    assert "tiny.pt" in loaded.description and RANDOM_WEIGHTS_NOTE not in loaded.description
    frame = _frame(seed=3)
    boxes = np.array([[0, 0, 24, 24], [10, 5, 40, 35]])
    torch.testing.assert_close(loaded.encode_crops(frame.rgb, boxes), tiny_clip.encode_crops(frame.rgb, boxes))
    with pytest.raises(ConfigError, match="test architecture"):
        ClipEncoder("test-tiny-vit", device="cpu")


@pytest.mark.skipif(SLOW, reason="LERF_SKIP_SLOW_TESTS is set")
def test_real_vit_b16_architecture_encodes_two_crops():
    t0 = time.time()
    enc = ClipEncoder("ViT-B-16", random_weights=True, device="cpu")
    assert enc.embed_dim == 512 and enc.image_size == 224
    assert sum(p.numel() for p in enc.model.parameters()) > 140e6  # the full ViT-B/16 CLIP
    emb = enc.encode_crops(_frame().rgb, np.array([[0, 0, 24, 24], [16, 8, 64, 56]]))
    assert emb.shape == (2, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert enc.encode_text(["object"]).shape == (1, 512)
    assert time.time() - t0 < 60


def test_missing_clip_weights_fail_fast(tmp_path):
    t0 = time.time()
    with pytest.raises(TeacherWeightsError) as err:
        ClipEncoder("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path), device="cpu")
    assert time.time() - t0 < 10
    msg = str(err.value)
    assert "teacher.clip_checkpoint" in msg and "teacher.weights_cache_dir" in msg and "laion2b_s34b_b88k" in msg
    with pytest.raises(TeacherWeightsError, match="no such file"):
        ClipEncoder("ViT-B-16", checkpoint=str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ConfigError, match="not an OpenCLIP tag"):
        ClipEncoder("ViT-B-16", "no_such_tag", cache_dir=str(tmp_path), device="cpu")
    with pytest.raises(ConfigError, match="not an OpenCLIP architecture"):
        ClipEncoder("ViT-Q-99", random_weights=True, device="cpu")


def test_clip_tag_is_resolved_in_a_warm_cache(tmp_path):
    # A corrupt file where the tag's weights belong: found offline, then refused with a clear error.
    path = _hf_cache_file(
        str(tmp_path), "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "open_clip_model.safetensors", b"not a checkpoint"
    )
    with pytest.raises(TeacherWeightsError, match="could not load") as err:
        ClipEncoder("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path), device="cpu")
    assert os.path.basename(path) in str(err.value)


def test_find_cached_weights_reads_only_local_caches(tmp_path):
    root = str(tmp_path)
    assert find_cached_weights("laion/some-model", ["open_clip_model.safetensors"], cache_dir=root) is None
    path = _hf_cache_file(root, "laion/some-model", "open_clip_pytorch_model.bin", b"x")
    got = find_cached_weights(
        "laion/some-model", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"], cache_dir=root
    )
    assert got is not None and os.path.samefile(got, path)
    url_dir = tmp_path / "clip"
    url_dir.mkdir()
    (url_dir / "weights-1234.pt").write_bytes(b"y")
    got = find_cached_weights(url="https://example.org/models/weights-1234.pt", url_dirs=[str(url_dir)])
    assert got == str(url_dir / "weights-1234.pt")


# ---------------------------------------------------------------------------- DINO
def test_dino_input_size():
    assert dino_input_size(480, 640, 448, 8) == (336, 448)
    assert dino_input_size(48, 64, 448, 8) == (48, 64)  # never enlarged
    assert dino_input_size(50, 70, 448, 8) == (48, 64)  # rounded down to whole patches
    assert dino_input_size(720, 1280, 448, 8) == (248, 448)
    assert dino_input_size(5, 5, 448, 8) == (8, 8)  # at least one patch
    with pytest.raises(ConfigError):
        dino_input_size(48, 64, 4, 8)


def test_dino_dense_features_key_facet(small_dino):
    assert RANDOM_WEIGHTS_NOTE in small_dino.description and small_dino.patch_size == 8
    frame = _frame()
    feats = small_dino.dense_features(frame.rgb)
    assert feats.shape == (6, 8, 384) and feats.dtype == torch.float32
    # keys of the last block computed by hand from that block's normalised input
    model = small_dino.model
    seen = {}
    h = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    try:
        small_dino.dense_features(frame.rgb)
    finally:
        h.remove()
    qkv = model.blocks[-1].attn.qkv(seen["x"])[0, 1:]  # drop the class token
    torch.testing.assert_close(feats.reshape(48, 384), qkv[:, 384:768], atol=1e-5, rtol=1e-5)


def test_dino_token_facet_and_dynamic_size():
    enc = DinoEncoder(random_weights=True, device="cpu", facet="token", max_side=32, model_kwargs=dict(depth=1))
    feats = enc.dense_features(_frame(48, 64).rgb)  # 64x48 -> 32x24 input -> 4x3 patches
    assert feats.shape == (3, 4, 384)
    tokens = enc.model.forward_features(
        (
            F.interpolate(
                torch.from_numpy(_frame(48, 64).rgb).permute(2, 0, 1)[None].float() / 255,
                size=(24, 32),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            - enc._mean
        )
        / enc._std
    )
    torch.testing.assert_close(feats.reshape(12, 384), tokens[0, 1:], atol=1e-5, rtol=1e-5)


def test_dino_weights_from_a_warm_cache(small_dino, tmp_path):
    from safetensors.torch import save_file

    src = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in small_dino.model.state_dict().items()}, src)
    root = str(tmp_path / "cache")
    _hf_cache_file(root, "timm/vit_small_patch8_224.dino", "model.safetensors", src=src)
    loaded = DinoEncoder(cache_dir=root, device="cpu", model_kwargs=dict(depth=2))
    assert RANDOM_WEIGHTS_NOTE not in loaded.description
    rgb = _frame(seed=5).rgb
    torch.testing.assert_close(loaded.dense_features(rgb), small_dino.dense_features(rgb))


def test_missing_dino_weights_fail_fast(tmp_path):
    t0 = time.time()
    with pytest.raises(TeacherWeightsError) as err:
        DinoEncoder(cache_dir=str(tmp_path), device="cpu")
    assert time.time() - t0 < 10
    assert "teacher.dino_checkpoint" in str(err.value) and "teacher.weights_cache_dir" in str(err.value)
    with pytest.raises(ConfigError, match="dino_facet"):
        DinoEncoder(random_weights=True, facet="value", device="cpu")


# ---------------------------------------------------------------------------- the combined teacher
def test_clip_dino_teacher_frame_features(tiny_clip, small_dino):
    teacher = ClipDinoTeacher(tiny_clip, small_dino)
    assert teacher.clip_dim == 32 and teacher.dino_dim == 384
    assert teacher.description.count(RANDOM_WEIGHTS_NOTE) == 2
    cfg = TeacherConfig(pyramid_levels=3, pyramid_min=0.2, pyramid_max=0.5, batch_size=32)
    frame = _frame(seed=7)
    feats = compute_frame_features(teacher, frame, cfg)
    p = feats.pyramid
    # a crop's centre at its own size returns what the teacher gives for that box (fp16 storage)
    for level in (p.levels[0], p.levels[-1]):
        boxes = level.boxes()[[0, level.num_crops // 2, -1]]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        got = p.lookup(torch.tensor(centres[:, 0]), torch.tensor(centres[:, 1]), torch.full((3,), float(level.size_px)))
        torch.testing.assert_close(got, teacher.encode_crops(frame, boxes), atol=2e-3, rtol=0)
    dense = teacher.dense_features(frame)
    assert feats.dino.grid_size == dense.shape[:2]
    u = torch.tensor([4.0, 60.0])  # centres of cells (row 0, col 0) and (row 5, col 7)
    v = torch.tensor([4.0, 44.0])
    torch.testing.assert_close(feats.dino.lookup(u, v), torch.stack([dense[0, 0], dense[5, 7]]), atol=2e-2, rtol=2e-3)


def test_make_teacher():
    cfg = TeacherConfig(clip_model="test-tiny-vit", random_weights=True, dino_max_side=32)
    teacher = make_teacher(cfg, device="cpu")
    assert isinstance(teacher, ClipDinoTeacher) and teacher.clip_dim == 32
    with pytest.raises(ValueError, match="scene"):
        make_teacher(TeacherConfig(kind="ground_truth"))
    pytest.importorskip("lerf_ros.teachers.ground_truth")
    scene = SimpleNamespace(
        objects=[SimpleNamespace(instance_id=1, class_name="mug")],
        vocabulary=[SimpleNamespace(name="mug", synonyms=("cup",))],
    )
    gt = make_teacher(TeacherConfig(kind="ground_truth"), scene=scene)
    assert isinstance(gt, Teacher) and not isinstance(gt, ClipDinoTeacher)
    with pytest.raises(ConfigError, match="teacher.kind"):
        make_teacher(TeacherConfig(kind="oracle"))
