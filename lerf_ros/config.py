"""Typed, validated configuration.

One dataclass per component; ``LerfConfig`` nests them. Presets (``tiny``, ``lerf-lite``, ``lerf``,
``lerf-big``) are named overrides of the defaults, not forks of code. YAML files and ROS parameters
map onto the same tree with dotted keys (``model.hidden_dim``). The resolved config is saved with
every run and checkpoint (``to_dict``/``to_yaml``), and ``check()`` validates it once at start-up.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, get_type_hints

import yaml


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


@dataclass
class TeacherConfig:
    """The 2D teachers that supervise the language and DINO fields."""

    kind: str = "clip"
    """'clip' (OpenCLIP + timm DINO) or 'ground_truth' (synthetic scenes: their 2D semantics)."""
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
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:N]'."""

    def check(self) -> "TeacherConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(self.kind in ("clip", "ground_truth"), "teacher.kind", self.kind, "'clip' or 'ground_truth'")
        _require(self.pyramid_levels >= 1, "teacher.pyramid_levels", self.pyramid_levels, ">= 1")
        _require(0 < self.pyramid_min <= self.pyramid_max <= 1, "teacher.pyramid_min/max",
                 (self.pyramid_min, self.pyramid_max), "0 < min <= max <= 1")
        _require(0 <= self.pyramid_overlap < 1, "teacher.pyramid_overlap", self.pyramid_overlap, "in [0, 1)")
        ramp = tuple(self.pyramid_overlap_ramp)
        _require(len(ramp) == 0 or (len(ramp) == 2 and 0 <= ramp[0] <= ramp[1]), "teacher.pyramid_overlap_ramp",
                 ramp, "() or (a, b) with 0 <= a <= b")
        _require(self.batch_size >= 1, "teacher.batch_size", self.batch_size, ">= 1")
        _require(self.dino_max_side >= 8, "teacher.dino_max_side", self.dino_max_side, ">= 8")
        _require(self.dino_facet in ("key", "token"), "teacher.dino_facet", self.dino_facet, "'key' or 'token'")
        _require(self.worker_queue_size >= 1, "teacher.worker_queue_size", self.worker_queue_size, ">= 1")
        _require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "teacher.device",
                 self.device, "'auto', 'cpu' or 'cuda[:N]'")
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
    proposal_base_resolution: int = 16
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
    """'auto' (tinycudann on CUDA when importable, else PyTorch), 'torch' or 'tcnn'."""


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
    lr_final_lang: float = 1e-3
    decay_steps: int = 30000
    """Length of the fields' and proposals' learning-rate decay."""
    lang_decay_steps: int = 4000
    """Length of the language field's learning-rate decay."""
    schedule: str = "exponential"
    """'exponential' (log-linear from lr to lr_final) or 'cosine'."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps (all groups)."""
    adam_eps: float = 1e-15
    weight_decay: float = 0.0
    """Adam weight decay of the density/colour field and proposal networks."""
    lang_weight_decay: float = 1e-9
    """Adam weight decay of the language and DINO fields."""
    lang_loss: str = "huber"
    """'huber' (reference code: Huber on the rendered-minus-target difference) or 'cosine' (paper)."""
    lang_huber_delta: float = 1.25
    lang_weight: float = 0.1
    dino_weight: float = 1.0
    depth_weight: float = 0.1
    """Weight of the optional depth loss on frames that carry depth (0 disables it)."""
    interlevel_weight: float = 1.0
    distortion_weight: float = 0.002
    mixed_precision: bool = True
    """fp16 autocast + gradient scaling on CUDA (ignored on the CPU)."""
    checkpoint_every: int = 2000
    """Steps between periodic checkpoints (0 = only on request and at exit)."""
    keep_checkpoints: int = 2
    """Periodic checkpoints kept on disk (older ones are deleted)."""
    seed: int = 0
    """Seed of the trainer's ray sampling and initialisation."""


