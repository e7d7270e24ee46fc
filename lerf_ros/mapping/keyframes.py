"""The bounded keyframe store of a mapping session (ROS-free).

Each keyframe's pixels are held exactly once: as tensors on the training device (``rgb`` uint8,
``depth`` float32 metres with 0 = no measurement). On the CPU, ``Keyframe.frame`` gives numpy views
of that same memory (no copy); on a GPU it copies to the host on demand. The store samples its own
training rays (``sample``), so there is no second copy of the images for training.

Bounds: ``max_keyframes`` and ``max_memory_mb`` (image + depth + teacher features, the bytes this
store really holds). Eviction policy when a bound is exceeded: the newest ``protect_newest``
keyframes are never evicted; among the others, the one whose pose is most redundant goes first,
i.e. the one nearest (translation in metres plus ``rotation_weight`` times the rotation angle in
radians) to any other keyframe; ties go to the oldest. This keeps the spatial coverage of the store
as wide as possible while the robot keeps revisiting places, and makes sure the newest views are
always trained on. An unbounded store (``bounded=False``: offline training on a whole dataset)
never evicts.

View weighting when sampling rays. Frames keep arriving while the field trains, so new views should
be learnt quickly without the old ones being forgotten. Keyframe ``i`` is drawn with probability
proportional to

    w_i = 1 + recency_boost * exp(-age_i / recency_tau)

where ``age_i`` counts the keyframes added after it (the newest has age 0). Every keyframe keeps at
least weight 1, so an old one is never starved: with V keyframes its share is at least
``1 / (V + recency_boost * recency_tau')`` (``tau'`` ~ ``recency_tau`` for V >> tau); the newest gets
up to ``1 + recency_boost`` times the share of an old one. ``recency_boost = 0`` gives uniform
sampling (offline training). Within a keyframe, pixels are drawn uniformly (among its trusted pixels:
``retire_pixels``).

Focus pixels. A keyframe may carry, for a number of draws, the pixels where the field disagreed with
it when it was stored (``set_focus``: a scene change's new or moved object, a few pixels wide, that
uniform drawing reaches with a few rays a step). With ``focus_share`` > 0 and such keyframes
present, ``round(focus_share * n)`` of a batch's rays are drawn uniformly among all of their focus
pixels and the rest as above; a retired pixel is never a focus pixel. Without any (a static scene),
the batch is the same, random number for random number, as with ``focus_share`` 0.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lerf_ros.config import KeyframeConfig
from lerf_ros.data.frame import Frame, check_pose
from lerf_ros.field.sampling import pixel_direction_table
from lerf_ros.field.snapshot import CameraView
from lerf_ros.geometry.camera import Distortion
from lerf_ros.geometry.poses import pose_distance
from lerf_ros.mapping.memory import TRIM_INTERVAL_S, features_nbytes, release_free_heap, tensor_nbytes
from lerf_ros.mapping.rays import RayBatch, sample_rays

log = logging.getLogger(__name__)

# restored retired-pixel masks whose keyframe has not come back are dropped once they are this many
# seconds older than the oldest stored keyframe (a stream seen again has passed them), and beyond
# this many entries (the oldest first)
PENDING_RETIRED_MARGIN_S = 60.0
MAX_PENDING_RETIRED = 1024
MAX_FOCUS_PIXELS = 4096
"""Most focus pixels kept per keyframe (a random subset beyond): bounds their memory (32 KB)."""

__all__ = ["Keyframe", "KeyframeStore", "KeyframeStoreError"]


def _among_trusted(kf: "Keyframe", mask: np.ndarray) -> torch.Tensor:
    """(H*W,) bool tensor: ``mask`` (H, W) of keyframe ``kf``, False where its pixels are retired."""
    flat = torch.from_numpy(np.array(mask, dtype=bool).reshape(-1))
    if flat.numel() != kf.height * kf.width:
        raise ValueError(f"mask of {flat.numel()} pixels for a {kf.height}x{kf.width} keyframe")
    if kf.trusted is not None:
        allowed = torch.zeros_like(flat)
        allowed[kf.trusted] = True
        flat &= allowed
    return flat


class KeyframeStoreError(ValueError):
    """A keyframe that cannot be stored (e.g. larger than the whole memory bound)."""


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


@dataclass(frozen=True, eq=False)
class Keyframe:
    """A stored keyframe. Immutable: ``set_features`` replaces the object in the store.

    Attributes:
        key: stable integer id (increasing in insertion order, never reused).
        rgb: (H, W, 3) uint8 tensor on the store's device: the one copy of the image.
        depth: (H, W) float32 z-depth in metres on the store's device (0 = none), or None.
        K: (3, 3) float64 intrinsics. c2w: (4, 4) float64 camera-to-world pose.
        stamp, frame_id, index, meta: as in ``Frame``.
        features: teacher features, None until they are attached.
        distortion: the frame's lens distortion (None: pinhole); its training rays go through the
            inverse of it (``KeyframeStore.sample``).
        slot: the keyframe's slot in the store, in [0, ``KeyframeStore.num_slots``): the row of its
            per-keyframe learned parameters (pose correction, appearance). A slot freed by an eviction
            goes to the next new keyframe, with its generation increased (``slot_generations``).
        trusted: flat indices (int64 CPU tensor, where the rays are drawn) of the pixels still drawn for
            training, or None for all of them: pixels that show a region of the scene as it was before a
            change are retired (``KeyframeStore.retire_pixels``).
        focus: flat indices (int64 CPU tensor) of the pixels where the field disagreed with this view
            when it was stored, drawn from more often (``KeyframeStore.set_focus``), or None.
        focus_until: the store's draw count after which ``focus`` is no longer drawn from.
    """

    key: int
    rgb: torch.Tensor
    depth: Optional[torch.Tensor]
    K: np.ndarray
    c2w: np.ndarray
    stamp: float
    frame_id: str = "camera"
    index: int = -1
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    features: Any = None
    distortion: Optional[Distortion] = None
    slot: int = -1
    trusted: Optional[torch.Tensor] = None
    focus: Optional[torch.Tensor] = None
    focus_until: int = -1

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def image_nbytes(self) -> int:
        """Bytes of the image and depth tensors."""
        return tensor_nbytes(self.rgb) + tensor_nbytes(self.depth)

    @property
    def nbytes(self) -> int:
        return self.image_nbytes + features_nbytes(self.features)

    @property
    def has_features(self) -> bool:
        return self.features is not None

    @property
    def frame(self) -> Frame:
        """The keyframe as a ``Frame`` (numpy views of the stored tensors on the CPU, a host copy
        on a GPU). The instance map of a synthetic frame is not kept."""
        return Frame(
            rgb=_numpy_view(self.rgb),
            K=self.K,
            c2w=self.c2w,
            stamp=self.stamp,
            frame_id=self.frame_id,
            depth=None if self.depth is None else _numpy_view(self.depth),
            index=self.index,
            meta=self.meta,
            distortion=self.distortion,
        )

    @property
    def camera(self) -> CameraView:
        return CameraView(self.K, self.c2w, self.height, self.width)


def _identity(kf: Keyframe) -> Tuple[float, str, int]:
    """What names a keyframe across runs (its key does not): stamp, frame id and source index."""
    return (float(kf.stamp), str(kf.frame_id), int(kf.index))


def _unpack_mask(entry: Dict[str, Any]) -> np.ndarray:
    """The (H, W) bool retired-pixel mask of a ``KeyframeStore.retired_state`` entry."""
    h, w = int(entry["height"]), int(entry["width"])
    packed = entry["retired"]
    packed = packed.numpy() if isinstance(packed, torch.Tensor) else np.asarray(packed, np.uint8)
    if packed.size != (h * w + 7) // 8:
        raise ValueError(f"retired-pixel mask of {packed.size} bytes for a {h}x{w} keyframe")
    return np.unpackbits(packed.astype(np.uint8), count=h * w).astype(bool).reshape(h, w)


def make_keyframe(key: int, frame: Frame, device: torch.device) -> Keyframe:
    """Copy ``frame``'s pixels once onto ``device`` (depth: non-finite and negative values -> 0)."""
    rgb = torch.from_numpy(np.array(frame.rgb, dtype=np.uint8, copy=True)).to(device)
    depth = None
    if frame.depth is not None:
        d = np.asarray(frame.depth, dtype=np.float32)
        depth = torch.from_numpy(np.where(np.isfinite(d) & (d > 0), d, np.float32(0.0))).to(device)
    return Keyframe(
        key=key,
        rgb=rgb,
        depth=depth,
        K=np.array(frame.K, dtype=np.float64),
        c2w=np.array(frame.c2w, dtype=np.float64),
        stamp=float(frame.stamp),
        frame_id=frame.frame_id,
        index=int(frame.index),
        meta=dict(frame.meta),
        distortion=frame.distortion,
    )


