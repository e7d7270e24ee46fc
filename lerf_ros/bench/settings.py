"""What one benchmark run does: ``BenchSettings``, the named modes, and the LERF configuration they give."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

LogFn = Callable[[str], None]

TEACHER_NOTE = (
    "teacher: the synthetic scene's ground truth (instance maps and class labels as seeded 512-d "
    "vectors) stands in for CLIP/DINO; these numbers measure the 3D system, not a 2D model"
)

#: Where the named modes save pictures of grasp attempts (relative to the working directory).
PICTURES_DIR = "bench/results/grasps"

#: Words outside the synthetic vocabulary (and none of its synonyms) used as absent-object queries.
NON_VOCABULARY_WORDS: Tuple[str, ...] = ("giraffe", "laptop", "umbrella", "guitar")


@dataclass
class BenchSettings:
    """What one benchmark run does. Distances in metres, times in seconds."""

    mode: str = "quick"
    """'quick' or 'full' (names the output files); 'custom' for anything else."""
    seeds: Tuple[int, ...] = (0, 1)
    """Synthetic scene seeds (one offline evaluation each)."""
    width: int = 96
    height: int = 72
    n_frames: int = 30
    """Frames of each scene's trajectory."""
    preset: str = "tiny"
    overrides: Dict[str, Any] = field(default_factory=dict)
    """Configuration overrides (dotted keys) applied on top of the preset."""
    max_steps: int = 600
    """Offline training steps per scene (fewer when the time budget runs out first)."""
    budget_s: float = 420.0
    """Wall-clock budget of the whole run; training phases shrink to fit it."""
    online_fraction: float = 0.4
    """Share of the budget given to the online phase (the rest: offline scenes)."""
    online_min_s: float = 30.0
    """The online phase runs at least this long (when its checks have not all succeeded)."""
    online_max_s: float = 600.0
    """... and at most this long."""
    online_rate_hz: float = 5.0
    """Frame rate of the emulated live stream."""
    online_check_every_s: float = 10.0
    """Seconds of undisturbed training between two online checks."""
    online_snapshot_every: int = 20
    """Training steps between the online trainer's snapshots."""
    stream_frames: int = 1000
    """Frames streamed in total (the online phase's, then topped up as fast as the trainer takes
    them) before the resident memory is read."""
    holdout_every: int = 8
    """Every this-many-th frame (index 0, 8, ...) is held out of offline training for 2D evaluation."""
    n_absent_vocabulary: int = 3
    """Absent vocabulary classes queried per scene."""
    non_vocabulary_words: Tuple[str, ...] = NON_VOCABULARY_WORDS
    grow_3d: float = 0.02
    grow_grasp: float = 0.01
    surface_tol: float = 0.02
    table_tol: float = 0.005
    min_box_pixels: int = 10
    curve_steps: Tuple[int, ...] = ()
    """Offline steps at which the snapshot is also evaluated (3D queries only): a learning curve."""
    online: bool = True
    """Run the online phase."""
    eval_reserve_s: float = 35.0
    """Initial guess of one scene's non-training time (scene, features, evaluation); later scenes use
    the measured time."""
    threads: int = 2
    """torch intra-op threads."""
    physics: bool = True
    """Execute each object's grasps in physics (MuJoCo, ``lerf_ros.sim``) in the final evaluation."""
    physics_top_k: int = 3
    """Grasps per object executed in physics (the best, and "any of the top k")."""
    grasp_pictures: int = 2
    """Pictures saved per scene of grasp attempts (failed best grasps first), into ``grasp_pictures_dir``."""
    grasp_pictures_dir: str = ""
    """Folder of the grasp pictures ('' saves none; the named modes save into ``PICTURES_DIR``)."""
    progress: bool = True
    """tqdm progress bars (else log lines only)."""

    def check(self) -> "BenchSettings":
        """Raise ValueError naming the first setting out of range; return ``self``."""
        if not self.seeds:
            raise ValueError("seeds: give at least one scene seed")
        if self.width < 16 or self.height < 12:
            raise ValueError(f"image size {self.width}x{self.height} too small: at least 16x12")
        if self.n_frames < 4:
            raise ValueError(f"n_frames = {self.n_frames}: need at least 4 (some are held out)")
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every = {self.holdout_every}: must be >= 2")
        if self.max_steps < 1:
            raise ValueError(f"max_steps = {self.max_steps}: must be >= 1")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s = {self.budget_s}: must be > 0")
        if not 0 <= self.online_fraction < 1:
            raise ValueError(f"online_fraction = {self.online_fraction}: must be in [0, 1)")
        if self.online_rate_hz <= 0 or self.online_check_every_s <= 0:
            raise ValueError("online_rate_hz and online_check_every_s must be > 0")
        if self.online_max_s < self.online_min_s or self.online_min_s < 0:
            raise ValueError(f"online_min_s ({self.online_min_s}) must be in [0, online_max_s ({self.online_max_s})]")
        if self.physics_top_k < 1 or self.grasp_pictures < 0:
            raise ValueError(f"physics_top_k = {self.physics_top_k} must be >= 1, grasp_pictures >= 0")
        if self.threads < 1:
            raise ValueError(f"threads = {self.threads}: must be >= 1")
        return self


def mode_settings(mode: str) -> BenchSettings:
    """The named mode's settings: 'quick' (under 10 minutes on 2 CPU cores) or 'full'."""
    if mode == "quick":
        return BenchSettings(grasp_pictures_dir=PICTURES_DIR)
    if mode == "full":
        return BenchSettings(
            mode="full",
            seeds=(0, 1, 2, 3, 4),
            width=160,
            height=120,
            n_frames=60,
            max_steps=1200,
            budget_s=4800.0,
            online_fraction=0.2,
            online_min_s=60.0,
            online_max_s=600.0,
            online_check_every_s=15.0,
            eval_reserve_s=90.0,
            grasp_pictures_dir=PICTURES_DIR,
        )
    raise ValueError(f"unknown benchmark mode {mode!r}: 'quick' or 'full'")


def build_config(settings: BenchSettings):
    """The LERF configuration of every phase: the preset, the ground-truth teacher, the overrides."""
    from lerf_ros.config import preset

    cfg = preset(settings.preset).override({"teacher.kind": "ground_truth", "device": "cpu"})
    if settings.overrides:
        cfg = cfg.override(settings.overrides)
    return cfg
