"""Checkpoints: written atomically, read back bit-exactly, and loadable without a trainer.

A checkpoint is one ``torch.save`` file holding:

- ``format``/``version``: identify the file;
- ``config``: the resolved ``LerfConfig`` as a plain dict (the YAML tree);
- ``clip_dim``, ``dino_dim``, ``teacher``: what the language field was distilled from;
- ``step``; ``model`` (state dict); ``optimizer``, ``scaler`` and ``generator`` states (exact
  resumption); ``cameras``: the training views' cameras (for snapshots / visibility), with their
  learned pose corrections; ``camera_corrections`` (optional, absent before pose refinement): per
  keyframe its identity, input pose and learned correction rows (``Trainer.load_checkpoint``);
  ``retired_pixels`` (optional, absent before scene changes were followed; written by
  ``Session.save_checkpoint``): per keyframe that lost pixels for a scene change, its identity and
  packed mask of retired pixels (``KeyframeStore.retired_state``), retired again when a resumed
  session stores that keyframe again.

Writing goes to a temporary file in the destination folder (``.<name>.<pid>-<random>.tmp``, locked
while it is written), is flushed and fsync'ed, then ``os.replace``'d over the destination (and the
folder fsync'ed): a crash leaves either the old file or the new one, never half of one. A temporary
file left by a killed writer is removed by ``remove_stale_temp_files`` when the next session starts.
Files are created with the process umask (0644 under the usual 022), so a query node running as
another user can read them.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
import secrets
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lerf_ros.config import LerfConfig
from lerf_ros.field.snapshot import CameraView

try:
    import fcntl
except ImportError:  # not POSIX: stale temp files are told by their age alone
    fcntl = None  # type: ignore[assignment]

FORMAT = "lerf_ros.checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "config", "clip_dim", "dino_dim", "teacher", "step", "model", "cameras")
_STEP_NAME = re.compile(r"^step[-_](\d+)\.ckpt$")

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file and the problem."""


TEMP_NAME = re.compile(r"^\..+\.ckpt\.[A-Za-z0-9_-]+\.tmp$")
"""Temporary files of ``write_atomic`` (``.<name>.ckpt.<token>.tmp``), today's and older versions'."""

STALE_TEMP_AGE_S = 60.0
"""Without file locks (not POSIX), a temporary file untouched this long is taken as abandoned."""


def _create_locked_temp(path: str) -> tuple:
    """(fd, name) of a new temporary file beside ``path``: created with mode 0666 minus the umask,
    and locked, so ``remove_stale_temp_files`` leaves it alone while it is written."""
    folder = os.path.dirname(path)
    for _ in range(100):
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)  # a cleaner removed it between creation and locking: take another name
    raise CheckpointError(f"{path}: could not create a temporary file beside it")


