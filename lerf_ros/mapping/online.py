"""The online trainer (ROS-free): frames arrive while the field learns and queries are answered.

Threads:
- the caller's (``submit``): validate the frame, select keyframes, add them to the bounded store
  and the training views, and hand them to the feature worker;
- the feature worker's: teacher features (CLIP crop pyramid, DINO) for new keyframes;
- the training thread: collects finished features, takes optimiser steps once at least
  ``keyframes.min_keyframes_to_train`` keyframes have features, publishes an immutable snapshot for
  queries every ``snapshot_every`` steps, and writes periodic atomic checkpoints.

Training samples rays from all keyframes with a bias toward the newest (see TrainingViews), so the
field adapts to new views without forgetting old ones.
"""
from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

from lerf_ros.config import LerfConfig
from lerf_ros.data.frame import Frame

LogFn = Callable[[str, str], None]  # (level: 'info'|'warning'|'error', text)


class TrainerState(str, enum.Enum):
    WAITING = "waiting_for_frames"
    TRAINING = "training"
    PAUSED = "paused"
    ERROR = "error"
    IDLE = "idle"


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


@dataclass
class OnlineStatus:
    state: TrainerState
    step: int
    keyframes: int
    features_pending: int
    rays_per_second: float
    losses: Dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""
    message: str = ""
    store_mb: float = 0.0


def _print_log(level: str, text: str) -> None:
    print(f"[{level}] {text}", flush=True)


