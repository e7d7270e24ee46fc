"""Teacher outputs of one keyframe and the lookups a training ray needs.

- ``CropPyramid``: the CLIP embeddings of the crop pyramid (``pyramid.py``), stored compactly in
  fp16, and ``lookup(u, v, crop_px)``: bilinear in position within the two levels whose crop sides
  bracket ``crop_px``, linear in crop side across them.
- ``DenseFeatureMap``: a dense (DINO) feature map with bilinear or nearest lookup at pixel coordinates.
- ``compute_frame_features``: runs a ``Teacher`` over one frame and builds both.

Pixel coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``, its centre is ``i + 0.5``), as in
``lerf_ros.data.frame``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch

from lerf_ros.config import TeacherConfig
from lerf_ros.data.frame import Frame
from lerf_ros.teachers.base import Teacher
from lerf_ros.teachers.pyramid import PyramidLevel, layout_from_config

_STORE_DTYPE = torch.float16


def _check_coords(**tensors: torch.Tensor) -> int:
    n = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"{name} must have shape (N,), got {tuple(t.shape)}")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise ValueError(
                f"{', '.join(tensors)} must have the same length, got {[tuple(v.shape) for v in tensors.values()]}"
            )
    return int(n or 0)


def _bilinear_corners(
    gx: torch.Tensor, gy: torch.Tensor, gw: torch.Tensor, gh: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corners and weights of bilinear interpolation on grids of size (gh, gw).

    gx, gy (N,) continuous grid coordinates (cell centres at integers); gw, gh (N,) or 0-d long
    grid sizes.
    Coordinates are clamped to the grid. Returns row (N, 4), col (N, 4) long indices and
    weights (N, 4) float summing to 1, corner order (y0 x0), (y0 x1), (y1 x0), (y1 x1).
    """
    gx = torch.minimum(gx.clamp(min=0.0), (gw - 1).to(gx.dtype))
    gy = torch.minimum(gy.clamp(min=0.0), (gh - 1).to(gy.dtype))
    x0 = gx.floor()
    y0 = gy.floor()
    fx = gx - x0
    fy = gy - y0
    x0 = x0.long()
    y0 = y0.long()
    x1 = torch.minimum(x0 + 1, gw - 1)
    y1 = torch.minimum(y0 + 1, gh - 1)
    rows = torch.stack([y0, y0, y1, y1], dim=1)
    cols = torch.stack([x0, x1, x0, x1], dim=1)
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    return rows, cols, w


