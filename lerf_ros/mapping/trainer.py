"""The LERF optimiser: ray batches from a keyframe store -> losses -> one optimiser step.

One ``Trainer.step()`` samples ``trainer.rays_per_batch`` rays, renders them (proposal sampling,
radiance field, and the language/DINO fields on the rays whose view has teacher features),
adds the losses, and takes an Adam step per parameter group with that group's schedule:

=========  ===================================  =======================================
group      parameters                           schedule (lr -> lr_final over steps)
=========  ===================================  =======================================
fields     density/colour hash grid + MLPs      lr_fields -> lr_final_fields, decay_steps
proposal   proposal networks                    lr_proposal -> lr_final_proposal, decay_steps
lang       language + DINO hash grids and MLPs  lr_lang -> lr_final_lang, lang_decay_steps
pose       per-keyframe pose corrections        0 for pose_warmup_steps, then pose_lr decaying
                                                by the fields' ratio over the next decay_steps
appearance per-keyframe appearance embeddings   as fields
=========  ===================================  =======================================

The last two are per-keyframe tables (``lerf_ros.mapping.camera_opt``: one row per keyframe slot,
their own sparse Adam with per-row state, so a slot that gets a new keyframe starts afresh). A
training ray's origin and direction go through its keyframe's pose correction and its colour sees
its keyframe's appearance; renders without a keyframe (held-out views, snapshots, queries) use the
pose they are given and the neutral appearance. The corrected keyframe poses are
``keyframe_poses()``; snapshots and checkpoints keep them.

On CUDA the networks run under fp16 autocast with a GradScaler (``trainer.mixed_precision``);
rendering and losses stay float32. All randomness of a step (rays, jitter, background) comes
from the trainer's own generator, which checkpoints save, so a resumed run continues exactly.

The trainer is thread-safe: ``step``, ``snapshot``, ``render_view`` and the checkpoint methods
take one lock, so an online trainer can snapshot from another thread between steps.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from lerf_ros.config import ConfigError, LerfConfig
from lerf_ros.field.frozen import FrozenField, render_image
from lerf_ros.field.hash_encoding import coarse_to_fine_weights
from lerf_ros.field.model import LerfModel, geometry_losses, language_losses, total_loss
from lerf_ros.field.snapshot import CameraView
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.camera_opt import CameraCorrections, pose_grad_rows, render_with_pose_rows
from lerf_ros.mapping.rays import RayBatch

_GROUPS = ("fields", "proposal", "lang")
_BOUNDS_KEYS = ("scene_center", "scene_scale", "auto_bounds")


def learning_rate(lr0: float, lr_final: float, decay_steps: int, step: int, schedule: str, warmup: int) -> float:
    """Learning rate at ``step``: exponential (log-linear) or cosine decay from ``lr0`` to
    ``lr_final`` over ``decay_steps`` (then constant), times a linear warm-up."""
    f = min(max(step / float(decay_steps), 0.0), 1.0)
    if schedule == "cosine":
        lr = lr_final + 0.5 * (lr0 - lr_final) * (1.0 + math.cos(math.pi * f))
    else:
        lr = math.exp(math.log(lr0) * (1.0 - f) + math.log(lr_final) * f)
    if warmup > 0:
        lr *= min(1.0, (step + 1) / float(warmup))
    return lr


class RaySource(Protocol):
    """What the trainer learns from: ``lerf_ros.mapping.keyframes.KeyframeStore`` implements it."""

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> RayBatch: ...

    def cameras(self) -> List[CameraView]: ...

    def keyframes(self) -> List[Any]:
        """The stored keyframes (``key``, ``slot``, ``K``, ``c2w``, ``stamp``, ``frame_id``, ``index``,
        ``height``, ``width``), oldest first."""
        ...

    def slot_generations(self) -> Tuple[List[int], List[int]]: ...

    @property
    def version(self) -> int: ...


Bounds = Tuple[Sequence[float], float]
"""Scene bounds: (centre (3,) metres, half-extent metres) of the region the field maps linearly."""


class Trainer:
    """Trains a LERF on the rays of ``views``.

    Args:
        cfg: the run's configuration (model, trainer, device).
        clip_dim: the teacher's CLIP dimension (language field output).
        dino_dim: the teacher's dense-feature dimension (DINO field output).
        views: where rays come from (the session's keyframe store, shared with whoever adds frames).
        teacher: one-line description of the teacher (recorded in checkpoints and snapshots).
        bounds: (centre, half-extent) of the scene; default ``model.scene_center`` /
            ``model.scene_scale``. Part of the weights: checkpoints keep them.
    """

    def __init__(
        self,
        cfg: LerfConfig,
        clip_dim: int,
        dino_dim: int,
        views: RaySource,
        teacher: str = "",
        bounds: Optional[Bounds] = None,
    ) -> None:
        cfg.check()
        self.cfg = copy.deepcopy(cfg)
        self.views = views
        self.teacher = teacher
        self.device = torch.device(cfg.resolved_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device = {cfg.device!r} is invalid: CUDA is not available on this machine")
        tc = self.cfg.trainer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            self.model = LerfModel(self.cfg.model, clip_dim, dino_dim)
        if bounds is not None:
            center, scale = bounds
            if len(center) != 3 or not float(scale) > 0 or not np.all(np.isfinite(center)):
                raise ConfigError(
                    f"scene bounds must be a finite centre (3 values) and a half-extent > 0, got {center}, {scale}"
                )
            with torch.no_grad():
                self.model.scene_center.copy_(torch.as_tensor(np.asarray(center, dtype=np.float32)))
                self.model.scene_scale.fill_(float(scale))
        self.model.to(self.device).train()
        groups = self.model.param_groups()
        decay = {"fields": tc.weight_decay, "proposal": tc.weight_decay, "lang": tc.lang_weight_decay}
        self.optimizer = torch.optim.Adam(
            [{"params": groups[g], "name": g, "weight_decay": decay[g]} for g in _GROUPS if groups[g]],
            lr=tc.lr_fields,
            eps=tc.adam_eps,
        )
        self.corrections = CameraCorrections(tc.pose_refinement, self.cfg.model.appearance_dim).to(self.device)
        self._slots_seen: Tuple[List[int], List[int]] = ([], [])
        self._slots_version = -1
        self._live = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._restored: Dict[Tuple[float, str, int], Dict[str, Any]] = {}
        """Per keyframe (stamp, frame_id, index): rows of the corrections a checkpoint held, restored
        when that keyframe is (again) in the store with the same input pose."""
        self.use_amp = self.device.type == "cuda" and tc.mixed_precision
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.step_count = 0
        self.rays_per_second = 0.0
        """Exponential moving average of rays per second over recent steps (whole step)."""
        self._lock = threading.RLock()

    @property
    def bounds(self) -> Tuple[List[float], float]:
        """(centre, half-extent) of the scene in metres."""
        return [float(c) for c in self.model.scene_center.tolist()], float(self.model.scene_scale)

    @property
    def clip_dim(self) -> int:
        return self.model.clip_dim

    @property
    def dino_dim(self) -> int:
        return self.model.dino_dim

    # ------------------------------------------------------------------ schedule
    def learning_rates(self, step: Optional[int] = None) -> Dict[str, float]:
        """Learning rate of each parameter group at ``step`` (default: the next step)."""
        tc = self.cfg.trainer
        s = self.step_count if step is None else step
        return {
            "fields": learning_rate(tc.lr_fields, tc.lr_final_fields, tc.decay_steps, s, tc.schedule, tc.warmup_steps),
            "proposal": learning_rate(
                tc.lr_proposal, tc.lr_final_proposal, tc.decay_steps, s, tc.schedule, tc.warmup_steps
            ),
            "lang": learning_rate(tc.lr_lang, tc.lr_final_lang, tc.lang_decay_steps, s, tc.schedule, tc.warmup_steps),
            "pose": 0.0
            if s < tc.pose_warmup_steps or tc.pose_lr == 0
            else learning_rate(
                tc.pose_lr,
                tc.pose_lr * tc.lr_final_fields / tc.lr_fields,
                tc.decay_steps,
                s - tc.pose_warmup_steps,
                tc.schedule,
                0,
            ),
            "appearance": learning_rate(
                tc.lr_fields, tc.lr_final_fields, tc.decay_steps, s, tc.schedule, tc.warmup_steps
            ),
        }

    # ------------------------------------------------------------------ per-keyframe corrections
    def _sync_slots(self) -> None:
        """Follow the store's slots: grow the tables, reset the rows of slots that got a new keyframe
        (or their pose row when the keyframe's input pose was replaced), restoring a checkpoint's rows
        for a keyframe it knew; and note the live slots."""
        version = self.views.version
        if version == self._slots_version:
            return
        gens, pose_versions = self.views.slot_generations()
        kfs = self.views.keyframes()
        self.corrections.resize(len(gens))
        seen_g, seen_p = self._slots_seen
        by_slot = {kf.slot: kf for kf in kfs}
        for s in range(len(gens)):
            if s < len(seen_g) and gens[s] == seen_g[s]:
                if pose_versions[s] != seen_p[s]:
                    self.corrections.reset_rows([s], names=("pose",))
                continue
            self.corrections.reset_rows([s])
            kf = by_slot.get(s)
            saved = None if kf is None else self._restored.pop(_identity(kf), None)
            if saved is not None:
                same_pose = np.allclose(saved["c2w"], kf.c2w, rtol=0, atol=1e-9)
                self.corrections.set_row_state(s, saved["rows"], names=None if same_pose else ("appearance",))
        self._slots_seen = (gens, pose_versions)
        self._slots_version = version
        self._live = torch.tensor(sorted(by_slot), dtype=torch.int64, device=self.device)

    def keyframe_poses(self) -> List[Tuple[int, np.ndarray]]:
        """(key, corrected camera-to-world (4, 4)) of each stored keyframe, oldest first: its input pose
        composed with the learned correction (the input pose itself without pose refinement)."""
        with self._lock:
            self._sync_slots()
            kfs = self.views.keyframes()
            if not kfs:
                return []
            c2w = self.corrections.corrected_c2w(np.stack([kf.c2w for kf in kfs]), [kf.slot for kf in kfs])
            return [(kf.key, c2w[i]) for i, kf in enumerate(kfs)]

    def corrected_cameras(self) -> List[CameraView]:
        """The keyframes' cameras with their corrected poses, oldest first."""
        with self._lock:
            kfs = self.views.keyframes()
            poses = self.keyframe_poses()
            return [CameraView(kf.K, c2w, kf.height, kf.width) for kf, (_, c2w) in zip(kfs, poses)]

    def pose_correction_stats(self) -> Dict[str, float]:
        """Mean and max learned pose correction over the stored keyframes: 'translation_mean_m',
        'translation_max_m', 'rotation_mean_deg', 'rotation_max_deg' (zeros without refinement)."""
        with self._lock:
            self._sync_slots()
            return self.corrections.pose_stats(self._live)

    # ------------------------------------------------------------------ training
    def step(self) -> Dict[str, float]:
        """One optimisation step. Returns the weighted total 'loss', each unweighted loss,
        'psnr' of the batch, 'rays', 'lang_rays', 'rays_per_second', 'step' (after the step)."""
        with self._lock:
            t0 = time.perf_counter()
            tc = self.cfg.trainer
            lrs = self.learning_rates()
            for group in self.optimizer.param_groups:
                group["lr"] = lrs[group["name"]]
            batch = self.views.sample(tc.rays_per_batch, self.generator).to(self.device)
            self._sync_slots()  # after sampling: every slot in the batch has its row
            if batch.clip is not None and batch.clip.shape[1] != self.clip_dim:
                raise ValueError(
                    f"teacher CLIP features have dimension {batch.clip.shape[1]}, "
                    f"the language field was built for {self.clip_dim}"
                )
            if batch.dino is not None and batch.dino.shape[1] != self.dino_dim:
                raise ValueError(
                    f"teacher DINO features have dimension {batch.dino.shape[1]}, "
                    f"the DINO field was built for {self.dino_dim}"
                )
            n = len(batch)
            bg_kind = self.cfg.model.background_color
            if bg_kind == "random":
                background = torch.rand((n, 3), generator=self.generator).to(self.device)
            else:
                background = torch.full((3,), 1.0 if bg_kind == "white" else 0.0, device=self.device)
            self.model.train()
            if tc.pose_refinement and tc.pose_coarse_to_fine_steps > 0:  # hash levels eased in, coarse first
                self.model.field.encoding.set_level_weights(
                    coarse_to_fine_weights(
                        self.step_count, tc.pose_coarse_to_fine_steps, self.model.field.encoding.layout.num_levels
                    )
                )
            origins, directions = batch.origins, batch.directions
            corrected = lrs["pose"] > 0 and self.corrections.has_pose
            # Pose gradients every pose_update_every-th step; the steps between use the corrections
            # as they are (no backward pass through the sample positions).
            refine = corrected and (self.step_count - tc.pose_warmup_steps) % tc.pose_update_every == 0
            # trainer.pose_ray_subset: every step, through every pose_update_every-th ray instead.
            grad_rows = None
            if corrected and tc.pose_ray_subset and tc.pose_update_every > 1:
                refine = True
                grad_rows = pose_grad_rows(n, tc.pose_update_every, self.step_count, self.device)
            if corrected:
                with torch.set_grad_enabled(refine):
                    origins, directions = self.corrections.correct_rays(origins, directions, batch.slot)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                render = dict(
                    generator=self.generator,
                    step=self.step_count,
                    background=background,
                    appearance=self.corrections.appearance_at(batch.slot),
                )
                if grad_rows is None:
                    out = self.model.render_rays(origins, directions, **render)
                else:
                    out = render_with_pose_rows(self.model.render_rays, origins, directions, grad_rows, **render)
                losses = geometry_losses(out, batch.rgb, tc, batch.depth, batch.dir_z, float(self.model.scene_scale))
                rows = batch.feature_rows
                if batch.clip is not None and rows.numel() > 0:
                    rendered = self.model.render_language(
                        out, rows, crop_px=batch.crop_px[rows], fy=batch.fy[rows], with_dino=batch.dino is not None
                    )
                    losses.update(language_losses(rendered, batch.clip, batch.dino, tc))
                loss = total_loss(losses, tc)
            if refine and tc.pose_regularization > 0:
                pose_reg = self.corrections.regularization(self._live)
                # Spread over rays, the images pull with a share of the batch: so does the penalty.
                share = 1.0 if grad_rows is None else grad_rows.numel() / n
                loss = loss + tc.pose_regularization * share * pose_reg
                losses["pose_reg"] = pose_reg
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at step {self.step_count}: "
                    + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.corrections.zero_grad()
            self.scaler.scale(loss).backward()
            grad_scale = float(self.scaler.get_scale()) if self.use_amp else 1.0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.corrections.adam_step(lrs, grad_scale):
                self.corrections.recentre(self._live)
            self.step_count += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = max(time.perf_counter() - t0, 1e-9)
            rps = n / dt
            self.rays_per_second = rps if self.rays_per_second == 0.0 else 0.9 * self.rays_per_second + 0.1 * rps
            stats = {k: float(v.detach()) for k, v in losses.items()}
            stats["loss"] = float(loss.detach())
            stats["psnr"] = float(-10.0 * math.log10(max(stats["rgb"], 1e-10)))
            stats["rays"] = float(n)
            stats["lang_rays"] = float(rows.numel() if batch.clip is not None else 0)
            stats["rays_per_second"] = self.rays_per_second
            stats["step"] = float(self.step_count)
            return stats

    # ------------------------------------------------------------------ read-only views of the model
    def snapshot(self) -> FrozenField:
        """An immutable copy of the current model (eval mode) plus the training views' cameras."""
        with self._lock:
            return FrozenField(self.model, self.corrected_cameras(), self.step_count, teacher=self.teacher)

    def render_view(
        self,
        K: np.ndarray,
        c2w: np.ndarray,
        height: int,
        width: int,
        scale: Optional[float] = None,
        chunk_rays: Optional[int] = None,
    ) -> Dict[str, torch.Tensor]:
        """Render a view with the live model (training pauses meanwhile). See ``FrozenField.render``."""
        with self._lock:
            was_training = self.model.training
            self.model.eval()
            try:
                chunk = chunk_rays or (32768 if self.device.type == "cuda" else 4096)
                return render_image(self.model, K, c2w, height, width, chunk, scale)
            finally:
                self.model.train(was_training)

    # ------------------------------------------------------------------ checkpoints
    def state_payload(self) -> Dict[str, Any]:
        """Everything a checkpoint holds (tensors are copies on the CPU)."""
        with self._lock:

            def cpu(obj):
                if isinstance(obj, torch.Tensor):
                    return obj.detach().to("cpu", copy=True)
                if isinstance(obj, dict):
                    return {k: cpu(v) for k, v in obj.items()}
                if isinstance(obj, list):
                    return [cpu(v) for v in obj]
                return copy.deepcopy(obj)

            return {
                "format": ckpt.FORMAT,
                "version": ckpt.VERSION,
                "config": self.cfg.to_dict(),
                "clip_dim": self.clip_dim,
                "dino_dim": self.dino_dim,
                "teacher": self.teacher,
                "step": self.step_count,
                "model": cpu(self.model.state_dict()),
                "optimizer": cpu(self.optimizer.state_dict()),
                "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state().clone(),
                "rays_per_second": self.rays_per_second,
                "cameras": ckpt.cameras_to_payload(self.corrected_cameras()),
                "bounds": self.bounds,
                "camera_corrections": self._corrections_payload(),
            }

    def _corrections_payload(self) -> List[Dict[str, Any]]:
        """Per stored keyframe: its identity, input pose and the rows of its corrections."""
        self._sync_slots()
        return [
            {
                "stamp": float(kf.stamp),
                "frame_id": str(kf.frame_id),
                "index": int(kf.index),
                "c2w": np.asarray(kf.c2w, dtype=np.float64).tolist(),
                "rows": self.corrections.row_state(kf.slot),
            }
            for kf in self.views.keyframes()
        ]

    def save_checkpoint(self, path: str) -> str:
        """Write a checkpoint atomically; returns ``path``."""
        ckpt.write_atomic(path, self.state_payload())
        return path

    def load_checkpoint(self, path: str, payload: Optional[Dict[str, Any]] = None) -> int:
        """Restore weights, optimiser, scaler, generator and step from ``path`` (bit-exact).

        The checkpoint must describe the same model (config 'model' section, clip_dim, dino_dim);
        use :meth:`from_checkpoint` to build a trainer from a checkpoint's own config. Returns the step.
        ``payload``: the file's contents when the caller has already read them (not read again).
        """
        if payload is None:
            payload = ckpt.read_checkpoint(path)
        if int(payload["clip_dim"]) != self.clip_dim or int(payload["dino_dim"]) != self.dino_dim:
            raise ckpt.CheckpointError(
                f"{path}: language field dimensions (clip {payload['clip_dim']}, dino {payload['dino_dim']}) differ "
                f"from this trainer's (clip {self.clip_dim}, dino {self.dino_dim})"
            )
        theirs = ckpt.saved_config(payload).get("model", {})
        ours = self.cfg.to_dict()["model"]
        # The scene bounds are state restored with the weights (buffers), not a property of the architecture.
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in _BOUNDS_KEYS)
        # A model without an appearance embedding renders as this one does with the neutral (zero)
        # embedding, whatever the colour head's weights on the embedding's inputs: it is taken up with
        # this model's initial weights there (same renders), and the embedding learns on.
        add_appearance = diff == ["appearance_dim"] and theirs.get("appearance_dim") == 0
        if diff and not add_appearance:
            raise ckpt.CheckpointError(
                f"{path}: model configuration differs in {', '.join('model.' + k for k in diff)}"
            )
        state, optim = payload["model"], payload.get("optimizer")
        if add_appearance:
            state, optim = self._with_appearance_inputs(state, optim)
        with self._lock:
            self.model.load_state_dict(state)
            if optim is not None:
                self.optimizer.load_state_dict(optim)
            if payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
            if payload.get("generator") is not None:
                self.generator.set_state(payload["generator"])
            self.step_count = int(payload["step"])
            self.rays_per_second = float(payload.get("rays_per_second", 0.0))
            # Per-keyframe corrections (absent from older checkpoints: every keyframe starts neutral).
            self._restored = {
                (float(e["stamp"]), str(e["frame_id"]), int(e["index"])): {
                    "c2w": np.asarray(e["c2w"], dtype=np.float64),
                    "rows": e["rows"],
                }
                for e in payload.get("camera_corrections", [])
            }
            self.corrections.reset_rows(range(self.corrections.num_rows))
            self._slots_seen, self._slots_version = ([], []), -1
            self._sync_slots()
        return self.step_count

    def _with_appearance_inputs(
        self, state: Dict[str, Any], optim: Optional[Dict[str, Any]]
    ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
        """A checkpoint's weights (and Adam moments) of a model without an appearance embedding, with
        columns for the embedding's inputs of the colour head's first layer: this model's initial
        weights (zero ones would never learn: with zero embeddings both gradients vanish), zero moments."""
        layer = self.model.field.mlp_head[0].weight
        key = "field.mlp_head.0.weight"
        extra = int(self.model.field.appearance_dim)

        def pad(t: torch.Tensor, init: Optional[torch.Tensor] = None) -> torch.Tensor:
            if t.shape != (layer.shape[0], layer.shape[1] - extra):
                raise ckpt.CheckpointError(f"colour head weights {tuple(t.shape)} do not fit {tuple(layer.shape)}")
            cols = t.new_zeros(t.shape[0], extra) if init is None else init.to(t.device, t.dtype)
            return torch.cat([t, cols], dim=1)

        state = dict(state)
        state[key] = pad(state[key], layer.detach()[:, -extra:].cpu())
        if optim is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            index = next(i for i, p in enumerate(params) if p is layer)
            optim = {**optim, "state": dict(optim["state"])}
            if index in optim["state"]:
                moments = dict(optim["state"][index])
                for name in ("exp_avg", "exp_avg_sq"):
                    moments[name] = pad(moments[name])
                optim["state"][index] = moments
        return state, optim

    @classmethod
    def from_checkpoint(cls, path: str, views: RaySource, device: Optional[str] = None) -> "Trainer":
        """A trainer built from the checkpoint's own configuration, restored from it."""
        payload = ckpt.read_checkpoint(path)
        cfg = ckpt.config_of(payload)
        if device is not None:
            cfg = cfg.override({"device": device})
        trainer = cls(cfg, int(payload["clip_dim"]), int(payload["dino_dim"]), views, teacher=str(payload["teacher"]))
        trainer.load_checkpoint(path, payload=payload)
        return trainer


def _identity(kf: Any) -> Tuple[float, str, int]:
    """What names a keyframe across runs (its key does not): stamp, frame id and source index."""
    return (float(kf.stamp), str(kf.frame_id), int(kf.index))
