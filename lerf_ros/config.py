"""Typed, validated configuration.

One dataclass per component; ``LerfConfig`` nests them. Presets (``tiny``, ``lerf-lite``, ``lerf``,
``lerf-big``) are named overrides of the defaults, not forks of code. YAML files and ROS parameters
map onto the same tree with dotted keys (``model.hidden_dim``). The resolved config is saved with
every run and checkpoint (``to_dict``/``to_yaml``), and ``check()`` validates it once at start-up:
each section checks its own fields in its ``check()``; ``LerfConfig.check()`` runs them and adds the
rules that span sections.

A parameter YAML may also carry the ROS nodes' own settings (``world_frame``, ``pose_source``, ...,
listed in ``NODE_PARAMETERS``): the loader knows them and leaves them out of the model
configuration, so one file serves ``ros2 launch``, ``lerf-ros run`` and ``lerf-ros train``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, get_type_hints

import yaml


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


LERF_NODES: Tuple[str, ...] = ("lerf_trainer", "lerf_query")
"""Default names of the package's ROS nodes (the sections of a parameter file the loader reads)."""


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


@dataclass
class TrainerConfig:
    """Optimisation: Adam per parameter group (fields, proposal networks, language/DINO fields),
    each with its own learning-rate schedule."""

    rays_per_batch: int = 4096
    """Rays per training step."""
    max_steps: int = 30000
    """Steps after which training idles (online: still accepts frames)."""
    lr_fields: float = 1e-2
    """Initial learning rate of the density/colour field."""
    lr_proposal: float = 1e-2
    """Initial learning rate of the proposal networks."""
    lr_lang: float = 1e-2
    """Initial learning rate of the language and DINO fields."""
    lr_final_fields: float = 1e-4
    """Learning rate of the density/colour field after decay_steps."""
    lr_final_proposal: float = 1e-4
    """Learning rate of the proposal networks after decay_steps."""
    lr_final_lang: float = 1e-3
    """Learning rate of the language and DINO fields after lang_decay_steps."""
    decay_steps: int = 30000
    """Length of the fields' and proposals' learning-rate decay."""
    lang_decay_steps: int = 4000
    """Length of the language field's learning-rate decay."""
    schedule: str = "exponential"
    """'exponential' (log-linear from lr to lr_final) or 'cosine'."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps (all groups)."""
    adam_eps: float = 1e-15
    """Adam epsilon of every parameter group (tiny, as in nerfacto: hash-grid gradients are sparse)."""
    weight_decay: float = 0.0
    """Adam weight decay of the density/colour field and proposal networks."""
    lang_weight_decay: float = 1e-9
    """Adam weight decay of the language and DINO fields."""
    lang_loss: str = "huber"
    """'huber' (reference code: Huber on the rendered-minus-target difference) or 'cosine' (paper)."""
    lang_huber_delta: float = 1.25
    """Threshold of the 'huber' language loss (quadratic below, linear above)."""
    lang_weight: float = 0.1
    """Weight of the language (CLIP) loss, the paper's lambda_lang."""
    dino_weight: float = 1.0
    """Weight of the MSE loss on rendered DINO features."""
    depth_weight: float = 0.1
    """Weight of the optional depth loss on frames that carry depth (0 disables it)."""
    interlevel_weight: float = 1.0
    """Weight of the interlevel loss that makes each proposal network's weights bound the final ones."""
    distortion_weight: float = 0.002
    """Weight of the distortion loss (mip-NeRF 360) that gathers each ray's weights into few samples."""
    mixed_precision: bool = True
    """fp16 autocast + gradient scaling on CUDA (ignored on the CPU)."""
    checkpoint_every: int = 2000
    """Steps between periodic checkpoints (0 = only on request and at exit)."""
    keep_checkpoints: int = 2
    """Periodic checkpoints kept on disk (older ones are deleted)."""
    snapshot_every: int = 100
    """Steps between two in-memory snapshots for a query node in the trainer's process (each one a
    copy of the weights; the query node prepares the newest at most every ``snapshot_min_interval_s``)."""
    query_yield_share: float = 0.5
    """Queries first: while a query node in the trainer's process answers, the training thread
    starts no new step (the step in flight finishes), for at most this share of its time over the
    last few seconds, so a flood of queries cannot stop training. 0 = never wait for queries."""
    pose_refinement: bool = True
    """Learn a per-keyframe camera pose correction (rotation about the camera centre + translation),
    as nerfacto does; the corrected poses are what /lerf/keyframes shows and checkpoints keep."""
    pose_lr: float = 6e-4
    """Learning rate of the pose corrections when the warm-up ends (Adam; then decays by the fields'
    ratio lr_final_fields / lr_fields over decay_steps)."""
    pose_warmup_steps: int = 500
    """Steps before pose corrections are learned at all (the field must first learn something)."""
    pose_regularization: float = 1e-2
    """Weight of the L2 penalty pulling each pose correction toward zero (mean over the keyframes of
    the squared rotation vector in radians plus the squared translation in metres)."""
    pose_update_every: int = 4
    """Steps between two updates of the pose corrections (the steps between use them without the
    backward pass through the sample positions, which costs about 40% of a CPU step); 1 = every step."""
    pose_ray_subset: bool = False
    """Spread the pose updates over rays instead of steps: after the warm-up, every step updates the
    pose corrections from every ``pose_update_every``-th ray of its batch (the same backward cost)."""

    def check(self) -> "TrainerConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(self.rays_per_batch >= 1, "trainer.rays_per_batch", self.rays_per_batch, ">= 1")
        _require(self.max_steps >= 0, "trainer.max_steps", self.max_steps, ">= 0")
        for key in (
            "lr_fields",
            "lr_proposal",
            "lr_lang",
            "lr_final_fields",
            "lr_final_proposal",
            "lr_final_lang",
            "adam_eps",
            "lang_huber_delta",
        ):
            _require(getattr(self, key) > 0, f"trainer.{key}", getattr(self, key), "> 0")
        for key in ("decay_steps", "lang_decay_steps", "keep_checkpoints", "pose_update_every", "snapshot_every"):
            _require(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), ">= 1")
        for key in ("warmup_steps", "checkpoint_every", "pose_warmup_steps"):
            _require(getattr(self, key) >= 0, f"trainer.{key}", getattr(self, key), ">= 0")
        _require(
            0.0 <= self.query_yield_share <= 0.9,
            "trainer.query_yield_share",
            self.query_yield_share,
            "in [0, 0.9]",
        )
        _require(
            self.schedule in ("exponential", "cosine"), "trainer.schedule", self.schedule, "'exponential' or 'cosine'"
        )
        _require(self.lang_loss in ("huber", "cosine"), "trainer.lang_loss", self.lang_loss, "'huber' or 'cosine'")
        for key in (
            "lang_weight",
            "dino_weight",
            "depth_weight",
            "interlevel_weight",
            "distortion_weight",
            "weight_decay",
            "lang_weight_decay",
            "pose_lr",
            "pose_regularization",
        ):
            _require(getattr(self, key) >= 0, f"trainer.{key}", getattr(self, key), ">= 0")
        return self


