"""Layout of the multi-scale CLIP crop pyramid of one image.

Level ``l`` holds square crops of side ``S_l`` pixels, ``S_l = f_l * min(H, W)`` with the fractions
``f_l`` spaced linearly from ``pyramid_min`` to ``pyramid_max`` (the reference spacing). Crops of a
level sit on a regular grid with stride ``round(S_l * (1 - overlap_l))`` whose crop centres span the
whole image (the outer crops reach past the image border; the teacher pads what lies outside), so
every pixel centre lies inside the grid of centres and a lookup never extrapolates.

``overlap_l`` is ``pyramid_overlap``, except that with ``pyramid_overlap_ramp = (a, b)`` it ramps
linearly from 0 at ``f <= a`` to ``pyramid_overlap`` at ``f >= b``; the reference code does this
(``a, b = 0.05, 0.15``) so that the smallest, most numerous crops do not also overlap.

Crop boxes are integer pixel boxes ``x0, y0, x1, y1`` (exclusive ends); a crop's centre in the
continuous pixel coordinates of ``lerf_ros.data.frame`` (pixel ``i`` covers ``[i, i + 1)``) is
``x0 + S / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from lerf_ros.config import ConfigError, TeacherConfig


@dataclass(frozen=True)
class PyramidLevel:
    """One scale of the pyramid: a ``grid_h x grid_w`` grid of square crops.

    Attributes:
        size_px: crop side in pixels.
        stride_px: distance between neighbouring crop centres in pixels.
        x0, y0: top-left corner of the first (top-left) crop; may be negative.
        grid_w, grid_h: number of crop columns and rows.
    """

    size_px: int
    stride_px: int
    x0: int
    y0: int
    grid_w: int
    grid_h: int

    @property
    def num_crops(self) -> int:
        return self.grid_w * self.grid_h

    @property
    def first_center(self) -> tuple:
        """(cx, cy) continuous pixel coordinates of the centre of crop (row 0, column 0)."""
        return (self.x0 + self.size_px / 2.0, self.y0 + self.size_px / 2.0)

    def centers(self) -> np.ndarray:
        """(grid_h, grid_w, 2) float64 crop centres (cx, cy)."""
        cx0, cy0 = self.first_center
        xs = cx0 + self.stride_px * np.arange(self.grid_w)
        ys = cy0 + self.stride_px * np.arange(self.grid_h)
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx, gy], axis=-1)

    def boxes(self) -> np.ndarray:
        """(grid_h * grid_w, 4) int64 boxes ``x0, y0, x1, y1`` in row-major order (row = y index)."""
        xs = self.x0 + self.stride_px * np.arange(self.grid_w, dtype=np.int64)
        ys = self.y0 + self.stride_px * np.arange(self.grid_h, dtype=np.int64)
        gx, gy = np.meshgrid(xs, ys)
        x0 = gx.reshape(-1)
        y0 = gy.reshape(-1)
        return np.stack([x0, y0, x0 + self.size_px, y0 + self.size_px], axis=1)


def level_overlaps(fractions: Sequence[float], overlap: float, ramp: Sequence[float] = ()) -> np.ndarray:
    """Overlap of each level given its crop-side fraction (see the module docstring). (L,) float64."""
    f = np.asarray(fractions, dtype=np.float64)
    ramp = tuple(ramp)
    if len(ramp) == 0:
        return np.full_like(f, overlap)
    if len(ramp) != 2 or not 0 <= ramp[0] <= ramp[1]:
        raise ConfigError(f"teacher.pyramid_overlap_ramp = {ramp!r} is invalid: expected () or (a, b), 0 <= a <= b")
    a, b = ramp
    if b == a:
        return np.where(f >= a, overlap, 0.0)
    return overlap * np.clip((f - a) / (b - a), 0.0, 1.0)


def _axis_layout(length: int, size: int, stride: int) -> tuple:
    """(first crop corner, count) along one axis, centred on the image, so that the crop centres
    span [0.5, length - 0.5] (every pixel centre) even after rounding the corner to whole pixels."""
    count = int(math.ceil(length / stride)) + 1
    span = (count - 1) * stride
    first_center = (length - span) / 2.0
    return int(round(first_center - size / 2.0)), count


def pyramid_layout(
    height: int,
    width: int,
    levels: int = 7,
    min_frac: float = 0.05,
    max_frac: float = 0.5,
    overlap: float = 0.5,
    overlap_ramp: Sequence[float] = (0.05, 0.15),
) -> List[PyramidLevel]:
    """The crop grids of an ``height x width`` image, smallest crops first.

    Levels whose rounded crop sides coincide (tiny images) are merged, so the returned sides are
    strictly increasing and there may be fewer than ``levels`` levels. Raises ConfigError on bad values.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if levels < 1:
        raise ConfigError(f"teacher.pyramid_levels = {levels!r} is invalid: expected >= 1")
    if not 0 < min_frac <= max_frac <= 1:
        raise ConfigError(
            f"teacher.pyramid_min/max = {(min_frac, max_frac)!r} is invalid: expected 0 < min <= max <= 1"
        )
    if not 0 <= overlap < 1:
        raise ConfigError(f"teacher.pyramid_overlap = {overlap!r} is invalid: expected in [0, 1)")
    fractions = np.linspace(min_frac, max_frac, levels) if levels > 1 else np.array([min_frac])
    overlaps = level_overlaps(fractions, overlap, overlap_ramp)
    short = min(height, width)
    out: List[PyramidLevel] = []
    for frac, ov in zip(fractions, overlaps):
        size = max(1, int(round(frac * short)))
        if out and size <= out[-1].size_px:
            continue
        stride = max(1, int(round(size * (1.0 - ov))))
        x0, gw = _axis_layout(width, size, stride)
        y0, gh = _axis_layout(height, size, stride)
        out.append(PyramidLevel(size_px=size, stride_px=stride, x0=x0, y0=y0, grid_w=gw, grid_h=gh))
    return out


def layout_from_config(height: int, width: int, cfg: TeacherConfig) -> List[PyramidLevel]:
    """``pyramid_layout`` with the pyramid fields of ``cfg``."""
    return pyramid_layout(
        height,
        width,
        levels=cfg.pyramid_levels,
        min_frac=cfg.pyramid_min,
        max_frac=cfg.pyramid_max,
        overlap=cfg.pyramid_overlap,
        overlap_ramp=cfg.pyramid_overlap_ramp,
    )


def crops_per_frame(height: int, width: int, cfg: TeacherConfig) -> int:
    """Number of crops the image encoder sees for one ``height x width`` keyframe."""
    return sum(level.num_crops for level in layout_from_config(height, width, cfg))
