"""Checkpoints: written atomically, read back bit-exactly, and loadable without a trainer.

A checkpoint is one ``torch.save`` file holding:

- ``format``/``version``: identify the file;
- ``config``: the resolved ``LerfConfig`` as a plain dict (the YAML tree);
- ``clip_dim``, ``dino_dim``, ``teacher``: what the language field was distilled from;
- ``step``; ``model`` (state dict); ``optimizer``, ``scaler`` and ``generator`` states (exact
  resumption); ``cameras``: the training views' cameras (for snapshots / visibility).

Writing goes to a temporary file in the destination folder, is flushed and fsync'ed, then
``os.replace``'d over the destination (and the folder fsync'ed): a crash leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from lerf_ros.config import LerfConfig
from lerf_ros.field.snapshot import CameraView

FORMAT = "lerf_ros.checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "config", "clip_dim", "dino_dim", "teacher", "step", "model", "cameras")
_STEP_NAME = re.compile(r"^step[-_](\d+)\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file and the problem."""


def write_atomic(path: str, payload: Dict[str, Any]) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (temp file + fsync + os.replace)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint file; raises CheckpointError naming the problem."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            data = f.read()
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, ...
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lerf_ros checkpoint (format tag missing)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}, this code reads {VERSION}")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def cameras_to_payload(cameras: List[CameraView]) -> List[Dict[str, Any]]:
    return [
        {
            "K": np.asarray(c.K, dtype=np.float64).tolist(),
            "c2w": np.asarray(c.c2w, dtype=np.float64).tolist(),
            "height": int(c.height),
            "width": int(c.width),
        }
        for c in cameras
    ]


def cameras_from_payload(items: List[Dict[str, Any]]) -> List[CameraView]:
    return [
        CameraView(
            np.array(c["K"], dtype=np.float64), np.array(c["c2w"], dtype=np.float64), int(c["height"]), int(c["width"])
        )
        for c in items
    ]


def config_of(payload: Dict[str, Any]) -> LerfConfig:
    """The run's resolved configuration."""
    return LerfConfig.from_saved(payload["config"])


def load_snapshot(path: str, device: Optional[str | torch.device] = None, payload: Optional[Dict[str, Any]] = None):
    """A ``FrozenField`` straight from a checkpoint file (what a separate query process uses).

    ``device`` defaults to the checkpoint config's device ('auto' -> CUDA when available);
    ``payload``: the file's contents when the caller has already read them (not read again)."""
    from lerf_ros.field.frozen import FrozenField
    from lerf_ros.field.model import LerfModel

    if payload is None:
        payload = read_checkpoint(path)
    cfg = config_of(payload)
    dev = torch.device(device if device is not None else cfg.resolved_device())
    model = LerfModel(cfg.model, int(payload["clip_dim"]), int(payload["dino_dim"]))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {exc}") from exc
    return FrozenField(
        model.to(dev),
        cameras_from_payload(payload["cameras"]),
        int(payload["step"]),
        teacher=str(payload["teacher"]),
        copy_model=False,
    )


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.ckpt"


def list_checkpoints(folder: str) -> List[str]:
    """Periodic checkpoints (``step-NNNNNNN.ckpt`` or ``step_NNNNNNNN.ckpt``) in ``folder``,
    oldest step first."""
    found = []
    for p in glob.glob(os.path.join(folder, "step*.ckpt")):
        m = _STEP_NAME.search(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str) -> Optional[str]:
    """The highest-step periodic checkpoint in ``folder``, or None."""
    items = list_checkpoints(folder)
    return items[-1] if items else None


def prune_checkpoints(folder: str, keep: int) -> List[str]:
    """Delete all but the ``keep`` newest periodic checkpoints; returns the deleted paths."""
    items = list_checkpoints(folder)
    gone = items[:-keep] if keep > 0 else items
    for p in gone:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    return gone