@dataclass
class KeyframeConfig:
    """The bounded keyframe store of the online trainer."""

    max_keyframes: int = 200
    """Most keyframes kept; beyond this (or max_memory_mb) the keyframe whose pose is most redundant
    is evicted (never one of the newest protect_newest)."""
    max_memory_mb: float = 2048.0
    """Store memory bound (images, depth and teacher features)."""
    min_translation: float = 0.05
    """A frame becomes a keyframe when the camera moved at least this far (m) ..."""
    min_rotation_deg: float = 5.0
    """... or turned at least this much since the last keyframe."""
    min_sharpness: float = 0.0
    """Reject frames whose Laplacian variance (grey levels^2) is below this (0 disables)."""
    min_brightness: float = 10.0
    """Reject frames whose mean grey level (0..255) is below this (too dark) ..."""
    max_brightness: float = 245.0
    """... or above this (washed out)."""
    max_clipped_fraction: float = 0.5
    """Reject frames with more than this fraction of clipped pixels (grey <= 2 or >= 253; 1 disables)."""
    min_keyframes_to_train: int = 3
    """Online training starts once this many keyframes have teacher features."""
    max_image_side: int = 640
    """Frames larger than this (longest side, pixels) are downscaled before storing (0 disables)."""
    protect_newest: int = 3
    """The newest this-many keyframes are never evicted when the store is full."""
    rotation_weight: float = 0.0
    """Metres per radian of turning in the pose distance of the eviction policy; 0 = derive it from
    the keyframe thresholds (min_translation / radians(min_rotation_deg)), so both count alike."""

    def check(self) -> "KeyframeConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(
            self.min_keyframes_to_train >= 1, "keyframes.min_keyframes_to_train", self.min_keyframes_to_train, ">= 1"
        )
        _require(
            self.max_keyframes >= self.min_keyframes_to_train,
            "keyframes.max_keyframes",
            self.max_keyframes,
            f">= keyframes.min_keyframes_to_train ({self.min_keyframes_to_train})",
        )
        _require(self.max_memory_mb > 0, "keyframes.max_memory_mb", self.max_memory_mb, "> 0")
        _require(self.min_translation >= 0, "keyframes.min_translation", self.min_translation, ">= 0")
        _require(self.min_rotation_deg >= 0, "keyframes.min_rotation_deg", self.min_rotation_deg, ">= 0")
        _require(self.min_sharpness >= 0, "keyframes.min_sharpness", self.min_sharpness, ">= 0")
        _require(
            0 <= self.min_brightness <= self.max_brightness <= 255,
            "keyframes.min/max_brightness",
            (self.min_brightness, self.max_brightness),
            "0 <= min <= max <= 255",
        )
        _require(
            0 < self.max_clipped_fraction <= 1, "keyframes.max_clipped_fraction", self.max_clipped_fraction, "in (0, 1]"
        )
        _require(
            self.max_image_side == 0 or self.max_image_side >= 8,
            "keyframes.max_image_side",
            self.max_image_side,
            "0 (off) or >= 8",
        )
        _require(self.protect_newest >= 0, "keyframes.protect_newest", self.protect_newest, ">= 0")
        _require(self.rotation_weight >= 0, "keyframes.rotation_weight", self.rotation_weight, ">= 0")
        return self


