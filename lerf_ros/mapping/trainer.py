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
=========  ===================================  =======================================

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
from lerf_ros.field.model import LerfModel, geometry_losses, language_losses, total_loss
from lerf_ros.field.snapshot import CameraView
from lerf_ros.mapping import checkpoint as ckpt
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
        }

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
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = self.model.render_rays(
                    batch.origins,
                    batch.directions,
                    generator=self.generator,
                    step=self.step_count,
                    background=background,
                )
                losses = geometry_losses(out, batch.rgb, tc, batch.depth, batch.dir_z, float(self.model.scene_scale))
                rows = batch.feature_rows
                if batch.clip is not None and rows.numel() > 0:
                    rendered = self.model.render_language(
                        out, rows, crop_px=batch.crop_px[rows], fy=batch.fy[rows], with_dino=batch.dino is not None
                    )
                    losses.update(language_losses(rendered, batch.clip, batch.dino, tc))
                loss = total_loss(losses, tc)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at step {self.step_count}: "
                    + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
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
            return FrozenField(self.model, self.views.cameras(), self.step_count, teacher=self.teacher)

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
                "cameras": ckpt.cameras_to_payload(self.views.cameras()),
                "bounds": self.bounds,
            }

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
        theirs = payload["config"].get("model", {})
        ours = self.cfg.to_dict()["model"]
        # The scene bounds are state restored with the weights (buffers), not a property of the architecture.
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in _BOUNDS_KEYS)
        if diff:
            raise ckpt.CheckpointError(
                f"{path}: model configuration differs in {', '.join('model.' + k for k in diff)}"
            )
        with self._lock:
            self.model.load_state_dict(payload["model"])
            if payload.get("optimizer") is not None:
                self.optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
            if payload.get("generator") is not None:
                self.generator.set_state(payload["generator"])
            self.step_count = int(payload["step"])
            self.rays_per_second = float(payload.get("rays_per_second", 0.0))
        return self.step_count

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
