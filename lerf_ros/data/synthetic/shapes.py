"""Triangle meshes built from primitives, and the surface materials the renderer textures them with.

Meshes are in an object-local frame (z up, resting on z = 0) until placed: boxes, solids of
revolution (:func:`lathe`), tubes along planar curves (:func:`tube`) and ellipsoids. Every builder
is a pure function of its arguments (no random numbers are drawn here except in
:func:`pick_color`, which draws exactly one integer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "PATTERNS",
    "Material",
    "Part",
    "Color",
    "ring_grid",
    "lathe",
    "tube",
    "box",
    "ellipsoid",
    "vertex_normals",
    "hex_color",
    "pick_color",
    "shade",
]

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
        """The part moved by rotation ``R`` (3, 3) then translation ``t`` (3,)."""
        return Part(self.vertices @ R.T + t, self.triangles, self.material, self.smooth)


def ring_grid(rings: np.ndarray, cap_start: bool, cap_end: bool) -> Tuple[np.ndarray, np.ndarray]:
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


def lathe(r: Sequence[float], z: Sequence[float], material: Material, segments: int = 28, caps: bool = True) -> Part:
    """Solid of revolution about the local z axis: profile radii ``r`` at heights ``z``.
    Ends with r > 0 are closed with flat caps when ``caps``."""
    r = np.asarray(r, float)
    z = np.asarray(z, float)
    th = 2 * np.pi * np.arange(segments) / segments
    rings = np.stack(
        [r[:, None] * np.cos(th)[None], r[:, None] * np.sin(th)[None], np.broadcast_to(z[:, None], (len(z), segments))],
        -1,
    )
    v, t = ring_grid(rings, caps and r[0] > 1e-9, caps and r[-1] > 1e-9)
    return Part(v, t, material, smooth=True)


def tube(
    curve: np.ndarray, radii: np.ndarray, plane_normal: Sequence[float], material: Material, segments: int = 16
) -> Part:
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
    rings = curve[:, None] + radii[:, None, None] * (
        np.cos(th)[None, :, None] * nrm[:, None] + np.sin(th)[None, :, None] * b[None, None]
    )
    v, t = ring_grid(rings, radii[0] > 1e-9, radii[-1] > 1e-9)
    return Part(v, t, material, smooth=True)


def box(size: Sequence[float], material: Material, center: Sequence[float] = (0, 0, 0), yaw: float = 0.0) -> Part:
    """Axis-aligned box (then turned by ``yaw`` about z) of ``size`` centred at ``center``."""
    s = np.asarray(size, float) / 2
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * s
    tris = np.array(
        [
            [0, 1, 3],
            [0, 3, 2],
            [4, 6, 7],
            [4, 7, 5],
            [0, 4, 5],
            [0, 5, 1],
            [2, 3, 7],
            [2, 7, 6],
            [0, 2, 6],
            [0, 6, 4],
            [1, 5, 7],
            [1, 7, 3],
        ],
        np.int64,
    )
    c, sn = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, -sn, 0], [sn, c, 0], [0, 0, 1]])
    return Part(corners @ R.T + np.asarray(center, float), tris, material, smooth=False)


def ellipsoid(radii: Sequence[float], material: Material, z0: float = 0.0, rings: int = 14, segments: int = 24) -> Part:
    """Ellipsoid with semi-axes ``radii`` (x, y, z) whose lowest point is at height ``z0``."""
    phi = np.linspace(0, np.pi, rings + 1)
    rx, ry, rz = radii
    part = lathe(np.sin(phi), z0 + rz * (1 - np.cos(phi)), material, segments=segments, caps=False)
    part.vertices[:, 0] *= rx
    part.vertices[:, 1] *= ry
    return part


def vertex_normals(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals of a mesh."""
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    vn = np.zeros_like(v)
    for j in range(3):
        np.add.at(vn, t[:, j], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.where(norm > 1e-12, vn / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))


# Colours

Color = Tuple[float, float, float]


def hex_color(h: str) -> Color:
    """``"#rrggbb"`` -> RGB in [0, 1]."""
    h = h.lstrip("#")
    return tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def pick_color(rng: np.random.Generator, options: Sequence[str]) -> Color:
    """One of the ``"#rrggbb"`` options, drawn with ``rng`` (one integer draw)."""
    return hex_color(options[int(rng.integers(len(options)))])


def shade(c: Color, f: float) -> Color:
    """Colour ``c`` scaled by ``f`` and clipped to [0, 1]."""
    return tuple(float(np.clip(x * f, 0, 1)) for x in c)  # type: ignore[return-value]