@dataclass
class ChangeConfig:
    """Change detection in a live stream (``lerf_ros.mapping.changes``): a new frame is compared with
    the field rendered at its pose; a change confirmed by two or more frames retires the keyframes
    that show the changed region as it was."""

    enabled: bool = True
    """Detect changes and retire the keyframes they make stale (online sessions only)."""
    check_every: int = 5
    """Compare every this-many-th frame offered to the session (skipped frames count too)."""
    max_side: int = 64
    """Longest side (pixels) of the comparison at most: every s-th pixel of the frame (the smallest
    integer stride s that fits) is compared with the field rendered through exactly those pixels. An
    object must cover a few pixels (``min_region_pixels``) at this resolution to be seen changing."""
    min_steps: int = 400
    """No decision before the field has trained this many steps."""
    max_median_residual: float = 0.05
    """No decision while the median colour residual (0..1, after gain normalisation) of a compared
    frame is above this: the field is still learning there."""
    kappa: float = 5.0
    """A pixel's colour residual counts when above median + kappa * 1.4826 * MAD of the frame's residuals ..."""
    min_color_residual: float = 0.05
    """... and above this (0..1): a floor for noise when the frame's residuals are nearly all zero."""
    depth_tolerance: float = 0.02
    """Depth disagreement (m) always tolerated; where the frame has depth a pixel counts only when its
    depth disagrees by more than this plus ``depth_tolerance_rel`` times its distance."""
    depth_tolerance_rel: float = 0.03
    """Depth tolerance growing with distance (fraction of the distance)."""
    min_region_pixels: int = 4
    """Smallest connected region of disagreeing pixels (at the comparison resolution) that counts."""
    min_frames: int = 2
    """A region counts as changed once this many compared frames flagged it (3D voxels agreeing)."""
    voxel_size: float = 0.05
    """Voxel edge (m) in which flagged points of different frames must agree."""
    memory_checks: int = 8
    """Flagged voxels are remembered for this many compared frames."""
    min_stale_fraction: float = 0.5
    """A keyframe is stale (retired) when at least this fraction of the changed points it sees show the
    old state there (and it disagrees with the new frame)."""
    min_stale_points: int = 8
    """... counting only keyframes that see at least this many of the changed points."""
    min_stale_keyframes: int = 2
    """A region (3D cluster of changed points) is a change when at least this many keyframes ...."""
    min_stale_share: float = 0.25
    """... and this share of the keyframes that see it are stale: a real change contradicts the views
    of the region before it, an occlusion or an edge only a keyframe or two."""
    move_window: int = 40
    """For this many compared frames after a confirmed change that removed a surface, a cluster the
    keyframes' depth cannot confirm (a flat object: its new place is within the depth tolerance of
    the table) is judged by colour when its colours are those of the removed surface (a moved
    object seen at its new place); 0 turns this off. A static scene confirms no removal, so this
    never confirms anything there."""
    move_color_match: float = 0.5
    """... colours match when at least this fraction of the cluster's new colours lie within the
    frame's colour threshold of one removed surface's colours."""
    max_points: int = 4096
    """Most changed surface points kept for display (``/lerf/changes``)."""
    retire: str = "pixels"
    """What a stale keyframe loses: 'pixels' (only its pixels within ``voxel_size`` of the changed
    points: the rest of its view keeps teaching the field) or 'keyframe' (the whole keyframe)."""

    def check(self) -> "ChangeConfig":
        """Validate this section; raise ConfigError naming the key."""
        for key in (
            "check_every",
            "min_region_pixels",
            "min_frames",
            "memory_checks",
            "min_stale_points",
            "min_stale_keyframes",
        ):
            _require(getattr(self, key) >= 1, f"changes.{key}", getattr(self, key), ">= 1")
        _require(self.max_side >= 8, "changes.max_side", self.max_side, ">= 8")
        _require(self.min_steps >= 0, "changes.min_steps", self.min_steps, ">= 0")
        for key in ("max_median_residual", "kappa", "min_color_residual", "depth_tolerance", "voxel_size"):
            _require(getattr(self, key) > 0, f"changes.{key}", getattr(self, key), "> 0")
        _require(self.depth_tolerance_rel >= 0, "changes.depth_tolerance_rel", self.depth_tolerance_rel, ">= 0")
        _require(0 < self.min_stale_fraction <= 1, "changes.min_stale_fraction", self.min_stale_fraction, "in (0, 1]")
        _require(self.max_points >= 1, "changes.max_points", self.max_points, ">= 1")
        _require(0 <= self.min_stale_share <= 1, "changes.min_stale_share", self.min_stale_share, "in [0, 1]")
        _require(self.move_window >= 0, "changes.move_window", self.move_window, ">= 0")
        _require(0 < self.move_color_match <= 1, "changes.move_color_match", self.move_color_match, "in (0, 1]")
        _require(self.retire in ("pixels", "keyframe"), "changes.retire", self.retire, "'pixels' or 'keyframe'")
        _require(self.memory_checks >= self.min_frames, "changes.memory_checks", self.memory_checks, ">= min_frames")
        return self


