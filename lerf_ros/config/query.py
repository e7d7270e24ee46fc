"""The query engine's section of the configuration (``query.*``): relevancy, scale search, grasps.

A dataclass whose fields carry their defaults and descriptions; ``check()`` validates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .errors import _require


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
