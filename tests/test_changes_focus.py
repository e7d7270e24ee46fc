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


JUDGED = ("no_change", "candidate", "change")  # statuses of the frames the window counts


def _confirm(det, scenes, render, kfs):
    """Stream the removal until a change is confirmed; returns how many frames it took."""
    removed, _ = scenes
    for i, f in enumerate(removed.frames[N:]):
        if det.observe(f, render, 10_000, lambda: kfs).status == "change":
            return i + 1
    raise AssertionError("the removal was never confirmed")


@pytest.mark.parametrize("window", [0, 3])
def test_the_focus_window_spans_the_confirming_check_and_window_more_judged_frames(scenes, window):
    """``focus_open`` counts judged frames (those compared with the field: status no_change, candidate
    or change) since the newest confirmed change: open on the confirming check and for
    ``focus_window`` more judged frames, closed from the next one on. A frame that is not judged (not
    ready: too few training steps) does not count."""
    removed, static = scenes
    render = perfect_field(static)
    kfs = as_keyframes(removed.frames[:N])
    det = ChangeDetector(ChangeConfig(check_every=1, min_steps=100, focus_window=window))
    assert not det.focus_open()
    used = _confirm(det, scenes, render, kfs)
    assert det.focus_open()  # on the confirming check
    for _ in range(2):  # not judged: they do not move the window
        assert det.observe(removed.frames[N], render, 0, lambda: kfs).status == "not_ready"
        assert det.focus_open()
    # frames of the scene as the field holds it: judged, and none confirms the change again
    later = static.frames[N + used :]
    for j, f in enumerate(later[: window + 1]):
        status = det.observe(f, render, 10_000, lambda: kfs).status
        assert status in JUDGED and status != "change", status
        assert det.focus_open() is (j < window), (j, window)
    det.reset()  # a reset model: no window
    assert not det.focus_open()


def test_the_focus_window_reopens_on_the_next_confirmation(scenes):
    """The same change confirmed again (not a new change) opens the window again."""
    removed, static = scenes
    render = perfect_field(static)
    kfs = as_keyframes(removed.frames[:N])
    det = ChangeDetector(ChangeConfig(check_every=1, focus_window=0))
    used = _confirm(det, scenes, render, kfs)
    assert det.observe(static.frames[N + used], render, 10_000, lambda: kfs).status in JUDGED
    assert not det.focus_open()
    _confirm(det, scenes, render, kfs)  # the removal seen again
    assert det.focus_open()


def _online(tmp_path, name):
    from lerf_ros.mapping.session import Session

    cfg = preset("tiny").override(
        {
            "teacher.kind": "none",
            "output_dir": str(tmp_path / name),
            "changes.enabled": True,
            "changes.check_every": 1,
            "changes.min_steps": 0,
        }
    )
    return Session(cfg, online=True, log=lambda *a: None)


def _stream(session, frames, render):
    """Offer ``frames`` to a session whose model is built and judges against ``render`` (a field that
    holds the scene before the removal) in place of its own rendering; returns the index of the frame
    that confirmed the first change (None: none did)."""
    trainer = session.ensure_model()
    trainer.render_view = render  # the detector compares the frames with a converged field
    confirmed = None
    for f in frames:
        assert session.submit(f).kept  # the second pass is new to the selector: every frame is kept
        if confirmed is None and session.change_stats()["changes_detected"]:
            confirmed = f.index
    return confirmed


def test_a_session_sets_focus_pixels_on_frames_kept_after_a_confirmed_change(scenes, tmp_path):
    """The session's wiring: a compared frame kept as a keyframe while the detector's window is open
    gets its disagreeing pixels as focus pixels (``KeyframeStore.set_focus``), from the frame that
    confirms the change on; frames kept before it (their pixels disagree too: candidates) and the frames
    of a static stream get none; ``Session.reset`` forgets them. The field is a perfect rendering of the
    scene before the removal, injected as the trainer's ``render_view`` (the session's model is built,
    not trained)."""
    removed, static = scenes
    render = perfect_field(static)
    for name, scene in (("static", static), ("removed", removed)):
        s = _online(tmp_path, name)
        try:
            for f in scene.frames[:N]:  # the scene as the field holds it: no model yet, nothing compared
                s.submit(f)
            assert s.can_train() and s.keyframes.focus_stats()["pixels"] == 0
            confirmed = _stream(s, scene.frames[N:], render)
            focus = s.keyframes.focus_stats()
            with_focus = sorted(kf.index for kf in s.keyframes.keyframes() if kf.focus is not None)
            if name == "static":
                assert s.change_stats()["frames_compared"] >= N - 2 and confirmed is None
                assert focus == {"keyframes": 0, "pixels": 0} and with_focus == []
                continue
            assert confirmed is not None and confirmed > N  # a candidate frame came first
            assert with_focus and with_focus[0] == confirmed  # the confirming frame is the first
            assert focus["keyframes"] == len(with_focus) and focus["pixels"] > 0
            assert s.changes.focus_open()
            s.reset()
            assert s.keyframes.focus_stats() == {"keyframes": 0, "pixels": 0}
            assert not any(kf.focus is not None for kf in s.keyframes.keyframes())
        finally:
            s.close()


def test_a_share_near_1_on_a_batch_of_a_few_rays_keeps_one_uniform_ray(small):
    """``focus_share`` 0.9 on batches of 1, 2 and 3 rays: round(0.9 n) would leave no uniform ray (it
    raised ValueError); at most n - 1 rays come from the focus pixels, here exactly n - 1."""
    spot = np.zeros((H, W), bool)
    spot[3:5, 3:5] = True  # 4 of the 4 x 768 pixels: a uniform ray lands there about once in 770
    store = _store(0.9, small.frames)
    assert store.set_focus(1, spot, draws=1000) == 4
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3):
        for _ in range(20):
            b = store.sample(n, g)
            assert len(b.u) == n
            on = int(spot.reshape(-1)[_flat(b, 1)].sum())
            assert on == n - 1, (n, on)
    assert store.focus_stats() == {"keyframes": 1, "pixels": 4}
