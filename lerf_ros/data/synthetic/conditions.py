"""Real-camera conditions injected into a synthetic scene while its ground truth stays clean.

A robot's camera has a distorting lens, poses that are noisy and drift, auto exposure and white
balance, and a SLAM that corrects past poses after a loop closure. :class:`Conditions` describes
which of these a scene gets; :func:`~lerf_ros.data.synthetic.scene.make_scene` applies them to
the frames it returns (what ``lerf-ros scene`` writes and ``lerf-ros replay`` publishes) and keeps
the ground truth beside them (:attr:`SyntheticScene.ground_truth_poses`,
:meth:`SyntheticScene.ground_truth_frames`). Every draw is seeded from the scene seed (one stream
per condition, so switching one condition on never changes another's draws), and a scene with no
condition is exactly the scene made without them.

The conditions, each off by default:

- **lens distortion** (:attr:`Conditions.distortion`, any model of
  :data:`lerf_ros.geometry.camera.DISTORTION_MODELS`): each raw pixel is rendered exactly along its
  own undistorted ray (:func:`lerf_ros.geometry.camera.pixel_directions`), so the raw image, its
  depth (z-depth of that ray's hit, 0 where the ray is 90 degrees or more off axis) and its
  instance map are exact at every pixel, with no resampling; the frames carry the distortion.
  :data:`DEFAULT_LENSES` gives one lens per model.
- **pose noise** (``pose_noise_m``, ``pose_noise_deg``): independent per frame, a translation with
  this standard deviation per world axis and a rotation about the camera centre whose rotation
  vector has this standard deviation per axis.
- **pose drift** (``pose_drift_m``, ``pose_drift_deg``): a smooth world-frame error that grows from
  zero at the first frame to a translation of exactly ``pose_drift_m`` metres and a yaw (about
  world +z through the first camera position) of ``pose_drift_deg`` degrees at the last frame,
  the way an odometry frame drifts: ``T_drift(s) @ c2w`` with ``s`` the trajectory fraction and the
  translation ``pose_drift_m * (s u + 0.25 sin(2 pi s) v)`` for seeded orthogonal unit vectors
  ``u`` (horizontal) and ``v``.
- **late correction** (``late_correction``): a loop closure at the end of the trajectory: the
  frames carry the drifting poses, and :attr:`SyntheticScene.corrected_poses` holds each frame's
  pose with the drift removed (the per-frame noise stays, as a SLAM's jitter does), available
  after the last frame's stamp (written as ``pose_corrections.json``, see
  :mod:`lerf_ros.data.synthetic.io`).
- **exposure** (``exposure_stops``): a per-frame gain ``2^e`` with ``e`` uniform in
  ``[-exposure_stops, exposure_stops]``; **white balance** (``white_balance_stops``): per-frame red
  and blue gains ``2^w`` with ``w`` uniform in ``[-white_balance_stops, white_balance_stops]``
  (green is the reference, as a camera's white balance). The rendered colour is linear, so the
  gains multiply it; the written image is rounded and clipped to 8 bits (bright surfaces saturate
  above 0 stops, as a real sensor does). :attr:`SyntheticScene.gains` keeps the (F, 3) gains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from lerf_ros.geometry.camera import DISTORTION_MODELS, Distortion, DistortionError
from lerf_ros.geometry.poses import quat_to_matrix

__all__ = [
    "DEFAULT_LENSES",
    "Conditions",
    "ConditionsError",
    "apply_gains",
    "colour_gains",
    "corrupt_poses",
    "parse_distortion",
    "rotation_from_vector",
]

DEFAULT_LENSES: Dict[str, Distortion] = {
    "plumb_bob": Distortion.create("plumb_bob", [-0.28, 0.07, 0.001, -0.0008, 0.0]),
    "rational_polynomial": Distortion.create("rational_polynomial", [0.9, 0.25, 0.0008, -0.0006, 0.0, 1.25, 0.45, 0.0]),
    "equidistant": Distortion.create("equidistant", [0.06, -0.02, 0.004, -0.001]),
}
"""One lens per model, each moving rays by 17 to 20 pixels at the corners of a 96x72 image with a
70 degree field of view (all three invertible over the whole image): barrel distortion with a
small decentring for ``plumb_bob`` and ``rational_polynomial``, a wide-angle fisheye for
``equidistant``."""

MAX_STOPS = 3.0
"""Largest ``exposure_stops`` / ``white_balance_stops`` accepted."""

# Per-condition random streams: [scene seed, this tag]. Changing one condition never moves another's.
_NOISE_STREAM = 0x9A05E
_DRIFT_STREAM = 0xD41F7
_EXPOSURE_STREAM = 0xE4905
_BALANCE_STREAM = 0xB41A2


class ConditionsError(ValueError):
    """Conditions that cannot be applied; the message names the option and the value."""


@dataclass(frozen=True)
class Conditions:
    """What a synthetic scene's camera gets wrong (all off by default; see the module doc).

    Attributes:
        distortion: the lens of the raw images, or None for a pinhole camera.
        pose_noise_m: per-frame translation noise, standard deviation per world axis (metres).
        pose_noise_deg: per-frame rotation noise, standard deviation of each rotation-vector
            component (degrees).
        pose_drift_m: translation drift reached at the last frame (metres).
        pose_drift_deg: yaw drift reached at the last frame (degrees).
        late_correction: provide drift-free corrected poses, available after the last frame.
        exposure_stops: per-frame exposure gain within +- this many stops.
        white_balance_stops: per-frame red and blue gains within +- this many stops.
    """

    distortion: Optional[Distortion] = None
    pose_noise_m: float = 0.0
    pose_noise_deg: float = 0.0
    pose_drift_m: float = 0.0
    pose_drift_deg: float = 0.0
    late_correction: bool = False
    exposure_stops: float = 0.0
    white_balance_stops: float = 0.0

    def __post_init__(self) -> None:
        if self.distortion is not None and not isinstance(self.distortion, Distortion):
            raise ConditionsError(
                "distortion must be a lerf_ros.geometry.camera.Distortion or None, "
                f"got {type(self.distortion).__name__}"
            )
        for name in ("pose_noise_m", "pose_noise_deg", "pose_drift_m", "pose_drift_deg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConditionsError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("exposure_stops", "white_balance_stops"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_STOPS:
                raise ConditionsError(f"{name} must be in [0, {MAX_STOPS:g}] stops, got {v!r}")
        if self.late_correction and not self.pose_drift:
            raise ConditionsError(
                "late_correction needs a pose drift to correct (pose_drift_m or pose_drift_deg > 0): "
                "a loop closure removes accumulated drift"
            )

    # ------------------------------------------------------------ what is on
    @property
    def lens(self) -> Optional[Distortion]:
        """The distortion when it is not all zero, else None."""
        return None if self.distortion is None or self.distortion.is_identity else self.distortion

    @property
    def pose_noise(self) -> bool:
        """True when per-frame pose noise is on."""
        return self.pose_noise_m > 0 or self.pose_noise_deg > 0

    @property
    def pose_drift(self) -> bool:
        """True when pose drift is on."""
        return self.pose_drift_m > 0 or self.pose_drift_deg > 0

    @property
    def poses(self) -> bool:
        """True when the frames' poses differ from the ground truth."""
        return self.pose_noise or self.pose_drift

    @property
    def colour(self) -> bool:
        """True when exposure or white balance changes the images."""
        return self.exposure_stops > 0 or self.white_balance_stops > 0

    @property
    def active(self) -> bool:
        """True when any condition is on (otherwise the scene is exactly the clean one)."""
        return self.lens is not None or self.poses or self.colour

    # ------------------------------------------------------------ JSON form
    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (the distortion as ``{"model", "coefficients"}`` or None)."""
        d = asdict(self)
        d["distortion"] = (
            None
            if self.distortion is None
            else {"model": self.distortion.model, "coefficients": self.distortion.as_dict()}
        )
        return d

    @classmethod
    def from_json(cls, doc: Dict[str, Any]) -> "Conditions":
        """The inverse of :meth:`to_json`; ConditionsError (or DistortionError) naming what is wrong."""
        if not isinstance(doc, dict):
            raise ConditionsError(f"conditions must be a JSON object, got {type(doc).__name__}")
        unknown = sorted(set(doc) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConditionsError(f"unknown condition(s) {', '.join(unknown)}")
        kw = dict(doc)
        dist = kw.pop("distortion", None)
        if dist is not None:
            try:
                model, coeffs = dist["model"], dist["coefficients"]
                names = DISTORTION_MODELS.get(model, ())
                kw["distortion"] = Distortion.create(model, [coeffs[n] for n in names] if names else [])
            except (KeyError, TypeError) as e:
                raise ConditionsError(f"distortion entry {dist!r} is malformed ({type(e).__name__}: {e})") from None
        return cls(**kw)


def parse_distortion(text: str) -> Distortion:
    """``MODEL`` (the model's lens in :data:`DEFAULT_LENSES`) or ``MODEL:c1,c2,...`` (coefficients
    in ROS ``D`` order; missing trailing ones are zero) -> Distortion. DistortionError names an
    unknown model or bad coefficients."""
    model, _, rest = text.strip().partition(":")
    model = model.strip()
    if model not in DISTORTION_MODELS:
        raise DistortionError(
            f"lens distortion model '{model}' is not supported (supported: {', '.join(DISTORTION_MODELS)})"
        )
    if not rest.strip():
        return DEFAULT_LENSES[model]
    try:
        coeffs = [float(c) for c in rest.split(",")]
    except ValueError:
        raise DistortionError(f"distortion '{text}': coefficients must be numbers separated by commas") from None
    return Distortion.create(model, coeffs)


# ---------------------------------------------------------------------------- poses
def rotation_from_vector(w: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of rotation vectors ``(..., 3)`` (axis times angle, radians)."""
    w = np.asarray(w, dtype=np.float64)
    angle = np.linalg.norm(w, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(a/2)/a -> 1/2 as a -> 0
    k = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-300), 0.5)
    q = np.concatenate([w * k, np.cos(half)], axis=-1)
    return quat_to_matrix(q)