@dataclass
class KeyframeConfig:
    """The bounded keyframe store of the online trainer."""

    max_keyframes: int = 200
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
    max_image_side: int = 640
    """Frames larger than this (longest side, pixels) are downscaled before storing (0 disables)."""
    protect_newest: int = 3
    """The newest this-many keyframes are never evicted when the store is full."""
    rotation_weight: float = 0.0
    """Metres per radian of turning in the pose distance of the eviction policy; 0 = derive it from
    the keyframe thresholds (min_translation / radians(min_rotation_deg)), so both count alike."""

    def check(self) -> "KeyframeConfig":
        """Validate this section; raise ConfigError naming the key."""
        _require(self.max_keyframes >= 1, "keyframes.max_keyframes", self.max_keyframes, ">= 1")
        _require(self.max_memory_mb > 0, "keyframes.max_memory_mb", self.max_memory_mb, "> 0")
        _require(self.min_translation >= 0, "keyframes.min_translation", self.min_translation, ">= 0")
        _require(self.min_rotation_deg >= 0, "keyframes.min_rotation_deg", self.min_rotation_deg, ">= 0")
        _require(self.min_sharpness >= 0, "keyframes.min_sharpness", self.min_sharpness, ">= 0")
        _require(0 <= self.min_brightness <= self.max_brightness <= 255, "keyframes.min/max_brightness",
                 (self.min_brightness, self.max_brightness), "0 <= min <= max <= 255")
        _require(0 < self.max_clipped_fraction <= 1, "keyframes.max_clipped_fraction",
                 self.max_clipped_fraction, "in (0, 1]")
        _require(self.max_image_side == 0 or self.max_image_side >= 8, "keyframes.max_image_side",
                 self.max_image_side, "0 (off) or >= 8")
        _require(self.protect_newest >= 0, "keyframes.protect_newest", self.protect_newest, ">= 0")
        _require(self.rotation_weight >= 0, "keyframes.rotation_weight", self.rotation_weight, ">= 0")
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
    """Longest query or negative phrase accepted (characters)."""
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
        _require(len(self.scales) > 0 and all(0 <= s <= 2 for s in self.scales), "query.scales", self.scales,
                 "non-empty, each in [0, 2] m")
        _require(len(self.canonical_phrases) > 0 and all(p.strip() for p in self.canonical_phrases),
                 "query.canonical_phrases", self.canonical_phrases, "at least one non-empty phrase")
        _require(self.temperature > 0, "query.temperature", self.temperature, "> 0")
        for key in ("max_points", "max_grasps", "min_views", "max_text_length", "dbscan_min_points",
                    "surface_stride", "surface_max_views", "max_candidate_points", "field_chunk_points",
                    "text_cache_size"):
            _require(getattr(self, key) > 0, f"query.{key}", getattr(self, key), "> 0")
        for key in ("voxel_size", "gripper_max_width", "dbscan_eps", "gripper_finger_depth", "tall_ratio"):
            _require(getattr(self, key) > 0, f"query.{key}", getattr(self, key), "> 0")
        for key in ("refresh_every_steps", "visibility_tolerance", "visibility_tolerance_rel",
                    "grasp_width_margin", "feature_cache_mb", "surface_max_box"):
            _require(getattr(self, key) >= 0, f"query.{key}", getattr(self, key), ">= 0")
        _require(0 <= self.surface_min_accumulation < 1, "query.surface_min_accumulation",
                 self.surface_min_accumulation, "in [0, 1)")
        _require(0 <= self.grasp_focus <= 1, "query.grasp_focus", self.grasp_focus, "in [0, 1]")
        return self


