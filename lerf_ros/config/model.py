"""The 2D teachers' and the fields' sections of the configuration (``teacher.*`` and ``model.*``).

Each section is a dataclass whose fields carry their defaults and, in the docstring that follows each
field, their description; ``check()`` validates the section's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .errors import _require

TEACHER_KINDS = ("clip", "ground_truth", "none")
"""The teachers ``teacher.kind`` can name."""


@dataclass
class TeacherConfig:
    """The 2D teachers that supervise the language and DINO fields."""

    kind: str = "clip"
    """'clip' (OpenCLIP + timm DINO), 'ground_truth' (synthetic scenes: their 2D semantics) or 'none'
    (geometry and colour only: no teacher weights needed, no language or DINO field is built, and
    queries are answered with "no language field"; to check a real capture before installing CLIP
    weights)."""
    scene_dir: str = ""
    """With kind 'ground_truth': the saved synthetic scene (``lerf-ros scene --out DIR``) whose
    semantics are the teacher."""
    clip_model: str = "ViT-B-16"
    """OpenCLIP architecture name."""
    clip_pretrained: str = "laion2b_s34b_b88k"
    """OpenCLIP pretrained tag (looked up in the local cache; never downloaded at run time)."""
    clip_checkpoint: str = ""
    """Path to a local OpenCLIP checkpoint file; overrides clip_pretrained when set."""
    dino_model: str = "vit_small_patch8_224.dino"
    """timm model name of the DINO ViT."""
    dino_checkpoint: str = ""
    """Path to a local DINO checkpoint file (timm/torch state dict)."""
    random_weights: bool = False
    """Tests and cost benchmarks only: build the real architectures with random weights."""
    pyramid_levels: int = 7
    """Number of crop scales in the CLIP pyramid."""
    pyramid_min: float = 0.05
    """Smallest crop side as a fraction of the image's shorter side."""
    pyramid_max: float = 0.5
    """Largest crop side as a fraction of the image's shorter side."""
    pyramid_overlap: float = 0.5
    """Overlap of neighbouring crops (stride = side * (1 - overlap))."""
    pyramid_overlap_ramp: Tuple[float, ...] = (0.05, 0.15)
    """Crop-side fractions (a, b) over which the overlap ramps linearly from 0 (side <= a) up to
    pyramid_overlap (side >= b), as the reference code does to keep the smallest scales affordable;
    () gives every level pyramid_overlap."""
    batch_size: int = 64
    """Crops per image-encoder forward pass."""
    dino_max_side: int = 448
    """Longest image side fed to DINO (memory bound); features are looked up at frame resolution."""
    dino_facet: str = "key"
    """DINO feature: 'key' (keys of the last attention block, as the reference) or 'token'
    (the final normalised patch tokens)."""
    weights_cache_dir: str = ""
    """Warm weights cache searched (never downloaded into) for clip_pretrained and the DINO weights:
    a Hugging Face hub cache folder (models--org--name/...) or a folder holding the original
    checkpoint files; empty: the default caches (HF_HUB_CACHE, ~/.cache/clip, the torch hub folder)."""
    worker_queue_size: int = 16
    """Keyframes waiting for teacher features; submitting to a full queue waits for room."""

    def check(self) -> "TeacherConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(self.kind in TEACHER_KINDS, "teacher.kind", self.kind, "'clip', 'ground_truth' or 'none'")
        _require(self.pyramid_levels >= 1, "teacher.pyramid_levels", self.pyramid_levels, ">= 1")
        _require(
            0 < self.pyramid_min <= self.pyramid_max <= 1,
            "teacher.pyramid_min/max",
            (self.pyramid_min, self.pyramid_max),
            "0 < min <= max <= 1",
        )
        _require(0 <= self.pyramid_overlap < 1, "teacher.pyramid_overlap", self.pyramid_overlap, "in [0, 1)")
        ramp = tuple(self.pyramid_overlap_ramp)
        _require(
            len(ramp) == 0 or (len(ramp) == 2 and 0 <= ramp[0] <= ramp[1]),
            "teacher.pyramid_overlap_ramp",
            ramp,
            "() or (a, b) with 0 <= a <= b",
        )
        _require(self.batch_size >= 1, "teacher.batch_size", self.batch_size, ">= 1")
        _require(self.dino_max_side >= 8, "teacher.dino_max_side", self.dino_max_side, ">= 8")
        _require(self.dino_facet in ("key", "token"), "teacher.dino_facet", self.dino_facet, "'key' or 'token'")
        _require(self.worker_queue_size >= 1, "teacher.worker_queue_size", self.worker_queue_size, ">= 1")
        return self


