"""Keyframe selection (ROS-free): which posed frames are worth keeping.

``KeyframeSelector`` decides, frame by frame:

- the frame must be valid (``Frame.validate``) and its stamp must be later than the newest kept
  keyframe's (a stamp going backwards is rejected with a reason the caller can count as a drop);
- the camera must have moved at least ``min_translation`` metres or turned at least
  ``min_rotation_deg`` degrees since the last kept keyframe (otherwise the frame is *skipped*: it
  is fine, just redundant);
- frames larger than ``max_image_side`` are downscaled (intrinsics adjusted);
- badly exposed frames (mean grey level outside ``[min_brightness, max_brightness]`` or more than
  ``max_clipped_fraction`` of the pixels clipped) and blurred frames (variance of the Laplacian of
  the grey image below ``min_sharpness``) are *rejected*.

The kept frames go to the bounded ``lerf_ros.mapping.keyframes.KeyframeStore``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from lerf_ros.config import KeyframeConfig
from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.geometry.poses import pose_distance

__all__ = [
    "KeyframeDecision",
    "KeyframeSelector",
    "grey_levels",
    "laplacian_variance",
    "exposure_stats",
    "downscale_frame",
    "scale_intrinsics",
]

CLIP_LOW = 2.0
"""Grey levels at or below this count as clipped to black."""
CLIP_HIGH = 253.0
"""Grey levels at or above this count as clipped to white."""


# ---------------------------------------------------------------------------- image measures
def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of an (H, W, 3) uint8 image as (H, W) float32 grey levels in [0, 255]."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {rgb.shape}")
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return rgb.astype(np.float32) @ w


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (kernel [[0,1,0],[1,-4,1],[0,1,0]]) of an (H, W)
    grey image over its interior pixels, in grey levels squared. Low values mean a blurred image."""
    g = np.asarray(grey, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] < 3 or g.shape[1] < 3:
        raise ValueError(f"expected an (H, W) grey image of at least 3x3, got shape {g.shape}")
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.astype(np.float64).var())