class OnlineTrainer:
    """See the module docstring. ``teacher`` defaults to ``make_teacher(cfg.teacher)``."""

    def __init__(self, cfg: LerfConfig, teacher=None, log: LogFn = _print_log, snapshot_every: int = 100) -> None:
        from lerf_ros.mapping.dataset import TrainingViews
        from lerf_ros.mapping.keyframes import KeyframeSelector, KeyframeStore
        from lerf_ros.teachers import make_teacher
        from lerf_ros.teachers.worker import FeatureWorker

        self.cfg = cfg
        self._auto_bounds = cfg.model.auto_bounds
        self.log = log
        self.snapshot_every = max(1, int(snapshot_every))
        torch.manual_seed(cfg.seed)
        self.teacher = teacher if teacher is not None else make_teacher(cfg.teacher)
        self.teacher_description = self.teacher.description
        self.selector = KeyframeSelector(cfg.keyframes)
        self.store = KeyframeStore(cfg.keyframes)
        self.views = TrainingViews()
        self.worker = FeatureWorker(self.teacher, cfg.teacher)
        self._lock = threading.RLock()  # guards the model (step/reset/checkpoint/snapshot)
        self._trainer = None  # built when training starts (scene bounds) or on resume
        self._paused = False
        self._closing = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error = ""
        self._losses: Dict[str, float] = {}
        self._rays_per_second = 0.0
        self._checkpoint = ""
        self._snapshot = None
        self._features_ready = 0
        self.checkpoint_dir = os.path.join(cfg.output_dir, "checkpoints")

    def _new_trainer(self):
        from lerf_ros.mapping.dataset import estimate_scene_bounds
        from lerf_ros.mapping.trainer import Trainer

        if self.cfg.model.auto_bounds:
            frames = [kf.frame for _, kf in self.store.items()]
            if frames:
                center, scale = estimate_scene_bounds(frames)
                self.cfg = self.cfg.override({"model.scene_center": center, "model.scene_scale": scale,
                                              "model.auto_bounds": False})
                self.log("info", f"scene bounds from {len(frames)} keyframes: centre "
                                 f"{[round(c, 3) for c in center]} m, half-extent {scale:.3f} m")
        return Trainer(self.cfg, self.teacher.clip_dim, self.teacher.dino_dim, self.views,
                       teacher=self.teacher_description)

    # ------------------------------------------------------------------ frames in
    def submit(self, frame: Frame) -> SubmitResult:
        """Offer a frame; never raises for bad input (the result says why it was not used).
        The selector validates the frame first (an invalid one is rejected, kind 'invalid')."""
        decision = self.selector.consider(frame)
        if not decision.keep:
            return SubmitResult(False, decision.rejected, decision.reason, decision.kind)
        frame = decision.frame  # possibly downscaled
        key, evicted = self.store.add(frame)
        for old in evicted:
            self.views.remove(old)
        self.views.add(key, frame)
        self.worker.submit(key, frame)
        return SubmitResult(True, False, "keyframe", "keyframe")

    # ------------------------------------------------------------------ training thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lerf_train", daemon=True)
            self._thread.start()

    def _collect_features(self) -> None:
        for key, feats in self.worker.poll():
            if self.store.set_features(key, feats):  # False when the keyframe was evicted meanwhile
                self.views.set_features(key, feats)
                self._features_ready += 1
            # Attaching features can push the store over its memory bound.
            for old in self.store.take_evicted():
                self.views.remove(old)
        for key, err in self.worker.take_errors():
            self.log("warning", f"teacher features failed for keyframe {key}: {err}")

    def ready_keyframes(self) -> int:
        return self.views.num_with_features()

    def _loop(self) -> None:
        last_t, rays = time.perf_counter(), 0
        while not self._closing.is_set():
            try:
                self._collect_features()
                if (self._paused or self.step >= self.cfg.trainer.max_steps
                        or self.ready_keyframes() < self.cfg.keyframes.min_keyframes_to_train):
                    self._closing.wait(0.05)
                    continue
                with self._lock:
                    if self._paused:  # paused while this thread waited for the lock
                        continue
                    if self._trainer is None:
                        self._trainer = self._new_trainer()
                    out = self._trainer.step()
                    step = self._trainer.step_count
                    self._losses = {k: float(v) for k, v in out.items() if k in ("rgb", "lang", "dino", "psnr", "depth")}
                    rays += int(out.get("rays", self.cfg.trainer.rays_per_batch))
                    if step % self.snapshot_every == 0 or self._snapshot is None:
                        self._snapshot = self._trainer.snapshot()
                    every = self.cfg.trainer.checkpoint_every
                    if (every and step % every == 0) or step == self.cfg.trainer.max_steps:
                        self._save_locked()  # periodic, and once when the step budget is reached
                now = time.perf_counter()
                if now - last_t >= 2.0:
                    self._rays_per_second = rays / (now - last_t)
                    last_t, rays = now, 0
            except Exception as exc:  # keep the node alive; report the reason
                self._error = f"training stopped: {exc!r}"
                self.log("error", self._error)
                self._closing.wait(1.0)

    # ------------------------------------------------------------------ control
    @property
    def step(self) -> int:
        trainer = self._trainer
        return 0 if trainer is None else int(trainer.step_count)

    @property
    def latest_snapshot(self):
        """The newest immutable snapshot (None before the first training step)."""
        return self._snapshot

    def set_paused(self, paused: bool) -> None:
        """Pause or resume; when pausing, returns after the step in flight (if any) has finished."""
        self._paused = bool(paused)
        with self._lock:
            pass

    def reset(self) -> None:
        """A fresh model at step 0; keyframes and their features are kept."""
        with self._lock:
            self._trainer = None  # rebuilt (with fresh bounds when auto) at the next step
            self.cfg = self.cfg.override({"model.auto_bounds": self._auto_bounds})
            self._snapshot = None
            self._losses = {}
            self._error = ""

    def _save_locked(self) -> str:
        from lerf_ros.mapping.checkpoint import checkpoint_name, prune_checkpoints

        os.makedirs(self.checkpoint_dir, exist_ok=True)
        path = os.path.join(self.checkpoint_dir, checkpoint_name(self.step))
        self._trainer.save_checkpoint(path)
        prune_checkpoints(self.checkpoint_dir, keep=self.cfg.trainer.keep_checkpoints)
        self._checkpoint = path
        self.log("info", f"checkpoint {path}")
        return path

    def save_checkpoint(self) -> str:
        with self._lock:
            if self._trainer is None:
                raise RuntimeError("no model yet: training has not started (waiting for keyframes)")
            return self._save_locked()

    def resume_latest(self) -> Optional[str]:
        """Load the newest checkpoint in ``output_dir/checkpoints`` if there is one."""
        from lerf_ros.mapping.checkpoint import config_of, latest_checkpoint, read_checkpoint

        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return None
        payload = read_checkpoint(path)
        saved = config_of(payload).model
        with self._lock:
            # The field's coordinate frame is part of the weights: take the checkpoint's bounds.
            self.cfg = self.cfg.override({"model.scene_center": saved.scene_center,
                                          "model.scene_scale": saved.scene_scale, "model.auto_bounds": False})
            self._trainer = self._new_trainer()
            self._trainer.load_checkpoint(path, payload=payload)
            self._checkpoint = path
        return path

    def status(self) -> OnlineStatus:
        if self._error:
            state = TrainerState.ERROR
        elif self._paused:
            state = TrainerState.PAUSED
        elif self.ready_keyframes() < self.cfg.keyframes.min_keyframes_to_train:
            state = TrainerState.WAITING
        elif self.step >= self.cfg.trainer.max_steps:
            state = TrainerState.IDLE
        else:
            state = TrainerState.TRAINING
        stats = self.store.stats()
        msg = self._error or (
            f"{state.value}: step {self.step}, {stats['count']} keyframes "
            f"({self.ready_keyframes()} with features, {self.worker.pending} pending), "
            f"{self._rays_per_second:.0f} rays/s")
        return OnlineStatus(state=state, step=self.step, keyframes=stats["count"],
                            features_pending=self.worker.pending, rays_per_second=self._rays_per_second,
                            losses=dict(self._losses), checkpoint=self._checkpoint, message=msg,
                            store_mb=stats["bytes"] / 2**20)

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self.worker.close()