@dataclass
class LerfConfig:
    """Everything a run needs."""

    preset: str = "lerf"
    output_dir: str = "outputs/lerf"
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:N]'."""
    seed: int = 0
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    query: QueryConfig = field(default_factory=QueryConfig)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LerfConfig":
        """Build from a (possibly partial) nested dict; a 'preset' key selects the base."""
        base = preset(str(data.get("preset", "lerf")))
        return base.override(data)

    def override(self, data: Mapping[str, Any]) -> "LerfConfig":
        """A copy with nested or dotted overrides applied; unknown keys raise ConfigError."""
        out = copy.deepcopy(self)
        for key, value in _flatten(data).items():
            _set_dotted(out, key, value)
        out.check()
        return out

    def check(self) -> "LerfConfig":
        """Validate once at start-up; raise ConfigError naming the key."""
        t, q, m, k, tr = self.teacher, self.query, self.model, self.keyframes, self.trainer
        for section in (t, q, m, k, tr):
            section_check = getattr(section, "check", None)
            if callable(section_check):
                section_check()
        _require(t.kind in ("clip", "ground_truth"), "teacher.kind", t.kind, "'clip' or 'ground_truth'")
        _require(0 < t.pyramid_min <= t.pyramid_max <= 1, "teacher.pyramid_min/max",
                 (t.pyramid_min, t.pyramid_max), "0 < min <= max <= 1")
        _require(t.pyramid_levels >= 1, "teacher.pyramid_levels", t.pyramid_levels, ">= 1")
        _require(0 <= t.pyramid_overlap < 1, "teacher.pyramid_overlap", t.pyramid_overlap, "in [0, 1)")
        _require(0 <= q.threshold <= 1, "query.threshold", q.threshold, "in [0, 1]")
        _require(len(q.scales) > 0 and all(0 <= s <= 2 for s in q.scales), "query.scales", q.scales,
                 "non-empty, each in [0, 2] m")
        _require(q.max_points > 0 and q.max_grasps > 0, "query.max_points/max_grasps",
                 (q.max_points, q.max_grasps), "> 0")
        _require(q.gripper_max_width > 0, "query.gripper_max_width", q.gripper_max_width, "> 0")
        _require(m.near > 0 and m.far > m.near, "model.near/far", (m.near, m.far), "0 < near < far")
        _require(tr.rays_per_batch > 0, "trainer.rays_per_batch", tr.rays_per_batch, "> 0")
        _require(tr.lang_loss in ("huber", "cosine"), "trainer.lang_loss", tr.lang_loss, "'huber' or 'cosine'")
        _require(k.max_keyframes >= k.min_keyframes_to_train >= 1, "keyframes.max_keyframes",
                 k.max_keyframes, ">= keyframes.min_keyframes_to_train >= 1")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 "device", self.device, "'auto', 'cpu' or 'cuda[:N]'")
        return self

    @classmethod
    def load_yaml(cls, path: str, overrides: Optional[Mapping[str, Any]] = None) -> "LerfConfig":
        cfg = cls.from_dict(read_yaml_settings(path))
        return cfg.override(overrides) if overrides else cfg

    def save_yaml(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(self.to_yaml())

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


# ---------------------------------------------------------------------------- presets
PRESETS: Dict[str, Dict[str, Any]] = {
    # The reference LERF (ViT-B/16 OpenCLIP).
    "lerf": {},
    # Smaller networks and fewer samples, and a cheaper crop pyramid.
    "lerf-lite": {
        # reference lerf-lite: one language grid of 16 levels, 16..512, 2^19; 12 language samples
        "model.lang_num_levels": (16,), "model.lang_log2_hashmap_size": (19,),
        "model.lang_base_resolution": (16,), "model.lang_max_resolution": (512,), "model.num_lang_samples": 12,
        # 4 scales from 10% to 50%: 513 crops per 640x480 keyframe instead of 1,250, within one query
        # of the reference pyramid's 3D localization (bench/pyramid_study.py)
        "teacher.pyramid_levels": 4, "teacher.pyramid_min": 0.1,
    },
    # ViT-L/14 OpenCLIP.
    "lerf-big": {
        "teacher.clip_model": "ViT-L-14", "teacher.clip_pretrained": "laion2b_s32b_b82k",
        # reference lerf-big: two language grids of 16 levels (16..128, 128..512), 2^20 each
        "model.lang_num_levels": (16, 16), "model.lang_log2_hashmap_size": (20, 20),
    },
    # Trains on 2 CPU cores in minutes (tests, demo, benchmark).
    "tiny": {
        "device": "cpu",
        "model.num_levels": 8, "model.features_per_level": 2, "model.log2_hashmap_size": 15,
        "model.base_resolution": 16, "model.max_resolution": 512, "model.hidden_dim": 32,
        "model.hidden_dim_color": 32, "model.sh_degree": 3,
        "model.num_proposal_samples": (48,), "model.num_nerf_samples": 24,
        "model.proposal_num_levels": 5, "model.proposal_log2_hashmap_size": 14,
        "model.proposal_max_resolution": (128,), "model.proposal_anneal_steps": 300,
        "model.lang_num_levels": (8,), "model.lang_log2_hashmap_size": (15,), "model.lang_base_resolution": (16,),
        "model.lang_max_resolution": (256,), "model.lang_features_per_level": 4, "model.lang_hidden_dim": 64,
        "model.lang_num_layers": 2, "model.dino_hidden_dim": 64, "model.num_lang_samples": 8,
        "trainer.rays_per_batch": 1024, "trainer.max_steps": 3000, "trainer.decay_steps": 3000,
        "trainer.lang_decay_steps": 3000, "trainer.checkpoint_every": 500, "teacher.pyramid_levels": 4, "teacher.pyramid_min": 0.1,
        "teacher.pyramid_max": 0.5, "keyframes.max_keyframes": 60,
        "query.surface_stride": 2, "query.surface_max_views": 20, "query.max_candidate_points": 20000,
    },
}


def preset_names() -> List[str]:
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


def read_yaml_settings(path: str) -> Dict[str, Any]:
    """The settings of a config YAML, nested: a plain mapping, or the ROS parameter file form
    ``{node_name: {ros__parameters: {...}}}`` (the first node's parameters)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    for v in list(data.values()):
        if isinstance(v, dict) and "ros__parameters" in v:
            return v["ros__parameters"]
    return data


def dotted_keys(data: Mapping[str, Any]) -> List[str]:
    """The dotted names of the leaves of a nested mapping ({'a': {'b': 1}} -> ['a.b'])."""
    return list(_flatten(data))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = getattr(typ, "__origin__", None)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
        if origin in (tuple, Tuple):
            args = typ.__args__
            elem = args[0]
            seq = [value] if isinstance(value, (int, float, str)) else list(value)
            return tuple(_coerce(v, elem, key) for v in seq)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} = {value!r} cannot be read as {getattr(typ, '__name__', typ)}") from exc
    return value


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    if key == "preset":
        if value != cfg.preset:
            # Switching preset through an override would silently drop the preset's values.
            raise ConfigError(f"preset = {value!r} must be chosen first (LerfConfig.from_dict / preset())")
        return
    parts = key.split(".")
    obj = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
            raise ConfigError(f"unknown configuration key '{key}'")
        obj = getattr(obj, p)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"unknown configuration key '{key}'")
    hints = get_type_hints(type(obj))
    if dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"'{key}' is a section; set its fields instead")
    setattr(obj, name, _coerce(value, hints[name], key))