@dataclass
class QueryConfig:
    """The query engine."""

    threshold: float = 0.55
    """Points with relevancy >= this are returned (a request's threshold 0 means this one)."""
    max_points: int = 20000
    """Most points returned (the most relevant kept); also bounds the points clustered for grasps."""
    max_grasps: int = 5
    """Most grasp poses returned."""
    scales: Tuple[float, ...] = (0.05,) + tuple(round(0.1 * i, 2) for i in range(1, 21))
    """Candidate language scales (metres) of the scale search, within [0, 2] (5 cm for thin things
    like a pen or a banana, then every 10 cm up to 2 m)."""
    canonical_phrases: Tuple[str, ...] = ("object", "things", "stuff", "texture")
    """Negative phrases of every query (the paper's canonical phrases); requests may add more."""
    temperature: float = 10.0
    """Multiplier of the dot products in the relevancy's pairwise softmax (the reference code's 10)."""
    voxel_size: float = 0.01
    """Voxel size (m) of the surface points (open3d voxel downsampling)."""
    min_views: int = 3
    """Visibility filtering: a point must be seen by at least this many keyframes."""
    max_text_length: int = 256
    """Longest query text, negative phrase or frame_id a request may carry (characters); longer ones
    are refused."""
    max_negatives: int = 32
    """Most negative phrases one request may add to the canonical ones; more are refused (each one
    costs a text embedding and a column in every relevancy)."""
    max_grasps_limit: int = 20
    """Most grasp poses one answer holds: a request's max_grasps above this is clamped to it (and the
    answer says so). A request's max_points is likewise clamped to max_candidate_points."""
    gripper_max_width: float = 0.08
    """Largest opening of the parallel-jaw gripper (m); wider grasps are rejected."""
    dbscan_eps: float = 0.03
    """DBSCAN neighbourhood radius (m) when clustering the relevant points into objects (about 3
    voxels: a surface sampled at voxel_size then gives core points ~28 neighbours)."""
    dbscan_min_points: int = 10
    """DBSCAN: neighbours a core point needs."""
    refresh_every_steps: int = 500
    """Recompute the scored surface points after this many training steps (sooner while training
    is young: whenever the step count has doubled since the last extraction)."""
    surface_stride: int = 4
    """Surface extraction renders each keyframe at 1/stride of its resolution."""
    surface_max_views: int = 30
    """At most this many keyframes (evenly spread) are rendered for surface extraction and count
    as views in the visibility filter."""
    surface_min_accumulation: float = 0.5
    """Rendered pixels with less accumulated opacity than this are not back-projected."""
    surface_max_box: float = 2.0
    """Surface points farther from the scene centre than this many scene half-extents
    (``model.scene_scale``, per axis) are not scored: beyond the scene box the field is contracted
    and coarse, and a far wall's language can look like anything (0 keeps every point)."""
    visibility_tolerance: float = 0.03
    """A point counts as seen by a view when |rendered depth - point depth| <= this (m) ..."""
    visibility_tolerance_rel: float = 0.03
    """... plus this fraction of the point's depth (rendered depth blurs with distance)."""
    max_candidate_points: int = 50000
    """Surface points kept for scoring (random subsample beyond this)."""
    field_chunk_points: int = 8192
    """Points per language-field call in the scale search (memory bound)."""
    feature_cache_mb: float = 512.0
    """Memory (MiB) for the language field at every surface point and scale of the current snapshot,
    stored in the field's output basis so that queries skip the field (0 disables)."""
    text_cache_size: int = 256
    """Text embeddings kept in the LRU cache."""
    gripper_finger_depth: float = 0.04
    """Finger length along the approach axis (m)."""
    grasp_width_margin: float = 0.01
    """Opening added to the object's extent along the closing axis (m)."""
    tall_ratio: float = 1.5
    """An object is tall (side grasps offered) when height > tall_ratio * its narrow horizontal extent."""
    grasp_focus: float = 0.5
    """Grasps are planned on the relevant points in the top share of the relevancy range,
    relevancy >= max - grasp_focus * (max - threshold): an object's own points score highest, the
    blur around it lower (1 plans on every point above the threshold)."""

    def check(self) -> "QueryConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(0 <= self.threshold <= 1, "query.threshold", self.threshold, "in [0, 1]")
        _require(
            len(self.scales) > 0 and all(0 <= s <= 2 for s in self.scales),
            "query.scales",
            self.scales,
            "non-empty, each in [0, 2] m",
        )
        _require(
            len(self.canonical_phrases) > 0 and all(p.strip() for p in self.canonical_phrases),
            "query.canonical_phrases",
            self.canonical_phrases,
            "at least one non-empty phrase",
        )
        _require(self.temperature > 0, "query.temperature", self.temperature, "> 0")
        for key in (
            "max_points",
            "max_grasps",
            "min_views",
            "max_text_length",
            "max_grasps_limit",
            "dbscan_min_points",
            "surface_stride",
            "surface_max_views",
            "max_candidate_points",
            "field_chunk_points",
            "text_cache_size",
        ):
            _require(getattr(self, key) > 0, f"query.{key}", getattr(self, key), "> 0")
        for key in ("voxel_size", "gripper_max_width", "dbscan_eps", "gripper_finger_depth", "tall_ratio"):
            _require(getattr(self, key) > 0, f"query.{key}", getattr(self, key), "> 0")
        for key in (
            "refresh_every_steps",
            "visibility_tolerance",
            "visibility_tolerance_rel",
            "grasp_width_margin",
            "feature_cache_mb",
            "surface_max_box",
        ):
            _require(getattr(self, key) >= 0, f"query.{key}", getattr(self, key), ">= 0")
        _require(
            0 <= self.surface_min_accumulation < 1,
            "query.surface_min_accumulation",
            self.surface_min_accumulation,
            "in [0, 1)",
        )
        _require(0 <= self.grasp_focus <= 1, "query.grasp_focus", self.grasp_focus, "in [0, 1]")
        _require(self.max_negatives >= 0, "query.max_negatives", self.max_negatives, ">= 0")
        _require(
            self.max_grasps <= self.max_grasps_limit,
            "query.max_grasps",
            self.max_grasps,
            f"<= query.max_grasps_limit ({self.max_grasps_limit})",
        )
        return self


