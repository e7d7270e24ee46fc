"""Keyframe selection (motion thresholds, blur and exposure rejection, stamps) and the bounded store."""

import math
import threading

import numpy as np
import pytest

from lerf_ros.config import ConfigError, KeyframeConfig
from lerf_ros.data.frame import Frame
from lerf_ros.mapping.keyframes import KeyframeStore, KeyframeStoreError
from lerf_ros.mapping.selection import (
    KeyframeSelector,
    downscale_frame,
    exposure_stats,
    grey_levels,
    laplacian_variance,
)

W, H = 64, 48
K0 = np.array([[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]])


def textured(seed=0, w=W, h=H):
    """Mid-grey random texture: sharp, well exposed."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, size=(h, w, 3), dtype=np.uint8)


def pose(t=(0, 0, 0), yaw_deg=0.0):
    a = math.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]  # about camera y
    T[:3, 3] = t
    return T


def frame(stamp, t=(0, 0, 0), yaw_deg=0.0, rgb=None, depth=True, seed=0):
    rgb = textured(seed) if rgb is None else rgb
    h, w = rgb.shape[:2]
    d = np.full((h, w), 1.5, np.float32) if depth else None
    return Frame(rgb=rgb, K=K0.copy(), c2w=pose(t, yaw_deg), stamp=float(stamp), depth=d)


def cfg(**kw):
    base = dict(min_translation=0.1, min_rotation_deg=10.0, max_image_side=0, min_sharpness=0.0)
    base.update(kw)
    return KeyframeConfig(**base)


# ---------------------------------------------------------------------------- selection
def test_motion_thresholds():
    sel = KeyframeSelector(cfg())
    d = sel.select(frame(0.0))
    assert d.keep and "first keyframe" in d.reason and d.frame is not None and d.kind == "keyframe"
    d = sel.select(frame(0.1, t=(0.05, 0, 0), yaw_deg=4))
    assert d.status == "skip" and not d.rejected and d.kind == "no_motion"
    assert "moved 0.050 m and turned 4.0 deg" in d.reason and "needs 0.1 m or 10 deg" in d.reason
    d = sel.select(frame(0.2, t=(0.11, 0, 0)))
    assert d.keep and "moved 0.110 m" in d.reason
    assert d.metrics["translation_m"] == pytest.approx(0.11)
    # reference is now the kept frame at x = 0.11: a turn without moving
    d = sel.select(frame(0.3, t=(0.11, 0, 0), yaw_deg=9.0))
    assert d.status == "skip"
    d = sel.consider(frame(0.4, t=(0.11, 0, 0), yaw_deg=12.0))
    assert d.keep and "turned 12.0 deg" in d.reason
    assert d.metrics["rotation_deg"] == pytest.approx(12.0)
    # commit=False leaves the reference where it was
    d = sel.select(frame(0.5, t=(0.5, 0, 0), yaw_deg=12.0), commit=False)
    assert d.keep and sel.last_stamp == pytest.approx(0.4)


def test_backwards_and_duplicate_stamps_are_rejected():
    sel = KeyframeSelector(cfg())
    assert sel.select(frame(10.0)).keep
    d = sel.select(frame(9.5, t=(1, 0, 0)))
    assert d.rejected and "stamp went backwards: 9.500 s is 0.500 s before the newest keyframe (10.000 s)" in d.reason
    assert d.kind == "stamp_backwards"
    d = sel.select(frame(10.0, t=(1, 0, 0)))
    assert d.rejected and "duplicate stamp" in d.reason and d.kind == "duplicate_stamp"
    assert sel.select(frame(10.5, t=(1, 0, 0))).keep


def test_invalid_frame_is_rejected():
    f = frame(0.0)
    f.c2w[0, 0] = np.nan
    d = KeyframeSelector(cfg()).select(f)
    assert d.rejected and "invalid frame" in d.reason and "NaN" in d.reason and d.kind == "invalid"


def test_laplacian_variance_reference_values():
    # a one-pixel checkerboard 0/255: the Laplacian is +-1020 at every interior pixel
    yy, xx = np.mgrid[0:20, 0:30]
    board = ((xx + yy) % 2 * 255).astype(np.float32)
    assert laplacian_variance(board) == pytest.approx(1020.0**2)
    # a linear ramp has zero Laplacian
    assert laplacian_variance(xx.astype(np.float32) * 3 + yy) == pytest.approx(0.0, abs=1e-6)


def box_blur(rgb, r):
    """Independent (cumulative-sum) box blur, edges clamped."""
    a = np.pad(rgb.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    c = a.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    k = 2 * r + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return np.clip(np.rint(s / k**2), 0, 255).astype(np.uint8)


def test_blur_rejection():
    sharp = textured(3)
    blurred = box_blur(sharp, 3)
    v_sharp = laplacian_variance(grey_levels(sharp))
    v_blur = laplacian_variance(grey_levels(blurred))
    assert v_blur < 0.05 * v_sharp
    threshold = math.sqrt(v_sharp * v_blur)
    sel = KeyframeSelector(cfg(min_sharpness=threshold))
    d = sel.select(frame(0.0, rgb=blurred))
    assert d.rejected and d.kind == "blurred" and d.reason.startswith("blurred: Laplacian variance")
    assert d.metrics["sharpness"] == pytest.approx(v_blur)
    assert sel.last_stamp is None  # a rejected frame does not become the reference
    assert sel.select(frame(0.1, rgb=sharp)).keep


def test_exposure_rejection():
    sel = KeyframeSelector(cfg(min_brightness=20, max_brightness=230, max_clipped_fraction=0.3))
    dark = np.full((H, W, 3), 8, np.uint8)
    d = sel.select(frame(0.0, rgb=dark))
    assert d.rejected and "too dark: mean brightness 8.0 < 20" in d.reason and d.kind == "too_dark"
    bright = np.full((H, W, 3), 240, np.uint8)
    d = sel.select(frame(0.1, rgb=bright))
    assert d.rejected and "too bright" in d.reason and d.kind == "too_bright"
    # mean 127.5 but every pixel clipped: half black, half white
    half = np.zeros((H, W, 3), np.uint8)
    half[:, W // 2 :] = 255
    mean, clipped = exposure_stats(grey_levels(half))
    assert mean == pytest.approx(127.5, abs=0.01) and clipped == pytest.approx(1.0)
    d = sel.select(frame(0.2, rgb=half))
    assert d.rejected and "100% of pixels clipped (> 30%)" in d.reason and d.kind == "clipped"
    # 20% clipped is accepted
    some = textured(1)
    some[: int(H * 0.2)] = 255
    d = sel.select(frame(0.3, rgb=some))
    assert d.keep, d.reason
    assert d.metrics["clipped_fraction"] == pytest.approx(int(H * 0.2) / H)


def project(K, p):
    q = K @ p
    return q[:2] / q[2]


def test_downscale_adjusts_intrinsics_and_images():
    rgb = textured(5, w=200, h=100)
    f = Frame(
        rgb=rgb,
        K=np.array([[180.0, 0, 101.3], [0, 170.0, 48.7], [0, 0, 1]]),
        c2w=np.eye(4),
        stamp=1.0,
        depth=np.arange(200 * 100, dtype=np.float32).reshape(100, 200),
    )
    g = downscale_frame(f, 50)
    assert g.rgb.shape == (25, 50, 3) and g.depth.shape == (25, 50)
    assert g.meta["original_size"] == (200, 100)
    # continuous image coordinates scale by exactly 1/4 (pixel-centre convention u + 0.5)
    p = np.array([0.3, -0.2, 2.0])
    np.testing.assert_allclose(project(g.K, p), project(f.K, p) / 4, atol=1e-12)
    np.testing.assert_allclose(g.K[:2, 2], [101.3 / 4, 48.7 / 4])
    # the centre of output pixel (i, j) sees the same ray as source point (4i + 2, 4j + 2)
    ray_out = np.linalg.inv(g.K) @ [3 + 0.5, 7 + 0.5, 1]
    ray_in = np.linalg.inv(f.K) @ [4 * 3 + 2, 4 * 7 + 2, 1]
    np.testing.assert_allclose(ray_out, ray_in, atol=1e-12)
    # box filter: each output pixel is the mean of its 4x4 source block
    block = rgb.reshape(25, 4, 50, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(g.rgb.astype(np.float64) - block).max() <= 1.0
    # depth: nearest source pixel (the one holding the output pixel's centre), never averaged
    np.testing.assert_array_equal(g.depth, f.depth[2::4, 2::4])
    # already small: unchanged object
    assert downscale_frame(g, 64) is g


def test_selector_downscales_kept_frames():
    sel = KeyframeSelector(cfg(max_image_side=32))
    d = sel.select(frame(0.0))
    assert d.keep and d.frame.rgb.shape == (24, 32, 3) and d.frame.depth.shape == (24, 32)
    np.testing.assert_allclose(d.frame.K[0], K0[0] * 0.5)


def test_config_check_names_the_key():
    with pytest.raises(ConfigError, match="keyframes.max_clipped_fraction"):
        KeyframeSelector(KeyframeConfig(max_clipped_fraction=0.0))
    with pytest.raises(ConfigError, match="keyframes.min/max_brightness"):
        KeyframeStore(KeyframeConfig(min_brightness=200, max_brightness=100))


# ---------------------------------------------------------------------------- store
def frame_bytes():
    return W * H * 3 + W * H * 4


def test_store_count_bound_evicts_most_redundant_pose():
    store = KeyframeStore(cfg(max_keyframes=5, protect_newest=2))
    xs = [0.0, 1.0, 2.0, 3.0, 2.05]  # x = 2.05 duplicates x = 2.0
    keys = [store.add(frame(i, t=(x, 0, 0)))[0] for i, x in enumerate(xs)]
    assert keys == [0, 1, 2, 3, 4] and len(store) == 5
    key, evicted = store.add(frame(5, t=(5.0, 0, 0)))
    # 2 (x=2.0) and 4 (x=2.05) are equally redundant; 4 is protected (one of the 2 newest)
    assert key == 5 and evicted == [2]
    assert store.keys() == [0, 1, 3, 4, 5]
    key, evicted = store.add(frame(6, t=(5.02, 0, 0)))
    # redundancy: 0->1: 1.0, 1: 1.0, 3: 0.95, 4: 0.95 ... 5 and 6 are protected: 3 is the oldest of the tied
    assert evicted == [3]
    # the turned-in-place camera counts as distinct through the rotation term
    store2 = KeyframeStore(cfg(max_keyframes=3, protect_newest=1))
    store2.add(frame(0, t=(0, 0, 0), yaw_deg=0))
    store2.add(frame(1, t=(0, 0, 0), yaw_deg=90))  # far in rotation
    store2.add(frame(2, t=(0.3, 0, 0), yaw_deg=0))  # 0.3 m from key 0
    _, ev = store2.add(frame(3, t=(3.0, 0, 0)))
    # rotation weight = 0.1 / radians(10) = 0.573 m/rad: key 1 is 0.9 m "away" from key 0, key 2 only 0.3
    assert store2.rotation_weight == pytest.approx(0.1 / math.radians(10))
    # nearest distances: key 0 -> 0.3 (key 2), key 1 -> 0.9 (key 0), key 2 -> 0.3: the tie goes to the oldest
    assert ev == [0]
    assert store2.keys() == [1, 2, 3]


def test_store_never_evicts_newest_and_reports_redundancy():
    store = KeyframeStore(cfg(max_keyframes=4, protect_newest=3))
    for i in range(20):
        key, evicted = store.add(frame(i, t=(0.001 * i, 0, 0)))  # all nearly identical poses
        assert key not in evicted
        assert all(e < key - 2 for e in evicted)  # never one of the 3 newest
    assert store.keys()[-3:] == [17, 18, 19]
    red = store.redundancy()
    xs = 0.001 * np.array(store.keys(), float)
    gaps = np.abs(xs[:, None] - xs[None, :]) + np.diag(np.full(len(xs), np.inf))
    np.testing.assert_allclose([red[k] for k in store.keys()], gaps.min(axis=1), atol=1e-12)


def test_store_memory_bound_with_features():
    fb = frame_bytes()
    store = KeyframeStore(cfg(max_keyframes=100, max_memory_mb=4.5 * fb / 2**20, protect_newest=1))
    for i in range(4):
        _, ev = store.add(frame(i, t=(i, 0, 0)))
        assert ev == []
    assert store.stats()["bytes"] == 4 * fb

    class Feats:
        def __init__(self, n):
            self.n = n

        def nbytes(self):
            return self.n

    # features of 0.6 frame: 4 frames + 1 feature = 4.6 frames > 4.5: an eviction
    before = set(store.keys())
    assert store.set_features(3, Feats(int(0.6 * fb))) is True
    ev = sorted(before - set(store.keys()))
    assert len(ev) == 1 and 3 not in ev and ev[0] not in store and store.stats()["evicted"] == 1
    s = store.stats()
    assert s["count"] == 3 and s["bytes"] == 3 * fb + int(0.6 * fb) and s["with_features"] == 1
    assert s["feature_bytes"] == int(0.6 * fb) and s["bytes"] <= s["max_bytes"]
    assert store.get(3).has_features and store.keys_with_features() == [3]
    # numpy arrays (nbytes attribute) and dicts of them count too
    store.set_features(store.keys()[0], {"clip": np.zeros(100, np.float32), "dino": np.zeros(50, np.float16)})
    assert store.stats()["feature_bytes"] == int(0.6 * fb) + 500
    assert store.set_features(ev[0], Feats(1)) is False  # evicted meanwhile: nothing happens
    with pytest.raises(KeyError, match="not in the store"):
        store.get(ev[0])
    with pytest.raises(KeyframeStoreError, match="more than the store's whole memory bound"):
        store.set_features(3, Feats(5 * fb))
    with pytest.raises(TypeError, match="do not report their size"):
        store.set_features(3, object())
    big = Frame(rgb=np.zeros((200, 200, 3), np.uint8), K=K0, c2w=np.eye(4), stamp=99.0)
    with pytest.raises(KeyframeStoreError, match="lower keyframes.max_image_side"):
        store.add(big)
    # bytes are accounted exactly after removals
    v = store.version
    for k in store.keys():
        store.remove(k)
    assert store.stats()["bytes"] == 0 and len(store) == 0 and store.version > v


def test_store_thread_safety():
    store = KeyframeStore(cfg(max_keyframes=10, protect_newest=2))
    errors = []

    def producer(offset):
        for i in range(40):
            try:
                key, _ = store.add(frame(offset + i, t=(offset + i * 0.1, 0, 0), depth=False))
                store.set_features(key, np.zeros(16, np.float32))  # False if evicted in between
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

    def reader():
        for _ in range(200):
            items = store.items()
            assert len(items) <= 10
            store.stats()

    ts = [threading.Thread(target=producer, args=(o,)) for o in (0, 1000)] + [threading.Thread(target=reader)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    s = store.stats()
    assert s["count"] == 10 and s["added"] == 80 and s["evicted"] == 70
    assert s["bytes"] == sum(kf.nbytes for _, kf in store.items())


_HOLES = """
import sys
import numpy as np
from lerf_ros.mapping.memory import release_free_heap