def write_atomic(path: str, payload: Dict[str, Any]) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (temp file + fsync + os.replace).

    The file gets mode 0666 minus the process umask, like any file the process creates."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_locked_temp(os.path.join(folder, os.path.basename(path)))
    try:
        with os.fdopen(fd, "wb") as f:  # closing it releases the lock, after the rename
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def remove_stale_temp_files(folder: str) -> List[str]:
    """Delete the temporary files ``write_atomic`` left in ``folder`` when its writer was killed;
    returns their paths.

    Only names of this module's pattern (``TEMP_NAME``) are considered, and only files no writer
    holds: a file being written is locked by its writer (a killed writer's lock is gone), so it is
    kept. Where file locks do not exist, files older than ``STALE_TEMP_AGE_S`` are removed."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in sorted(n for n in names if TEMP_NAME.match(n)):
        p = os.path.join(folder, name)
        if fcntl is None:
            try:
                if time.time() - os.stat(p).st_mtime > STALE_TEMP_AGE_S:
                    os.unlink(p)
                    removed.append(p)
            except OSError:
                pass
            continue
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:  # gone meanwhile (renamed into place, or removed)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Unlocked: its writer is gone. Remove it if the name still points at this file.
            if os.path.samestat(os.fstat(fd), os.stat(p)):
                os.unlink(p)
                removed.append(p)
        except OSError:  # locked (being written), or renamed meanwhile
            pass
        finally:
            os.close(fd)
    return removed


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


ADDED_KEYS: Dict[str, Any] = {"model.appearance_dim": 0}
"""Configuration keys added since checkpoints were first written, with the value that describes a
checkpoint written before them (its model had no appearance embedding)."""


def saved_config(payload: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's configuration as saved (nested dict), keys it predates filled from ``ADDED_KEYS``."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in payload["config"].items()}
    for dotted, value in ADDED_KEYS.items():
        section, key = dotted.split(".")
        data.setdefault(section, {}).setdefault(key, value)
    return data


def config_of(payload: Dict[str, Any]) -> LerfConfig:
    """The run's resolved configuration (an older checkpoint's: as it was trained, see ``ADDED_KEYS``)."""
    return LerfConfig.from_saved(saved_config(payload))


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
    snap = FrozenField(
        model.to(dev),
        cameras_from_payload(payload["cameras"]),
        int(payload["step"]),
        teacher=str(payload["teacher"]),
        copy_model=False,
    )
    snap.scene_change_step = int(payload.get("scene_change_step", -1))  # absent from older checkpoints
    return snap


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.ckpt"


def list_checkpoints(folder: str) -> List[str]:
    """Periodic checkpoints (``step-NNNNNNN.ckpt`` or ``step_NNNNNNNN.ckpt``) in ``folder``,
    oldest step first (by the step in the name; the files are not opened)."""
    found = []
    for p in glob.glob(os.path.join(folder, "step*.ckpt")):
        m = _STEP_NAME.search(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


FINAL_NAME = "final.ckpt"
"""The checkpoint ``lerf-ros train`` writes at its end, beside the periodic ones."""

_PEEKED: Dict[str, Tuple[int, int, Optional[int], str]] = {}
"""path -> (mtime_ns, size, step or None, why unreadable): what ``checkpoint_step`` found."""
_PEEK_LOCK = threading.Lock()
_PEEK_MAX = 256


def checkpoint_step(path: str) -> Tuple[Optional[int], str]:
    """(training step recorded in the checkpoint, "") or (None, why the file is unusable).

    Cheap: the payload is opened memory-mapped, so only its small pickled part and the zip
    directory are read, never the weights; a truncated or foreign file fails here. The answer is
    remembered per (path, modification time, size)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return None, f"cannot stat ({exc.strerror})"
    with _PEEK_LOCK:
        hit = _PEEKED.get(path)
        if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
            return hit[2], hit[3]
    step: Optional[int] = None
    why = ""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            why = "not a lerf_ros checkpoint (format tag missing)"
        elif payload.get("version") != VERSION:
            why = f"checkpoint version {payload.get('version')!r}, this code reads {VERSION}"
        elif not isinstance(payload.get("step"), int) or payload["step"] < 0:
            why = f"no valid step (got {payload.get('step')!r})"
        else:
            step = int(payload["step"])
        del payload
    except Exception as exc:  # truncated, empty, not a torch zip file, unreadable
        why = f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    with _PEEK_LOCK:
        if len(_PEEKED) >= _PEEK_MAX:
            _PEEKED.clear()
        _PEEKED[path] = (st.st_mtime_ns, st.st_size, step, why)
    return step, why


def latest_checkpoint(
    folders: Union[str, Sequence[str]], warn: Optional[Callable[[str], None]] = None
) -> Optional[str]:
    """The newest usable checkpoint in ``folders`` (one folder or several), or None. The one rule
    for "newest" that the trainer's resume, the query node and ``lerf-ros query`` share.

    Candidates are the periodic checkpoints (``list_checkpoints``) and ``final.ckpt``. They are
    ordered by training step (a periodic file's step comes from its name, ``final.ckpt``'s from its
    payload), then by modification time when the steps are equal. The newest one that opens as a
    checkpoint (``checkpoint_step``) is returned; each unusable one is skipped, with a warning
    through ``warn`` (default: this module's logger) naming the file and the problem."""
    if isinstance(folders, str):
        folders = [folders]
    say = warn if warn is not None else log.warning
    candidates = []  # (step, mtime_ns, path, step known from the payload)
    for folder in {os.path.abspath(f): f for f in reversed(list(folders))}.values():  # each folder once
        for p in list_checkpoints(folder):
            step = int(_STEP_NAME.search(os.path.basename(p)).group(1))
            candidates.append((step, _mtime_ns(p), p, False))
        final = os.path.join(folder, FINAL_NAME)
        if os.path.isfile(final):
            step, why = checkpoint_step(final)
            if step is None:
                say(f"skipping checkpoint {final}: {why}")
            else:
                candidates.append((step, _mtime_ns(final), final, True))
    for _, _, path, checked in sorted(candidates, reverse=True):
        if checked:
            return path
        step, why = checkpoint_step(path)
        if step is not None:
            return path
        say(f"skipping checkpoint {path}: {why}; taking the next newest")
    return None


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


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