@dataclass
class LerfConfig:
    """Everything a run needs."""

    preset: str = "lerf"
    """Preset the configuration starts from (tiny, lerf-lite, lerf or lerf-big); chosen first, every
    other key overrides its values."""
    output_dir: str = "outputs/lerf"
    """Folder of the run's checkpoints, renders and resolved configuration."""
    device: str = "auto"
    """Device of the whole run (field, training, teachers, queries): 'auto' (CUDA when available),
    'cpu' or 'cuda[:N]'."""
    seed: int = 0
    """Seed of the whole run: the field's initial weights and the trainer's ray sampling."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The 2D teachers (CLIP crop pyramid, DINO)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The radiance, language and DINO fields."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Optimisation."""
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    """The bounded keyframe store."""
    query: QueryConfig = field(default_factory=QueryConfig)
    """The query engine (relevancy, scale search, grasps)."""
    changes: ChangeConfig = field(default_factory=ChangeConfig)
    """Change detection and forgetting in a live stream."""

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """The configuration as nested plain dicts, lists and scalars (what ``to_yaml`` writes)."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The configuration as YAML (nested keys; ``load_yaml``/``from_dict`` read it back)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LerfConfig":
        """Build from a (possibly partial) nested or dotted dict; a 'preset' key selects the base.

        Unknown keys, removed keys and values of the wrong type raise ConfigError naming the key."""
        flat = _flatten(data)
        base = preset(str(flat.pop("preset", "lerf")))
        return base.override(flat)

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> "LerfConfig":
        """A configuration that ``to_dict`` saved (in a checkpoint or a run folder), possibly by an
        older version: keys removed since (``REMOVED_KEYS``) are dropped, as such a save always holds
        their replacement too. Anything else is read as ``from_dict`` reads it."""
        return cls.from_dict({k: v for k, v in _flatten(data).items() if k not in REMOVED_KEYS})

    def override(self, data: Mapping[str, Any]) -> "LerfConfig":
        """A validated copy with nested or dotted overrides applied; unknown keys raise ConfigError."""
        out = copy.deepcopy(self)
        for key, value in _flatten(data).items():
            _set_dotted(out, key, value)
        return out.check()

    def check(self) -> "LerfConfig":
        """Validate once at start-up; raise ConfigError naming the key.

        Each section checks its own fields; this adds the top-level fields and the rules that span
        sections."""
        for section in (self.teacher, self.model, self.trainer, self.keyframes, self.query, self.changes):
            section.check()
        _require(self.preset in PRESETS, "preset", self.preset, f"one of {', '.join(PRESETS)}")
        _require(bool(self.output_dir.strip()), "output_dir", self.output_dir, "a folder")
        _require(_DEVICE.fullmatch(self.device) is not None, "device", self.device, "'auto', 'cpu' or 'cuda[:N]'")
        _require(self.seed >= 0, "seed", self.seed, ">= 0")
        _require(
            not (self.model.hash_backend == "tcnn" and self.device == "cpu"),
            "model.hash_backend",
            self.model.hash_backend,
            "'auto' or 'torch' with device 'cpu' (tinycudann runs on CUDA only)",
        )
        return self

    @classmethod
    def load_yaml(
        cls, path: str, overrides: Optional[Mapping[str, Any]] = None, nodes: Sequence[str] = LERF_NODES
    ) -> "LerfConfig":
        """The configuration a YAML file gives (plain mapping or ROS parameter file, of which the
        sections for ``nodes``: see ``read_yaml_settings``), with ``overrides`` (nested or dotted) on
        top; a 'preset' among the overrides replaces the file's. Node-level keys
        (``NODE_PARAMETERS``) are accepted and left out."""
        settings = _flatten(read_yaml_settings(path, nodes))
        settings.update(_flatten(overrides or {}))
        return cls.from_dict(split_node_settings(settings)[0])

    def save_yaml(self, path: str) -> None:
        """Write ``to_yaml()`` to ``path``."""
        with open(path, "w") as f:
            f.write(self.to_yaml())

    def resolved_device(self) -> str:
        """``device`` with 'auto' resolved: 'cuda' when CUDA is available, else 'cpu'."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

REMOVED_KEYS: Dict[str, Tuple[str, str]] = {
    "trainer.seed": ("seed", "one seed for the whole run"),
    "teacher.device": ("device", "one device for the whole run"),
}
"""Keys that earlier versions had: {old dotted key: (the key that replaces it, why)}."""


# ---------------------------------------------------------------------------- node-level keys
@dataclass(frozen=True)
class NodeParameter:
    """A ROS node's own setting (wiring, rates, frames): a parameter of the node, not a model setting.

    Declared by the nodes (``lerf_ros.ros.params``) with this default and description; a parameter
    YAML may hold it beside the model configuration, and the configuration loader leaves it out."""

    name: str
    """Parameter name."""
    default: Any
    """Default value (its type is the parameter's type; a tuple is a ROS array)."""
    description: str
    """What ``ros2 param describe`` shows."""
    nodes: Tuple[str, ...]
    """The nodes that declare it: 'trainer', 'query' or both."""


