"""2D teachers: OpenCLIP crop/text embeddings, dense DINO features, the crop pyramid and its lookup,
the text side (query cache, negatives, relevancy), and the background feature worker.

``make_teacher(cfg, scene)`` builds the teacher a configuration names; everything downstream takes a
``Teacher`` and cannot tell which one it has. OpenCLIP and timm are imported only when a real teacher
is built.
"""

from __future__ import annotations

from typing import Any, Optional

from lerf_ros.config import ConfigError, TeacherConfig
from lerf_ros.teachers.base import Teacher
from lerf_ros.teachers.clip import ClipDinoTeacher, ClipEncoder
from lerf_ros.teachers.dino import DinoEncoder
from lerf_ros.teachers.features import CropPyramid, DenseFeatureMap, FrameFeatures, compute_frame_features
from lerf_ros.teachers.none import NO_LANGUAGE_MESSAGE, NoLanguageError, NoTeacher
from lerf_ros.teachers.pyramid import PyramidLevel, crops_per_frame, layout_from_config, pyramid_layout
from lerf_ros.teachers.text import CANONICAL_PHRASES, DEFAULT_TEMPERATURE, TextEncoderCache, negative_phrases, relevancy
from lerf_ros.teachers.weights import RANDOM_WEIGHTS_NOTE, TeacherWeightsError
from lerf_ros.teachers.worker import FeatureWorker

__all__ = [
    "Teacher",
    "TeacherWeightsError",
    "RANDOM_WEIGHTS_NOTE",
    "ClipEncoder",
    "DinoEncoder",
    "ClipDinoTeacher",
    "NoTeacher",
    "NoLanguageError",
    "NO_LANGUAGE_MESSAGE",
    "CropPyramid",
    "DenseFeatureMap",
    "FrameFeatures",
    "compute_frame_features",
    "PyramidLevel",
    "pyramid_layout",
    "layout_from_config",
    "crops_per_frame",
    "CANONICAL_PHRASES",
    "DEFAULT_TEMPERATURE",
    "TextEncoderCache",
    "negative_phrases",
    "relevancy",
    "FeatureWorker",
    "make_teacher",
]


def make_teacher(cfg: TeacherConfig, scene: Optional[Any] = None, device: str = "auto") -> Teacher:
    """The teacher ``cfg.kind`` names.

    'clip': OpenCLIP + timm DINO (``ClipDinoTeacher``; raises TeacherWeightsError when the weights are
    not available offline). 'ground_truth': the synthetic scene's 2D semantics; needs ``scene`` or
    ``cfg.scene_dir`` (a saved scene folder). 'none': ``NoTeacher`` (geometry and colour only, no
    language field; needs no weights). ``device``: the run's ``LerfConfig.device``.
    """
    cfg.check()
    if cfg.kind == "none":
        return NoTeacher()
    if cfg.kind == "clip":
        return ClipDinoTeacher.from_config(cfg, device)
    if cfg.kind == "ground_truth":
        if scene is None and cfg.scene_dir:
            from lerf_ros.data.synthetic import load_scene

            scene = load_scene(cfg.scene_dir)
        if scene is None:
            raise ValueError(
                "teacher.kind = 'ground_truth' needs the synthetic scene whose semantics it renders: "
                "make_teacher(cfg, scene=...) or set teacher.scene_dir; for real data use teacher.kind = 'clip'"
            )
        from lerf_ros.teachers.ground_truth import GroundTruthTeacher

        return GroundTruthTeacher(scene)
    raise ConfigError(f"teacher.kind = {cfg.kind!r} is invalid: expected 'clip', 'ground_truth' or 'none'")
