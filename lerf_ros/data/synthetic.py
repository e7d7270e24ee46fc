"""Deterministic synthetic tabletop scenes with ground truth, rendered by ray casting.

A scene is a room (floor, four walls, no ceiling) with a table whose top surface is the plane
``z = 0`` and 5 to 10 objects from :data:`VOCABULARY` (27 everyday classes built from
primitives: boxes, lathed solids, bent tubes; each with a colour and a stripe/checker/ring
texture) standing on it without overlapping. A robot-like camera trajectory (an orbit around the
table with height and radius variation, then a wrist-camera style close pass over the objects)
is rendered with open3d's ``RaycastingScene`` (Embree) to

- RGB (Lambertian shading with ambient light and hard shadows from one directional light),
- metric z-depth (float32 metres, 0 where a ray hits nothing),
- per-pixel instance ids (0 = background: table, floor, walls, sky; object ``i`` of
  :attr:`SyntheticScene.objects` has id ``i + 1``).

Conventions: world frame right-handed, +z up, metres; the table top is ``z = 0``
(:attr:`SyntheticScene.table_height`); camera poses are camera-to-world in the OpenCV convention of
:mod:`lerf_ros.data.frame`. Everything is a function of the seed and the parameters: the same call
gives the same pixels.

Typical use::

    scene = make_scene(seed=3)                 # 60 frames at 160x120
    scene.save("out/scene3")                   # PNG + NPZ per frame, scene.json, preview.png
    scene = load_scene("out/scene3")           # identical frames and ground truth
    for frame in scene: ...                    # lerf_ros.data.frame.Frame with depth + instance
    scene.absent_classes()                     # vocabulary classes not in the scene (negative queries)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lerf_ros.data.frame import Frame

__all__ = [
    "VOCABULARY",
    "ObjectClass",
    "SceneObject",
    "SyntheticScene",
    "SceneFormatError",
    "make_scene",
    "load_scene",
    "normalize_phrase",
    "intrinsics_from_fov",
    "look_at",
    "scene_digest",
]

SCENE_FORMAT = "lerf_ros.synthetic_scene/1"
SCENE_FILE = "scene.json"
PREVIEW_FILE = "preview.png"
GROUND_TRUTH_FILE = "ground_truth.npz"

# Table and room (metres, world frame; the table top is z = 0).
TABLE_SIZE = (1.2, 0.8)
TABLE_THICKNESS = 0.04
FLOOR_Z = -0.75
ROOM_HALF = 3.0
WALL_HEIGHT = 2.6
PLACEMENT_MARGIN = 0.04
"""Distance kept between objects' footprints and from the table edge."""
LIGHT_DIR = np.array([0.35, -0.45, 1.0]) / np.linalg.norm([0.35, -0.45, 1.0])
AMBIENT = 0.35
DIFFUSE = 0.65
SKY = np.array([0.78, 0.85, 0.95])


class SceneFormatError(ValueError):
    """A scene folder that cannot be loaded; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# Phrases
# --------------------------------------------------------------------------------------------

_ARTICLES = ("a ", "an ", "the ", "some ")


def normalize_phrase(text: str) -> str:
    """Lower-case, trim, collapse white space, drop a leading article and trailing punctuation.

    ``"  The Coffee  Mug. "`` -> ``"coffee mug"``. Used to match class names and synonyms.
    """
    t = " ".join(str(text).lower().replace("_", " ").split())
    t = t.strip(" .,;:!?\"'")
    for art in _ARTICLES:
        if t.startswith(art):
            t = t[len(art):].strip()
            break
    return t


# --------------------------------------------------------------------------------------------
# Meshes built from primitives (object-local frame: z up, resting on z = 0)
# --------------------------------------------------------------------------------------------

PATTERNS = {"solid": 0, "stripes": 1, "checker": 2, "rings": 3}


@dataclass
class Material:
    """Surface colour: ``color`` and ``color2`` (RGB in [0, 1]) alternate in a pattern evaluated in
    the owning object's local frame: 'solid', 'stripes' (bands across local ``axis``), 'checker'
    (3D checker) or 'rings' (concentric about the local z axis); ``period`` in metres."""

    color: Tuple[float, float, float]
    color2: Optional[Tuple[float, float, float]] = None
    pattern: str = "solid"
    period: float = 0.02
    axis: int = 2


@dataclass
class Part:
    """One triangle mesh of an object. vertices: (V, 3) float64; triangles: (T, 3) int64.
    ``smooth``: shade with interpolated vertex normals (curved surfaces) rather than face normals."""

    vertices: np.ndarray
    triangles: np.ndarray
    material: Material
    smooth: bool = True

    def transformed(self, R: np.ndarray, t: np.ndarray) -> "Part":
        return Part(self.vertices @ R.T + t, self.triangles, self.material, self.smooth)


def _ring_grid(rings: np.ndarray, cap_start: bool, cap_end: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Triangulate P rings of S points each ((P, S, 3)) into a closed-around tube; optionally close
    the first/last ring with a fan (its own vertices, so the rim keeps a sharp normal)."""
    P, S, _ = rings.shape
    verts = [rings.reshape(-1, 3)]
    i = np.arange(P - 1)[:, None]
    k = np.arange(S)[None, :]
    a = i * S + k
    b = i * S + (k + 1) % S
    c = (i + 1) * S + k
    d = (i + 1) * S + (k + 1) % S
    tris = [np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)]
    n = P * S
    for flag, ring in ((cap_start, rings[0]), (cap_end, rings[-1])):
        if not flag:
            continue
        centre = ring.mean(axis=0, keepdims=True)
        verts += [ring, centre]
        kk = np.arange(S)
        tris.append(np.stack([np.full(S, n + S), n + kk, n + (kk + 1) % S], -1))
        n += S + 1
    return np.concatenate(verts), np.concatenate(tris).astype(np.int64)


def _lathe(r: Sequence[float], z: Sequence[float], material: Material, segments: int = 28,
           caps: bool = True) -> Part:
    """Solid of revolution about the local z axis: profile radii ``r`` at heights ``z``.
    Ends with r > 0 are closed with flat caps when ``caps``."""
    r = np.asarray(r, float)
    z = np.asarray(z, float)
    th = 2 * np.pi * np.arange(segments) / segments
    rings = np.stack([r[:, None] * np.cos(th)[None], r[:, None] * np.sin(th)[None],
                      np.broadcast_to(z[:, None], (len(z), segments))], -1)
    v, t = _ring_grid(rings, caps and r[0] > 1e-9, caps and r[-1] > 1e-9)
    return Part(v, t, material, smooth=True)


def _tube(curve: np.ndarray, radii: np.ndarray, plane_normal: Sequence[float], material: Material,
          segments: int = 16) -> Part:
    """A tube of varying radius along a planar curve ((P, 3) points in the plane with normal
    ``plane_normal``); ends with radius > 0 are capped."""
    curve = np.asarray(curve, float)
    radii = np.asarray(radii, float)
    tang = np.gradient(curve, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    b = np.asarray(plane_normal, float)
    b = b / np.linalg.norm(b)
    nrm = np.cross(b[None], tang)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    th = 2 * np.pi * np.arange(segments) / segments
    rings = (curve[:, None] + radii[:, None, None]
             * (np.cos(th)[None, :, None] * nrm[:, None] + np.sin(th)[None, :, None] * b[None, None]))
    v, t = _ring_grid(rings, radii[0] > 1e-9, radii[-1] > 1e-9)
    return Part(v, t, material, smooth=True)


def _box(size: Sequence[float], material: Material, center: Sequence[float] = (0, 0, 0),
         yaw: float = 0.0) -> Part:
    """Axis-aligned box (then turned by ``yaw`` about z) of ``size`` centred at ``center``."""
    s = np.asarray(size, float) / 2
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * s
    tris = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int64)
    c, sn = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, -sn, 0], [sn, c, 0], [0, 0, 1]])
    return Part(corners @ R.T + np.asarray(center, float), tris, material, smooth=False)