NODE_PARAMETERS: Tuple[NodeParameter, ...] = (
    NodeParameter(
        "autostart",
        True,
        "Configure and activate the node as it starts (a managed node); false: it waits in 'unconfigured' for "
        "a lifecycle manager or `ros2 lifecycle set <node> configure`",
        ("trainer", "query"),
    ),
    NodeParameter(
        "world_frame",
        "map",
        "Fixed frame the field is built in and answers are given in by default",
        ("trainer", "query"),
    ),
    NodeParameter(
        "pose_source",
        "auto",
        "'tf', 'pose' (PoseStamped on 'pose'), 'odom' (Odometry on 'odom') or "
        "'auto' (tf when tf2 is installed, else pose)",
        ("trainer",),
    ),
    NodeParameter(
        "pose_tolerance_s", 0.05, "Max stamp difference when matching a pose or depth to an image (s)", ("trainer",)
    ),
    NodeParameter("tf_timeout_s", 0.1, "How long to wait for TF at an image's stamp (s)", ("trainer",)),
    NodeParameter(
        "tf_cache_s",
        120.0,
        "TF history kept (s): keyframes older than this can no longer be looked up again (tf_relookup_period_s)",
        ("trainer",),
    ),
    NodeParameter(
        "tf_relookup_period_s",
        5.0,
        "With poses from TF: every this many seconds the stored keyframes are looked up again (world_frame at "
        "the latest time <- odom_frame <- camera at the keyframe's stamp, so a SLAM's new map -> odom after a loop "
        "closure reaches past keyframes) and those that moved beyond pose_correction_tolerance_m/_deg take the "
        "new pose (0 = off) (s)",
        ("trainer",),
    ),
    NodeParameter(
        "odom_frame",
        "odom",
        "Frame in which the odometry is continuous (the child of a SLAM's map -> odom), held fixed in time by the "
        "TF re-lookup; world_frame itself when there is no such frame",
        ("trainer",),
    ),
    NodeParameter(
        "corrected_path_topic",
        "",
        "nav_msgs/Path of late-corrected poses by stamp in world_frame (the pose/odom topic's body, composed "
        "with body_to_camera), interpolated at the keyframes' stamps within pose_tolerance_s; empty = off",
        ("trainer",),
    ),
    NodeParameter(
        "pose_correction_tolerance_m",
        0.01,
        "A late correction replaces a keyframe's pose only when it moved more than this (m) or than "
        "pose_correction_tolerance_deg",
        ("trainer",),
    ),
    NodeParameter(
        "pose_correction_tolerance_deg",
        0.5,
        "A late correction replaces a keyframe's pose only when it turned more than this (degrees) or moved "
        "more than pose_correction_tolerance_m",
        ("trainer",),
    ),
    NodeParameter(
        "max_stamp_offset_s",
        300.0,
        "A stamp farther than this from the node's clock and from its stream's recent stamps is dropped as an "
        "outlier; several consistent ones in a row are a time jump (buffers cleared) (s)",
        ("trainer",),
    ),
    NodeParameter(
        "max_pose_distance_m",
        1000.0,
        "Camera poses farther than this from the world origin are dropped as implausible (m)",
        ("trainer",),
    ),
    NodeParameter(
        "body_to_camera",
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
        "Fixed pose of the camera in the pose/odom topic's body frame: x y z qx qy qz qw",
        ("trainer",),
    ),
    NodeParameter(
        "cameras",
        ("camera",),
        "Names of the cameras that feed the field; each has the parameters <name>.image_topic, "
        "<name>.camera_info_topic, <name>.depth_topic, <name>.pose_topic, <name>.frame_id and <name>.body_to_camera "
        "(the first camera's topics default to image, camera_info, depth, pose/odom; another's to <name>/image, ...)",
        ("trainer",),
    ),
    NodeParameter(
        "input_qos_reliability",
        "best_effort",
        "Reliability of the image, camera_info and depth subscriptions: best_effort (sensor data; takes reliable "
        "publishers too) or reliable",
        ("trainer",),
    ),
    NodeParameter(
        "input_qos_depth",
        5,
        "History depth (keep last) of the image, camera_info and depth subscriptions",
        ("trainer",),
    ),
    NodeParameter("status_rate_hz", 2.0, "Rate of /lerf/status", ("trainer",)),
    NodeParameter(
        "diagnostics_stall_s",
        5.0,
        "/diagnostics: the input check warns when no image has arrived for this long (s)",
        ("trainer",),
    ),
    NodeParameter(
        "diagnostics_max_drop_fraction",
        0.5,
        "/diagnostics: the input check warns when more than this share of the images received in the "
        "last 10 s were dropped (and at least 3)",
        ("trainer",),
    ),
    NodeParameter("queue_size", 4, "Images waiting for ingestion; the oldest is dropped when full", ("trainer",)),
    NodeParameter("use_depth", True, "Subscribe to 'depth' and attach aligned depth to frames", ("trainer",)),
    NodeParameter("resume", True, "Resume from the newest checkpoint in output_dir when one exists", ("trainer",)),
    NodeParameter(
        "export_dir",
        "",
        "Folder /lerf/export writes the map to (surface.ply, mesh.ply, cameras.json, cameras.ply, relevancy.ply); "
        "empty: <output_dir>/export",
        ("trainer",),
    ),
    NodeParameter(
        "checkpoint_dir",
        "",
        "Separate-process mode: folder of the trainer's checkpoints to load (default: <output_dir>/checkpoints)",
        ("query",),
    ),
    NodeParameter("reload_period_s", 2.0, "How often to look for a newer snapshot or checkpoint (s)", ("query",)),
    NodeParameter(
        "snapshot_min_interval_s",
        10.0,
        "Shortest time between two model swaps (each swap re-extracts "
        "the surface points and their language features, a few seconds on a CPU)",
        ("query",),
    ),
    NodeParameter(
        "prepare_cpu_share",
        0.5,
        "Share of the wall time the background preparation of a new snapshot may take: after each chunk "
        "of work it pauses for the rest, leaving the CPU to training and queries (0 < share <= 1)",
        ("query",),
    ),
    NodeParameter(
        "prepare_niceness",
        10,
        "How much the snapshot preparation thread lowers its scheduling priority (Linux nice; 0 = not at all)",
        ("query",),
    ),
)

