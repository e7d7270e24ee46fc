"""The teacher interface: what the trainer and the query engine see of a 2D teacher.

Two implementations exist: the real one (OpenCLIP image/text encoders + timm DINO) and the
ground-truth teacher of synthetic scenes. Everything downstream takes a ``Teacher`` and cannot
tell which one it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch

from lerf_ros.data.frame import Frame


class Teacher(ABC):
    """A 2D teacher: crop embeddings (CLIP space), dense DINO-like features, and text embeddings."""

    #: dimension of the CLIP embedding space (crop and text embeddings)
    clip_dim: int
    #: dimension of the dense (DINO) features
    dino_dim: int
    #: one line for logs and outputs, e.g. "OpenCLIP ViT-B-16 (random weights: tests only)"
    description: str

    @abstractmethod
    def encode_crops(self, frame: Frame, boxes: np.ndarray) -> torch.Tensor:
        """Embed square crops of ``frame``.

        Args:
            frame: the image (and, for the ground-truth teacher, its instance map).
            boxes: (N, 4) int pixel boxes ``x0, y0, x1, y1`` (x1/y1 exclusive), possibly reaching
                outside the image (the part outside is ignored / padded).
        Returns:
            (N, clip_dim) float32 CPU tensor, unit-normalised rows.
        """

    @abstractmethod
    def dense_features(self, frame: Frame) -> torch.Tensor:
        """(h, w, dino_dim) float32 CPU feature map covering the whole frame (any stride)."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), clip_dim) float32 CPU tensor, unit-normalised rows."""
