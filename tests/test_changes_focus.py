"""Training rays drawn where the field disagrees with a kept frame after a scene change
(``changes.focus_share``: ``KeyframeStore.set_focus``, ``ChangeCheck.focus``, ``resample_mask``)."""

import numpy as np
import pytest
import torch
from change_scenes import as_keyframes, perfect_field

from lerf_ros.config import ChangeConfig, ConfigError, preset
from lerf_ros.data.synthetic.events import make_changing_scene, objects_at
from lerf_ros.mapping.change_kernels import point_sampled, resample_mask
from lerf_ros.mapping.changes import ChangeDetector
from lerf_ros.mapping.keyframes import MAX_FOCUS_PIXELS, KeyframeStore

SEED = 21  # mug, teapot, potted plant, computer mouse, phone, bowl
N = 24
H, W = 24, 32


def _store(share, frames):
    store = KeyframeStore(preset("tiny").keyframes, torch.device("cpu"), focus_share=share)
    for f in frames:
        store.add(f)
    return store


@pytest.fixture(scope="module")
def small():
    return make_changing_scene(seed=SEED, width=W, height=H, n_frames=4)


def _flat(batch, view):
    sel = batch.view_index == view
    return ((batch.v[sel] - 0.5).long() * W + (batch.u[sel] - 0.5).long()).numpy()


def test_the_boosted_share_comes_from_the_flagged_pixels_never_retired_ones(small):
    strip = np.zeros((H, W), bool)
    strip[10:12, 8:20] = True  # 24 pixels: a thin object
    retired = np.zeros((H, W), bool)
    retired[10:12, 8:12] = True  # 8 of them retired for a change
    retired[0:5] = True  # and other pixels of the keyframe
    gone = retired.copy()
    gone[10:12, 12:14] = True
    n, share = 4000, 0.25
    counts = {}
    for s in (0.0, share):
        store = _store(s, small.frames)
        assert store.retire_pixels(2, retired) is not None
        assert store.set_focus(2, strip, draws=3) == 16  # only trusted pixels are focus pixels
        later = np.zeros((H, W), bool)
        later[10:12, 12:14] = True  # 4 focus pixels retired by a later change
        assert store.retire_pixels(2, later) is not None
        assert store.focus_stats() == {"keyframes": 1, "pixels": 12}
        g = torch.Generator().manual_seed(1)
        batches = [store.sample(n, g) for _ in range(4)]
        for b in batches:
            pix = _flat(b, 2)
            assert not gone.reshape(-1)[pix].any()  # a retired pixel is never drawn
        counts[s] = [int(strip.reshape(-1)[_flat(b, 2)].sum()) for b in batches]
        if s:
            on = strip.reshape(-1)[_flat(batches[0], 2)]
            hit = np.bincount(_flat(batches[0], 2)[on], minlength=H * W)[strip.reshape(-1) & ~gone.reshape(-1)]
            assert hit.min() > 0.4 * hit.mean()  # spread over every flagged pixel
            assert store.focus_stats() == {"keyframes": 0, "pixels": 0}  # expired after 3 draws
    # uniform drawing reaches the strip with a few rays; the boosted share adds round(share * n)
    assert max(counts[0.0]) < 60
    assert all(c >= share * n for c in counts[share][:3])
    assert counts[share][3] < 60  # the focus pixels expired after 3 draws


def test_without_focus_pixels_or_with_share_0_the_batch_is_unchanged(small):
    strip = np.zeros((H, W), bool)
    strip[10:12, 8:20] = True

    def batch(share, focus):
        store = _store(share, small.frames)
        store.retire_pixels(1, strip)
        if focus:
            store.set_focus(2, strip, draws=10)
        return store.sample(700, torch.Generator().manual_seed(5))

    ref = batch(0.0, False)
    for share, focus in ((0.0, True), (0.125, False)):
        b = batch(share, focus)
        for name in ("origins", "directions", "rgb", "depth", "view_index", "u", "v", "crop_px"):
            assert torch.equal(getattr(ref, name), getattr(b, name)), (share, focus, name)
    assert not torch.equal(ref.u, batch(0.125, True).u)  # and with both it does change