class CropPyramid:
    """CLIP embeddings of one frame's crop pyramid.

    Attributes:
        crop_sizes_px: (L,) float32 crop side in pixels per level, strictly increasing.
        levels: the ``PyramidLevel`` layouts, smallest crops first.
        height, width: size of the image the crops were taken from.
    """

    def __init__(self, levels: Sequence[PyramidLevel], embeddings: torch.Tensor, height: int, width: int) -> None:
        """
        Args:
            levels: the layout (``pyramid.pyramid_layout``), smallest crops first.
            embeddings: (sum of grid_h * grid_w, D) crop embeddings, level by level, each level
                row-major (the order of ``PyramidLevel.boxes``). Stored as fp16.
            height, width: image size.
        """
        levels = list(levels)
        if not levels:
            raise ValueError("a crop pyramid needs at least one level")
        sizes = [lv.size_px for lv in levels]
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"pyramid levels must have strictly increasing crop sides, got {sizes}")
        counts = [lv.num_crops for lv in levels]
        if embeddings.ndim != 2 or embeddings.shape[0] != sum(counts):
            raise ValueError(
                f"embeddings must have shape ({sum(counts)}, D) for levels with {counts} crops, "
                f"got {tuple(embeddings.shape)}"
            )
        self.levels: List[PyramidLevel] = levels
        self.height = int(height)
        self.width = int(width)
        dev = embeddings.device
        self._flat = embeddings.detach().to(_STORE_DTYPE).contiguous()
        self.crop_sizes_px = torch.tensor(sizes, dtype=torch.float32, device=dev)
        self._stride = torch.tensor([lv.stride_px for lv in levels], dtype=torch.float32, device=dev)
        self._center0 = torch.tensor([lv.first_center for lv in levels], dtype=torch.float32, device=dev)
        self._grid_w = torch.tensor([lv.grid_w for lv in levels], dtype=torch.long, device=dev)
        self._grid_h = torch.tensor([lv.grid_h for lv in levels], dtype=torch.long, device=dev)
        self._offset = torch.tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]), dtype=torch.long, device=dev)

    # ------------------------------------------------------------------ properties
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def dim(self) -> int:
        return int(self._flat.shape[1])

    @property
    def num_crops(self) -> int:
        return int(self._flat.shape[0])

    @property
    def device(self) -> torch.device:
        return self._flat.device

    @property
    def min_crop_px(self) -> float:
        return float(self.crop_sizes_px[0])

    @property
    def max_crop_px(self) -> float:
        return float(self.crop_sizes_px[-1])

    def nbytes(self) -> int:
        return int(self._flat.numel() * self._flat.element_size())

    def level_grid(self, level: int) -> torch.Tensor:
        """(grid_h, grid_w, D) float32 embeddings of one level."""
        lv = self.levels[level]
        start = int(self._offset[level])
        return self._flat[start : start + lv.num_crops].float().reshape(lv.grid_h, lv.grid_w, self.dim)

    def to(self, device) -> "CropPyramid":
        """A copy on ``device`` (lookups take their inputs on the pyramid's device)."""
        return CropPyramid(self.levels, self._flat.to(device), self.height, self.width)

    # ------------------------------------------------------------------ lookup
    def lookup(self, u: torch.Tensor, v: torch.Tensor, crop_px: torch.Tensor) -> torch.Tensor:
        """Interpolated crop embedding at pixel positions and crop sides.

        Args:
            u, v: (N,) continuous pixel coordinates (pixel centre at i + 0.5).
            crop_px: (N,) crop side in pixels, clamped to [min_crop_px, max_crop_px].
        Returns:
            (N, D) float32: bilinear in (u, v) within each of the two levels whose crop sides bracket
            ``crop_px`` (positions outside a level's grid of centres are clamped to it), blended
            linearly in crop side. Not re-normalised.
        """
        n = _check_coords(u=u, v=v, crop_px=crop_px)
        dev = self.device
        u = u.to(dev, torch.float32)
        v = v.to(dev, torch.float32)
        s = crop_px.to(dev, torch.float32).clamp(self.min_crop_px, self.max_crop_px)
        L = self.num_levels
        if L == 1:
            lo = torch.zeros(n, dtype=torch.long, device=dev)
            hi = lo
            t = torch.zeros(n, dtype=torch.float32, device=dev)
        else:
            lo = (torch.searchsorted(self.crop_sizes_px, s, right=True) - 1).clamp(0, L - 2)
            hi = lo + 1
            s_lo = self.crop_sizes_px[lo]
            t = ((s - s_lo) / (self.crop_sizes_px[hi] - s_lo)).clamp(0.0, 1.0)
        idx, w = [], []
        for lev, lw in ((lo, 1.0 - t), (hi, t)):
            stride = self._stride[lev]
            gx = (u - self._center0[lev, 0]) / stride
            gy = (v - self._center0[lev, 1]) / stride
            gw = self._grid_w[lev]
            rows, cols, bw = _bilinear_corners(gx, gy, gw, self._grid_h[lev])
            idx.append(self._offset[lev, None] + rows * gw[:, None] + cols)
            w.append(bw * lw[:, None])
        idx_all = torch.cat(idx, dim=1)  # (N, 8)
        w_all = torch.cat(w, dim=1)  # (N, 8)
        rows = self._flat[idx_all.reshape(-1)].reshape(n, 8, self.dim).float()
        return torch.einsum("nk,nkd->nd", w_all, rows)


