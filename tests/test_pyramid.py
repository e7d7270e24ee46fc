"""Crop pyramid layout and lookups (CropPyramid, DenseFeatureMap), checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from lerf_ros.config import ConfigError, LerfConfig, TeacherConfig
from lerf_ros.data.frame import Frame
from lerf_ros.teachers.base import Teacher
from lerf_ros.teachers.features import CropPyramid, DenseFeatureMap, FrameFeatures, compute_frame_features
from lerf_ros.teachers.pyramid import PyramidLevel, crops_per_frame, level_overlaps, pyramid_layout


# ---------------------------------------------------------------------------- layout
def test_layout_hand_computed():
    # 64x48 image, shorter side 48: sides 12 and 24 px, strides 6 and 12 (50% overlap, no ramp).
    levels = pyramid_layout(48, 64, levels=2, min_frac=0.25, max_frac=0.5, overlap=0.5, overlap_ramp=())
    assert [(lv.size_px, lv.stride_px) for lv in levels] == [(12, 6), (24, 12)]
    # columns: ceil(64 / 6) + 1 = 12, rows: ceil(48 / 6) + 1 = 9; then ceil(64 / 12) + 1 = 7, 48 / 12 + 1 = 5
    assert [(lv.grid_w, lv.grid_h) for lv in levels] == [(12, 9), (7, 5)]
    lv = levels[1]
    # 7 columns span 6 * 12 = 72 px centred on the 64 px image: first centre at -4, first box at -16
    assert (lv.x0, lv.y0) == (-16, -12)
    boxes = lv.boxes()
    assert boxes.shape == (35, 4)
    np.testing.assert_array_equal(boxes[0], [-16, -12, 8, 12])
    np.testing.assert_array_equal(boxes[1], [-4, -12, 20, 12])  # row-major: next column first
    np.testing.assert_array_equal(boxes[7], [-16, 0, 8, 24])  # second row
    np.testing.assert_allclose(lv.centers()[0, 0], [-4.0, 0.0])


@pytest.mark.parametrize("hw", [(48, 64), (480, 640), (720, 1280), (31, 97)])
def test_layout_centres_cover_every_pixel_centre(hw):
    h, w = hw
    for ramp in [(), (0.05, 0.15)]:
        levels = pyramid_layout(h, w, overlap_ramp=ramp)
        sizes = [lv.size_px for lv in levels]
        assert sizes == sorted(set(sizes))
        for lv in levels:
            c = lv.centers()
            assert c[0, 0, 0] <= 0.5 and c[-1, -1, 0] >= w - 0.5
            assert c[0, 0, 1] <= 0.5 and c[-1, -1, 1] >= h - 0.5
            b = lv.boxes()
            assert np.all(b[:, 2] - b[:, 0] == lv.size_px) and np.all(b[:, 3] - b[:, 1] == lv.size_px)


def test_overlap_ramp():
    np.testing.assert_allclose(level_overlaps([0.05, 0.1, 0.15, 0.3], 0.5, (0.05, 0.15)), [0.0, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(level_overlaps([0.05, 0.3], 0.5, ()), [0.5, 0.5])
    levels = pyramid_layout(480, 640, overlap_ramp=(0.05, 0.15))
    assert levels[0].stride_px == levels[0].size_px  # no overlap at 5 %
    assert levels[-1].stride_px == levels[-1].size_px // 2
    with pytest.raises(ConfigError):
        level_overlaps([0.1], 0.5, (0.2, 0.1))


def test_default_pyramid_cost_is_the_reference_range():
    cfg = LerfConfig().teacher
    n = crops_per_frame(480, 640, cfg)
    assert 1100 <= n <= 1500  # the reference pays about 1,200 to 1,500 crops per keyframe
    no_ramp = TeacherConfig(pyramid_overlap_ramp=())
    assert crops_per_frame(480, 640, no_ramp) > 2 * n


def test_layout_rejects_bad_values():
    with pytest.raises(ConfigError, match="pyramid_min"):
        pyramid_layout(48, 64, min_frac=0.6, max_frac=0.5)
    with pytest.raises(ConfigError, match="pyramid_overlap"):
        pyramid_layout(48, 64, overlap=1.0)
    with pytest.raises(ConfigError, match="pyramid_levels"):
        pyramid_layout(48, 64, levels=0)
    with pytest.raises(ConfigError, match="teacher.pyramid_overlap_ramp"):
        LerfConfig().override({"teacher.pyramid_overlap_ramp": [0.2]}).teacher.check()


def test_tiny_images_merge_equal_levels():
    levels = pyramid_layout(8, 8, levels=7, min_frac=0.05, max_frac=0.5)
    sizes = [lv.size_px for lv in levels]
    assert sizes == sorted(set(sizes)) and len(sizes) < 7


# ---------------------------------------------------------------------------- CropPyramid lookup
def _two_level_pyramid():
    # Level A: 10 px crops, stride 5, centres x 0,5,10,15 / y 0,5,10 -> value (r^2 + c, 1)
    # Level B: 20 px crops, stride 10, centres x 0,10 / y 0,10      -> value ((r + 1)(c + 2), 3)
    a = PyramidLevel(size_px=10, stride_px=5, x0=-5, y0=-5, grid_w=4, grid_h=3)
    b = PyramidLevel(size_px=20, stride_px=10, x0=-10, y0=-10, grid_w=2, grid_h=2)
    ea = torch.tensor([[r * r + c, 1.0] for r in range(3) for c in range(4)])
    eb = torch.tensor([[(r + 1) * (c + 2), 3.0] for r in range(2) for c in range(2)])
    return CropPyramid([a, b], torch.cat([ea, eb]), height=12, width=16)


def test_lookup_hand_computed():
    p = _two_level_pyramid()
    assert p.min_crop_px == 10 and p.max_crop_px == 20
    torch.testing.assert_close(p.crop_sizes_px, torch.tensor([10.0, 20.0]))
    # u=7.5, v=2.5, side 15 (half-way between the levels):
    # A: grid (1.5, 0.5) -> mean of (1,1) (2,1) (2,1) (3,1) = (2, 1)
    # B: grid (0.75, 0.25) -> 2*.1875 + 3*.5625 + 4*.0625 + 6*.1875 = 3.4375 -> (3.4375, 3)
    # blend 0.5 / 0.5 -> (2.71875, 2)
    out = p.lookup(torch.tensor([7.5]), torch.tensor([2.5]), torch.tensor([15.0]))
    torch.testing.assert_close(out, torch.tensor([[2.71875, 2.0]]))
    # side 12.5 -> weights 0.75 (A) / 0.25 (B)
    out = p.lookup(torch.tensor([7.5]), torch.tensor([2.5]), torch.tensor([12.5]))
    torch.testing.assert_close(out, torch.tensor([[0.75 * 2 + 0.25 * 3.4375, 0.75 * 1 + 0.25 * 3]]))


def test_lookup_clamps_scale_and_position():
    p = _two_level_pyramid()
    u = torch.tensor([-3.0, 100.0, 2.5])
    v = torch.tensor([-3.0, 100.0, 7.5])
    small = p.lookup(u, v, torch.tensor([1.0, 1.0, 10.0]))  # below the smallest level: level A only
    # (-3,-3) -> A(0,0) = (0,1); (100,100) -> A(2,3) = (7,1); (2.5, 7.5) -> A grid (0.5, 1.5): mean of
    # (1,0)=1 (1,1)=2 (2,0)=4 (2,1)=5 -> 3
    torch.testing.assert_close(small, torch.tensor([[0.0, 1.0], [7.0, 1.0], [3.0, 1.0]]))
    big = p.lookup(u, v, torch.tensor([50.0, 20.0, 99.0]))  # level B only
    # (-3,-3) -> B(0,0) = 2; (100,100) -> B(1,1) = 6; (2.5,7.5) -> B grid (0.25,0.75):
    # 2*.1875 + 3*.0625 + 4*.5625 + 6*.1875 = 3.9375
    torch.testing.assert_close(big, torch.tensor([[2.0, 3.0], [6.0, 3.0], [3.9375, 3.0]]))


def test_own_centre_returns_own_embedding():
    levels = pyramid_layout(48, 64, levels=4, min_frac=0.1, max_frac=0.5, overlap=0.5)
    total = sum(lv.num_crops for lv in levels)
    emb = torch.nn.functional.normalize(torch.randn(total, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    p = CropPyramid(levels, emb, 48, 64)
    centres = np.concatenate([lv.centers().reshape(-1, 2) for lv in levels])
    sizes = np.concatenate([np.full(lv.num_crops, lv.size_px) for lv in levels])
    out = p.lookup(torch.tensor(centres[:, 0]), torch.tensor(centres[:, 1]), torch.tensor(sizes))
    torch.testing.assert_close(out, emb.half().float(), atol=0, rtol=0)
    torch.testing.assert_close(
        p.level_grid(2),
        emb[sum(lv.num_crops for lv in levels[:2]) :][: levels[2].num_crops]
        .reshape(levels[2].grid_h, levels[2].grid_w, 16)
        .half()
        .float(),
    )
    assert p.nbytes() == total * 16 * 2  # fp16 storage


def test_lookup_rejects_bad_input():
    p = _two_level_pyramid()
    with pytest.raises(ValueError, match="same length"):
        p.lookup(torch.zeros(3), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        p.lookup(torch.zeros(3, 1), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        CropPyramid(p.levels, torch.zeros(5, 2), 12, 16)


# ---------------------------------------------------------------------------- DenseFeatureMap
def test_dense_lookup_hand_computed():
    # 2x3 grid over a 60x40 image: cell centres x 10, 30, 50 / y 10, 30; value r*10 + c^2
    grid = torch.tensor([[[0.0], [1.0], [4.0]], [[10.0], [11.0], [14.0]]])
    m = DenseFeatureMap(grid, height=40, width=60)
    u = torch.tensor([20.0, 55.0, 10.0, 40.0])
    v = torch.tensor([20.0, 5.0, 30.0, 10.0])
    out = m.lookup(u, v)
    # (20,20): mean of 0,1,10,11 = 5.5; (55,5): clamped to cell (0,2) = 4; (10,30): cell (1,0) = 10;
    # (40,10): half-way between (0,1)=1 and (0,2)=4 -> 2.5
    torch.testing.assert_close(out[:, 0], torch.tensor([5.5, 4.0, 10.0, 2.5]))
    near = m.lookup(torch.tensor([39.0, 0.0]), torch.tensor([29.0, 39.0]), mode="nearest")
    torch.testing.assert_close(near[:, 0], torch.tensor([11.0, 10.0]))
    with pytest.raises(ValueError, match="mode"):
        m.lookup(u, v, mode="cubic")


# ---------------------------------------------------------------------------- compute_frame_features
class _BoxTeacher(Teacher):
    """Encodes each crop as its own box and each dense cell as its own pixel position, so the
    plumbing of compute_frame_features can be checked exactly."""

    clip_dim = 4
    dino_dim = 2
    description = "box teacher (test)"

    def __init__(self):
        self.calls = []

    def encode_crops(self, frame, boxes):
        self.calls.append(len(boxes))
        return torch.as_tensor(boxes, dtype=torch.float32) / 8.0

    def dense_features(self, frame):
        h, w = frame.height // 4, frame.width // 4
        ys, xs = torch.meshgrid(torch.arange(h) * 4 + 2.0, torch.arange(w) * 4 + 2.0, indexing="ij")
        return torch.stack([xs, ys], dim=-1) / 8.0

    def encode_text(self, texts):
        raise NotImplementedError


def _frame(h=48, w=64):
    K = np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return Frame(rgb=np.zeros((h, w, 3), np.uint8), K=K, c2w=np.eye(4))


def test_compute_frame_features_pairs_boxes_with_grid_cells():
    cfg = TeacherConfig(pyramid_levels=3, pyramid_min=0.2, pyramid_max=0.5, batch_size=50)
    teacher = _BoxTeacher()
    feats = compute_frame_features(teacher, _frame(), cfg)
    assert isinstance(feats, FrameFeatures)
    n = crops_per_frame(48, 64, cfg)
    assert sum(teacher.calls) == n and max(teacher.calls) <= 50 and len(teacher.calls) == math.ceil(n / 50)
    p = feats.pyramid
    for level in p.levels:
        b = level.boxes()
        c = level.centers().reshape(-1, 2)
        out = p.lookup(torch.tensor(c[:, 0]), torch.tensor(c[:, 1]), torch.full((len(b),), float(level.size_px)))
        torch.testing.assert_close(out, torch.tensor(b, dtype=torch.float32) / 8.0)
    # dense map: the cell centred at pixel (10, 6) encodes (10, 6) / 8
    out = feats.dino.lookup(torch.tensor([10.0]), torch.tensor([6.0]))
    torch.testing.assert_close(out, torch.tensor([[10.0 / 8, 6.0 / 8]]))
    assert feats.nbytes() == p.nbytes() + feats.dino.nbytes() > 0


def test_preset_pyramids_cost_what_the_readme_says():
    from lerf_ros.config import preset
    from lerf_ros.teachers.pyramid import crops_per_frame

    assert crops_per_frame(480, 640, preset("lerf").teacher) == 1250  # the reference pyramid
    assert crops_per_frame(480, 640, preset("lerf-big").teacher) == 1250
    assert crops_per_frame(480, 640, preset("lerf-lite").teacher) == 513  # the study's choice
    assert crops_per_frame(720, 1280, preset("lerf-lite").teacher) == 667