@dataclass
class ModelConfig:
    """Sizes of the radiance field (nerfacto-style), its proposal samplers, and the language/DINO
    fields (reference LERF). Distances are metres unless a field says "scene units" (metres
    divided by ``scene_scale``)."""

    num_levels: int = 16
    """Hash-grid levels of the density/colour field."""
    features_per_level: int = 2
    """Features per hash-grid level (1, 2, 4 or 8)."""
    log2_hashmap_size: int = 19
    """log2 of the entries per hash-grid level."""
    base_resolution: int = 16
    """Coarsest grid resolution (over the contracted scene cube [-2, 2]^3)."""
    max_resolution: int = 2048
    """Finest grid resolution; levels grow geometrically from base to max."""
    hidden_dim: int = 64
    """Width of the density MLP (one hidden layer)."""
    hidden_dim_color: int = 64
    """Width of the colour MLP (two hidden layers)."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density MLP to the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics degree of the view-direction encoding (degree^2 coefficients, 1..4)."""
    num_proposal_samples: Tuple[int, ...] = (256, 96)
    """Samples per ray of each proposal stage (empty: no proposal networks, the final samples are
    spread uniformly in the spacing coordinate)."""
    num_nerf_samples: int = 48
    """Samples per ray of the final stage."""
    proposal_num_levels: int = 5
    """Hash-grid levels of each proposal density network."""
    proposal_log2_hashmap_size: int = 17
    """log2 of the entries per hash-grid level of each proposal density network."""
    proposal_base_resolution: int = 16
    """Coarsest grid resolution of each proposal density network."""
    proposal_max_resolution: Tuple[int, ...] = (128, 256)
    """Finest resolution of each proposal network (the last value repeats for further stages)."""
    proposal_hidden_dim: int = 16
    """Width of each proposal network's MLP (one hidden layer)."""
    proposal_anneal_steps: int = 1000
    """Steps over which proposal weights are annealed from uniform to sharp."""
    lang_num_levels: Tuple[int, ...] = (12, 12)
    """Levels of each language hash grid (the grids' features are concatenated)."""
    lang_log2_hashmap_size: Tuple[int, ...] = (19, 19)
    """log2 table size of each language hash grid."""
    lang_base_resolution: Tuple[int, ...] = (16, 128)
    """Coarsest resolution of each language hash grid."""
    lang_max_resolution: Tuple[int, ...] = (128, 512)
    """Finest resolution of each language hash grid."""
    lang_features_per_level: int = 8
    """Features per level of the language hash grids."""
    lang_hidden_dim: int = 256
    """Width of the CLIP MLP."""
    lang_num_layers: int = 4
    """Hidden layers of the CLIP MLP (input: grid features + scale)."""
    dino_hidden_dim: int = 256
    """Width of the DINO MLP."""
    dino_num_layers: int = 1
    """Hidden layers of the DINO MLP."""
    num_lang_samples: int = 24
    """Top-weighted samples per ray rendered by the language/DINO fields."""
    near: float = 0.05
    """Ray start (m)."""
    far: float = 1000.0
    """Ray end (m); space beyond the scene cube is contracted, so this may be large."""
    scene_scale: float = 1.0
    """Half-extent (metres) of the region mapped linearly before scene contraction."""
    scene_center: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Centre (world metres) of that region."""
    auto_bounds: bool = True
    """Online trainer: set scene_center/scene_scale from the first keyframes (camera centres and
    depth) when training starts, instead of the values above."""
    background_color: str = "random"
    """Training background: 'random' (per ray; forces opaque geometry), 'black' or 'white'.
    Renders for evaluation use black for 'random'."""
    hash_backend: str = "auto"
    """'auto' (tinycudann on CUDA when importable, else PyTorch), 'torch' or 'tcnn' (CUDA only)."""
    appearance_dim: int = 8
    """Width of the learned per-keyframe appearance embedding fed to the colour head only (exposure
    and white-balance changes between frames; never density or language); 0 disables it. Renders
    without a keyframe (queries, held-out views, snapshots) use the neutral embedding: zero, the
    mean of the live keyframes' embeddings."""

    def check(self) -> "ModelConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(0 <= self.appearance_dim <= 256, "model.appearance_dim", self.appearance_dim, "0..256")
        _require(1 <= self.num_levels <= 32, "model.num_levels", self.num_levels, "1..32")
        for key in ("features_per_level", "lang_features_per_level"):
            _require(getattr(self, key) in (1, 2, 4, 8), f"model.{key}", getattr(self, key), "1, 2, 4 or 8")
        for key in ("log2_hashmap_size", "proposal_log2_hashmap_size"):
            _require(4 <= getattr(self, key) <= 30, f"model.{key}", getattr(self, key), "4..30")
        _require(
            2 <= self.base_resolution <= self.max_resolution,
            "model.base_resolution/max_resolution",
            (self.base_resolution, self.max_resolution),
            "2 <= base <= max",
        )
        lang = (self.lang_num_levels, self.lang_log2_hashmap_size, self.lang_base_resolution, self.lang_max_resolution)
        n = len(self.lang_num_levels)
        _require(
            n >= 1 and all(len(v) == n for v in lang),
            "model.lang_num_levels/lang_log2_hashmap_size/lang_*_resolution",
            lang,
            "one entry per language grid in each (at least one grid)",
        )
        _require(
            all(1 <= v <= 32 for v in self.lang_num_levels), "model.lang_num_levels", self.lang_num_levels, "each 1..32"
        )
        _require(
            all(4 <= v <= 30 for v in self.lang_log2_hashmap_size),
            "model.lang_log2_hashmap_size",
            self.lang_log2_hashmap_size,
            "each 4..30",
        )
        _require(
            all(2 <= b <= m for b, m in zip(self.lang_base_resolution, self.lang_max_resolution)),
            "model.lang_base_resolution/lang_max_resolution",
            (self.lang_base_resolution, self.lang_max_resolution),
            "2 <= base <= max for each grid",
        )
        _require(
            all(s >= 1 for s in self.num_proposal_samples),
            "model.num_proposal_samples",
            self.num_proposal_samples,
            "each >= 1",
        )
        _require(
            len(self.proposal_max_resolution) >= 1 or not self.num_proposal_samples,
            "model.proposal_max_resolution",
            self.proposal_max_resolution,
            "at least one value",
        )
        _require(
            all(r >= self.proposal_base_resolution >= 2 for r in self.proposal_max_resolution),
            "model.proposal_max_resolution",
            self.proposal_max_resolution,
            f">= proposal_base_resolution ({self.proposal_base_resolution}) >= 2",
        )
        _require(self.num_nerf_samples >= 1, "model.num_nerf_samples", self.num_nerf_samples, ">= 1")
        _require(
            1 <= self.num_lang_samples <= self.num_nerf_samples,
            "model.num_lang_samples",
            self.num_lang_samples,
            f"1..num_nerf_samples ({self.num_nerf_samples})",
        )
        _require(1 <= self.sh_degree <= 4, "model.sh_degree", self.sh_degree, "1..4")
        _require(self.proposal_anneal_steps >= 0, "model.proposal_anneal_steps", self.proposal_anneal_steps, ">= 0")
        _require(self.scene_scale > 0, "model.scene_scale", self.scene_scale, "> 0")
        _require(len(self.scene_center) == 3, "model.scene_center", self.scene_center, "3 values")
        _require(0 < self.near < self.far, "model.near/far", (self.near, self.far), "0 < near < far")
        _require(
            self.background_color in ("random", "black", "white"),
            "model.background_color",
            self.background_color,
            "'random', 'black' or 'white'",
        )
        _require(
            self.hash_backend in ("auto", "torch", "tcnn"),
            "model.hash_backend",
            self.hash_backend,
            "'auto', 'torch' or 'tcnn'",
        )
        for key in (
            "hidden_dim",
            "hidden_dim_color",
            "geo_feat_dim",
            "proposal_hidden_dim",
            "lang_hidden_dim",
            "dino_hidden_dim",
            "lang_num_layers",
            "dino_num_layers",
        ):
            _require(getattr(self, key) >= 1, f"model.{key}", getattr(self, key), ">= 1")
        return self