class DenseFeatureMap:
    """A dense (h, w, D) feature map covering an ``height x width`` image; cell (i, j) has its
    centre at pixel coordinates ((j + 0.5) * width / w, (i + 0.5) * height / h). Stored as fp16."""

    def __init__(self, features: torch.Tensor, height: int, width: int) -> None:
        if features.ndim != 3 or features.shape[0] < 1 or features.shape[1] < 1:
            raise ValueError(f"dense features must have shape (h, w, D), got {tuple(features.shape)}")
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        self.features = features.detach().to(_STORE_DTYPE).contiguous()
        self.height = int(height)
        self.width = int(width)

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    @property
    def grid_size(self) -> Tuple[int, int]:
        """(h, w) of the feature grid."""
        return int(self.features.shape[0]), int(self.features.shape[1])

    @property
    def device(self) -> torch.device:
        return self.features.device

    def nbytes(self) -> int:
        return int(self.features.numel() * self.features.element_size())

    def to(self, device) -> "DenseFeatureMap":
        return DenseFeatureMap(self.features.to(device), self.height, self.width)

    def lookup(self, u: torch.Tensor, v: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Features at pixel positions.

        Args:
            u, v: (N,) continuous pixel coordinates.
            mode: 'bilinear' (clamped at the border) or 'nearest'.
        Returns:
            (N, D) float32.
        """
        n = _check_coords(u=u, v=v)
        h, w = self.grid_size
        dev = self.device
        gx = u.to(dev, torch.float32) * (w / self.width) - 0.5
        gy = v.to(dev, torch.float32) * (h / self.height) - 0.5
        flat = self.features.reshape(h * w, self.dim)
        if mode == "nearest":
            col = gx.round().long().clamp(0, w - 1)
            row = gy.round().long().clamp(0, h - 1)
            return flat[row * w + col].float()
        if mode != "bilinear":
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        rows, cols, bw = _bilinear_corners(gx, gy, torch.tensor(w, device=dev), torch.tensor(h, device=dev))
        vals = flat[(rows * w + cols).reshape(-1)].reshape(n, 4, self.dim).float()
        return torch.einsum("nk,nkd->nd", bw, vals)


@dataclass
class FrameFeatures:
    """Everything a keyframe contributes to the language and DINO losses."""

    pyramid: CropPyramid
    dino: DenseFeatureMap

    def nbytes(self) -> int:
        return self.pyramid.nbytes() + self.dino.nbytes()

    def to(self, device) -> "FrameFeatures":
        return FrameFeatures(self.pyramid.to(device), self.dino.to(device))


def compute_frame_features(teacher: Teacher, frame: Frame, cfg: TeacherConfig) -> FrameFeatures:
    """Run ``teacher`` over ``frame``: the crop pyramid of ``cfg`` (in batches of ``cfg.batch_size``
    crops) and the dense features. Returns CPU features."""
    frame.validate()
    levels = layout_from_config(frame.height, frame.width, cfg)
    boxes = np.concatenate([lv.boxes() for lv in levels], axis=0)
    batch = max(1, int(cfg.batch_size))
    chunks = []
    for start in range(0, len(boxes), batch):
        part = boxes[start : start + batch]
        emb = teacher.encode_crops(frame, part)
        if emb.ndim != 2 or emb.shape != (len(part), teacher.clip_dim):
            raise RuntimeError(
                f"teacher.encode_crops returned shape {tuple(emb.shape)} for {len(part)} boxes; "
                f"expected ({len(part)}, {teacher.clip_dim})"
            )
        chunks.append(emb.detach().to("cpu", _STORE_DTYPE))
    pyramid = CropPyramid(levels, torch.cat(chunks, dim=0), frame.height, frame.width)
    dense = teacher.dense_features(frame)
    if dense.ndim != 3 or dense.shape[2] != teacher.dino_dim:
        raise RuntimeError(
            f"teacher.dense_features returned shape {tuple(dense.shape)}; expected (h, w, {teacher.dino_dim})"
        )
    return FrameFeatures(pyramid, DenseFeatureMap(dense.detach().cpu(), frame.height, frame.width))
