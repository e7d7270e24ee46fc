"""A ground-truth 2D teacher for synthetic scenes (not CLIP, not DINO).

It stands in for CLIP and DINO when measuring the 3D system on a synthetic scene whose per-pixel
instance ids are known:

- every vocabulary class (and the background) has a fixed, seeded, 512-d unit "class embedding";
- a crop's embedding is the unit-normalised, area-weighted mixture of the class embeddings of its
  pixels (a crop 30% covered by the mug is 30% "mug"), computed with per-class summed-area
  tables, so N crops cost O(N * classes present) whatever their size;
- a text is embedded as its class's embedding when it names a class or one of its synonyms
  (case, white space and a leading article ignored), and otherwise as a deterministic
  pseudo-random unit vector orthogonal to all class embeddings;
- the generic phrases LERF uses as canonical negatives ("object", "things", "stuff", "texture")
  are generic here too: each is equally similar to every class (the unit vector in the classes'
  span with equal cosine to each, plus a phrase-specific part orthogonal to all classes; cosine
  about 0.17 with each class). So a region's relevancy to a text that does not describe it falls
  below 0.5, as with CLIP, rather than sitting exactly at 0.5;
- dense features are a fixed, seeded 64-d vector per instance id (DINO-like: two mugs differ).

So relevancy maps computed with this teacher measure the 3D field, not a 2D model's mistakes.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic import normalize_phrase as _normalize_phrase
from lerf_ros.teachers.base import Teacher

__all__ = ["GroundTruthTeacher", "BACKGROUND_CLASS", "stable_seed"]

BACKGROUND_CLASS = "background"
#: Texts that describe anything (LERF's canonical negatives): equally similar to every class.
GENERIC_PHRASES = frozenset({"object", "objects", "things", "thing", "stuff", "texture"})
#: Weight of a generic phrase's own (class-orthogonal) direction next to the class centroid.
GENERIC_PRIVATE_WEIGHT = 0.5


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a SHA-256 of the parts (stable across processes, unlike ``hash()``)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def _unit_gaussian(dim: int, *seed_parts: object) -> np.ndarray:
    v = np.random.default_rng(stable_seed(*seed_parts)).standard_normal(dim)
    return v / np.linalg.norm(v)


class GroundTruthTeacher(Teacher):
    """The synthetic scene's ground truth presented through the :class:`Teacher` interface.

    Construct it from a scene (``GroundTruthTeacher(scene)``) or from an object list and a
    vocabulary (``GroundTruthTeacher(objects, vocabulary)``): each object needs ``instance_id``
    and ``class_name``; each vocabulary entry ``name`` and ``synonyms``. Frames passed to it must
    carry ``instance`` maps (ids as in the scene: 0 background, object i -> i + 1).

    Args:
        seed: seeds the class, unknown-text and instance vectors (same seed, same vectors).
        clip_dim: dimension of the class/text embedding space.
        dino_dim: dimension of the dense instance features.
    """

    def __init__(self, objects, vocabulary=None, *, seed: int = 0, clip_dim: int = 512, dino_dim: int = 64):
        self.scene = None
        if vocabulary is None and hasattr(objects, "objects") and hasattr(objects, "vocabulary"):
            self.scene = objects
            objects, vocabulary = objects.objects, objects.vocabulary
        if vocabulary is None:
            raise ValueError("GroundTruthTeacher needs the vocabulary (or pass a scene)")
        if clip_dim < 8 or dino_dim < 1:
            raise ValueError(f"clip_dim must be >= 8 and dino_dim >= 1, got {clip_dim}, {dino_dim}")
        self.seed = int(seed)
        self.clip_dim = int(clip_dim)
        self.dino_dim = int(dino_dim)
        self.class_names: List[str] = [c.name for c in vocabulary] + [BACKGROUND_CLASS]
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("vocabulary class names must be unique (and not 'background')")
        if len(self.class_names) >= self.clip_dim:
            raise ValueError(f"{len(self.class_names)} classes do not fit a {self.clip_dim}-d space")
        self.background_index = len(self.class_names) - 1
        # (C, D) class embeddings, seeded by class name
        self.class_embeddings = np.stack(
            [_unit_gaussian(self.clip_dim, "class", self.seed, n) for n in self.class_names]
        ).astype(np.float32)
        self._q, _ = np.linalg.qr(self.class_embeddings.T.astype(np.float64))  # (D, C) basis of their span
        # The unit vector in the classes' span with the same cosine to every class embedding.
        emb = self.class_embeddings.astype(np.float64)
        centroid = emb.T @ np.linalg.solve(emb @ emb.T, np.ones(len(emb)))
        self._class_centroid = centroid / np.linalg.norm(centroid)
        self._phrase_to_class: Dict[str, int] = {}
        for ci, c in enumerate(vocabulary):
            for p in (c.name, *c.synonyms):
                self._phrase_to_class[_normalize_phrase(p)] = ci
        self._phrase_to_class[BACKGROUND_CLASS] = self.background_index
        # instance id -> class index
        objects = list(objects)
        max_id = max([int(o.instance_id) for o in objects], default=0)
        self.instance_to_class = np.full(max_id + 1, -1, np.int64)
        self.instance_to_class[0] = self.background_index
        for o in objects:
            if o.class_name not in self.class_names[:-1]:
                raise ValueError(
                    f"object '{getattr(o, 'name', o.class_name)}' has class '{o.class_name}', "
                    "which is not in the vocabulary"
                )
            if int(o.instance_id) <= 0:
                raise ValueError(f"object instance ids start at 1, got {o.instance_id}")
            self.instance_to_class[int(o.instance_id)] = self.class_names.index(o.class_name)
        # (max_id + 1, dino_dim) instance features (not normalised to the unit sphere: DINO-like)
        self.instance_features = np.stack(
            [_unit_gaussian(self.dino_dim, "instance", self.seed, i) for i in range(max_id + 1)]
        ).astype(np.float32)
        self.description = (
            "ground-truth teacher of the synthetic scene (its instance maps and class "
            f"labels as seeded {self.clip_dim}-d class vectors), not CLIP/DINO"
        )

    # ---------------------------------------------------------------------------------------
    def instance_map(self, frame: Frame) -> np.ndarray:
        """(H, W) instance ids of ``frame``: its own map, or, for a frame that arrived without one
        (e.g. streamed over ROS), the scene's ground truth rendered at the frame's pose and
        intrinsics (needs the teacher to be built from the scene)."""
        if frame.instance is not None:
            return np.asarray(frame.instance)
        if self.scene is None or not hasattr(self.scene, "render_view"):
            raise ValueError(
                f"frame {frame.index} has no instance map: the ground-truth teacher only "
                "works on synthetic frames that carry instance ids, or when built from the scene"
            )
        _, _, inst = self.scene.render_view(frame.c2w, frame.K, frame.width, frame.height, shadows=False)
        frame.instance = inst  # ground truth of this view; later calls on the same frame reuse it
        return np.asarray(inst)

    def _class_map(self, frame: Frame) -> np.ndarray:
        """(H, W) class index of every pixel."""
        inst = self.instance_map(frame)
        if inst.shape != frame.rgb.shape[:2]:
            raise ValueError(
                f"frame {frame.index}: instance map {inst.shape} does not match image {frame.rgb.shape[:2]}"
            )
        lo, hi = int(inst.min()), int(inst.max())
        if lo < 0 or hi >= len(self.instance_to_class) or np.any(self.instance_to_class[np.unique(inst)] < 0):
            known = np.nonzero(self.instance_to_class >= 0)[0].tolist()
            raise ValueError(
                f"frame {frame.index}: instance ids {np.unique(inst).tolist()} are not all in "
                f"the scene's object list (known ids {known})"
            )
        return self.instance_to_class[inst]

    def class_fractions(self, frame: Frame, boxes: np.ndarray) -> np.ndarray:
        """(N, C) fraction of each crop's in-image pixels that belong to each class.

        Uses one summed-area table per class present in the frame: cost O(H*W*C' + N*C')."""
        boxes = np.asarray(boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) x0, y0, x1, y1, got shape {boxes.shape}")
        boxes = np.round(boxes).astype(np.int64)
        if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
            bad = int(np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0][0])
            raise ValueError(f"box {bad} {boxes[bad].tolist()} is empty (need x1 > x0 and y1 > y0)")
        cmap = self._class_map(frame)
        H, W = cmap.shape
        present = np.unique(cmap)
        onehot = (cmap[None] == present[:, None, None]).astype(np.int32)  # (C', H, W)
        sat = np.zeros((len(present), H + 1, W + 1), np.int64)
        sat[:, 1:, 1:] = onehot.cumsum(1).cumsum(2)
        x0 = np.clip(boxes[:, 0], 0, W)
        x1 = np.clip(boxes[:, 2], 0, W)
        y0 = np.clip(boxes[:, 1], 0, H)
        y1 = np.clip(boxes[:, 3], 0, H)
        counts = (sat[:, y1, x1] - sat[:, y0, x1] - sat[:, y1, x0] + sat[:, y0, x0]).T  # (N, C')
        area = counts.sum(1)
        if np.any(area == 0):
            bad = int(np.nonzero(area == 0)[0][0])
            raise ValueError(f"box {bad} {boxes[bad].tolist()} lies entirely outside the {W}x{H} image")
        frac = np.zeros((len(boxes), len(self.class_names)))
        frac[:, present] = counts / area[:, None]
        return frac

    def encode_crops(self, frame: Frame, boxes: np.ndarray) -> torch.Tensor:
        """(N, clip_dim) unit-normalised area-weighted mixtures of class embeddings.

        boxes: (N, 4) int ``x0, y0, x1, y1`` (exclusive ends); parts outside the image are ignored."""
        mix = self.class_fractions(frame, boxes) @ self.class_embeddings.astype(np.float64)
        mix /= np.linalg.norm(mix, axis=1, keepdims=True)
        return torch.from_numpy(mix.astype(np.float32))

    def dense_features(self, frame: Frame) -> torch.Tensor:
        """(H, W, dino_dim) float32: each pixel's instance vector, at full frame resolution."""
        self._class_map(frame)  # validates the instance map
        return torch.from_numpy(self.instance_features[self.instance_map(frame)])

    def class_index(self, text: str) -> Optional[int]:
        """Index into :attr:`class_names` of the class ``text`` names, or None."""
        key = _normalize_phrase(text)
        if key in self._phrase_to_class:
            return self._phrase_to_class[key]
        for suffix in ("es", "s"):  # simple plurals: "mugs", "boxes"
            if key.endswith(suffix) and key[: -len(suffix)] in self._phrase_to_class:
                return self._phrase_to_class[key[: -len(suffix)]]
        return None

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), clip_dim): the class embedding for a class name or synonym, otherwise a
        unit vector seeded by the SHA-256 of the normalised text with the class subspace removed
        (cosine 0 with every class, about 0.04 between two unrelated texts); generic phrases
        (GENERIC_PHRASES) lean towards the centroid of all classes (see the module docstring)."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.clip_dim), np.float64)
        for i, text in enumerate(texts):  # one hash per text; texts are few
            ci = self.class_index(text)
            if ci is not None:
                out[i] = self.class_embeddings[ci]
                continue
            phrase = _normalize_phrase(text)
            v = _unit_gaussian(self.clip_dim, "text", self.seed, phrase)
            v = v - self._q @ (self._q.T @ v)
            v = v / np.linalg.norm(v)
            if phrase in GENERIC_PHRASES:
                v = self._class_centroid + GENERIC_PRIVATE_WEIGHT * v
                v = v / np.linalg.norm(v)
            out[i] = v
        return torch.from_numpy(out.astype(np.float32))
