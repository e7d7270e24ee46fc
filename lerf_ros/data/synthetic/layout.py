"""Placing objects on the table: the room, the ground truth of each placed object, the layout.

World frame: right-handed, +z up, metres; the table top is the plane z = 0, centred on the
origin, :data:`TABLE_SIZE` wide. :func:`build_layout` draws the objects, their sizes, colours,
yaws and free spots from the seed (footprints never overlap and keep :data:`PLACEMENT_MARGIN`
from each other and from the table edge) and returns their ground truth with the geometry the
renderer draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lerf_ros.data.synthetic.objects import VOCABULARY, ObjectClass
from lerf_ros.data.synthetic.render import Geometry
from lerf_ros.data.synthetic.shapes import Material, Part, box, hex_color, shade

__all__ = [
    "TABLE_SIZE",
    "TABLE_THICKNESS",
    "FLOOR_Z",
    "ROOM_HALF",
    "WALL_HEIGHT",
    "PLACEMENT_MARGIN",
    "SceneObject",
    "Layout",
    "build_layout",
    "place_object",
    "environment",
    "footprints_overlap",
    "sample_surface",
    "rot_z",
]

# Table and room (metres, world frame; the table top is z = 0).
TABLE_SIZE = (1.2, 0.8)
TABLE_THICKNESS = 0.04
FLOOR_Z = -0.75
ROOM_HALF = 3.0
WALL_HEIGHT = 2.6
PLACEMENT_MARGIN = 0.04
"""Distance kept between objects' footprints and from the table edge."""


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
        """Turn of the box about world z, radians."""
        return float(math.atan2(self.rotation[1, 0], self.rotation[0, 0]))

    def phrases(self) -> Tuple[str, ...]:
        """The class name followed by its synonyms."""
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
        """The object as saved in ``scene.json`` (surface points go to ``ground_truth.npz``)."""
        return {
            "name": self.name,
            "class": self.class_name,
            "synonyms": list(self.synonyms),
            "instance_id": self.instance_id,
            "center": self.center.tolist(),
            "size": self.size.tolist(),
            "rotation": self.rotation.tolist(),
            "yaw": self.yaw,
            "num_surface_points": len(self.surface_points),
        }


def rot_z(yaw: float) -> np.ndarray:
    """(3, 3) rotation by ``yaw`` radians about +z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def environment() -> List[Part]:
    """Table (top at z = 0), legs, floor and walls, in world coordinates."""
    tx, ty = TABLE_SIZE
    wood = Material(hex_color("#a8784a"), hex_color("#94663c"), "stripes", 0.035, 1)
    parts = [box((tx, ty, TABLE_THICKNESS), wood, (0, 0, -TABLE_THICKNESS / 2))]
    leg_h = -TABLE_THICKNESS - FLOOR_Z
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(
                box(
                    (0.05, 0.05, leg_h),
                    Material(hex_color("#6a4a2a")),
                    (sx * (tx / 2 - 0.06), sy * (ty / 2 - 0.06), FLOOR_Z + leg_h / 2),
                )
            )
    R, H = ROOM_HALF, WALL_HEIGHT
    parts.append(
        box(
            (2 * R, 2 * R, 0.02),
            Material(hex_color("#8c8c88"), hex_color("#6e6e6a"), "checker", 0.3),
            (0, 0, FLOOR_Z - 0.01),
        )
    )
    walls = [
        ("#c8d4c0", (0, R, 0), (2 * R, 0.02)),
        ("#d4c8b8", (0, -R, 0), (2 * R, 0.02)),
        ("#c0c8d8", (R, 0, 0), (0.02, 2 * R)),
        ("#d8c8c8", (-R, 0, 0), (0.02, 2 * R)),
    ]
    for col, (x, y, _), (sx, sy) in walls:
        c = hex_color(col)
        parts.append(
            box((sx, sy, H), Material(c, shade(c, 0.9), "stripes", 0.4, 0 if sx > sy else 1), (x, y, FLOOR_Z + H / 2))
        )
    return parts


def footprints_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex polygons ((4, 2) corners each)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        axes = np.stack([-edges[:, 1], edges[:, 0]], 1)
        pa, pb = a @ axes.T, b @ axes.T
        if np.any((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))):
            return False
    return True


def sample_surface(parts: Sequence[Part], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points uniformly distributed over the surfaces of the given parts (area-weighted)."""
    tri = np.concatenate([p.vertices[p.triangles] for p in parts])  # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s1 = np.sqrt(r1)
    w = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], 1)
    return np.einsum("nk,nkj->nj", w, tri[idx])


@dataclass
class Layout:
    """Objects on the table and everything the renderer draws (room, table, objects), world frame."""

    objects: List[SceneObject]
    geoms: List[Geometry]


