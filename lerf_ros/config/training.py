"""The optimisation, keyframe store and change detection sections (``trainer.*``, ``keyframes.*``,
``changes.*``).

Each section is a dataclass whose fields carry their defaults and descriptions; ``check()`` validates
the section's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import _require


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
    """Steps before pose corrections are learned at all (the field must first learn something). With
    centimetre pose errors from the first frame (odometry, SLAM) set it low, e.g. 40: a field trained
    longer on the wrong poses bakes their disagreement into its geometry and the corrections then
    converge less. The default keeps the first minutes of a run at full speed (the pose updates cost
    a second render pass) and exact poses from wandering."""
    pose_regularization: float = 0.0
    """Weight of the L2 penalty pulling each pose correction toward zero (mean over the keyframes of
    the squared rotation vector in radians plus the squared translation in metres). Off by default:
    with drifting poses the pull stops the corrections converging (the zero-mean anchoring, the
    warm-up and the decaying rate keep exact poses within a few millimetres without it); a value
    such as 1.0 holds poses known to be good a little closer to their input."""
    pose_update_every: int = 4
    """Steps between two updates of the pose corrections (the steps between use them without the
    backward pass through the sample positions, which costs about 40% of a CPU step); 1 = every step.
    With ``pose_ray_subset``: every step, through every this-many-th ray of its batch instead."""
    pose_ray_subset: bool = True
    """Spread the pose updates over rays instead of steps: after the warm-up, every step updates the
    pose corrections from every ``pose_update_every``-th ray of its batch (the same backward cost)."""
    pose_coarse_to_fine_steps: int = 0
    """With pose refinement: over this many steps from the start, the radiance field's hash levels are
    switched on from coarse to fine (the coarsest from the start, each next one eased in over the
    steps' share of a level, as BARF anneals its frequencies), so early pose gradients come from a
    smooth field. Counted from step 0: only its part after ``pose_warmup_steps`` smooths pose
    gradients. Renders meanwhile (held-out views, change detection, snapshots) show the field as
    trained, with the levels of their step. 0 = every level from the start."""

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
        for key in ("warmup_steps", "checkpoint_every", "pose_warmup_steps", "pose_coarse_to_fine_steps"):
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
    focus_share: float = 0.125
    """Share of each training batch drawn from the pixels where compared keyframes disagreed with the
    field (colour residual above the frame's robust level, grown by a pixel; never retired pixels):
    a new or moved object a few pixels wide is learnt from more than the few rays a step that
    uniform drawing gives it. Only compared frames kept as keyframes within ``focus_window``
    compared frames of a confirmed change carry such pixels, so a static scene is trained as
    before. 0 turns it off."""
    focus_steps: int = 200
    """A keyframe's disagreeing pixels are drawn from for this many training steps after it was
    stored (newer compared frames show where the field is still wrong)."""
    focus_window: int = 100
    """Compared frames after the newest confirmed change during which kept frames carry their
    disagreeing pixels (``focus_share``)."""

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
        _require(0 <= self.focus_share < 1, "changes.focus_share", self.focus_share, "in [0, 1)")
        _require(self.focus_steps >= 1, "changes.focus_steps", self.focus_steps, ">= 1")
        _require(self.focus_window >= 0, "changes.focus_window", self.focus_window, ">= 0")
        _require(self.memory_checks >= self.min_frames, "changes.memory_checks", self.memory_checks, ">= min_frames")
        return self