def exposure_stats(grey: np.ndarray) -> Tuple[float, float]:
    """(mean grey level, fraction of pixels clipped to black or white) of an (H, W) grey image."""
    g = np.asarray(grey)
    clipped = np.count_nonzero((g <= CLIP_LOW) | (g >= CLIP_HIGH))
    return float(g.mean(dtype=np.float64)), float(clipped) / float(g.size)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics (3, 3) of the image resized by ``sx`` horizontally and ``sy`` vertically.

    With pixel centres at ``u + 0.5`` (see ``lerf_ros.data.frame``) continuous image coordinates
    scale exactly: ``fx, cx`` by ``sx`` and ``fy, cy`` by ``sy`` (skew by ``sx``).
    """
    S = np.diag([float(sx), float(sy), 1.0])
    return S @ np.asarray(K, dtype=np.float64)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    # Source pixel whose cell holds the output pixel's centre (pixel-centre convention).
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def downscale_frame(frame: Frame, max_side: int) -> Frame:
    """A copy of ``frame`` whose longest side is at most ``max_side`` pixels (unchanged if it is).

    RGB is area-averaged (PIL box filter); depth and instance maps take the nearest source pixel
    (averaging depth across an object boundary would invent surfaces). ``K`` is scaled with the
    exact per-axis ratios ``W'/W`` and ``H'/H``; the lens distortion is kept as it is (it acts on
    normalised coordinates, which the rescaled ``K`` maps to the same rays). ``meta['original_size']``
    records ``(W, H)``.
    """
    h, w = frame.height, frame.width
    if max_side <= 0 or max(h, w) <= max_side:
        return frame
    from PIL import Image

    s = max_side / float(max(h, w))
    nw, nh = max(2, int(round(w * s))), max(2, int(round(h * s)))
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(frame.rgb)).resize((nw, nh), Image.Resampling.BOX))
    iy, ix = _nearest_index(nh, h), _nearest_index(nw, w)
    depth = None if frame.depth is None else np.ascontiguousarray(frame.depth[iy[:, None], ix[None, :]])
    inst = None if frame.instance is None else np.ascontiguousarray(frame.instance[iy[:, None], ix[None, :]])
    meta = dict(frame.meta)
    meta.setdefault("original_size", (w, h))
    return dataclasses.replace(
        frame, rgb=rgb, K=scale_intrinsics(frame.K, nw / w, nh / h), depth=depth, instance=inst, meta=meta
    )


# ---------------------------------------------------------------------------- selection
@dataclass
class KeyframeDecision:
    """Outcome of ``KeyframeSelector.select``.

    Attributes:
        status: 'keep' (store it), 'skip' (valid but redundant: not enough motion) or
            'reject' (bad input or bad image: count it as a dropped frame).
        reason: human-readable explanation with the measured numbers.
        kind: short machine-readable category for counters: 'keyframe', 'no_motion', 'invalid',
            'stamp_backwards', 'duplicate_stamp', 'too_dark', 'too_bright', 'clipped', 'blurred'.
        frame: the frame to store (downscaled if needed) when status is 'keep', else None.
        metrics: what was measured (translation_m, rotation_deg, brightness, clipped_fraction,
            sharpness), only the ones computed before the decision.
    """

    status: str
    reason: str
    kind: str
    frame: Optional[Frame] = None
    metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def keep(self) -> bool:
        return self.status == "keep"

    @property
    def rejected(self) -> bool:
        return self.status == "reject"

    def __bool__(self) -> bool:
        return self.keep


class KeyframeSelector:
    """Decides which frames become keyframes (see the module doc). Not thread-safe: call it from
    the one thread that feeds the store."""

    def __init__(self, cfg: Optional[KeyframeConfig] = None):
        self.cfg = (cfg or KeyframeConfig()).check()
        self._last_stamp: Optional[float] = None
        self._last_pose: Optional[np.ndarray] = None

    @property
    def last_stamp(self) -> Optional[float]:
        """Stamp of the newest kept keyframe (None before the first)."""
        return self._last_stamp

    def reset(self) -> None:
        """Forget the last kept keyframe (the next valid frame is kept)."""
        self._last_stamp = None
        self._last_pose = None

    def mark_kept(self, frame: Frame) -> None:
        """Record ``frame`` as the newest keyframe (e.g. after restoring a store from a checkpoint)."""
        self._last_stamp = float(frame.stamp)
        self._last_pose = np.array(frame.c2w, dtype=np.float64)

    def select(self, frame: Frame, commit: bool = True) -> KeyframeDecision:
        """Decide about ``frame``; with ``commit`` a kept frame becomes the new reference.

        Checks run cheapest first: validity, stamp order, motion, then (on the downscaled image)
        exposure and blur. A frame that did not move enough is skipped before its pixels are
        examined, so redundant frames at a high frame rate cost almost nothing.
        """
        cfg = self.cfg
        try:
            frame.validate()
        except FrameError as exc:
            return KeyframeDecision("reject", f"invalid frame: {exc}", "invalid")
        stamp = float(frame.stamp)
        m: Dict[str, float] = {}
        if self._last_stamp is not None:
            if stamp < self._last_stamp:
                return KeyframeDecision(
                    "reject",
                    f"stamp went backwards: {stamp:.3f} s is {self._last_stamp - stamp:.3f} s "
                    f"before the newest keyframe ({self._last_stamp:.3f} s)",
                    "stamp_backwards",
                )
            if stamp == self._last_stamp:
                return KeyframeDecision(
                    "reject", f"duplicate stamp {stamp:.3f} s (same as the newest keyframe)", "duplicate_stamp"
                )
            dt, ang = pose_distance(self._last_pose, frame.c2w)
            m["translation_m"], m["rotation_deg"] = float(dt), math.degrees(float(ang))
            moved = m["translation_m"] >= cfg.min_translation
            turned = m["rotation_deg"] >= cfg.min_rotation_deg
            if not (moved or turned):
                return KeyframeDecision(
                    "skip",
                    f"camera moved {m['translation_m']:.3f} m and turned {m['rotation_deg']:.1f} deg "
                    f"since the last keyframe (needs {cfg.min_translation:g} m or {cfg.min_rotation_deg:g} deg)",
                    "no_motion",
                    None,
                    m,
                )
            why = (
                f"moved {m['translation_m']:.3f} m (>= {cfg.min_translation:g})"
                if moved
                else f"turned {m['rotation_deg']:.1f} deg (>= {cfg.min_rotation_deg:g})"
            )
        else:
            why = "first keyframe"
        prepared = downscale_frame(frame, cfg.max_image_side)
        grey = grey_levels(prepared.rgb)
        m["brightness"], m["clipped_fraction"] = exposure_stats(grey)
        if m["brightness"] < cfg.min_brightness:
            return KeyframeDecision(
                "reject",
                f"too dark: mean brightness {m['brightness']:.1f} < {cfg.min_brightness:g}",
                "too_dark",
                None,
                m,
            )
        if m["brightness"] > cfg.max_brightness:
            return KeyframeDecision(
                "reject",
                f"too bright: mean brightness {m['brightness']:.1f} > {cfg.max_brightness:g}",
                "too_bright",
                None,
                m,
            )
        if m["clipped_fraction"] > cfg.max_clipped_fraction:
            return KeyframeDecision(
                "reject",
                f"badly exposed: {100 * m['clipped_fraction']:.0f}% of pixels clipped "
                f"(> {100 * cfg.max_clipped_fraction:.0f}%)",
                "clipped",
                None,
                m,
            )
        if cfg.min_sharpness > 0:
            m["sharpness"] = laplacian_variance(grey)
            if m["sharpness"] < cfg.min_sharpness:
                return KeyframeDecision(
                    "reject",
                    f"blurred: Laplacian variance {m['sharpness']:.1f} < {cfg.min_sharpness:g}",
                    "blurred",
                    None,
                    m,
                )
        if commit:
            self.mark_kept(prepared)
        return KeyframeDecision("keep", f"kept: {why}", "keyframe", prepared, m)

    def consider(self, frame: Frame) -> KeyframeDecision:
        """``select(frame, commit=True)``: decide, and make a kept frame the new reference."""
        return self.select(frame, commit=True)