class KeyframeStore:
    """Bounded, thread-safe keyframe store that samples training rays (see the module doc).

    Args:
        cfg: ``max_keyframes``, ``max_memory_mb``, ``protect_newest``, ``rotation_weight`` (and the
            keyframe thresholds, from which a zero ``rotation_weight`` is derived) are used.
        device: where the images live and ray batches are built.
        bounded: False for a store that never evicts (offline training on a whole dataset).
        recency_boost, recency_tau: view weighting when sampling rays (module doc).
        focus_share: share of each batch drawn from the keyframes' focus pixels (module doc; 0: off).
    """

    def __init__(
        self,
        cfg: Optional[KeyframeConfig] = None,
        device: str | torch.device = "cpu",
        bounded: bool = True,
        recency_boost: float = 4.0,
        recency_tau: float = 8.0,
        focus_share: float = 0.0,
    ):
        self.cfg = (cfg or KeyframeConfig()).check()
        if recency_boost < 0 or recency_tau <= 0:
            raise ValueError(f"recency_boost must be >= 0 and recency_tau > 0, got {recency_boost}, {recency_tau}")
        self.device = torch.device(device)
        self.bounded = bool(bounded)
        self.max_keyframes = int(self.cfg.max_keyframes) if bounded else math.inf
        self.max_bytes = int(self.cfg.max_memory_mb * 1024 * 1024) if bounded else math.inf
        self.recency_boost = float(recency_boost)
        self.recency_tau = float(recency_tau)
        if not 0 <= focus_share < 1:
            raise ValueError(f"focus_share must be in [0, 1), got {focus_share}")
        self.focus_share = float(focus_share)
        self._draws = 0  # sample() calls: focus pixels expire after a number of them
        self._focus_set = 0  # set_focus() calls (the focus table's cache key)
        self._focus: Optional[Tuple[Any, Tuple[torch.Tensor, torch.Tensor]]] = None  # (key, table) cache
        w = self.cfg.rotation_weight
        if w <= 0:
            w = (
                self.cfg.min_translation / math.radians(self.cfg.min_rotation_deg)
                if self.cfg.min_translation > 0 and self.cfg.min_rotation_deg > 0
                else 1.0
            )
        self.rotation_weight = float(w)
        self._items: Dict[int, Keyframe] = {}  # insertion (= key) order
        self._bytes = 0
        self._next_key = 0
        self._added = 0
        self._evicted = 0
        self._version = 0
        self._last_trim = -math.inf
        self._cameras: Optional[Tuple[int, Tuple[torch.Tensor, ...]]] = None  # (version, stacked cameras)
        self._free_slots: List[int] = []  # heap of freed slots (the lowest is reused first)
        self._slot_generation: List[int] = []  # per slot: keyframes it has held
        self._slot_pose_version: List[int] = []  # per slot: input poses its keyframe has had
        # retired pixels restored from a checkpoint, by keyframe identity, until that keyframe comes back
        self._pending_retired: Dict[Tuple[float, str, int], Dict[str, Any]] = {}
        self._lock = threading.RLock()

    # -------------------------------------------------------------- reading
    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: int) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: int) -> Keyframe:
        """The keyframe with this key; KeyError (with a reason) if it is not (or no longer) stored."""
        with self._lock:
            try:
                return self._items[key]
            except KeyError:
                raise KeyError(f"keyframe {key} is not in the store (evicted or never added)") from None

    def keys(self) -> List[int]:
        """Keys in insertion order (oldest first)."""
        with self._lock:
            return list(self._items)

    def items(self) -> List[Tuple[int, Keyframe]]:
        """A consistent snapshot of ``(key, Keyframe)`` pairs, oldest first."""
        with self._lock:
            return list(self._items.items())

    def keyframes(self) -> List[Keyframe]:
        """A consistent snapshot of the keyframes, oldest first."""
        with self._lock:
            return list(self._items.values())

    def keys_with_features(self) -> List[int]:
        with self._lock:
            return [k for k, kf in self._items.items() if kf.features is not None]

    def num_with_features(self) -> int:
        with self._lock:
            return sum(1 for kf in self._items.values() if kf.features is not None)

    def cameras(self) -> List[CameraView]:
        """The keyframes' cameras, oldest first."""
        return [kf.camera for kf in self.keyframes()]

    @property
    def version(self) -> int:
        """Increases on every change (add, eviction, features, pose, removal); cheap change detection."""
        with self._lock:
            return self._version

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def num_slots(self) -> int:
        """Slots ever used (the highest slot + 1): at most ``max_keyframes + 1`` for a bounded store
        (a new keyframe takes a slot before the most redundant one is evicted)."""
        with self._lock:
            return len(self._slot_generation)

    def slot_generations(self) -> Tuple[List[int], List[int]]:
        """Per slot: (generation, pose version). The generation increases each time the slot gets a
        new keyframe, the pose version each time its keyframe's input pose is replaced; learned
        per-keyframe parameters of a slot whose counter moved are reset to neutral."""
        with self._lock:
            return list(self._slot_generation), list(self._slot_pose_version)

    def stats(self) -> Dict[str, Any]:
        """count, bytes, image_bytes, with_features, feature_bytes, bounds and lifetime added/evicted."""
        with self._lock:
            fb = sum(features_nbytes(kf.features) for kf in self._items.values())
            return {
                "count": len(self._items),
                "bytes": self._bytes,
                "image_bytes": self._bytes - fb,
                "with_features": sum(kf.features is not None for kf in self._items.values()),
                "feature_bytes": fb,
                "max_keyframes": self.max_keyframes,
                "max_bytes": self.max_bytes,
                "added": self._added,
                "evicted": self._evicted,
            }

    # -------------------------------------------------------------- writing
    def add(self, frame: Frame, features: Any = None) -> Tuple[int, List[int]]:
        """Copy ``frame``'s pixels onto the store's device and store it; returns ``(key, evicted_keys)``.

        ``evicted_keys`` may contain ``key`` itself only when ``protect_newest`` is 0 and the new
        frame is the most redundant one. Raises KeyframeStoreError when the frame alone is larger
        than the memory bound, FrameError for an invalid frame.
        """
        frame.validate()
        need = frame.rgb.size + (frame.depth.size * 4 if frame.depth is not None else 0) + features_nbytes(features)
        if need > self.max_bytes:
            raise KeyframeStoreError(
                f"keyframe needs {need / 2**20:.1f} MB, more than the store's whole memory bound "
                f"({self.max_bytes / 2**20:.1f} MB): lower keyframes.max_image_side or raise keyframes.max_memory_mb"
            )
        with self._lock:
            key = self._next_key
            self._next_key += 1
        kf = make_keyframe(key, frame, self.device)
        with self._lock:
            kf = dataclasses.replace(kf, features=features, slot=self._take_slot())
            self._items[key] = kf
            self._bytes += kf.nbytes
            self._added += 1
            self._version += 1
            pending = self._pending_retired.pop(_identity(kf), None)
            if pending is not None and (pending["height"], pending["width"]) == (kf.height, kf.width):
                self._apply_retired(key, pending)
            self._prune_pending()
            evicted = self._enforce_bounds()
        self._trim_after(evicted)
        return key, evicted

    def set_features(self, key: int, feats: Any) -> bool:
        """Attach teacher features to keyframe ``key``.

        Returns False (and changes nothing) when the keyframe is no longer stored: the feature
        worker finished after it was evicted, which is normal. The added bytes may evict other
        keyframes (counted in ``stats()['evicted']``). Raises KeyframeStoreError if this keyframe
        with its features alone exceeds the memory bound.
        """
        add = features_nbytes(feats)
        with self._lock:
            old = self._items.get(key)
            if old is None:
                return False
            new = dataclasses.replace(old, features=feats)
            if new.nbytes > self.max_bytes:
                raise KeyframeStoreError(
                    f"keyframe {key} with its features needs {new.nbytes / 2**20:.1f} MB, more than the "
                    f"store's whole memory bound ({self.max_bytes / 2**20:.1f} MB)"
                )
            self._items[key] = new
            self._bytes += add - features_nbytes(old.features)
            self._version += 1
            evicted = self._enforce_bounds()
        self._trim_after(evicted)
        return True

    def set_pose(self, key: int, c2w: np.ndarray) -> bool:
        """Replace keyframe ``key``'s input camera-to-world pose (a late correction: e.g. a SLAM loop
        closure moved the past poses).

        ``c2w`` must be a finite rigid (4, 4) transform: FrameError otherwise, and nothing changes.
        Returns False (and changes nothing) when the keyframe is no longer stored. Increases
        ``version`` (the training cameras and the published keyframe poses follow) and the slot's pose
        version (``slot_generations``), so a learned pose correction of the old input pose is reset.
        """
        pose = np.array(c2w, dtype=np.float64)
        check_pose(pose)
        with self._lock:
            old = self._items.get(key)
            if old is None:
                return False
            self._items[key] = dataclasses.replace(old, c2w=pose)
            self._slot_pose_version[old.slot] += 1
            self._version += 1
        return True

    def retire_pixels(self, key: int, mask: np.ndarray) -> Optional[int]:
        """Stop training on the pixels of keyframe ``key`` where ``mask`` (H, W) bool is True (they show
        a region of the scene as it was before a change); its other pixels stay. Returns how many
        pixels remain trusted, or None when the keyframe is no longer stored. A keyframe left with no
        trusted pixel is removed (returns 0)."""
        with self._lock:
            old = self._items.get(key)
            if old is None:
                return None
            keep = _among_trusted(old, ~np.asarray(mask, bool))
            idx = torch.nonzero(keep).flatten()
            if len(idx) == 0:
                self._drop(key)
                return 0
            focus = old.focus
            if focus is not None:  # a retired pixel is never drawn, focus or not
                focus = focus[keep[focus]]
                focus = focus if len(focus) else None
            self._items[key] = dataclasses.replace(old, trusted=idx, focus=focus)
            self._version += 1
            return int(len(idx))

    def set_focus(self, key: int, mask: Optional[np.ndarray], draws: int) -> int:
        """Draw ``focus_share`` of the coming ``draws`` batches from keyframe ``key``'s pixels where
        ``mask`` (H, W) bool is True (where the field disagrees with it), among its trusted pixels (at
        most ``MAX_FOCUS_PIXELS``, a random subset beyond); None or an empty mask clears them. Returns
        how many focus pixels it has (0 also when the keyframe is no longer stored)."""
        with self._lock:
            old = self._items.get(key)
            if old is None:
                return 0
            idx = None
            if mask is not None:
                idx = torch.nonzero(_among_trusted(old, np.asarray(mask, bool))).flatten()
                if len(idx) > MAX_FOCUS_PIXELS:
                    g = torch.Generator().manual_seed(int(key))
                    idx = torch.sort(idx[torch.randperm(len(idx), generator=g)[:MAX_FOCUS_PIXELS]]).values
                if len(idx) == 0:
                    idx = None
            self._items[key] = dataclasses.replace(old, focus=idx, focus_until=self._draws + int(draws))
            self._focus_set += 1
            return 0 if idx is None else int(len(idx))

    def clear_focus(self) -> None:
        """Forget every keyframe's focus pixels (they were where a model, now replaced, disagreed)."""
        with self._lock:
            for key, kf in list(self._items.items()):
                if kf.focus is not None:
                    self._items[key] = dataclasses.replace(kf, focus=None)
            self._focus_set += 1
            self._focus = None

    def focus_stats(self) -> Dict[str, int]:
        """keyframes: how many carry focus pixels still drawn from; pixels: their focus pixels."""
        with self._lock:
            live = [kf for kf in self._items.values() if kf.focus is not None and self._draws < kf.focus_until]
            return {"keyframes": len(live), "pixels": sum(len(kf.focus) for kf in live)}

    def retired_state(self) -> List[Dict[str, Any]]:
        """The retired pixels to keep in a checkpoint: per keyframe that has retired some, its identity
        (``stamp``, ``frame_id``, ``index``: what names it across runs), ``height``, ``width`` and
        ``retired`` (its (H, W) retired-pixel mask: ``np.packbits`` of the row-major flat mask, as a uint8
        tensor); also
        those restored by ``restore_retired`` whose keyframe has not come back yet."""
        with self._lock:
            out = [dict(e) for e in self._pending_retired.values()]
            for kf in self._items.values():
                if kf.trusted is not None:
                    mask = np.ones(kf.height * kf.width, bool)
                    mask[kf.trusted.numpy()] = False
                    stamp, frame_id, index = _identity(kf)
                    out.append(
                        {
                            "stamp": stamp,
                            "frame_id": frame_id,
                            "index": index,
                            "height": kf.height,
                            "width": kf.width,
                            "retired": torch.from_numpy(np.packbits(mask)),
                        }
                    )
            return out

    def restore_retired(self, entries: List[Dict[str, Any]]) -> int:
        """Retire again the pixels of ``retired_state`` entries (from a checkpoint): at once for a stored
        keyframe of the same identity and size, else when that keyframe is added (a resumed session
        sees its frames again). Replaces what an earlier call left pending. Returns how many entries
        applied at once."""
        with self._lock:
            self._pending_retired = {(float(e["stamp"]), str(e["frame_id"]), int(e["index"])): dict(e) for e in entries}
            applied = 0
            for key, kf in list(self._items.items()):
                e = self._pending_retired.pop(_identity(kf), None)
                if e is not None and (int(e["height"]), int(e["width"])) == (kf.height, kf.width):
                    applied += int(self._apply_retired(key, e))
            self._prune_pending()
            return applied

    def _apply_retired(self, key: int, entry: Dict[str, Any]) -> bool:
        """Retire keyframe ``key``'s pixels of a ``retired_state`` entry; a malformed entry is skipped
        with one log line (it cannot stop a keyframe's insertion or a resume)."""
        try:
            mask = _unpack_mask(entry)
        except (ValueError, TypeError, KeyError) as e:
            log.warning("skipping a restored retired-pixel mask of keyframe %s: %s", key, e)
            return False
        self.retire_pixels(key, mask)
        return True

    def _prune_pending(self) -> None:
        """Bound the restored masks still waiting for their keyframe (see ``PENDING_RETIRED_MARGIN_S``)."""
        pending = self._pending_retired
        if not pending:
            return
        if self._items:
            oldest = min(float(kf.stamp) for kf in self._items.values())
            for ident in [i for i in pending if i[0] < oldest - PENDING_RETIRED_MARGIN_S]:
                del pending[ident]
        if len(pending) > MAX_PENDING_RETIRED:
            for ident in sorted(pending, key=lambda i: i[0])[: len(pending) - MAX_PENDING_RETIRED]:
                del pending[ident]

    def remove(self, key: int) -> Keyframe:
        """Remove and return keyframe ``key`` (KeyError if absent; not counted as evicted)."""
        with self._lock:
            kf = self.get(key)
            self._drop(key)
            return kf

    def clear(self) -> None:
        """Remove every keyframe (keys are not reused afterwards)."""
        with self._lock:
            for kf in self._items.values():
                heapq.heappush(self._free_slots, kf.slot)
            self._items.clear()
            self._bytes = 0
            self._version += 1

    # -------------------------------------------------------------- rays
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> RayBatch:
        """Draw ``n`` random training rays (view weighting in the module doc); see ``sample_rays``.
        Random numbers come from ``generator`` (a CPU generator), so a seeded generator gives a
        reproducible batch."""
        with self._lock:
            views = list(self._items.values())
            if not views:
                raise RuntimeError("no keyframes: add frames before sampling rays")
            if self._cameras is None or self._cameras[0] != self._version:
                self._cameras = (self._version, self._stack_cameras(views))
            stacked = self._cameras[1]
            focus = self._focus_table(views) if self.focus_share > 0 else None
            self._draws += 1
        # at least one ray stays uniform (a share near 1 on a batch of a few rays)
        n_focus = 0 if focus is None else min(int(round(self.focus_share * n)), n - 1)
        return sample_rays(views, stacked, n, generator, self.device, focus=focus, n_focus=n_focus)

    def _focus_table(self, views: List[Keyframe]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(view index (F,), flat pixel (F,)) int64 of the focus pixels still drawn from, or None."""
        live = []
        for i, kf in enumerate(views):
            if kf.focus is None:
                continue
            if self._draws >= kf.focus_until:  # expired: free it
                self._items[kf.key] = dataclasses.replace(kf, focus=None)
                continue
            live.append(i)
        if not live:
            return None
        cache_key = (self._version, self._focus_set, tuple(live))
        if self._focus is None or self._focus[0] != cache_key:
            pix = [views[i].focus for i in live]
            vid = torch.repeat_interleave(torch.tensor(live, dtype=torch.int64), torch.tensor([len(p) for p in pix]))
            self._focus = (cache_key, (vid, torch.cat(pix)))
        return self._focus[1]

    def _stack_cameras(self, views: List[Keyframe]) -> Tuple[torch.Tensor, ...]:
        K = torch.as_tensor(np.stack([kf.K for kf in views]), dtype=torch.float32, device=self.device)
        c2w = torch.as_tensor(np.stack([kf.c2w for kf in views]), dtype=torch.float32, device=self.device)
        hw = torch.tensor(
            [kf.height * kf.width if kf.trusted is None else len(kf.trusted) for kf in views], dtype=torch.float64
        )
        w = torch.tensor([kf.width for kf in views], dtype=torch.int64)
        tables = [pixel_direction_table(kf.K, kf.width, kf.height, kf.distortion, self.device) for kf in views]
        return K, c2w, hw, w, self.view_weights(len(views)), (tables if any(t is not None for t in tables) else None)

    def view_weights(self, n: Optional[int] = None) -> torch.Tensor:
        """(n,) sampling weights of the keyframes, oldest first (module doc); n defaults to the count."""
        n = len(self) if n is None else n
        age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
        return 1.0 + self.recency_boost * torch.exp(-age / self.recency_tau)

    # -------------------------------------------------------------- eviction
    def _drop(self, key: int) -> None:
        kf = self._items.pop(key)
        self._bytes -= kf.nbytes
        self._version += 1
        heapq.heappush(self._free_slots, kf.slot)

    def _take_slot(self) -> int:
        """The lowest free slot (a new one when none is free), its generation increased."""
        if self._free_slots:
            slot = heapq.heappop(self._free_slots)
        else:
            slot = len(self._slot_generation)
            self._slot_generation.append(0)
            self._slot_pose_version.append(0)
        self._slot_generation[slot] += 1
        return slot

    def redundancy(self) -> Dict[int, float]:
        """Per key: pose distance (m + rotation_weight * rad) to the nearest other keyframe."""
        with self._lock:
            keys = list(self._items)
            if len(keys) < 2:
                return {k: math.inf for k in keys}
            d = self._pairwise(keys)
            return dict(zip(keys, d.min(axis=1).tolist()))

    def _pairwise(self, keys: List[int]) -> np.ndarray:
        poses = np.stack([self._items[k].c2w for k in keys])  # (n, 4, 4)
        dt, ang = pose_distance(poses[:, None], poses[None, :])  # (n, n) each
        d = dt + self.rotation_weight * ang
        np.fill_diagonal(d, np.inf)
        return d

    def _trim_after(self, evicted: List[int]) -> None:
        """After evictions, return the freed heap pages to the system (rate-limited)."""
        now = time.monotonic()
        if evicted and now - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = now
            release_free_heap()

    def _enforce_bounds(self) -> List[int]:
        evicted: List[int] = []
        while len(self._items) > self.max_keyframes or self._bytes > self.max_bytes:
            keys = list(self._items)
            n = len(keys)
            if n <= 1:
                break  # a single keyframe always fits (checked in add/set_features)
            n_protected = min(self.cfg.protect_newest, n - 1)
            n_cand = n - n_protected
            d = self._pairwise(keys)
            nearest = d[:n_cand].min(axis=1)  # candidates are the oldest n_cand keys
            victim = keys[int(np.argmin(nearest))]  # argmin returns the first (oldest) on ties
            self._drop(victim)
            self._evicted += 1
            evicted.append(victim)
        return evicted
