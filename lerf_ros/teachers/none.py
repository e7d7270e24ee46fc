"""Teacher kind 'none': no 2D teacher at all, for training geometry and colour only.

A user with a real capture but no CLIP weights yet can still check it (poses, exposure, coverage,
the scene cloud) before installing them. ``NoTeacher`` reports ``clip_dim = dino_dim = 0``: the
session then computes no features for its keyframes, the model is built without its language and
DINO fields (``LerfModel`` with both dimensions 0), and the query engine answers every query with
``NO_LANGUAGE_MESSAGE`` instead of relevancy. Its encoders exist only to refuse with that message.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lerf_ros.data.frame import Frame
from lerf_ros.teachers.base import Teacher

__all__ = ["NO_LANGUAGE_MESSAGE", "NoLanguageError", "NoTeacher"]

NO_LANGUAGE_MESSAGE = (
    "no language field (teacher kind 'none'): this model was trained for geometry and colour only; "
    "train with teacher.kind 'clip' (or 'ground_truth' on a synthetic scene) to ask where things are"
)
"""What a query against a model without a language field is answered with."""


class NoLanguageError(RuntimeError):
    """Something needed language features from teacher kind 'none'."""


class NoTeacher(Teacher):
    """Teacher kind 'none' (module docstring): no features, no text embeddings."""

    clip_dim = 0
    dino_dim = 0
    description = "none (geometry and colour only: no language field)"

    def encode_crops(self, frame: Frame, boxes: np.ndarray) -> torch.Tensor:
        raise NoLanguageError(f"{NO_LANGUAGE_MESSAGE} (no crop embeddings)")

    def dense_features(self, frame: Frame) -> torch.Tensor:
        raise NoLanguageError(f"{NO_LANGUAGE_MESSAGE} (no dense features)")

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise NoLanguageError(f"{NO_LANGUAGE_MESSAGE} (no text encoder)")