def _drift_transforms(seed: int, c2ws: np.ndarray, cond: Conditions) -> np.ndarray:
    """(F, 4, 4) world-frame drift of each frame (identity at the first)."""
    n = len(c2ws)
    rng = np.random.default_rng([seed, _DRIFT_STREAM])
    a = rng.uniform(0.0, 2.0 * np.pi)
    u = np.array([math.cos(a), math.sin(a), 0.0])  # horizontal: odometry drifts mostly in the plane
    v = rng.normal(size=3)
    v -= v.dot(u) * u
    v /= np.linalg.norm(v)
    s = np.arange(n) / max(n - 1, 1)
    trans = cond.pose_drift_m * (s[:, None] * u + 0.25 * np.sin(2.0 * np.pi * s)[:, None] * v)
    yaw = np.radians(cond.pose_drift_deg) * s
    pivot = c2ws[0, :3, 3]
    D = np.tile(np.eye(4), (n, 1, 1))
    Rz = rotation_from_vector(np.stack([np.zeros(n), np.zeros(n), yaw], axis=-1))
    D[:, :3, :3] = Rz
    D[:, :3, 3] = pivot - np.einsum("nij,j->ni", Rz, pivot) + trans  # yaw about the first position
    return D


def corrupt_poses(seed: int, c2ws: np.ndarray, cond: Conditions) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The poses a robot would report for true camera-to-world poses ``c2ws`` (F, 4, 4): per-frame
    noise, then the drift. Returns (published (F, 4, 4), corrected (F, 4, 4): the noisy poses
    without the drift, or None unless ``cond.late_correction``)."""
    c2ws = np.asarray(c2ws, dtype=np.float64)
    n = len(c2ws)
    noisy = c2ws.copy()
    if cond.pose_noise:
        rng = np.random.default_rng([seed, _NOISE_STREAM])
        dt = rng.normal(scale=cond.pose_noise_m, size=(n, 3))
        dw = rng.normal(scale=math.radians(cond.pose_noise_deg), size=(n, 3))
        noisy[:, :3, :3] = rotation_from_vector(dw) @ c2ws[:, :3, :3]  # about the camera centre
        noisy[:, :3, 3] += dt
    published = noisy
    if cond.pose_drift:
        published = _drift_transforms(seed, c2ws, cond) @ noisy
    corrected = noisy.copy() if cond.late_correction else None
    return published, corrected


# ---------------------------------------------------------------------------- colour
def colour_gains(seed: int, n_frames: int, cond: Conditions) -> np.ndarray:
    """(F, 3) per-frame, per-channel (r, g, b) gains of the exposure and white-balance changes."""
    gains = np.ones((n_frames, 3))
    if cond.exposure_stops > 0:
        e = np.random.default_rng([seed, _EXPOSURE_STREAM]).uniform(-cond.exposure_stops, cond.exposure_stops, n_frames)
        gains *= np.exp2(e)[:, None]
    if cond.white_balance_stops > 0:
        w = np.random.default_rng([seed, _BALANCE_STREAM]).uniform(
            -cond.white_balance_stops, cond.white_balance_stops, (n_frames, 2)
        )
        gains[:, 0] *= np.exp2(w[:, 0])
        gains[:, 2] *= np.exp2(w[:, 1])
    return gains


def apply_gains(rgb: np.ndarray, gains: Sequence[float]) -> np.ndarray:
    """An 8-bit image (..., 3) times per-channel ``gains`` (3,), rounded and clipped to 8 bits."""
    g = np.asarray(gains, dtype=np.float32)
    return np.clip(np.round(np.asarray(rgb, np.float32) * g), 0, 255).astype(np.uint8)
