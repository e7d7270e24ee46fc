"""Camera maths in the package convention (ROS-free): pinhole projection and lens distortion.

``K`` is the 3x3 intrinsic matrix with the centre of pixel ``(u, v)`` at continuous image
coordinates ``(u + 0.5, v + 0.5)``; ``c2w`` is the 4x4 camera-to-world pose in the OpenCV camera
convention (x right, y down, z forward); depth is z-depth along the camera's +z axis, in metres.
Lens distortion (:class:`Distortion`) acts on normalised image coordinates; ``backproject`` and
``project`` are the pinhole ones, ``project_distorted`` and ``pixel_directions`` honour a distortion.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "DISTORTION_MODELS",
    "Distortion",
    "DistortionError",
    "backproject",
    "denormalise",
    "effective_distortion",
    "normalise",
    "pixel_directions",
    "project",
    "project_distorted",
    "scaled_intrinsics",
]


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points of every pixel centre of a z-depth image.

    Args:
        depth: (H, W) z-depth in metres (any value is back-projected; mask invalid pixels after).
        K: (3, 3) intrinsics, pixel centres at ``u + 0.5`` (a skew term is honoured).
        c2w: (4, 4) camera-to-world pose.
    Returns:
        (H, W, 3) float64 world points; ``[v, u]`` is the point of pixel row v, column u.
    Raises:
        ValueError: for arrays of the wrong shape.
    """
    depth = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise ValueError(f"K must be (3, 3) and c2w (4, 4), got {K.shape} and {c2w.shape}")
    h, w = depth.shape
    v, u = np.meshgrid(np.arange(h, dtype=np.float64) + 0.5, np.arange(w, dtype=np.float64) + 0.5, indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # (H, W, 3)
    rays = pix @ np.linalg.inv(K).T  # camera rays with z = 1
    cam = rays * depth[..., None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def project(xyz: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (N, 3) -> (col (N,) int64, row (N,) int64, z (N,) camera z-depth).

    Pixel ``(col, row)`` is the one whose area contains the projection (centres at ``+0.5``), the
    inverse of ``backproject``. Points behind the camera (z <= 0) get meaningless pixels: test z.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (p - t), row form
    z = cam[:, 2]
    zs = np.where(np.abs(z) > 1e-9, z, 1e-9)
    uv = cam @ np.asarray(K, dtype=np.float64).T
    col = np.floor(uv[:, 0] / zs).astype(np.int64)
    row = np.floor(uv[:, 1] / zs).astype(np.int64)
    return col, row, z


def scaled_intrinsics(K: np.ndarray, width: int, height: int, new_width: int, new_height: int) -> np.ndarray:
    """Intrinsics of the same camera rendered at another resolution (pixel-centre convention kept:
    continuous image coordinates scale by new/old, so the principal point scales too)."""
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, :] *= new_width / width
    K2[1, :] *= new_height / height
    K2[2, :] = np.asarray(K, dtype=np.float64)[2, :]
    return K2


# ---------------------------------------------------------------------------- lens distortion
DISTORTION_MODELS: Dict[str, Tuple[str, ...]] = {
    "plumb_bob": ("k1", "k2", "p1", "p2", "k3"),
    "rational_polynomial": ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    "equidistant": ("k1", "k2", "k3", "k4"),
}
"""Supported models (``sensor_msgs/CameraInfo`` names) and their coefficients in ROS ``D`` order."""

UNDISTORT_TOLERANCE = 1e-10
"""Newton iterations of :meth:`Distortion.undistort` stop below this residual (normalised units)."""


class DistortionError(ValueError):
    """A lens distortion that cannot be modelled; the message names the model or coefficient."""


@dataclass(frozen=True)
class Distortion:
    """Lens distortion of a camera in normalised image coordinates (immutable, hashable).

    Normalised coordinates are ``x = (u - cx - s * y) / fx``, ``y = (v - cy) / fy`` of the package's
    ``K`` (the same numbers as OpenCV's, whose pixel centres sit half a pixel earlier in both ``u``
    and ``cx``), so the distortion does not change when an image is rescaled: only ``K`` does.

    Models, with ``r^2 = x^2 + y^2``:

    - ``plumb_bob`` (OpenCV's 5 coefficients ``k1 k2 p1 p2 k3``) and ``rational_polynomial``
      (``k1 k2 p1 p2 k3 k4 k5 k6``): ``x_d = x a + 2 p1 x y + p2 (r^2 + 2 x^2)``,
      ``y_d = y a + p1 (r^2 + 2 y^2) + 2 p2 x y`` with
      ``a = (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)``.
    - ``equidistant`` (OpenCV fisheye ``k1 k2 k3 k4``): ``theta = atan(r)``,
      ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``,
      ``(x_d, y_d) = (theta_d / r) (x, y)``.

    Build one with :meth:`create` (pads a short coefficient list with zeros); the constructor
    refuses an unknown model (naming it), a wrong number of coefficients and NaN/infinite values.
    """

    model: str
    coeffs: Tuple[float, ...]

    def __post_init__(self) -> None:
        names = DISTORTION_MODELS.get(self.model)
        if names is None:
            raise DistortionError(
                f"lens distortion model '{self.model}' is not supported (supported: {', '.join(DISTORTION_MODELS)})"
            )
        if not isinstance(self.coeffs, tuple) or len(self.coeffs) != len(names):
            raise DistortionError(
                f"distortion model '{self.model}' needs {len(names)} coefficients ({' '.join(names)}), "
                f"got {self.coeffs!r}"
            )
        bad = [n for n, c in zip(names, self.coeffs) if not math.isfinite(c)]
        if bad:
            raise DistortionError(f"distortion model '{self.model}': coefficient {', '.join(bad)} is NaN or infinite")

    @classmethod
    def create(cls, model: str, coeffs: Sequence[float]) -> "Distortion":
        """A distortion from a model name and its coefficients in ROS ``D`` order. Missing trailing
        coefficients are zero; extra ones must be zero (ROS drivers pad ``D``)."""
        names = DISTORTION_MODELS.get(model)
        if names is None:
            cls(model, ())  # raises, naming the model
        try:
            vals = [float(c) for c in coeffs]
        except (TypeError, ValueError):
            raise DistortionError(f"distortion model '{model}': coefficients are not numbers: {coeffs!r}") from None
        extra = [c for c in vals[len(names) :] if c != 0.0]
        if extra:
            raise DistortionError(
                f"distortion model '{model}' has {len(names)} coefficients ({' '.join(names)}), "
                f"got {len(vals)} with non-zero extras {extra}"
            )
        vals = (vals + [0.0] * len(names))[: len(names)]
        return cls(model, tuple(vals))

    @property
    def names(self) -> Tuple[str, ...]:
        """Coefficient names in order."""
        return DISTORTION_MODELS[self.model]

    @property
    def is_identity(self) -> bool:
        """True when every coefficient is zero (a pinhole camera)."""
        return not any(self.coeffs)

    def as_dict(self) -> Dict[str, float]:
        """Coefficients by name."""
        return dict(zip(self.names, self.coeffs))

    # ------------------------------------------------------------ forward model
    def distort(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Distorted normalised coordinates of undistorted ones (arrays of one shape, float64)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.model == "equidistant":
            k1, k2, k3, k4 = self.coeffs
            r = np.hypot(x, y)
            th = np.arctan(r)
            t2 = th * th
            thd = th * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            s = np.where(r > 1e-12, thd / np.maximum(r, 1e-300), 1.0)
            return x * s, y * s
        k1, k2, p1, p2, k3, *rest = self.coeffs
        k4, k5, k6 = rest if rest else (0.0, 0.0, 0.0)
        r2 = x * x + y * y
        a = (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xy = x * y
        return x * a + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x * x), y * a + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * xy

    # ------------------------------------------------------------ inverse
    def undistort(self, xd: np.ndarray, yd: np.ndarray, max_iterations: int = 50) -> Tuple[np.ndarray, np.ndarray]:
        """Undistorted normalised coordinates of distorted ones: the inverse of :meth:`distort`, by
        vectorised Newton iterations (exact for every point where the model is invertible; a
        point where it is not keeps the best estimate, see :meth:`residual`)."""
        xd = np.asarray(xd, dtype=np.float64)
        yd = np.asarray(yd, dtype=np.float64)
        if self.model == "equidistant":
            return self._undistort_equidistant(xd, yd, max_iterations)
        x, y = xd.copy(), yd.copy()
        h = 1e-7
        for _ in range(max_iterations):
            fx, fy = self.distort(x, y)
            ex, ey = fx - xd, fy - yd
            if (
                float(np.max(np.abs(ex), initial=0.0)) < UNDISTORT_TOLERANCE
                and float(np.max(np.abs(ey), initial=0.0)) < UNDISTORT_TOLERANCE
            ):
                break
            # Jacobian by central differences (the residual itself is exact, so Newton converges to
            # the exact inverse; the Jacobian only sets the speed)
            ax, ay = self.distort(x + h, y)
            bx, by = self.distort(x - h, y)
            j11, j21 = (ax - bx) / (2 * h), (ay - by) / (2 * h)
            ax, ay = self.distort(x, y + h)
            bx, by = self.distort(x, y - h)
            j12, j22 = (ax - bx) / (2 * h), (ay - by) / (2 * h)
            det = j11 * j22 - j12 * j21
            det = np.where(np.abs(det) > 1e-12, det, 1e-12)
            dx = (j22 * ex - j12 * ey) / det
            dy = (j11 * ey - j21 * ex) / det
            x = x - np.clip(dx, -0.5, 0.5)
            y = y - np.clip(dy, -0.5, 0.5)
        return x, y

    def _fisheye_theta(self, thd: np.ndarray, max_iterations: int, limit: float) -> np.ndarray:
        # Newton on theta_d(theta) = thd, theta in [0, limit]
        k1, k2, k3, k4 = self.coeffs
        th = np.clip(thd, 0.0, limit)
        for _ in range(max_iterations):
            t2 = th * th
            f = th * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - thd
            if float(np.max(np.abs(f), initial=0.0)) < UNDISTORT_TOLERANCE:
                break
            df = 1.0 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
            df = np.where(np.abs(df) > 1e-12, df, 1e-12)
            th = np.clip(th - f / df, 0.0, limit)
        return th

    def _undistort_equidistant(self, xd: np.ndarray, yd: np.ndarray, max_iterations: int):
        thd = np.hypot(xd, yd)
        th = self._fisheye_theta(thd, max_iterations, 0.5 * np.pi - 1e-6)
        s = np.where(thd > 1e-12, np.tan(th) / np.maximum(thd, 1e-300), 1.0)
        return xd * s, yd * s

    def ray_directions(self, xd: np.ndarray, yd: np.ndarray) -> np.ndarray:
        """Unit camera-frame ray directions (..., 3) of distorted normalised coordinates. Unlike
        :meth:`undistort` (whose result is a point on the plane z = 1), this also covers fisheye
        rays 90 degrees or more off the optical axis."""
        xd = np.asarray(xd, dtype=np.float64)
        yd = np.asarray(yd, dtype=np.float64)
        if self.model == "equidistant":
            thd = np.hypot(xd, yd)
            th = self._fisheye_theta(thd, 50, np.pi)
            s = np.where(thd > 1e-12, np.sin(th) / np.maximum(thd, 1e-300), 1.0)
            return np.stack([xd * s, yd * s, np.cos(th)], axis=-1)
        x, y = self.undistort(xd, yd)
        d = np.stack([x, y, np.ones_like(x)], axis=-1)
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def residual(self, x: np.ndarray, y: np.ndarray, xd: np.ndarray, yd: np.ndarray) -> np.ndarray:
        """Distance (normalised units) between ``distort(x, y)`` and ``(xd, yd)``: how well an
        undistorted estimate reproduces the distorted point."""
        fx, fy = self.distort(x, y)
        return np.hypot(fx - np.asarray(xd, np.float64), fy - np.asarray(yd, np.float64))

    def max_displacement_px(self, K: np.ndarray, width: int, height: int) -> float:
        """Largest distance in pixels between where a ray of the image lands with and without this
        distortion (over the image border and a coarse grid): how much ignoring it would cost."""
        u, v = _pixel_grid(width, height, step=max(1, max(width, height) // 64))
        xd, yd = normalise(K, u, v)
        x, y = self.undistort(xd, yd)
        pu, pv = denormalise(K, x, y)
        return float(np.max(np.hypot(pu - u, pv - v), initial=0.0))


def _pixel_grid(width: int, height: int, step: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    cols = np.unique(np.r_[np.arange(0, width, step), width - 1]).astype(np.float64) + 0.5
    rows = np.unique(np.r_[np.arange(0, height, step), height - 1]).astype(np.float64) + 0.5
    v, u = np.meshgrid(rows, cols, indexing="ij")
    return u.ravel(), v.ravel()


def normalise(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Continuous pixel coordinates (centres at ``i + 0.5``) -> normalised coordinates (skew honoured)."""
    K = np.asarray(K, dtype=np.float64)
    y = (np.asarray(v, np.float64) - K[1, 2]) / K[1, 1]
    x = (np.asarray(u, np.float64) - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return x, y


def denormalise(K: np.ndarray, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates -> continuous pixel coordinates (the inverse of :func:`normalise`)."""
    K = np.asarray(K, dtype=np.float64)
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]


def effective_distortion(distortion: Optional[Distortion]) -> Optional[Distortion]:
    """``distortion``, or None when it is None or all zero (the pinhole path applies)."""
    return None if distortion is None or distortion.is_identity else distortion


def project_distorted(
    xyz: np.ndarray, K: np.ndarray, c2w: np.ndarray, distortion: Optional[Distortion]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (N, 3) -> continuous pixel coordinates ``u`` (N,), ``v`` (N,) through the lens
    distortion (none: pinhole), and camera z-depth (N,). Points behind the camera: test z."""
    xyz = np.asarray(xyz, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]
    z = cam[:, 2]
    zs = np.where(np.abs(z) > 1e-9, z, 1e-9)
    x, y = cam[:, 0] / zs, cam[:, 1] / zs
    d = effective_distortion(distortion)
    if d is not None:
        x, y = d.distort(x, y)
    u, v = denormalise(K, x, y)
    return u, v, z


@functools.lru_cache(maxsize=8)
def _cached_directions(K: Tuple[float, ...], width: int, height: int, distortion: Distortion) -> np.ndarray:
    u, v = _pixel_grid(width, height)
    out = distortion.ray_directions(*normalise(np.asarray(K).reshape(3, 3), u, v)).astype(np.float32)
    out.setflags(write=False)
    return out


def pixel_directions(K: np.ndarray, width: int, height: int, distortion: Optional[Distortion]) -> np.ndarray:
    """Unit camera-frame ray directions through every pixel centre of a ``width`` x ``height``
    image, row-major: (H*W, 3) float32, read-only. With a distortion, each pixel's coordinates are
    undistorted (computed once per camera and cached); without one, ``K^-1 [u + 0.5, v + 0.5, 1]``
    normalised."""
    K = np.asarray(K, dtype=np.float64)
    d = effective_distortion(distortion)
    if d is None:
        u, v = _pixel_grid(width, height)
        x, y = normalise(K, u, v)
        dirs = np.stack([x, y, np.ones_like(x)], axis=-1)
        return (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)).astype(np.float32)
    return _cached_directions(tuple(float(k) for k in K.reshape(-1)), int(width), int(height), d)