ROS_NODE_KEYS: Tuple[str, ...] = ("use_sim_time",)
"""Parameters rclpy declares on every node (a parameter YAML may set them)."""
ROS_NODE_KEY_PREFIXES: Tuple[str, ...] = ("qos_overrides.",)
"""Prefixes of rclpy's own per-node parameters."""


def node_parameters(node: str) -> Tuple[NodeParameter, ...]:
    """The node-level parameters the node ``node`` ('trainer' or 'query') declares."""
    if node not in ("trainer", "query"):
        raise ValueError(f"node {node!r}: expected 'trainer' or 'query'")
    return tuple(p for p in NODE_PARAMETERS if node in p.nodes)


def is_node_key(key: str) -> bool:
    """Whether a dotted key is a node-level setting (``NODE_PARAMETERS`` or rclpy's own)."""
    return key in {p.name for p in NODE_PARAMETERS} or key in ROS_NODE_KEYS or key.startswith(ROS_NODE_KEY_PREFIXES)


def split_node_settings(settings: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(configuration settings, node-level settings) of a nested or dotted mapping, both dotted."""
    config: Dict[str, Any] = {}
    node: Dict[str, Any] = {}
    flat = _flatten(settings)
    cameras = flat.get("cameras")  # each named camera has a section of node-level keys: <name>.image_topic ...
    sections = {str(n) for n in cameras} if isinstance(cameras, (list, tuple)) else set()
    for key, value in flat.items():
        (node if is_node_key(key) or key.split(".", 1)[0] in sections and "." in key else config)[key] = value
    return config, node


# ---------------------------------------------------------------------------- presets
PRESETS: Dict[str, Dict[str, Any]] = {
    # The reference LERF (ViT-B/16 OpenCLIP).
    "lerf": {},
    # Smaller networks and fewer samples, and a cheaper crop pyramid.
    "lerf-lite": {
        # reference lerf-lite: one language grid of 16 levels, 16..512, 2^19; 12 language samples
        "model.lang_num_levels": (16,),
        "model.lang_log2_hashmap_size": (19,),
        "model.lang_base_resolution": (16,),
        "model.lang_max_resolution": (512,),
        "model.num_lang_samples": 12,
        # 4 scales from 10% to 50%: 513 crops per 640x480 keyframe instead of 1,250, within one query
        # of the reference pyramid's 3D localization (bench/pyramid_study.py)
        "teacher.pyramid_levels": 4,
        "teacher.pyramid_min": 0.1,
    },
    # ViT-L/14 OpenCLIP.
    "lerf-big": {
        "teacher.clip_model": "ViT-L-14",
        "teacher.clip_pretrained": "laion2b_s32b_b82k",
        # reference lerf-big: two language grids of 16 levels (16..128, 128..512), 2^20 each
        "model.lang_num_levels": (16, 16),
        "model.lang_log2_hashmap_size": (20, 20),
    },
    # Trains on 2 CPU cores in minutes (tests, demo, benchmark).
    "tiny": {
        "device": "cpu",
        "model.num_levels": 8,
        "model.features_per_level": 2,
        "model.log2_hashmap_size": 15,
        "model.base_resolution": 16,
        "model.max_resolution": 512,
        "model.hidden_dim": 32,
        "model.hidden_dim_color": 32,
        "model.sh_degree": 3,
        "model.num_proposal_samples": (48,),
        "model.num_nerf_samples": 24,
        "model.proposal_num_levels": 5,
        "model.proposal_log2_hashmap_size": 14,
        "model.proposal_max_resolution": (128,),
        "model.proposal_anneal_steps": 300,
        "model.lang_num_levels": (8,),
        "model.lang_log2_hashmap_size": (15,),
        "model.lang_base_resolution": (16,),
        "model.lang_max_resolution": (256,),
        "model.lang_features_per_level": 4,
        "model.lang_hidden_dim": 64,
        "model.lang_num_layers": 2,
        "model.dino_hidden_dim": 64,
        "model.num_lang_samples": 8,
        "trainer.rays_per_batch": 1024,
        "trainer.max_steps": 3000,
        "trainer.decay_steps": 3000,
        "trainer.lang_decay_steps": 3000,
        "trainer.checkpoint_every": 500,
        "teacher.pyramid_levels": 4,
        "teacher.pyramid_min": 0.1,
        "teacher.pyramid_max": 0.5,
        "keyframes.max_keyframes": 60,
        "query.surface_stride": 2,
        "query.surface_max_views": 20,
        "query.max_candidate_points": 20000,
    },
}


def preset_names() -> List[str]:
    """The names of the presets (``tiny``, ``lerf-lite``, ``lerf``, ``lerf-big``)."""
    return list(PRESETS)


def preset(name: str) -> LerfConfig:
    """The named preset, validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    cfg = LerfConfig(preset=name)
    for key, value in PRESETS[name].items():
        _set_dotted(cfg, key, value)
    return cfg.check()


# ---------------------------------------------------------------------------- helpers
def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: expected {expected}")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def read_yaml_settings(path: str, nodes: Sequence[str] = LERF_NODES) -> Dict[str, Any]:
    """The settings of a config YAML, nested: a plain mapping, or a ROS parameter file
    (``{node_name: {ros__parameters: {...}}}``, node names possibly namespaced, or the wildcards
    ``/*`` and ``/**``). Of a parameter file, the sections that apply to the nodes named ``nodes``
    (default: this package's two nodes) are merged in file order, a later value winning as in ROS;
    sections of other nodes are not read."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    sections = _ros_sections(data, "", path)
    if sections is None:
        return data
    merged: Dict[str, Any] = {}
    for name, params in sections:
        last = name.rstrip("/").rsplit("/", 1)[-1]
        if last in ("*", "**") or last in nodes:
            merged.update(_flatten(params))
    return _nest(merged)


def _ros_sections(data: Mapping[str, Any], prefix: str, path: str) -> Optional[List[Tuple[str, Dict[str, Any]]]]:
    """[(node name, parameters)] of a ROS parameter file's mapping; None when it is not one."""
    if not any(isinstance(v, dict) and ("ros__parameters" in v or _ros_sections(v, "", path)) for v in data.values()):
        return None
    out: List[Tuple[str, Dict[str, Any]]] = []
    for k, v in data.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) and "ros__parameters" in v:
            params = v["ros__parameters"] or {}
            if not isinstance(params, dict):
                raise ConfigError(f"{path}: '{name}: ros__parameters' must be a mapping")
            out.append((name, params))
        elif isinstance(v, dict) and _ros_sections(v, name, path):
            out.extend(_ros_sections(v, name, path))
        else:
            raise ConfigError(
                f"{path}: '{name}' is not a node section ('node_name: ros__parameters: ...'); "
                "a ROS parameter file holds nothing else at top level"
            )
    return out