def _ellipsoid(radii: Sequence[float], material: Material, z0: float = 0.0, rings: int = 14,
               segments: int = 24) -> Part:
    """Ellipsoid with semi-axes ``radii`` (x, y, z) whose lowest point is at height ``z0``."""
    phi = np.linspace(0, np.pi, rings + 1)
    rx, ry, rz = radii
    part = _lathe(np.sin(phi), z0 + rz * (1 - np.cos(phi)), material, segments=segments, caps=False)
    part.vertices[:, 0] *= rx
    part.vertices[:, 1] *= ry
    return part


def _vertex_normals(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals of a mesh."""
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    vn = np.zeros_like(v)
    for j in range(3):
        np.add.at(vn, t[:, j], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.where(norm > 1e-12, vn / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))


# --------------------------------------------------------------------------------------------
# The vocabulary: everyday tabletop classes
# --------------------------------------------------------------------------------------------

Color = Tuple[float, float, float]


def _hex(h: str) -> Color:
    h = h.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> Color:
    return _hex(options[int(rng.integers(len(options)))])


def _shade(c: Color, f: float) -> Color:
    return tuple(float(np.clip(x * f, 0, 1)) for x in c)  # type: ignore[return-value]


@dataclass(frozen=True)
class ObjectClass:
    """A vocabulary class: its name, synonyms (other phrases meaning it) and a mesh builder
    ``build(rng, s) -> [Part]`` producing the object at size factor ``s`` (about 1)."""

    name: str
    synonyms: Tuple[str, ...]
    build: Callable[[np.random.Generator, float], List[Part]] = field(repr=False, compare=False)
    description: str = ""

    def phrases(self) -> Tuple[str, ...]:
        """The class name followed by its synonyms."""
        return (self.name,) + tuple(self.synonyms)


def _mug(rng, s):
    col = _pick(rng, ["#d8d8d0", "#2f5fa8", "#b83232", "#2d8a57", "#e0b030"])
    mat = Material(col, _shade(col, 0.55), "stripes", 0.018 * s, axis=2)
    R, h, w = 0.040 * s, 0.095 * s, 0.006 * s
    body = _lathe([R, R, R - w, R - w], [0, h, h, 0.008 * s], mat)
    th = np.linspace(-np.pi / 2, np.pi / 2, 14)
    hr = 0.032 * s
    curve = np.stack([R - 0.004 * s + hr * 0.9 * np.cos(th), np.zeros_like(th), h / 2 + hr * np.sin(th)], -1)
    handle = _tube(curve, np.full(len(th), 0.0065 * s), (0, 1, 0), Material(col))
    return [body, handle]


def _banana(rng, s):
    L, Rb = 0.19 * s, 0.12 * s
    a = np.linspace(-L / (2 * Rb), L / (2 * Rb), 24)
    curve = np.stack([Rb * np.sin(a), Rb * (1 - np.cos(a)), np.full_like(a, 0.02 * s)], -1)
    u = np.linspace(0, 1, 24)
    radii = 0.018 * s * np.clip(np.sin(np.pi * u) ** 0.45, 0.18, 1)
    radii[0] = radii[-1] = 0.0
    yellow = _pick(rng, ["#f2d43a", "#e8c82c", "#f5dc55"])
    return [_tube(curve, radii, (0, 0, 1), Material(yellow, _shade(yellow, 0.8), "stripes", 0.05 * s, 0), 14)]


def _book(rng, s):
    col = _pick(rng, ["#7a1f2b", "#1f3f7a", "#2b6b3a", "#5a3a7a", "#c06020"])
    sx, sy, sz = 0.21 * s, 0.15 * s, 0.032 * s
    cover = _box((sx, sy, sz * 0.25), Material(col, _shade(col, 1.5), "stripes", 0.035 * s, 0),
                 (0, 0, sz * 0.875))
    pages = _box((sx * 0.97, sy * 0.97, sz * 0.6), Material(_hex("#efe8d4"), _hex("#d6ceb8"), "stripes", 0.004 * s, 2),
                 (0, 0, sz * 0.45))
    back = _box((sx, sy, sz * 0.15), Material(col), (0, 0, sz * 0.075))
    return [cover, pages, back]


def _bowl(rng, s):
    col = _pick(rng, ["#f0ece0", "#5b87b5", "#c75f3f", "#8fb86a"])
    R, h, w = 0.08 * s, 0.06 * s, 0.005 * s
    ph = np.linspace(0, np.pi / 2, 8)
    r_out = 0.035 * s + (R - 0.035 * s) * np.sin(ph)
    z_out = h * (1 - np.cos(ph))
    r = np.concatenate([[0.0], r_out, r_out[::-1][:-1] - w, [0.0]])
    z = np.concatenate([[0.0], z_out, z_out[::-1][:-1] + w, [w]])
    return [_lathe(r, z, Material(col, _shade(col, 0.7), "rings", 0.02 * s), caps=False)]


def _bottle(rng, s):
    col = _pick(rng, ["#4aa3d8", "#3c8c4a", "#9ad0e8", "#d04a3a"])
    R, H = 0.035 * s, 0.22 * s
    body = _lathe([R, R, R * 0.95, R * 0.45, R * 0.38, R * 0.38],
                  [0, 0.62 * H, 0.70 * H, 0.84 * H, 0.88 * H, 0.93 * H],
                  Material(col, _shade(col, 0.6), "stripes", 0.03 * s, 2))
    cap = _lathe([R * 0.42, R * 0.42], [0.93 * H, H], Material(_pick(rng, ["#f4f4f4", "#202020", "#2050c0"])))
    return [body, cap]


def _phone(rng, s):
    col = _pick(rng, ["#202226", "#c8c8cc", "#2a3550"])
    sx, sy, sz = 0.15 * s, 0.074 * s, 0.009 * s
    return [_box((sx, sy, sz), Material(col), (0, 0, sz / 2)),
            _box((sx * 0.9, sy * 0.86, 0.0015), Material(_hex("#0d1b3a"), _hex("#2a5aa0"), "stripes", 0.02 * s, 0),
                 (0, 0, sz + 0.00075))]


def _apple(rng, s):
    col = _pick(rng, ["#c0282a", "#a81e2e", "#8cbf3a"])
    r = 0.04 * s
    body = _ellipsoid((r, r, r * 0.88), Material(col, _shade(col, 0.82), "stripes", 0.012 * s, 2))
    stem = _lathe([0.003 * s, 0.003 * s], [1.7 * r, 2.1 * r], Material(_hex("#5a3a1a")))
    return [body, stem]


def _scissors(rng, s):
    col = _pick(rng, ["#e03030", "#2050c0", "#202020", "#f08020"])
    steel = Material(_hex("#b8bcc4"), _hex("#8a8e96"), "stripes", 0.02 * s, 0)
    parts = []
    for sign in (-1, 1):
        yaw = sign * 0.16
        parts.append(_box((0.10 * s, 0.012 * s, 0.004 * s), steel,
                          (0.045 * s * math.cos(yaw), 0.045 * s * math.sin(yaw), 0.002 * s + (sign > 0) * 0.004 * s), yaw))
        th = np.linspace(0, 2 * np.pi, 20)
        c = np.array([-0.04 * s, sign * 0.022 * s, 0.005 * s])
        ring = c + np.stack([0.018 * s * np.cos(th), 0.014 * s * np.sin(th), np.zeros_like(th)], -1)
        parts.append(_tube(ring, np.full(len(th), 0.004 * s), (0, 0, 1), Material(col), 10))
    return parts


def _orange(rng, s):
    col = _pick(rng, ["#f08a1c", "#f59a2a", "#e87c10"])
    r = 0.04 * s
    return [_ellipsoid((r, r, r * 0.95), Material(col, _shade(col, 0.85), "checker", 0.01 * s))]


def _soda_can(rng, s):
    col = _pick(rng, ["#d0202a", "#1e4fa0", "#20a050", "#c0c0c8"])
    R, H = 0.033 * s, 0.122 * s
    body = _lathe([R * 0.85, R, R, R * 0.85], [0, 0.01 * s, H - 0.01 * s, H],
                  Material(col, _hex("#f2f2f2"), "stripes", 0.025 * s, 2))
    return [body]


def _tennis_ball(rng, s):
    r = 0.033 * s
    return [_ellipsoid((r, r, r), Material(_hex("#d4e84a"), _hex("#f4f4e8"), "stripes", 0.03 * s, 0))]


def _plate(rng, s):
    col = _pick(rng, ["#f4f2ec", "#e8e0cc", "#a8c8e0"])
    R, H = 0.12 * s, 0.02 * s
    return [_lathe([0.07 * s, R, R, 0.08 * s, 0.0], [0, H, H, 0.006 * s, 0.006 * s],
                   Material(col, _shade(col, 0.75), "rings", 0.025 * s))]


def _cereal_box(rng, s):
    col = _pick(rng, ["#e8c020", "#d04020", "#3070c0", "#40a040"])
    sx, sy, sz = 0.19 * s, 0.07 * s, 0.27 * s
    return [_box((sx, sy, sz), Material(col, _hex("#f4f0e0"), "checker", 0.045 * s), (0, 0, sz / 2))]


def _remote(rng, s):
    sx, sy, sz = 0.17 * s, 0.05 * s, 0.02 * s
    return [_box((sx, sy, sz), Material(_hex("#1c1c1e")), (0, 0, sz / 2)),
            _box((sx * 0.7, sy * 0.6, 0.003 * s), Material(_hex("#606068"), _hex("#c03030"), "checker", 0.012 * s),
                 (0.01 * s, 0, sz + 0.0015 * s))]


def _rubiks_cube(rng, s):
    a = 0.057 * s
    return [_box((a, a, a), Material(_hex("#e02020"), _hex("#f0f0f0"), "checker", a / 3), (0, 0, a / 2))]


def _mouse(rng, s):
    col = _pick(rng, ["#303034", "#d8d8dc", "#8a8a90"])
    e = _ellipsoid((0.058 * s, 0.032 * s, 0.036 * s), Material(col, _shade(col, 0.7), "stripes", 0.03 * s, 0))
    e.vertices[:, 2] = np.maximum(e.vertices[:, 2] - 0.004 * s, 0.0)
    return [e]


def _candle(rng, s):
    col = _pick(rng, ["#f4ecd8", "#e8c8d0", "#d8e8f0"])
    R, H = 0.035 * s, 0.10 * s
    return [_lathe([R, R, R * 0.9], [0, H, H], Material(col, _shade(col, 0.9), "stripes", 0.015 * s, 2)),
            _lathe([0.0025 * s, 0.0025 * s], [H, H + 0.012 * s], Material(_hex("#202020")))]


def _vase(rng, s):
    col = _pick(rng, ["#3a6ea8", "#a83a5a", "#d8d0b8", "#3a8a7a"])
    z = np.array([0, 0.02, 0.07, 0.12, 0.16, 0.20, 0.22]) * s
    r = np.array([0.04, 0.05, 0.06, 0.05, 0.03, 0.032, 0.036]) * s
    return [_lathe(r, z, Material(col, _hex("#f0e8d0"), "stripes", 0.025 * s, 2))]


def _lemon(rng, s):
    u = np.linspace(0, 1, 16)
    L, r = 0.085 * s, 0.028 * s
    radii = r * np.sqrt(np.clip(1 - (2 * u - 1) ** 2, 0, 1)) * (1 - 0.25 * (2 * u - 1) ** 8)
    curve = np.stack([(u - 0.5) * L, np.zeros_like(u), np.full_like(u, r)], -1)
    return [_tube(curve, radii, (0, 0, 1), Material(_hex("#f4e040"), _hex("#e4d030"), "checker", 0.008 * s), 18)]


def _egg(rng, s):
    u = np.linspace(0, 1, 16)
    L, r = 0.06 * s, 0.022 * s
    radii = r * np.sqrt(np.clip(1 - (2 * u - 1) ** 2, 0, 1)) * (1 + 0.18 * (2 * u - 1))
    curve = np.stack([(u - 0.5) * L, np.zeros_like(u), np.full_like(u, r * 1.15)], -1)
    col = _pick(rng, ["#f4eee0", "#e0c8a0"])
    return [_tube(curve, radii, (0, 0, 1), Material(col, _shade(col, 0.93), "checker", 0.01 * s), 18)]


def _marker(rng, s):
    col = _pick(rng, ["#e02020", "#2040d0", "#20a040", "#202020", "#f0c020"])
    r, L = 0.009 * s, 0.13 * s
    x = np.linspace(-L / 2, 0.25 * L, 6)
    body = _tube(np.stack([x, 0 * x, np.full_like(x, r)], -1), np.full(6, r), (0, 0, 1),
                 Material(_hex("#f0f0f0"), col, "stripes", 0.03 * s, 0), 12)
    xc = np.linspace(0.25 * L, L / 2, 4)
    cap = _tube(np.stack([xc, 0 * xc, np.full_like(xc, r)], -1), np.r_[r * 1.1, r * 1.1, r * 1.1, r * 0.5],
                (0, 0, 1), Material(col), 12)
    return [body, cap]


def _stapler(rng, s):
    col = _pick(rng, ["#202020", "#c02020", "#2040a0"])
    return [_box((0.16 * s, 0.04 * s, 0.018 * s), Material(_hex("#505058")), (0, 0, 0.009 * s)),
            _box((0.15 * s, 0.034 * s, 0.024 * s), Material(col, _shade(col, 1.6), "stripes", 0.04 * s, 0),
                 (0.005 * s, 0, 0.032 * s))]


def _sponge(rng, s):
    col = _pick(rng, ["#f4d030", "#f09030", "#e86080"])
    sx, sy = 0.10 * s, 0.068 * s
    return [_box((sx, sy, 0.022 * s), Material(col, _shade(col, 0.85), "checker", 0.008 * s), (0, 0, 0.011 * s)),
            _box((sx, sy, 0.008 * s), Material(_hex("#2a7a3a")), (0, 0, 0.026 * s))]


def _teapot(rng, s):
    col = _pick(rng, ["#f0f0ec", "#2a5a9a", "#b04030", "#6a8a5a"])
    mat = Material(col, _shade(col, 0.7), "stripes", 0.02 * s, 2)
    z = np.array([0, 0.01, 0.04, 0.08, 0.11, 0.12]) * s
    r = np.array([0.045, 0.06, 0.07, 0.062, 0.035, 0.0]) * s
    body = _lathe(r, z, mat)
    t = np.linspace(0, 1, 8)
    spout = _tube(np.stack([0.055 * s + 0.05 * s * t, 0 * t, 0.04 * s + 0.055 * s * t ** 1.3], -1),
                  0.012 * s * (1 - 0.5 * t), (0, 1, 0), Material(col), 10)
    th = np.linspace(-np.pi / 2, np.pi / 2, 12)
    handle = _tube(np.stack([-0.062 * s - 0.03 * s * np.cos(th), 0 * th, 0.065 * s + 0.03 * s * np.sin(th)], -1),
                   np.full(len(th), 0.006 * s), (0, 1, 0), Material(col), 10)
    knob = _ellipsoid((0.012 * s, 0.012 * s, 0.01 * s), Material(_shade(col, 0.6)), z0=0.115 * s)
    return [body, spout, handle, knob]


def _tape(rng, s):
    col = _pick(rng, ["#a0a0a8", "#e0c040", "#3060c0", "#d0d0c0"])
    Ro, Ri, H = 0.05 * s, 0.036 * s, 0.048 * s
    core = Material(_hex("#b89868"))
    return [_lathe([Ro, Ro, Ri + 0.006 * s, Ri + 0.006 * s, Ro], [0, H, H, 0, 0],
                   Material(col, _shade(col, 0.8), "rings", 0.005 * s), caps=False),
            _lathe([Ri + 0.006 * s, Ri + 0.006 * s, Ri, Ri, Ri + 0.006 * s], [0, H, H, 0, 0], core, caps=False)]


def _potted_plant(rng, s):
    pot = _pick(rng, ["#b8603a", "#d8d0c0", "#404448"])
    return [_lathe([0.045 * s, 0.06 * s, 0.06 * s, 0.052 * s], [0, 0.10 * s, 0.10 * s, 0.095 * s],
                   Material(pot, _shade(pot, 0.8), "stripes", 0.02 * s, 2)),
            _ellipsoid((0.075 * s, 0.075 * s, 0.07 * s), Material(_hex("#3a8a3a"), _hex("#205a20"), "checker", 0.015 * s),
                       z0=0.085 * s)]


def _pear(rng, s):
    col = _pick(rng, ["#b8c83a", "#d8c040", "#98b030"])
    ph = np.linspace(0, np.pi, 18)
    z = 0.10 * s * (1 - np.cos(ph)) / 2
    u = z / (0.10 * s)
    r = np.sin(ph) * (0.042 * s * (1 - u) + 0.024 * s * u) * (1 + 0.25 * np.sin(np.pi * u) ** 2)
    body = _lathe(r, z, Material(col, _shade(col, 0.85), "checker", 0.01 * s), caps=False)
    stem = _lathe([0.0025 * s, 0.0025 * s], [0.098 * s, 0.115 * s], Material(_hex("#5a3a1a")))
    return [body, stem]


VOCABULARY: Tuple[ObjectClass, ...] = (
    ObjectClass("mug", ("cup", "coffee mug", "coffee cup", "tea cup"), _mug, "cylinder with a handle"),
    ObjectClass("banana", ("bananas",), _banana, "bent tapered tube"),
    ObjectClass("book", ("novel", "hardcover book", "textbook"), _book, "flat box with pages"),
    ObjectClass("bowl", ("cereal bowl", "salad bowl", "soup bowl"), _bowl, "hollow lathed bowl"),
    ObjectClass("bottle", ("water bottle", "plastic bottle"), _bottle, "lathed bottle with cap"),
    ObjectClass("phone", ("smartphone", "cell phone", "mobile phone", "iphone"), _phone, "thin box with screen"),
    ObjectClass("apple", ("red apple", "green apple"), _apple, "ellipsoid with stem"),
    ObjectClass("scissors", ("pair of scissors", "shears"), _scissors, "two blades and two rings"),
    ObjectClass("orange", ("orange fruit", "tangerine", "mandarin"), _orange, "ellipsoid, dimpled texture"),
    ObjectClass("soda can", ("can", "coke can", "drink can", "beer can", "tin can"), _soda_can, "short cylinder"),
    ObjectClass("tennis ball", ("ball",), _tennis_ball, "sphere"),
    ObjectClass("plate", ("dinner plate", "dish"), _plate, "flat lathed disc"),
    ObjectClass("cereal box", ("box", "cardboard box", "cereal"), _cereal_box, "tall box"),
    ObjectClass("remote control", ("remote", "tv remote"), _remote, "thin long box with buttons"),
    ObjectClass("rubik's cube", ("rubiks cube", "cube", "puzzle cube"), _rubiks_cube, "checkered cube"),
    ObjectClass("computer mouse", ("mouse",), _mouse, "half ellipsoid"),
    ObjectClass("candle", ("pillar candle", "wax candle"), _candle, "cylinder with wick"),
    ObjectClass("vase", ("flower vase",), _vase, "lathed vase"),
    ObjectClass("lemon", ("lime",), _lemon, "lying ellipsoid"),
    ObjectClass("egg", ("chicken egg",), _egg, "lying egg shape"),
    ObjectClass("marker", ("pen", "felt-tip pen", "highlighter"), _marker, "thin lying tube with cap"),
    ObjectClass("stapler", ("office stapler",), _stapler, "two stacked boxes"),
    ObjectClass("sponge", ("kitchen sponge", "scrubber"), _sponge, "two-layer box"),
    ObjectClass("teapot", ("tea pot", "kettle"), _teapot, "lathed pot with spout and handle"),
    ObjectClass("tape", ("roll of tape", "tape roll", "duct tape"), _tape, "ring"),
    ObjectClass("potted plant", ("plant", "house plant", "flower pot"), _potted_plant, "pot with foliage"),
    ObjectClass("pear", ("green pear",), _pear, "lathed pear"),
)


def _check_vocabulary(vocab: Sequence[ObjectClass]) -> None:
    seen: Dict[str, str] = {}
    for cls in vocab:
        for p in cls.phrases():
            key = normalize_phrase(p)
            if key in seen and seen[key] != cls.name:
                raise ValueError(f"phrase '{p}' names both '{seen[key]}' and '{cls.name}'")
            seen[key] = cls.name


_check_vocabulary(VOCABULARY)
_CLASS_BY_NAME = {c.name: c for c in VOCABULARY}


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


@dataclass
class SceneObject:
    """Ground truth of one placed object (world frame, metres).

    Attributes:
        name: unique name in the scene (the class name).
        class_name: vocabulary class.
        synonyms: other phrases for the class.
        instance_id: its id in the frames' instance maps (index in the object list + 1).
        center: (3,) centre of the oriented bounding box.
        size: (3,) box extents along its own x, y, z axes.
        rotation: (3, 3) box axes as columns (a turn about world z: objects stand upright).
        surface_points: (M, 3) points sampled uniformly on the object's surface.
    """

    name: str
    class_name: str
    synonyms: Tuple[str, ...]
    instance_id: int
    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    surface_points: np.ndarray

    @property
    def yaw(self) -> float:
        return float(math.atan2(self.rotation[1, 0], self.rotation[0, 0]))

    def phrases(self) -> Tuple[str, ...]:
        return (self.class_name,) + tuple(self.synonyms)

    def box_corners(self) -> np.ndarray:
        """(8, 3) corners of the oriented box."""
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
        return self.center + (signs * self.size / 2) @ self.rotation.T

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """(N,) bool: which of the (N, 3) points lie inside the box grown by ``margin`` metres."""
        local = (np.asarray(points, float) - self.center) @ self.rotation
        return np.all(np.abs(local) <= self.size / 2 + margin, axis=-1)

    def footprint(self) -> np.ndarray:
        """(4, 2) corners of the box's footprint on the table (counter-clockwise)."""
        h = self.size[:2] / 2
        local = np.array([[-h[0], -h[1]], [h[0], -h[1]], [h[0], h[1]], [-h[0], h[1]]])
        return self.center[:2] + local @ self.rotation[:2, :2].T

    def to_json(self) -> dict:
        return {"name": self.name, "class": self.class_name, "synonyms": list(self.synonyms),
                "instance_id": self.instance_id, "center": self.center.tolist(), "size": self.size.tolist(),
                "rotation": self.rotation.tolist(), "yaw": self.yaw, "num_surface_points": len(self.surface_points)}


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------


@dataclass
class _Geometry:
    part: Part                # in world coordinates
    instance_id: int
    world_to_local: np.ndarray  # (4, 4): texture coordinates are in the owner's local frame


class _Renderer:
    """Vectorised ray caster over a fixed set of world-space parts (open3d RaycastingScene)."""

    def __init__(self, geoms: List[_Geometry], nthreads: int = 0):
        import open3d as o3d  # imported here: open3d is heavy and only the renderer needs it

        self._o3d = o3d
        self.nthreads = nthreads
        self.scene = o3d.t.geometry.RaycastingScene()
        G = len(geoms)
        self.instance = np.zeros(G + 1, np.int32)
        self.smooth = np.zeros(G + 1, bool)
        self.pattern = np.zeros(G + 1, np.int64)
        self.c1 = np.zeros((G + 1, 3), np.float32)
        self.c2 = np.zeros((G + 1, 3), np.float32)
        self.period = np.ones(G + 1)
        self.axis = np.zeros(G + 1, np.int64)
        self.w2l = np.tile(np.eye(4), (G + 1, 1, 1))
        vn, tri, toff, voff = [], [], [0], 0
        for g in geoms:
            v = g.part.vertices.astype(np.float32)
            t = g.part.triangles.astype(np.uint32)
            gid = int(self.scene.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(t)))
            assert gid == len(vn), "open3d assigned geometry ids out of order"
            m = g.part.material
            self.instance[gid] = g.instance_id
            self.smooth[gid] = g.part.smooth
            self.pattern[gid] = PATTERNS[m.pattern]
            self.c1[gid] = m.color
            self.c2[gid] = m.color2 if m.color2 is not None else m.color
            self.period[gid] = m.period
            self.axis[gid] = m.axis
            self.w2l[gid] = g.world_to_local
            vn.append(_vertex_normals(g.part.vertices, g.part.triangles))
            tri.append(g.part.triangles + voff)
            voff += len(g.part.vertices)
            toff.append(toff[-1] + len(g.part.triangles))
        self.vnormals = np.concatenate(vn).astype(np.float32)
        self.triangles = np.concatenate(tri)
        self.tri_offset = np.asarray(toff[:-1] + [0], np.int64)  # last slot: the "miss" geometry
        self.miss_gid = G

    def cast(self, origins: np.ndarray, dirs: np.ndarray, shadows: bool = True):
        """Shade rays. origins, dirs: (N, 3) (dirs need not be unit length).

        Returns (rgb (N, 3) float32 in [0, 1], t (N,) float32 hit parameter in units of |dir|, inf
        on a miss, instance (N,) int32).

        Hits are grouped by geometry (one sort), so each part's texture and normals are computed
        on a contiguous slice with its own scalar parameters: no per-ray Python work."""
        rays = np.empty((len(origins), 6), np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = dirs
        return self.shade(rays, shadows)

    def shade(self, rays: np.ndarray, shadows: bool = True):
        """Like :meth:`cast` for a prebuilt (N, 6) float32 array of origins and directions."""
        o3d = self._o3d
        ans = self.scene.cast_rays(o3d.core.Tensor(rays), nthreads=self.nthreads)
        t = ans["t_hit"].numpy()
        gid = ans["geometry_ids"].numpy().astype(np.int64)
        gid[~np.isfinite(t)] = self.miss_gid
        inst = self.instance[gid]
        rgb = np.empty((len(t), 3), np.float32)
        rgb[:] = SKY
        order = np.argsort(gid, kind="stable")
        starts = np.searchsorted(gid[order], np.arange(self.miss_gid + 1))
        hit_idx = order[:starts[-1]]
        if len(hit_idx) == 0:
            return rgb, t, inst
        prim_n = ans["primitive_normals"].numpy()
        prim_id = ans["primitive_ids"].numpy()
        prim_uv = ans["primitive_uvs"].numpy()
        n = np.empty((len(hit_idx), 3), np.float32)
        albedo = np.empty((len(hit_idx), 3), np.float32)
        p_all = rays[hit_idx, :3] + t[hit_idx, None] * rays[hit_idx, 3:]
        for g in range(self.miss_gid):
            s0, s1 = starts[g], starts[g + 1]
            if s0 == s1:
                continue
            idx = hit_idx[s0:s1]
            p = p_all[s0:s1]
            if self.smooth[g]:
                uv = prim_uv[idx]
                tri = self.triangles[self.tri_offset[g] + prim_id[idx].astype(np.int64)]
                vn = self.vnormals
                ns = ((1 - uv[:, :1] - uv[:, 1:]) * vn[tri[:, 0]] + uv[:, :1] * vn[tri[:, 1]]
                      + uv[:, 1:] * vn[tri[:, 2]])
                n[s0:s1] = ns / np.maximum(np.linalg.norm(ns, axis=1, keepdims=True), 1e-12)
            else:
                n[s0:s1] = prim_n[idx]
            pat = self.pattern[g]
            if pat == 0:
                albedo[s0:s1] = self.c1[g]
                continue
            local = p @ self.w2l[g, :3, :3].T.astype(np.float32) + self.w2l[g, :3, 3].astype(np.float32)
            per = self.period[g]
            if pat == 1:
                q = np.floor(local[:, self.axis[g]] / per + 0.37)
            elif pat == 2:
                q = np.floor(local / per + 0.37).sum(axis=1)
            else:
                q = np.floor(np.hypot(local[:, 0], local[:, 1]) / per)
            albedo[s0:s1] = np.where((q.astype(np.int64) % 2 == 1)[:, None], self.c2[g], self.c1[g])
        d = rays[hit_idx, 3:]
        flip = np.einsum("ij,ij->i", n, d) > 0
        n[flip] *= -1  # face the camera
        # Lambertian + ambient with a hard shadow from the directional light
        ndl = np.clip(n @ LIGHT_DIR.astype(np.float32), 0.0, None)
        lit = np.nonzero(ndl > 0)[0]
        if shadows and len(lit):
            srays = np.empty((len(lit), 6), np.float32)
            srays[:, :3] = p_all[lit] + np.float32(2e-3) * n[lit]
            srays[:, 3:] = LIGHT_DIR
            occ = self.scene.test_occlusions(o3d.core.Tensor(srays), nthreads=self.nthreads).numpy()
            ndl[lit[occ]] = 0.0
        rgb[hit_idx] = albedo * (AMBIENT + DIFFUSE * ndl)[:, None]
        return np.clip(rgb, 0, 1), t, inst

    def render(self, K: np.ndarray, c2ws: np.ndarray, width: int, height: int, shadows: bool = True,
               max_rays: int = 1 << 20):
        """Render pinhole views. K: (3, 3); c2ws: (F, 4, 4) OpenCV camera-to-world.

        Returns rgb (F, H, W, 3) uint8, depth (F, H, W) float32 z-depth (0 on a miss),
        instance (F, H, W) int32."""
        F = len(c2ws)
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
        dcam = pix @ np.linalg.inv(K).T  # camera z component is exactly 1 -> t_hit is z-depth
        rgb = np.zeros((F, height * width, 3), np.uint8)
        depth = np.zeros((F, height * width), np.float32)
        inst = np.zeros((F, height * width), np.int32)
        per = max(1, max_rays // (height * width))
        for s in range(0, F, per):
            cs = c2ws[s:s + per]
            nf = len(cs)
            rays = np.empty((nf, height * width, 6), np.float32)
            rays[..., :3] = cs[:, None, :3, 3]
            rays[..., 3:] = np.einsum("fij,nj->fni", cs[:, :3, :3].astype(np.float32), dcam.astype(np.float32))
            c, t, i = self.shade(rays.reshape(-1, 6), shadows)
            rgb[s:s + nf] = np.round(c * 255).astype(np.uint8).reshape(nf, -1, 3)
            depth[s:s + nf] = np.where(np.isfinite(t), t, 0.0).reshape(nf, -1)
            inst[s:s + nf] = i.reshape(nf, -1)
        return (rgb.reshape(F, height, width, 3), depth.reshape(F, height, width),
                inst.reshape(F, height, width))


# --------------------------------------------------------------------------------------------
# Layout: environment, object placement, camera trajectory
# --------------------------------------------------------------------------------------------


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _environment() -> List[Part]:
    """Table (top at z = 0), legs, floor and walls, in world coordinates."""
    tx, ty = TABLE_SIZE
    wood = Material(_hex("#a8784a"), _hex("#94663c"), "stripes", 0.035, 1)
    parts = [_box((tx, ty, TABLE_THICKNESS), wood, (0, 0, -TABLE_THICKNESS / 2))]
    leg_h = -TABLE_THICKNESS - FLOOR_Z
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((0.05, 0.05, leg_h), Material(_hex("#6a4a2a")),
                              (sx * (tx / 2 - 0.06), sy * (ty / 2 - 0.06), FLOOR_Z + leg_h / 2)))
    R, H = ROOM_HALF, WALL_HEIGHT
    parts.append(_box((2 * R, 2 * R, 0.02), Material(_hex("#8c8c88"), _hex("#6e6e6a"), "checker", 0.3),
                      (0, 0, FLOOR_Z - 0.01)))
    walls = [("#c8d4c0", (0, R, 0), (2 * R, 0.02)), ("#d4c8b8", (0, -R, 0), (2 * R, 0.02)),
             ("#c0c8d8", (R, 0, 0), (0.02, 2 * R)), ("#d8c8c8", (-R, 0, 0), (0.02, 2 * R))]
    for col, (x, y, _), (sx, sy) in walls:
        c = _hex(col)
        parts.append(_box((sx, sy, H), Material(c, _shade(c, 0.9), "stripes", 0.4, 0 if sx > sy else 1),
                          (x, y, FLOOR_Z + H / 2)))
    return parts


def _footprints_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex polygons ((4, 2) corners each)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        axes = np.stack([-edges[:, 1], edges[:, 0]], 1)
        pa, pb = a @ axes.T, b @ axes.T
        if np.any((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))):
            return False
    return True


