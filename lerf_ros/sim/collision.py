"""Collision shapes of the synthetic objects, built from their own meshes as convex pieces.

Each part of an object (a box, a solid of revolution, a tube, an ellipsoid) is tested for
convexity: when no point of its surface lies deeper than :data:`CONVEX_DEPTH` inside its convex hull,
the hull is its collision shape (boxes, fruit, cans, candles, a marker's straight body). The test
looks at the geometry only, not at the enclosed volume: a lathed part's triangles are not all
wound outwards, and its signed volume can be a fraction of the true one. Otherwise (a mug's or a
bowl's wall, a roll of tape, a banana, a handle, a vase's neck) the part's surface is split into
patches of neighbouring triangles (k-means of their centroids) and each patch, thickened by
:data:`SHELL_THICKNESS` across the surface, becomes one convex piece: a shell that follows the
surface closely, concave places included, so a finger can reach into a mug or between a bowl's
rim and its inside. The mass comes from the hull's volume for a convex part and from the mesh's
enclosed volume otherwise, whatever the winding of its triangles (see :func:`part_volume`).
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from lerf_ros.data.synthetic.shapes import Part, vertex_normals

__all__ = [
    "CONVEX_DEPTH",
    "SHELL_THICKNESS",
    "mesh_volume",
    "enclosed_volume",
    "hull_volume",
    "hull_depth",
    "part_is_convex",
    "part_volume",
    "convex_pieces",
]

#: a part none of whose vertices lies deeper than this (m) inside its convex hull counts as convex
CONVEX_DEPTH = 0.002
#: thickness (m) of the shell pieces of a non-convex part (half inside, half outside its surface)
SHELL_THICKNESS = 0.003
#: surface area (m^2) per shell piece (more pieces on bigger parts), within [MIN_PIECES, MAX_PIECES]
AREA_PER_PIECE = 6e-4
MIN_PIECES = 8
MAX_PIECES = 48


def mesh_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Enclosed volume (m^3) of a closed triangle mesh (absolute value of the signed volume)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(triangles)]
    return abs(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)


def hull_volume(points: np.ndarray) -> float:
    """Volume (m^3) of the convex hull of (N, 3) points (0 when they span no volume)."""
    import open3d as o3d

    pts = np.unique(np.round(np.asarray(points, np.float64), 9), axis=0)
    if len(pts) < 4 or np.linalg.matrix_rank(pts[1:] - pts[0], tol=1e-7) < 3:
        return 0.0
    hull, _ = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).compute_convex_hull()
    return mesh_volume(np.asarray(hull.vertices), np.asarray(hull.triangles))


def _hull_planes(points: np.ndarray) -> np.ndarray:
    """(F, 4) outward unit normals and offsets (n, d) of the convex hull's faces: n . p <= d inside;
    (0, 4) when the points span no volume."""
    import open3d as o3d

    pts = np.unique(np.round(np.asarray(points, np.float64), 9), axis=0)
    if len(pts) < 4 or np.linalg.matrix_rank(pts[1:] - pts[0], tol=1e-7) < 3:
        return np.zeros((0, 4))
    hull, _ = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).compute_convex_hull()
    hv, ht = np.asarray(hull.vertices), np.asarray(hull.triangles)
    tri = hv[ht]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    keep = norm > 1e-12
    n, tri = n[keep] / norm[keep, None], tri[keep]
    # outwards: the hull's centroid lies behind every face
    n *= np.where(np.einsum("ij,ij->i", n, tri[:, 0] - hv.mean(axis=0)) < 0, -1.0, 1.0)[:, None]
    return np.concatenate([n, np.einsum("ij,ij->i", n, tri[:, 0])[:, None]], axis=1)


def hull_depth(points: np.ndarray) -> float:
    """Largest depth (m) of (N, 3) points inside their convex hull: 0 for the vertices of a convex
    solid, the depth of the deepest hollow (a mug's inside, a vase's neck) otherwise."""
    planes = _hull_planes(points)
    if len(planes) == 0:
        return 0.0
    inside = planes[None, :, 3] - np.asarray(points, np.float64) @ planes[:, :3].T  # (N, F) >= 0
    return float(max(0.0, inside.min(axis=1).max()))


def part_is_convex(part: Part) -> bool:
    """Whether no point of the part's surface (its vertices and its triangles' centroids: a roll of
    tape's inner wall has all its vertices on the hull's caps) lies deeper than ``CONVEX_DEPTH``
    inside its convex hull."""
    v = np.asarray(part.vertices, np.float64)
    return hull_depth(np.concatenate([v, v[part.triangles].mean(axis=1)])) <= CONVEX_DEPTH


def enclosed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Enclosed volume (m^3) of a closed triangle mesh whatever the winding of its triangles: they
    are turned to one consistent orientation first. A mesh whose triangles are not all wound the
    same way (a lathed part's) has a signed volume that changes with where the mesh lies: a plate
    centred on its origin came out at a quarter of its volume, a mug at a fiftieth. A mesh that is
    not closed (duplicate seam vertices merged) keeps :func:`mesh_volume`."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(vertices, np.float64)),
        o3d.utility.Vector3iVector(np.asarray(triangles, np.int32)),
    )
    mesh.remove_duplicated_vertices()
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_unreferenced_vertices()
    if not (mesh.is_watertight() and mesh.orient_triangles()):
        return mesh_volume(vertices, triangles)
    return mesh_volume(np.asarray(mesh.vertices), np.asarray(mesh.triangles))


def part_volume(part: Part) -> float:
    """Volume (m^3) of a part: its hull's when it is convex (:func:`part_is_convex`), else the
    mesh's enclosed volume (:func:`enclosed_volume`: whatever the triangles' winding)."""
    if part_is_convex(part):
        return hull_volume(part.vertices)
    return enclosed_volume(part.vertices, part.triangles)


def _kmeans(x: np.ndarray, k: int, iters: int = 12) -> np.ndarray:
    """(N, 3) points -> (N,) labels in [0, k): farthest-point seeds, then Lloyd iterations."""
    seeds = [0]
    d = np.linalg.norm(x - x[0], axis=1)
    for _ in range(1, k):
        seeds.append(int(np.argmax(d)))
        d = np.minimum(d, np.linalg.norm(x - x[seeds[-1]], axis=1))
    c = x[seeds]
    for _ in range(iters):
        lab = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        for j in range(k):
            m = lab == j
            if np.any(m):
                c[j] = x[m].mean(axis=0)
    return np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)


def _shell_pieces(part: Part) -> List[np.ndarray]:
    """Convex pieces (vertex arrays) covering a non-convex part's surface as thickened patches."""
    v, t = part.vertices, part.triangles
    tri = v[t]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    keep = area > 1e-12
    t, tri = t[keep], tri[keep]
    k = int(np.clip(round(float(area.sum()) / AREA_PER_PIECE), MIN_PIECES, MAX_PIECES))
    k = min(k, len(t))
    labels = _kmeans(tri.mean(axis=1), k)
    n = vertex_normals(v, part.triangles)
    half = SHELL_THICKNESS / 2
    pieces = []
    for j in range(k):
        idx = np.unique(t[labels == j])
        if len(idx) < 3:
            continue
        pts = np.concatenate([v[idx] + half * n[idx], v[idx] - half * n[idx]])
        pieces.append(pts)
    return pieces


def convex_pieces(parts: Sequence[Part]) -> List[np.ndarray]:
    """Convex collision pieces of an object's parts: a list of (n_i, 3) vertex arrays whose convex
    hulls together cover the parts (the hull of a convex part; thickened surface patches of a
    non-convex one). Same frame as the parts."""
    out: List[np.ndarray] = []
    for p in parts:
        if hull_volume(p.vertices) <= 0:
            continue
        if part_is_convex(p):
            out.append(np.asarray(p.vertices, np.float64))
        else:
            out.extend(_shell_pieces(p))
    return out