def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024.0

big = np.ones(8 << 20, np.uint8)
del big  # glibc now serves image-sized buffers from the heap
keep, gone = [], []
for i in range(200):
    (keep if i % 2 else gone).append(np.ones(300 << 10, np.uint8))  # kept and evicted keyframes interleaved
before = rss_mb()
del gone[:]
if sys.argv[1] == "trim":
    assert release_free_heap()
print(before - rss_mb())
"""


def test_heap_trim_returns_evicted_images_to_the_system():
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc_trim only")
    freed = {}
    for mode in ("trim", "default"):
        out = subprocess.run([sys.executable, "-c", _HOLES, mode], capture_output=True, text=True, check=True)
        freed[mode] = float(out.stdout.strip().splitlines()[-1])
    # 100 freed buffers of 300 KB between kept ones: about 29 MB go back with the trim, almost nothing without
    assert freed["trim"] > 25.0 and freed["default"] < 5.0, freed


# ---------------------------------------------------------------------------- retired pixels across runs
def _retired_entries(stamps, seed=0):
    """``retired_state`` entries of keyframes at ``stamps``, each with its left half retired."""
    src = KeyframeStore(cfg(max_keyframes=len(stamps) + 3))
    half = np.zeros((H, W), bool)
    half[:, : W // 2] = True
    for s in stamps:
        key, _ = src.add(frame(s, seed=seed))
        assert src.retire_pixels(key, half) == H * W // 2
    return src.retired_state()


def test_retired_pixels_restored_when_keyframe_returns():
    entries = _retired_entries([1.0, 2.0])
    store = KeyframeStore(cfg(max_keyframes=4))
    assert store.restore_retired(entries) == 0
    key, _ = store.add(frame(2.0))
    kf = store.get(key)
    assert kf.trusted is not None and int(kf.trusted.numel()) == H * W // 2
    assert sorted(e["stamp"] for e in store.retired_state()) == [1.0, 2.0]  # 1.0 still pending


def test_malformed_retired_entry_is_skipped_with_one_log_line(caplog):
    bad = dict(_retired_entries([5.0])[0])
    bad["retired"] = bad["retired"][:-3]  # truncated mask
    store = KeyframeStore(cfg(max_keyframes=3))
    for i in range(3):
        store.add(frame(4.0 - i, t=(0.5 * i, 0, 0)))
    with caplog.at_level("WARNING", logger="lerf_ros.mapping.keyframes"):
        store.restore_retired([bad])  # pending: applied when its keyframe comes
        key, evicted = store.add(frame(5.0))  # must not raise, and bounds still hold
    assert len(store) == 3 and evicted and key in store and store.get(key).trusted is None
    assert sum("retired-pixel mask" in r.getMessage() for r in caplog.records) == 1
    # at once, for a stored keyframe: a resume is not aborted
    caplog.clear()
    with caplog.at_level("WARNING", logger="lerf_ros.mapping.keyframes"):
        assert store.restore_retired([bad]) == 0
    assert sum("retired-pixel mask" in r.getMessage() for r in caplog.records) == 1


def test_pending_retired_entries_are_bounded(monkeypatch):
    import lerf_ros.mapping.keyframes as kfmod

    entries = _retired_entries([1.0, 2.0, 100.0])
    store = KeyframeStore(cfg(max_keyframes=4))
    store.restore_retired(entries)
    assert len(store.retired_state()) == 3
    store.add(frame(2.0 + kfmod.PENDING_RETIRED_MARGIN_S + 50.0))  # long past 1.0 and 2.0, not 100.0
    assert [e["stamp"] for e in store.retired_state()] == [100.0]
    # and a count cap, the oldest dropped first, even with no keyframe stored
    monkeypatch.setattr(kfmod, "MAX_PENDING_RETIRED", 2)
    store = KeyframeStore(cfg(max_keyframes=4))
    store.restore_retired(entries)
    assert sorted(e["stamp"] for e in store.retired_state()) == [2.0, 100.0]