def _sample_surface(parts: Sequence[Part], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points uniformly distributed over the surfaces of the given parts (area-weighted)."""
    tri = np.concatenate([p.vertices[p.triangles] for p in parts])  # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s1 = np.sqrt(r1)
    w = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], 1)
    return np.einsum("nk,nkj->nj", w, tri[idx])


@dataclass
class _Layout:
    objects: List[SceneObject]
    geoms: List[_Geometry]


def _build_layout(seed: int, n_objects: Optional[int], n_surface_points: int) -> _Layout:
    rng = np.random.default_rng([seed, 0x5CE7E])
    drawn = int(rng.integers(5, 11))  # always drawn, so a given count leaves the rest unchanged
    n_objects = drawn if n_objects is None else int(n_objects)
    if not 1 <= n_objects <= len(VOCABULARY):
        raise ValueError(f"n_objects must be in 1..{len(VOCABULARY)}, got {n_objects}")
    order = rng.permutation(len(VOCABULARY))
    hx = TABLE_SIZE[0] / 2 - PLACEMENT_MARGIN
    hy = TABLE_SIZE[1] / 2 - PLACEMENT_MARGIN
    placed: List[Tuple[ObjectClass, List[Part], np.ndarray, np.ndarray, np.ndarray]] = []
    for ci in order:
        if len(placed) == n_objects:
            break
        cls = VOCABULARY[ci]
        parts = cls.build(rng, float(rng.uniform(0.9, 1.1)))
        allv = np.concatenate([p.vertices for p in parts])
        lo, hi = allv.min(0), allv.max(0)
        shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
        parts = [Part(p.vertices + shift, p.triangles, p.material, p.smooth) for p in parts]
        size = hi - lo
        half = size[:2] / 2
        fp_local = np.array([[-half[0], -half[1]], [half[0], -half[1]], [half[0], half[1]], [-half[0], half[1]]])
        grown = fp_local + np.sign(fp_local) * PLACEMENT_MARGIN / 2
        for _ in range(300):
            yaw = float(rng.uniform(-np.pi, np.pi))
            R2 = _rot_z(yaw)[:2, :2]
            ext = np.abs(fp_local @ R2.T).max(0)
            if ext[0] > hx or ext[1] > hy:
                continue
            xy = np.array([rng.uniform(-hx + ext[0], hx - ext[0]), rng.uniform(-hy + ext[1], hy - ext[1])])
            fp = xy + grown @ R2.T
            if all(not _footprints_overlap(fp, other[4]) for other in placed):
                placed.append((cls, parts, np.array([xy[0], xy[1], 0.0]), np.array([yaw, *size]), fp))
                break
    if len(placed) < n_objects:
        raise ValueError(f"could not place {n_objects} objects on the table without overlap (seed {seed})")
    geoms = [_Geometry(p, 0, np.eye(4)) for p in _environment()]
    objects = []
    for i, (cls, parts, pos, ys, _) in enumerate(placed):
        yaw, size = ys[0], ys[1:]
        R = _rot_z(yaw)
        world = [p.transformed(R, pos) for p in parts]
        w2l = np.eye(4)
        w2l[:3, :3] = R.T
        w2l[:3, 3] = -R.T @ pos
        geoms += [_Geometry(p, i + 1, w2l) for p in world]
        pts = _sample_surface(world, n_surface_points, rng)
        objects.append(SceneObject(cls.name, cls.name, tuple(cls.synonyms), i + 1,
                                   pos + np.array([0, 0, size[2] / 2]), size.astype(float), R, pts))
    return _Layout(objects, geoms)


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world pose at ``eye`` looking at ``target`` (+y of the image points
    away from ``up``). Raises ValueError when the view direction is parallel to ``up``."""
    eye = np.asarray(eye, float)
    fwd = np.asarray(target, float) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, float))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("look_at: view direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, fwd], 1)
    c2w[:3, 3] = eye
    return c2w


def intrinsics_from_fov(width: int, height: int, hfov_deg: float = 60.0) -> np.ndarray:
    """(3, 3) pinhole intrinsics with square pixels, principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def _trajectory(seed: int, n_frames: int, objects: Sequence[SceneObject]) -> Tuple[np.ndarray, List[str]]:
    """(F, 4, 4) camera poses: an orbit around the table (radius and height vary, the look-at point
    wanders), then a wrist-camera pass low over the objects, looking at them one after another."""
    rng = np.random.default_rng([seed, 0x7247])
    n_close = int(round(0.25 * n_frames)) if n_frames >= 4 else 0
    n_orbit = n_frames - n_close
    th0 = rng.uniform(0, 2 * np.pi)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    poses, segs = [], []
    for k in range(n_orbit):
        a = k / max(n_orbit, 1)
        th = th0 + 2 * np.pi * a
        r = 0.95 + 0.12 * math.sin(2 * th + ph[0])
        z = 0.45 + 0.15 * math.sin(3 * np.pi * a + ph[1])
        target = np.array([0.12 * math.cos(2 * np.pi * a + ph[2]), 0.08 * math.sin(4 * np.pi * a), 0.02])
        poses.append(look_at([r * math.cos(th), r * math.sin(th), z], target))
        segs.append("orbit")
    if n_close:
        cs = np.array([o.center for o in sorted(objects, key=lambda o: o.center[0])])
        if len(cs) == 1:
            cs = np.concatenate([cs - [0.05, 0, 0], cs + [0.05, 0, 0]])
        side = -1.0 if rng.random() < 0.5 else 1.0
        seg_len = np.linalg.norm(np.diff(cs, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        for k in range(n_close):
            s = cum[-1] * (k + 0.5) / n_close
            target = np.array([np.interp(s, cum, cs[:, j]) for j in range(3)])
            b = (k + 0.5) / n_close
            eye = target + np.array([0.06 * math.sin(2 * np.pi * b), side * (0.24 - 0.05 * math.sin(np.pi * b)),
                                     0.22 + 0.05 * math.cos(2 * np.pi * b)])
            poses.append(look_at(eye, target))
            segs.append("close")
    return np.stack(poses), segs


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------


@dataclass
class SyntheticScene:
    """A rendered synthetic tabletop scene and its ground truth (world z-up, metres, table top z = 0).

    Attributes:
        frames: the rendered views (``Frame`` with ``depth`` and ``instance`` filled).
        objects: ground truth per object; object ``i`` has instance id ``i + 1``.
        vocabulary: the full class vocabulary (classes present or not).
        params: generator parameters (seed, n_objects, width, height, n_frames, fps, ...).
        table_height: z of the table top (0.0).
        table_size: (x, y) extents of the table top, centred on the origin.
        floor_height: z of the floor.
        timings: seconds spent building and rendering (empty for a loaded scene).
    """

    frames: List[Frame]
    objects: List[SceneObject]
    vocabulary: Tuple[ObjectClass, ...]
    params: dict
    table_height: float = 0.0
    table_size: Tuple[float, float] = TABLE_SIZE
    floor_height: float = FLOOR_Z
    timings: Dict[str, float] = field(default_factory=dict)
    _renderer: Optional[_Renderer] = field(default=None, repr=False)

    # -- sequence behaviour ---------------------------------------------------------------
    def __iter__(self):
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Frame:
        return self.frames[i]

    # -- ground-truth helpers -------------------------------------------------------------
    @property
    def seed(self) -> int:
        return int(self.params["seed"])

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsics shared by all frames."""
        return self.frames[0].K

    def class_names(self) -> List[str]:
        """All vocabulary class names."""
        return [c.name for c in self.vocabulary]

    def present_classes(self) -> List[str]:
        """Class names of the objects in the scene, in object order."""
        return [o.class_name for o in self.objects]

    def absent_classes(self) -> List[str]:
        """Vocabulary classes NOT in the scene: words whose queries should find nothing."""
        present = set(self.present_classes())
        return [c.name for c in self.vocabulary if c.name not in present]

    def instance_classes(self) -> List[str]:
        """Class name of each instance id (index 0: 'background')."""
        return ["background"] + self.present_classes()

    def object_by_name(self, phrase: str) -> SceneObject:
        """The object whose class name or a synonym matches ``phrase``; KeyError otherwise."""
        key = normalize_phrase(phrase)
        for o in self.objects:
            if key in {normalize_phrase(p) for p in o.phrases()}:
                return o
        raise KeyError(f"no object called '{phrase}' in the scene (objects: {', '.join(self.present_classes())})")

    # -- rendering --------------------------------------------------------------------------
    @property
    def renderer(self) -> _Renderer:
        """The ray caster of this scene's geometry (rebuilt from the seed for a loaded scene)."""
        if self._renderer is None:
            p = self.params
            layout = _build_layout(p["seed"], p["n_objects"], p["n_surface_points"])
            for a, b in zip(layout.objects, self.objects):
                if a.class_name != b.class_name or not np.allclose(a.center, b.center, atol=1e-6):
                    raise SceneFormatError("the scene's saved ground truth does not match the geometry its "
                                           "seed generates (made by a different generator version)")
            self._renderer = _Renderer(layout.geoms)
        return self._renderer

    def render_view(self, c2w: np.ndarray, K: Optional[np.ndarray] = None, width: Optional[int] = None,
                    height: Optional[int] = None, shadows: bool = True):
        """Render any pose (e.g. a held-out view); ``K`` defaults to the scene's field of view at the
        requested size. Returns rgb (H, W, 3) uint8, depth (H, W) float32, instance (H, W) int32."""
        width = width or self.params["width"]
        height = height or self.params["height"]
        if K is None:
            K = intrinsics_from_fov(width, height, self.params["hfov_deg"])
        K = np.asarray(K, float)
        rgb, depth, inst = self.renderer.render(K, np.asarray(c2w, float)[None], width, height, shadows)
        return rgb[0], depth[0], inst[0]

    def top_view(self, pixels_per_metre: float = 220.0) -> np.ndarray:
        """(H, W, 3) uint8 orthographic top-down image of the table (x right, y up in the image)."""
        tx, ty = self.table_size[0] + 0.1, self.table_size[1] + 0.1
        w, h = int(tx * pixels_per_metre), int(ty * pixels_per_metre)
        xs = (np.arange(w) + 0.5) / pixels_per_metre - tx / 2
        ys = ty / 2 - (np.arange(h) + 0.5) / pixels_per_metre
        X, Y = np.meshgrid(xs, ys)
        o = np.stack([X.ravel(), Y.ravel(), np.full(X.size, 2.0)], 1)
        d = np.broadcast_to([0.0, 0.0, -1.0], o.shape)
        rgb, _, _ = self.renderer.cast(o, np.ascontiguousarray(d))
        return np.round(rgb * 255).astype(np.uint8).reshape(h, w, 3)

    # -- persistence -----------------------------------------------------------------------
    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "SyntheticScene":
        """Same as :func:`load_scene`."""
        return load_scene(directory)

    def save(self, directory: Union[str, os.PathLike], preview: bool = True) -> Path:
        """Write the scene to ``directory``: ``scene.json`` (parameters, intrinsics, poses, stamps,
        ground truth), ``ground_truth.npz`` (surface points), per frame ``frames/NNNNNN.png`` (RGB)
        and ``frames/NNNNNN.npz`` (depth float32 m, instance int32), and ``preview.png``.
        Returns the folder path."""
        from PIL import Image

        d = Path(directory)
        (d / "frames").mkdir(parents=True, exist_ok=True)
        for old in [*(d / "frames").glob("[0-9]" * 6 + ".png"), *(d / "frames").glob("[0-9]" * 6 + ".npz")]:
            old.unlink()  # frames of a scene saved here before
        frames_json = []
        for i, f in enumerate(self.frames):
            rgb_name, data_name = f"frames/{i:06d}.png", f"frames/{i:06d}.npz"
            Image.fromarray(f.rgb).save(d / rgb_name)
            np.savez_compressed(d / data_name, depth=f.depth, instance=f.instance)
            frames_json.append({"index": i, "stamp": f.stamp, "frame_id": f.frame_id, "rgb": rgb_name,
                                "data": data_name, "K": f.K.tolist(), "c2w": f.c2w.tolist(),
                                "segment": f.meta.get("segment", "")})
        doc = {
            "format": SCENE_FORMAT,
            "conventions": "world z-up, metres, table top at z=table_height; c2w is camera-to-world in the "
                           "OpenCV camera convention (x right, y down, z forward); depth is z-depth in metres "
                           "(0 = no hit); instance 0 = background, object i has id i+1",
            "params": self.params,
            "table": {"height": self.table_height, "size": list(self.table_size), "floor_height": self.floor_height},
            "vocabulary": [{"name": c.name, "synonyms": list(c.synonyms)} for c in self.vocabulary],
            "objects": [o.to_json() for o in self.objects],
            "frames": frames_json,
        }
        np.savez_compressed(d / GROUND_TRUTH_FILE,
                            **{f"surface_points_{o.instance_id}": o.surface_points for o in self.objects})
        tmp = d / (SCENE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(d / SCENE_FILE)
        if preview:
            self.save_preview(d / PREVIEW_FILE)
        return d

    def save_preview(self, path: Union[str, os.PathLike], tiles: int = 12) -> Path:
        """Write a contact sheet PNG: up to ``tiles`` RGB frames spread over the trajectory, then
        depth and instance maps of the first of them, a top view with object labels, and a legend."""
        from PIL import Image, ImageDraw

        tw = 240
        th = int(round(tw * self.params["height"] / self.params["width"]))
        idx = np.unique(np.linspace(0, len(self.frames) - 1, min(tiles, len(self.frames))).round().astype(int))
        cols = 4
        rows = int(math.ceil(len(idx) / cols))
        pad = 4
        bottom_h = max(th, 200)
        sheet = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + pad) + bottom_h + 3 * pad), (32, 32, 36))
        draw = ImageDraw.Draw(sheet)
        for j, i in enumerate(idx):
            f = self.frames[i]
            x, y = pad + (j % cols) * (tw + pad), pad + (j // cols) * (th + pad)
            sheet.paste(Image.fromarray(f.rgb).resize((tw, th), Image.NEAREST), (x, y))
            draw.text((x + 3, y + 2), f"#{i} {f.meta.get('segment', '')}", fill=(255, 255, 255))
        y0 = rows * (th + pad) + 2 * pad
        f = self.frames[idx[0]]
        dep = f.depth.copy()
        valid = dep > 0
        lo, hi = (np.percentile(dep[valid], [1, 99]) if valid.any() else (0.0, 1.0))
        dimg = np.where(valid, 255 * (1 - np.clip((dep - lo) / max(hi - lo, 1e-6), 0, 1)), 0).astype(np.uint8)
        sheet.paste(Image.fromarray(dimg).convert("RGB").resize((tw, th), Image.NEAREST), (pad, y0))
        pal = _palette(len(self.objects) + 1)
        sheet.paste(Image.fromarray(pal[f.instance]).resize((tw, th), Image.NEAREST), (2 * pad + tw, y0))
        draw.text((pad + 3, y0 + 2), "depth", fill=(255, 255, 255))
        draw.text((2 * pad + tw + 3, y0 + 2), "instances", fill=(255, 255, 255))
        top = Image.fromarray(self.top_view())
        scale = min(bottom_h / top.height, (tw * 1.4) / top.width)
        top = top.resize((int(top.width * scale), int(top.height * scale)), Image.BILINEAR)
        tx = 3 * pad + 2 * tw
        sheet.paste(top, (tx, y0))
        ppm = top.width / (self.table_size[0] + 0.1)
        for o in self.objects:
            px = tx + (o.center[0] + (self.table_size[0] + 0.1) / 2) * ppm
            py = y0 + ((self.table_size[1] + 0.1) / 2 - o.center[1]) * ppm
            draw.text((px - 3 * len(o.name), py - 5), o.name, fill=tuple(int(c) for c in pal[o.instance_id]),
                      stroke_width=1, stroke_fill=(0, 0, 0))
        lx = tx + top.width + 2 * pad
        lines = [f"seed {self.seed}  {self.params['width']}x{self.params['height']}  {len(self.frames)} frames"]
        lines += [f"{o.instance_id}: {o.name}" for o in self.objects]
        for k, line in enumerate(lines):
            col = (255, 255, 255) if k == 0 else tuple(int(c) for c in pal[k])
            draw.text((lx, y0 + 2 + 13 * k), line, fill=col)
        path = Path(path)
        sheet.save(path)
        return path


def _palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours; index 0 (background) is dark grey."""
    import colorsys

    rgb = np.array([colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95) for k in range(n)]).reshape(n, 3)
    rgb[0] = [0.2, 0.2, 0.2]
    return np.round(rgb * 255).astype(np.uint8)


def make_scene(seed: int = 0, n_objects: Optional[int] = None, width: int = 160, height: int = 120,
               n_frames: int = 60, hfov_deg: float = 60.0, fps: float = 10.0, start_stamp: float = 100.0,
               n_surface_points: int = 2048, shadows: bool = True, frame_id: str = "camera_optical_frame",
               nthreads: int = 0) -> SyntheticScene:
    """Generate and render a synthetic tabletop scene (deterministic for the arguments).

    Args:
        seed: scene seed (objects, their placement, colours, the trajectory).
        n_objects: objects on the table (1 to the vocabulary size); None draws 5..10 from the seed.
        width, height: image size in pixels.
        n_frames: number of views: 75% orbit, 25% close wrist-camera pass.
        hfov_deg: horizontal field of view.
        fps: frame rate of the stamps; the first frame is at ``start_stamp`` seconds (not 0, which
            TF treats as "latest").
        n_surface_points: ground-truth surface samples per object.
        shadows: cast shadow rays (hard shadows from the directional light).
        frame_id: ``Frame.frame_id`` of every view.
        nthreads: ray-casting threads (0 = all cores).
    Returns:
        the rendered :class:`SyntheticScene`.
    """
    if width < 8 or height < 8:
        raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    t0 = time.perf_counter()
    layout = _build_layout(int(seed), n_objects, n_surface_points)
    c2ws, segments = _trajectory(int(seed), n_frames, layout.objects)
    K = intrinsics_from_fov(width, height, hfov_deg)
    t1 = time.perf_counter()
    renderer = _Renderer(layout.geoms, nthreads=nthreads)
    rgb, depth, inst = renderer.render(K, c2ws, width, height, shadows)
    t2 = time.perf_counter()
    frames = [Frame(rgb=rgb[i], K=K.copy(), c2w=c2ws[i], stamp=start_stamp + i / fps, frame_id=frame_id,
                    depth=depth[i], instance=inst[i], index=i, meta={"source": "synthetic", "segment": segments[i]})
              for i in range(n_frames)]
    params = {"seed": int(seed), "n_objects": len(layout.objects), "width": int(width), "height": int(height),
              "n_frames": int(n_frames), "hfov_deg": float(hfov_deg), "fps": float(fps),
              "start_stamp": float(start_stamp), "n_surface_points": int(n_surface_points), "shadows": bool(shadows)}
    return SyntheticScene(frames, layout.objects, VOCABULARY, params,
                          timings={"layout_s": t1 - t0, "render_s": t2 - t1}, _renderer=renderer)


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise SceneFormatError(f"{path}: no such file (not a synthetic scene folder)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SceneFormatError(f"{path}: cannot parse JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != SCENE_FORMAT:
        raise SceneFormatError(f"{path}: not a synthetic scene file (format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                               f"expected {SCENE_FORMAT!r})")
    return doc


def load_scene(directory: Union[str, os.PathLike]) -> SyntheticScene:
    """Load a scene written by :meth:`SyntheticScene.save`; frames and ground truth come back
    bit-identical. Raises SceneFormatError naming the file and the problem."""
    from PIL import Image

    d = Path(directory)
    jpath = d / SCENE_FILE
    doc = _load_json(jpath)
    try:
        by_name = {c.name: c for c in VOCABULARY}
        vocab = tuple(by_name[v["name"]] for v in doc["vocabulary"])
        gt_path = d / GROUND_TRUTH_FILE
        if not gt_path.is_file():
            raise SceneFormatError(f"{gt_path}: missing (surface points of the objects)")
        with np.load(gt_path) as gt:
            objects = [SceneObject(o["name"], o["class"], tuple(o["synonyms"]), int(o["instance_id"]),
                                   np.asarray(o["center"], float), np.asarray(o["size"], float),
                                   np.asarray(o["rotation"], float), gt[f"surface_points_{o['instance_id']}"])
                       for o in doc["objects"]]
        frames = []
        for fj in doc["frames"]:
            rp, dp = d / fj["rgb"], d / fj["data"]
            for p in (rp, dp):
                if not p.is_file():
                    raise SceneFormatError(f"{p}: missing (listed in {jpath})")
            rgb = np.asarray(Image.open(rp).convert("RGB"))
            with np.load(dp) as z:
                depth, inst = z["depth"], z["instance"]
            frames.append(Frame(rgb=rgb, K=np.asarray(fj["K"], float), c2w=np.asarray(fj["c2w"], float),
                                stamp=float(fj["stamp"]), frame_id=fj["frame_id"], depth=depth, instance=inst,
                                index=int(fj["index"]), meta={"source": "synthetic", "segment": fj.get("segment", "")}))
        table = doc["table"]
        return SyntheticScene(frames, objects, vocab, dict(doc["params"]), float(table["height"]),
                              tuple(table["size"]), float(table["floor_height"]))
    except SceneFormatError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise SceneFormatError(f"{jpath}: malformed scene ({type(e).__name__}: {e})") from e


def scene_digest(scene: SyntheticScene) -> str:
    """A short hash of all frames' pixels, depth and instance maps (to compare renders)."""
    h = hashlib.sha256()
    for f in scene.frames:
        for a in (f.rgb, f.depth, f.instance, f.c2w):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