def centred_parts(parts: Sequence[Part]) -> Tuple[List[Part], np.ndarray]:
    """The parts shifted so their bounding box is centred on the local z axis and rests on z = 0,
    and the (3,) box size."""
    allv = np.concatenate([p.vertices for p in parts])
    lo, hi = allv.min(0), allv.max(0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    return [Part(p.vertices + shift, p.triangles, p.material, p.smooth) for p in parts], hi - lo


def _find_spot(
    rng: np.random.Generator, size: np.ndarray, taken: Sequence[np.ndarray], hx: float, hy: float, tries: int = 300
) -> Optional[Tuple[np.ndarray, float, np.ndarray]]:
    """Draw a yaw and a table position for a box of ``size`` until its footprint (grown by half the
    placement margin) stays within ``|x| <= hx``, ``|y| <= hy`` and overlaps none of the ``taken``
    footprints. Returns (xy (2,), yaw, footprint (4, 2)), or None after ``tries`` draws."""
    half = size[:2] / 2
    fp_local = np.array([[-half[0], -half[1]], [half[0], -half[1]], [half[0], half[1]], [-half[0], half[1]]])
    grown = fp_local + np.sign(fp_local) * PLACEMENT_MARGIN / 2
    for _ in range(tries):
        yaw = float(rng.uniform(-np.pi, np.pi))
        R2 = rot_z(yaw)[:2, :2]
        ext = np.abs(fp_local @ R2.T).max(0)
        if ext[0] > hx or ext[1] > hy:
            continue
        xy = np.array([rng.uniform(-hx + ext[0], hx - ext[0]), rng.uniform(-hy + ext[1], hy - ext[1])])
        fp = xy + grown @ R2.T
        if all(not footprints_overlap(fp, other) for other in taken):
            return xy, yaw, fp
    return None


def place_object(
    cls: ObjectClass,
    parts: Sequence[Part],
    size: np.ndarray,
    position: np.ndarray,
    yaw: float,
    instance_id: int,
    n_surface_points: int,
    rng: np.random.Generator,
) -> Tuple[SceneObject, List[Geometry]]:
    """Put an object (``parts`` centred as by :func:`centred_parts`, box ``size``) on the table at
    ``position`` (3,) turned by ``yaw``: its ground truth (surface points drawn from ``rng``) and
    its world-space geometry for the renderer."""
    R = rot_z(yaw)
    world = [p.transformed(R, position) for p in parts]
    w2l = np.eye(4)
    w2l[:3, :3] = R.T
    w2l[:3, 3] = -R.T @ position
    pts = sample_surface(world, n_surface_points, rng)
    obj = SceneObject(
        cls.name,
        cls.name,
        tuple(cls.synonyms),
        instance_id,
        position + np.array([0, 0, size[2] / 2]),
        size.astype(float),
        R,
        pts,
    )
    return obj, [Geometry(p, instance_id, w2l) for p in world]


def build_layout(seed: int, n_objects: Optional[int], n_surface_points: int) -> Layout:
    """Draw ``n_objects`` distinct vocabulary classes (None: 5 to 10, drawn from the seed), give
    each a size, colours, a yaw and a free spot on the table, and sample their surfaces.
    Deterministic for the arguments; ValueError when the count is out of range or the objects
    do not fit."""
    rng = np.random.default_rng([seed, 0x5CE7E])
    drawn = int(rng.integers(5, 11))  # always drawn, so a given count leaves the rest unchanged
    n_objects = drawn if n_objects is None else int(n_objects)
    if not 1 <= n_objects <= len(VOCABULARY):
        raise ValueError(f"n_objects must be in 1..{len(VOCABULARY)}, got {n_objects}")
    order = rng.permutation(len(VOCABULARY))
    hx = TABLE_SIZE[0] / 2 - PLACEMENT_MARGIN
    hy = TABLE_SIZE[1] / 2 - PLACEMENT_MARGIN
    placed: List[Tuple[ObjectClass, List[Part], np.ndarray, np.ndarray, float]] = []  # cls, parts, size, xy, yaw
    footprints: List[np.ndarray] = []
    for ci in order:
        if len(placed) == n_objects:
            break
        cls = VOCABULARY[ci]
        parts, size = centred_parts(cls.build(rng, float(rng.uniform(0.9, 1.1))))
        spot = _find_spot(rng, size, footprints, hx, hy)
        if spot is not None:
            xy, yaw, fp = spot
            placed.append((cls, parts, size, xy, yaw))
            footprints.append(fp)
    if len(placed) < n_objects:
        raise ValueError(f"could not place {n_objects} objects on the table without overlap (seed {seed})")
    geoms = [Geometry(p, 0, np.eye(4)) for p in environment()]
    objects = []
    # surfaces are sampled only after every object is placed: the placement draws come first
    for i, (cls, parts, size, xy, yaw) in enumerate(placed):
        obj, obj_geoms = place_object(
            cls, parts, size, np.array([xy[0], xy[1], 0.0]), yaw, i + 1, n_surface_points, rng
        )
        objects.append(obj)
        geoms += obj_geoms
    return Layout(objects, geoms)