def dotted_keys(data: Mapping[str, Any]) -> List[str]:
    """The dotted names of the leaves of a nested mapping ({'a': {'b': 1}} -> ['a.b'])."""
    return list(_flatten(data))


def config_keys() -> List[str]:
    """Every dotted key of ``LerfConfig`` (``preset``, ``model.hidden_dim``, ...)."""
    return dotted_keys(LerfConfig().to_dict())


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[name] = value
    return out


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _type_name(typ: Any) -> str:
    if getattr(typ, "__origin__", None) is tuple:
        args = typ.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(typ, str(typ))


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """``value`` as the field type ``typ`` (bool, int, float, str or a tuple of them). Strings are
    parsed (command lines and launch arguments give strings); anything else of the wrong type
    raises ConfigError naming the key."""
    try:
        return _coerce_or_raise(value, typ)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} = {value!r} is invalid: expected {_type_name(typ)}") from exc


def _coerce_or_raise(value: Any, typ: Any) -> Any:
    if getattr(typ, "__origin__", None) is tuple:
        args = typ.__args__
        if isinstance(value, str):
            text = value.strip()
            if text[:1] in "[(" and text[-1:] in "])":
                text = text[1:-1]
            value = [v.strip() for v in text.split(",")] if text.strip() else []
        elif not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce_or_raise(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{len(value)} values")
        return tuple(_coerce_or_raise(v, a) for v, a in zip(value, args))
    if isinstance(value, (list, tuple, dict)) or value is None:
        raise TypeError(type(value).__name__)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if isinstance(value, bool):  # YAML true/false for a number or a string: a mistake
        raise TypeError("bool")
    if typ is int:
        if isinstance(value, str):
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if typ is float:
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise TypeError(type(value).__name__)
        return str(value)
    raise TypeError(f"unsupported field type {typ}")


def _unknown_key(key: str) -> ConfigError:
    import difflib

    near = difflib.get_close_matches(key, config_keys() + [p.name for p in NODE_PARAMETERS], n=1, cutoff=0.75)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return ConfigError(f"unknown configuration key '{key}'{hint}")


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    if key in REMOVED_KEYS:
        new, why = REMOVED_KEYS[key]
        raise ConfigError(f"configuration key '{key}' was removed: set '{new}' instead ({why})")
    if key == "preset":
        if value != cfg.preset:
            # Switching preset through an override would silently drop the preset's values.
            raise ConfigError(f"preset = {value!r} must be chosen first (LerfConfig.from_dict / preset())")
        return
    parts = key.split(".")
    obj = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise _unknown_key(key)
        obj = getattr(obj, p)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown_key(key)
    hints = get_type_hints(type(obj))
    if dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"'{key}' is a section; set its fields instead")
    setattr(obj, name, _coerce(value, hints[name], key))