def test_focus_pixels_are_bounded_and_checked(small):
    store = _store(0.125, small.frames)
    with pytest.raises(ValueError, match="mask"):
        store.set_focus(0, np.ones((5, 5), bool), 10)
    assert store.set_focus(99, np.ones((H, W), bool), 10) == 0  # not stored
    assert store.set_focus(0, np.zeros((H, W), bool), 10) == 0
    big = make_changing_scene(seed=SEED, width=128, height=96, n_frames=2)
    s2 = _store(0.125, big.frames)
    assert s2.set_focus(0, np.ones((96, 128), bool), 10) == MAX_FOCUS_PIXELS
    with pytest.raises(ValueError, match="focus_share"):
        KeyframeStore(preset("tiny").keyframes, focus_share=1.0)
    with pytest.raises(ConfigError, match="changes.focus_share"):
        preset("tiny").override({"changes.focus_share": -0.1})
    with pytest.raises(ConfigError, match="changes.focus_steps"):
        preset("tiny").override({"changes.focus_steps": 0})


def test_resample_mask_carries_comparison_pixels_onto_the_keyframe():
    f = make_changing_scene(seed=SEED, width=64, height=48, n_frames=1).frames[0]
    _, _, K_small, h, w, _ = point_sampled(f, 32)  # every 2nd pixel
    assert (h, w) == (24, 32)
    m = np.zeros((h, w), bool)
    m[5, 7] = True
    full = resample_mask(m, K_small, f.K, 48, 64, None, grow=0)
    assert set(zip(*np.nonzero(full))) == {(10, 14), (10, 15), (11, 14), (11, 15)}  # its 2 x 2 cell
    grown = resample_mask(m, K_small, f.K, 48, 64, None, grow=1)
    assert grown.sum() == 36 and grown[8:14, 12:18].all()  # and its neighbours'


@pytest.fixture(scope="module")
def scenes():
    kw = dict(seed=SEED, width=64, height=48, n_frames=N, cycles=2)
    return make_changing_scene(events=[f"remove:mug@{N}"], **kw), make_changing_scene(**kw)


def test_frames_carry_focus_pixels_only_after_a_confirmed_change(scenes):
    removed, static = scenes
    render = perfect_field(static)  # the field holds the scene before the removal
    kfs = as_keyframes(removed.frames[:N])
    cfg = ChangeConfig(check_every=1)
    det = ChangeDetector(cfg)
    for f in static.frames[N:]:  # a static stream: never
        det.observe(f, render, 10_000, lambda: kfs)
        assert not det.focus_open()
    det = ChangeDetector(cfg)
    checks = []
    for f in removed.frames[N:]:
        checks.append(det.observe(f, render, 10_000, lambda: kfs))
        if checks[-1].status == "change":
            break
    assert checks[-1].status == "change" and det.focus_open()
    c, frame = checks[-1], removed.frames[N + len(checks) - 1]
    mug = [o for o in objects_at(removed, N - 1) if o.class_name == "mug"][0]
    before = removed.frames[len(checks) - 1]  # the same pose with the mug
    where = resample_mask(c.focus, c.focus_K, frame.K, frame.height, frame.width, None)
    on_mug = before.instance == mug.instance_id
    assert (where & on_mug).sum() > 0.8 * on_mug.sum()  # the field is wrong where the mug was
    assert where.mean() < 0.25
    off = ChangeDetector(ChangeConfig(check_every=1, focus_share=0.0))
    for f in removed.frames[N:]:
        assert off.observe(f, render, 10_000, lambda: kfs).focus is None
    assert ChangeDetector(ChangeConfig(check_every=1, focus_window=0)).focus_open() is False
