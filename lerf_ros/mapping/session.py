"""One mapping run (ROS-free): the object every way of training builds.

A ``Session`` owns
- the keyframe selector and the keyframe store (each image held once, on the training device; the
  store samples the training rays),
- the teacher and its features: computed in a background ``FeatureWorker`` for frames offered with
  ``submit`` (a live stream), or right away for frames given with ``add`` (a recorded dataset);
  none at all with teacher kind 'none' (``has_language`` False: geometry and colour only),
- the scene bounds, as explicit state (``bounds``): estimated from the keyframes when training starts
  (``model.auto_bounds``) or taken from the configuration, restored from a checkpoint on resume,
  forgotten by ``reset``; the configuration is never rewritten,
- the trainer (built when training starts), its snapshots and its checkpoints.

The online trainer (``lerf_ros.mapping.online``) is a session plus its threads; ``lerf-ros train``
and the benchmark are a session plus a loop; tests build the same session.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from lerf_ros.config import LerfConfig
from lerf_ros.data.frame import Frame, FrameError, check_pose
from lerf_ros.field.frozen import FrozenField
from lerf_ros.geometry.poses import interpolate_pose, pose_distance
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.change_kernels import resample_mask
from lerf_ros.mapping.changes import ChangeCheck, ChangeDetector
from lerf_ros.mapping.handoff import HandoffLock
from lerf_ros.mapping.keyframes import KeyframeStore, KeyframeStoreError
from lerf_ros.mapping.rays import estimate_scene_bounds
from lerf_ros.mapping.selection import KeyframeDecision, KeyframeSelector, downscale_frame
from lerf_ros.mapping.trainer import Trainer

LogFn = Callable[[str, str], None]  # (level: 'info'|'warning'|'error', text)

LOSS_KEYS = ("rgb", "lang", "dino", "psnr", "depth")
"""Per-step statistics a session keeps as its latest losses."""


def print_log(level: str, text: str) -> None:
    """The default log: one line on stdout."""
    print(f"[{level}] {text}", flush=True)


@dataclass
class SubmitResult:
    """What became of a submitted frame."""

    kept: bool
    """It became a keyframe."""
    rejected: bool
    """It was bad input (blurred, badly exposed, invalid, stamp going backwards): counts as dropped."""
    reason: str = ""
    kind: str = ""
    """A short stable category of the reason (for logging each kind once)."""


class Session:
    """See the module docstring.

    Args:
        cfg: the run's configuration (checked here).
        teacher: the 2D teacher; default ``make_teacher(cfg.teacher, scene=scene)``.
        scene: a synthetic scene, for the ground-truth teacher.
        online: True for a live stream: a bounded store whose ray sampling favours the newest
            keyframes, and a background feature worker. False for a recorded dataset: every frame
            given with ``add`` is kept and sampled uniformly, features computed in ``add``.
        log: ``log(level, text)`` for the session's few messages (bounds, feature errors, checkpoints).
    """

    def __init__(
        self, cfg: LerfConfig, teacher: Any = None, *, scene: Any = None, online: bool = True, log: LogFn = print_log
    ) -> None:
        from lerf_ros.teachers import make_teacher

        self.cfg = cfg.check()
        self.online = bool(online)
        self.log = log
        torch.manual_seed(cfg.seed)
        self.teacher = teacher if teacher is not None else make_teacher(cfg.teacher, scene=scene, device=cfg.device)
        self.device = torch.device(cfg.resolved_device())
        self.selector = KeyframeSelector(cfg.keyframes)
        self.keyframes = KeyframeStore(
            cfg.keyframes,
            device=self.device,
            bounded=self.online,
            recency_boost=4.0 if self.online else 0.0,
            focus_share=cfg.changes.focus_share if self.online and cfg.changes.enabled else 0.0,
        )
        self.checkpoint_dir = os.path.join(cfg.output_dir, "checkpoints")
        stale = ckpt.remove_stale_temp_files(self.checkpoint_dir)  # left by a writer that was killed
        if stale:
            self.log("info", f"removed {len(stale)} unfinished checkpoint file(s) in {self.checkpoint_dir}")
        self.bounds: Optional[Tuple[List[float], float]] = None
        """(centre, half-extent) in metres of the region the field maps linearly; None until training starts."""
        self.trainer: Optional[Trainer] = None
        self.losses: Dict[str, float] = {}
        self.last_checkpoint = ""
        self.pose_corrections = 0
        """Keyframe poses replaced by late corrections so far (``correct_poses``; a keyframe corrected
        twice counts twice)."""
        self._corrections_lock = threading.Lock()
        self.lock = HandoffLock()
        """Guards the model (step, reset, snapshot, checkpoints); hold it to make several calls one. A
        loop that steps repeatedly calls ``lock.yield_to_waiters()`` before taking it again."""
        self.has_language = int(self.teacher.clip_dim) > 0
        """False with teacher kind 'none': no features are computed and the model has no language field."""
        self.changes: Optional[ChangeDetector] = (
            ChangeDetector(cfg.changes, seed=cfg.seed) if self.online and cfg.changes.enabled else None
        )
        """Change detection on the stream (online sessions with ``changes.enabled``; see ``_follow_changes``)."""
        self._worker = None
        if self.online and self.has_language:
            from lerf_ros.teachers.worker import FeatureWorker

            self._worker = FeatureWorker(self.teacher, cfg.teacher)

    # ------------------------------------------------------------------ frames in
    @property
    def teacher_description(self) -> str:
        return self.teacher.description

    def submit(self, frame: Frame, selector: Optional[KeyframeSelector] = None) -> SubmitResult:
        """Offer a frame of a live stream; never raises for bad input (the result says why it was not
        used). The selector validates it first (an invalid frame is rejected, kind 'invalid'); a kept
        frame goes to the store and its teacher features are computed in the background (none
        without a language field). ``selector``: the frame's stream's own selector when several
        cameras feed the session (each judges the motion and stamps of its own camera); default
        ``self.selector``."""
        if not self.online:
            raise RuntimeError("submit() is for online sessions; use add() for a recorded dataset")
        selector = self.selector if selector is None else selector
        decision = selector.consider(frame)
        check = None
        if self.changes is not None and not decision.rejected:
            decision, check = self._follow_changes(frame, decision, selector)
        if not decision.keep:
            return SubmitResult(False, decision.rejected, decision.reason, decision.kind)
        try:
            key, _ = self.keyframes.add(decision.frame)
        except KeyframeStoreError as exc:
            return SubmitResult(False, True, str(exc), "too_large")
        try:
            kf = self.keyframes.get(key)
        except KeyError:  # evicted at once (protect_newest = 0 and the most redundant pose)
            return SubmitResult(False, False, "evicted as the most redundant keyframe", "redundant")
        if check is not None and check.focus is not None and self.changes.focus_open():
            # where the field disagrees with this view, soon after a change: drawn from more often
            ch = self.cfg.changes
            mask = resample_mask(check.focus, check.focus_K, kf.K, kf.height, kf.width, kf.distortion)
            self.keyframes.set_focus(key, mask, ch.focus_steps)
        if self._worker is None:  # teacher kind 'none': nothing to compute
            return SubmitResult(True, False, "keyframe", "keyframe")
        # The worker reads the stored pixels (no second copy); the instance map of a synthetic frame
        # is only needed for its features.
        work = kf.frame
        if decision.frame.instance is not None:
            work.instance = decision.frame.instance
        self._worker.submit(key, work)
        return SubmitResult(True, False, "keyframe", "keyframe")

    def add(self, frame: Frame, features: Any = None) -> int:
        """Keep ``frame`` as a keyframe (no selection) with its teacher features (computed now when
        not given; none without a language field); returns its key. Raises FrameError for an invalid
        frame (both the feature computation and the store validate it first)."""
        from lerf_ros.teachers.features import compute_frame_features

        if features is None and self.has_language:
            features = compute_frame_features(self.teacher, frame, self.cfg.teacher)
        key, _ = self.keyframes.add(frame, features)
        return key

    def _follow_changes(
        self, frame: Frame, decision: KeyframeDecision, selector: KeyframeSelector
    ) -> Tuple[KeyframeDecision, Optional[ChangeCheck]]:
        """Compare a valid frame of the stream with the field (``lerf_ros.mapping.changes``); on a
        confirmed change, retire the keyframes (or, with ``changes.retire`` 'pixels', their pixels) that
        show the changed region as it was and keep this
        frame as a keyframe (even when the selector skipped it). Returns the decision to follow and
        the comparison (None before training starts)."""
        trainer = self.trainer
        if trainer is None:
            return decision, None
        check: ChangeCheck = self.changes.observe(
            frame, trainer.render_view, trainer.step_count, self.keyframes.keyframes
        )
        if check.status != "change":
            return decision, check
        retired = 0
        for key in check.stale_keys:
            mask = check.stale_masks.get(key)
            if mask is not None:  # only the pixels that show the changed region as it was
                retired += self.keyframes.retire_pixels(key, mask) is not None  # None: evicted meanwhile
                continue
            try:
                self.keyframes.remove(key)
                retired += 1
            except KeyError:  # evicted meanwhile
                pass
        self.changes.record_retired(retired)
        if check.new_change:
            c = check.centre if check.centre is not None else np.zeros(3)  # its nearer surface's mean
            self.log(
                "info",
                f"scene change near ({c[0]:+.2f}, {c[1]:+.2f}, {c[2]:+.2f}) m at step {trainer.step_count}: "
                f"{check.reason}; {retired} keyframe(s) retired",
            )
        if decision.keep:
            return decision, check
        prepared = downscale_frame(frame, self.cfg.keyframes.max_image_side)
        selector.mark_kept(prepared)
        return KeyframeDecision("keep", "kept: it shows a change of the scene", "keyframe", prepared), check

    def change_stats(self) -> Dict[str, Any]:
        """Change detection counters: changes_detected, keyframes_retired, frames_compared (zeros when off),
        and last_change_step (the training step of the newest change; -1: none)."""
        if self.changes is None:
            return {"changes_detected": 0, "keyframes_retired": 0, "frames_compared": 0, "last_change_step": -1}
        return self.changes.stats()

    def collect_features(self) -> int:
        """Attach the features the background worker has finished; returns how many were attached.
        Failures are logged (the keyframe keeps training colour and depth only)."""
        if self._worker is None:
            return 0
        n = 0
        for key, feats in self._worker.poll():
            n += bool(self.keyframes.set_features(key, feats))  # False when evicted meanwhile
        for key, err in self._worker.take_errors():
            self.log("warning", f"teacher features failed for keyframe {key}: {err}")
        return n

    @property
    def features_pending(self) -> int:
        return 0 if self._worker is None else self._worker.pending

    def correct_poses(
        self,
        poses_by_stamp: Union[Mapping[float, np.ndarray], Iterable[Tuple[float, np.ndarray]]],
        tolerance_m: float = 0.01,
        tolerance_deg: float = 0.5,
        stamp_tolerance_s: float = 0.005,
        max_gap_s: float = 0.0,
    ) -> int:
        """Late pose corrections (e.g. a SLAM loop closure moved past poses): replace the input pose of
        each stored keyframe that a corrected pose names and that moved beyond the tolerance.

        Args:
            poses_by_stamp: {stamp (s): camera-to-world (4, 4)} or (stamp, pose) pairs; a keyframe takes
                the pose whose stamp is nearest its own, if within ``stamp_tolerance_s``.
            tolerance_m, tolerance_deg: a keyframe is updated only when its pose moved by more than
                this translation (m) or rotation (degrees); smaller moves are left alone.
            max_gap_s: a keyframe with no corrected pose that near, but between two corrected poses at
                most this far apart (s), takes their interpolation (translation linear, rotation slerp);
                0: no interpolation (a path of sparse SLAM poses needs it).
        Returns:
            How many keyframe poses were replaced (also added to ``pose_corrections``). Each goes
            through ``KeyframeStore.set_pose``, which bumps the store version and the keyframe's slot
            pose version (its learned pose correction, if any, is reset). A pose that is not a finite
            rigid transform, or has a stamp that is not finite, is left out (one warning per call says
            how many); the others still apply.
        """
        if not (tolerance_m >= 0 and tolerance_deg >= 0 and stamp_tolerance_s >= 0 and max_gap_s >= 0):
            raise ValueError(
                f"tolerances must be >= 0, got {tolerance_m} m, {tolerance_deg} deg, {stamp_tolerance_s} s, "
                f"max_gap_s {max_gap_s}"
            )
        items = list(poses_by_stamp.items()) if isinstance(poses_by_stamp, Mapping) else list(poses_by_stamp)
        good: List[Tuple[float, np.ndarray]] = []
        for stamp, pose in items:
            try:
                stamp, pose = float(stamp), np.asarray(pose, dtype=np.float64)
                if not math.isfinite(stamp):
                    raise FrameError(f"stamp {stamp} is not finite")
                check_pose(pose)
            except (FrameError, TypeError, ValueError):
                continue
            good.append((stamp, pose))
        if len(good) < len(items):
            self.log(
                "warning",
                f"late pose corrections: {len(items) - len(good)} pose(s) are not rigid transforms with a "
                "finite stamp; skipped",
            )
        kfs = self.keyframes.keyframes()
        if not good or not kfs:
            return 0
        good.sort(key=lambda item: item[0])
        stamps = np.array([s for s, _ in good])
        poses = np.stack([p for _, p in good])
        kf_stamps = np.array([kf.stamp for kf in kfs], dtype=np.float64)
        # Each keyframe's neighbours among the corrected stamps: the nearest within the stamp
        # tolerance, else an interpolation across a gap of at most max_gap_s.
        hi = np.clip(np.searchsorted(stamps, kf_stamps), 0, len(stamps) - 1)
        lo = np.clip(hi - 1, 0, len(stamps) - 1)
        d_lo, d_hi = np.abs(kf_stamps - stamps[lo]), np.abs(stamps[hi] - kf_stamps)
        nearest = np.where(d_lo <= d_hi, lo, hi)
        exact = np.minimum(d_lo, d_hi) <= stamp_tolerance_s
        inside = (stamps[lo] < kf_stamps) & (kf_stamps < stamps[hi]) & (stamps[hi] - stamps[lo] <= max_gap_s)
        between = ~exact & inside
        target = poses[nearest]
        if between.any():
            alpha = (kf_stamps[between] - stamps[lo[between]]) / (stamps[hi[between]] - stamps[lo[between]])
            target[between] = interpolate_pose(poses[lo[between]], poses[hi[between]], alpha)
        changed = 0
        for i in np.flatnonzero(exact | between).tolist():
            dt, ang = pose_distance(kfs[i].c2w, target[i])
            if float(dt) <= tolerance_m and math.degrees(float(ang)) <= tolerance_deg:
                continue
            changed += bool(self.keyframes.set_pose(kfs[i].key, target[i]))  # False: evicted meanwhile
        with self._corrections_lock:
            self.pose_corrections += changed
        return changed

    def ready_keyframes(self) -> int:
        """Keyframes with teacher features (without a language field: every keyframe)."""
        if not self.has_language:
            return len(self.keyframes)
        return self.keyframes.num_with_features()

    def can_train(self) -> bool:
        """Enough keyframes are ready: have features, or need none (``keyframes.min_keyframes_to_train``;
        offline: one)."""
        need = self.cfg.keyframes.min_keyframes_to_train if self.online else 1
        return self.ready_keyframes() >= need

    # ------------------------------------------------------------------ model
    @property
    def step_count(self) -> int:
        trainer = self.trainer
        return 0 if trainer is None else int(trainer.step_count)

    def _initial_bounds(self) -> Tuple[List[float], float]:
        m = self.cfg.model
        if not m.auto_bounds:
            return [float(c) for c in m.scene_center], float(m.scene_scale)
        kfs = self.keyframes.keyframes()
        if not kfs:
            raise RuntimeError("no keyframes: the scene bounds cannot be estimated yet")
        center, scale = estimate_scene_bounds(kfs)
        self.log(
            "info",
            f"scene bounds from {len(kfs)} keyframes: centre {[round(c, 3) for c in center]} m, "
            f"half-extent {scale:.3f} m",
        )
        return center, scale

    def ensure_model(self) -> Trainer:
        """The trainer, built on first use (scene bounds fixed then)."""
        with self.lock:
            if self.trainer is None:
                if self.bounds is None:
                    self.bounds = self._initial_bounds()
                self.trainer = Trainer(
                    self.cfg,
                    self.teacher.clip_dim,
                    self.teacher.dino_dim,
                    self.keyframes,
                    teacher=self.teacher_description,
                    bounds=self.bounds,
                )
                self.bounds = self.trainer.bounds  # as the model holds them (float32)
            return self.trainer

    def step(self) -> Dict[str, float]:
        """One optimiser step (see ``Trainer.step``); builds the model first if needed."""
        with self.lock:
            stats = self.ensure_model().step()
            self.losses = {k: float(v) for k, v in stats.items() if k in LOSS_KEYS}
            return stats

    def snapshot(self) -> FrozenField:
        """An immutable snapshot of the current model for queries (with the step of the newest scene
        change, ``FrozenField.scene_change_step``)."""
        with self.lock:
            snap = self.ensure_model().snapshot()
            snap.scene_change_step = self.scene_change_step()
            return snap

    def scene_change_step(self) -> int:
        """Training step of the newest scene change counted (-1: none, or change detection off)."""
        return -1 if self.changes is None else int(self.changes.last_change_step)

    def render_view(
        self, K: np.ndarray, c2w: np.ndarray, height: int, width: int, scale: Optional[float] = None
    ) -> Dict[str, torch.Tensor]:
        """Render a view with the live model (see ``Trainer.render_view``)."""
        return self.ensure_model().render_view(K, c2w, height, width, scale=scale)

    def keyframe_poses(self) -> List[Tuple[int, np.ndarray]]:
        """(key, camera-to-world (4, 4)) of each stored keyframe, oldest first: the input pose composed
        with its learned correction (``Trainer.keyframe_poses``); the input poses before training starts."""
        trainer = self.trainer
        if trainer is None:
            return [(kf.key, kf.c2w) for kf in self.keyframes.keyframes()]
        return trainer.keyframe_poses()

    def pose_correction_stats(self) -> Dict[str, float]:
        """Mean and max learned pose correction over the keyframes (``Trainer.pose_correction_stats``;
        zeros before training starts)."""
        trainer = self.trainer
        if trainer is None:
            return dict.fromkeys(
                ("translation_mean_m", "translation_max_m", "rotation_mean_deg", "rotation_max_deg"), 0.0
            )
        return trainer.pose_correction_stats()

    def corrected_poses(self) -> Tuple[List[Tuple[int, np.ndarray]], Dict[str, float]]:
        """``keyframe_poses()`` and ``pose_correction_stats()`` read together, between two training steps."""
        with self.lock:
            return self.keyframe_poses(), self.pose_correction_stats()

    def reset(self) -> None:
        """A fresh model at step 0 (bounds estimated again); keyframes and their features are kept."""
        with self.lock:
            self.trainer = None
            self.bounds = None
            self.losses = {}
            if self.changes is not None:
                self.changes.reset()
                # the newest change's step belongs to the old model's step count
                self.changes.last_change_step = -1
            self.keyframes.clear_focus()  # pixels where the old model disagreed

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Optional[str] = None) -> str:
        """Write a checkpoint atomically (default: ``<output_dir>/checkpoints/step-NNNNNNN.ckpt``, the
        newest ``trainer.keep_checkpoints`` periodic ones kept); returns its path."""
        with self.lock:
            if self.trainer is None:
                raise RuntimeError("no model yet: training has not started (waiting for keyframes)")
            periodic = path is None
            if periodic:
                os.makedirs(self.checkpoint_dir, exist_ok=True)
                path = os.path.join(self.checkpoint_dir, ckpt.checkpoint_name(self.step_count))
            payload = self.trainer.state_payload()
            payload["retired_pixels"] = self.keyframes.retired_state()  # pixels retired for scene changes
            payload["scene_change_step"] = self.scene_change_step()  # a query process's surface refresh
            ckpt.write_atomic(path, payload)
            if periodic:
                ckpt.prune_checkpoints(self.checkpoint_dir, keep=self.cfg.trainer.keep_checkpoints)
            self.last_checkpoint = path
            self.log("info", f"checkpoint {path}")
            return path

    def resume(self, path: Optional[str] = None) -> Optional[str]:
        """Continue from checkpoint ``path`` (default: the newest periodic one in the checkpoint folder;
        None when there is none). The checkpoint's scene bounds are taken: they are part of the weights."""
        if path is None:
            path = ckpt.latest_checkpoint(self.checkpoint_dir)
            if path is None:
                return None
        payload = ckpt.read_checkpoint(path)
        with self.lock:
            self.bounds = checkpoint_bounds(payload)
            self.trainer = None
            self.ensure_model().load_checkpoint(path, payload=payload)
            # absent from older checkpoints: nothing retired
            self.keyframes.restore_retired(payload.get("retired_pixels", []))
            if self.changes is not None:  # absent from older checkpoints: no change known
                self.changes.last_change_step = int(payload.get("scene_change_step", -1))
            self.last_checkpoint = path
        return path

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the feature worker (queued frames are dropped); waits up to ``timeout`` s (None: no
        limit) for the frame it is computing."""
        if self._worker is not None:
            self._worker.close(cancel=True, timeout=timeout)


def checkpoint_bounds(payload: Dict[str, Any]) -> Tuple[List[float], float]:
    """The scene bounds a checkpoint was trained with (its weights' buffers hold them)."""
    state = payload["model"]
    return [float(c) for c in state["scene_center"].tolist()], float(state["scene_scale"])
