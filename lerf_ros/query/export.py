"""What the robot mapped, as files other tools open (PLY, JSON), from any field snapshot.

``export_map(snapshot, cfg, folder)`` writes:

- ``surface.ply``: the coloured surface point cloud with normals, exactly the points the query
  engine scores (``lerf_ros.query.surface.extract_surface``: rendered from the keyframe views,
  voxel-downsampled, visibility-filtered, normals oriented towards the cameras).
- ``mesh.ply``: a triangle mesh with vertex colours, by screened Poisson reconstruction (open3d) of
  those oriented points. Poisson rather than ball pivoting: the points come from rendered depth, so
  they are noisy and unevenly dense (dense where many keyframes looked, sparse at the edges of the
  map); ball pivoting needs one ball radius matched to an even spacing and leaves holes and folded
  fans in noise, while Poisson uses the oriented normals the surface already has, averages the
  noise out and closes small gaps. Poisson also invents surface where there is no data (it closes
  the shape); that part is cut away: vertices whose Poisson density is in the lowest
  ``trim_quantile`` and vertices farther than ``max_distance_voxels`` voxels from every surface
  point are removed.
- ``cameras.json``: the keyframe cameras (size, intrinsics K, camera-to-world 4x4 in the OpenCV
  convention: x right, y down, z forward; and in the OpenGL / nerfstudio convention), and
  ``cameras.ply``: their frustums as a line set (one pyramid per keyframe) for point-cloud viewers.
- ``relevancy.ply`` when a relevancy cloud is given (the last answer of ``/lerf/query``): its points
  coloured by relevancy (dark blue -> yellow) with the relevancy itself as a per-point float
  property ``relevancy``.

Every file is written to a temporary name and renamed, so a reader never sees half a file; a
relevancy file left from an earlier export is removed when none is given.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from lerf_ros.config import QueryConfig
from lerf_ros.field.snapshot import CameraView, FieldSnapshot
from lerf_ros.query.surface import SurfacePoints, extract_surface

__all__ = ["ExportError", "ExportResult", "export_map", "poisson_mesh", "write_relevancy_ply"]

#: OpenCV camera axes (x right, y down, z forward) -> OpenGL / nerfstudio (x right, y up, z back)
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


class ExportError(RuntimeError):
    """Nothing to export (no cameras, no surface yet) or a file could not be written; says why."""


@dataclass
class ExportResult:
    """What ``export_map`` wrote.

    Attributes:
        folder: the output folder.
        files: written paths by kind ('surface', 'mesh', 'cameras', 'frustums', 'relevancy').
        points: surface points written.
        triangles: mesh triangles written (0 without a mesh).
        cameras: keyframe cameras written.
        relevancy_points: points of the relevancy cloud written (0 without one).
        step: training step of the snapshot.
        seconds: wall time of the export.
    """

    folder: str
    files: Dict[str, str] = field(default_factory=dict)
    points: int = 0
    triangles: int = 0
    cameras: int = 0
    relevancy_points: int = 0
    step: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for logs and service answers."""
        parts = [f"{self.points} surface points", f"{self.triangles} mesh triangles", f"{self.cameras} cameras"]
        if "relevancy" in self.files:
            parts.append(f"{self.relevancy_points} relevancy points")
        return f"step {self.step}: {', '.join(parts)} in {self.folder} ({self.seconds:.1f} s)"


def _write_atomic(path: str, write: Callable[[str], bool]) -> None:
    """``write(tmp_path)`` to a temporary file beside ``path`` (same extension, so writers pick the
    format by it), then rename it into place."""
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=os.path.splitext(name)[1], dir=folder or ".")
    os.close(fd)
    try:
        if write(tmp) is False or not os.path.getsize(tmp):
            raise ExportError(f"could not write {path}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _surface_cloud(surface: SurfacePoints):
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(surface.xyz.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(surface.rgb.astype(np.float64) / 255.0)
    pcd.normals = o3d.utility.Vector3dVector(surface.normals.astype(np.float64))
    return pcd


def poisson_mesh(
    surface: SurfacePoints,
    voxel_size: float,
    depth: int = 8,
    trim_quantile: float = 0.05,
    max_distance_voxels: float = 3.0,
):
    """A coloured triangle mesh (open3d ``TriangleMesh``) of oriented surface points by screened
    Poisson reconstruction, trimmed to where the points are (see the module docstring).

    Args:
        surface: points with unit normals (N >= 4).
        voxel_size: spacing of the surface points (m); the trim distance is in these units.
        depth: octree depth of the reconstruction (resolution: the points' extent / 2**depth).
        trim_quantile: vertices with the lowest Poisson densities (this share) are removed.
        max_distance_voxels: vertices farther than this many voxels from every point are removed (or
            than two octree cells, or twice the points' 95th-percentile spacing, when larger).
    """
    import open3d as o3d

    if len(surface) < 4:
        raise ExportError(f"a mesh needs at least 4 surface points, got {len(surface)}")
    pcd = _surface_cloud(surface)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=int(depth))
    densities = np.asarray(densities)
    if len(densities) == 0:
        return mesh
    drop = densities < np.quantile(densities, float(trim_quantile))
    vertices = o3d.geometry.PointCloud(mesh.vertices)
    distance = np.asarray(vertices.compute_point_cloud_distance(pcd))
    # Far from the robot the points are sparser than the voxel size, and the mesh is no finer than
    # the octree's cells: the reach grows with both, so real surface between sparse points stays.
    cell = float(np.ptp(surface.xyz, axis=0).max()) / 2 ** int(depth)
    spacing = float(np.percentile(np.asarray(pcd.compute_nearest_neighbor_distance()), 95))
    reach = max(float(max_distance_voxels) * float(voxel_size), 2.0 * cell, 2.0 * spacing)
    drop |= distance > reach
    mesh.remove_vertices_by_mask(drop.tolist())
    mesh.remove_unreferenced_vertices()
    mesh.remove_degenerate_triangles()
    mesh.compute_vertex_normals()
    return mesh


def _camera_records(cameras: List[CameraView]) -> List[dict]:
    out = []
    for i, cam in enumerate(cameras):
        K = np.asarray(cam.K, np.float64)
        c2w = np.asarray(cam.c2w, np.float64)
        out.append(
            {
                "index": i,
                "width": int(cam.width),
                "height": int(cam.height),
                "fl_x": float(K[0, 0]),
                "fl_y": float(K[1, 1]),
                "cx": float(K[0, 2]),
                "cy": float(K[1, 2]),
                "K": K.tolist(),
                "camera_to_world_opencv": c2w.tolist(),
                "transform_matrix": (c2w @ OPENCV_TO_OPENGL).tolist(),
            }
        )
    return out


def _frustums(cameras: List[CameraView], depth: float):
    """Line set of one pyramid per camera (apex at the centre, base at ``depth`` m along z)."""
    import open3d as o3d

    points, lines = [], []
    for cam in cameras:
        K, c2w = np.asarray(cam.K, np.float64), np.asarray(cam.c2w, np.float64)
        corners = np.array([[0, 0], [cam.width, 0], [cam.width, cam.height], [0, cam.height]], np.float64)
        rays = np.linalg.solve(K, np.c_[corners, np.ones(4)].T).T  # (4, 3) with z = 1
        local = np.vstack([np.zeros(3), rays * depth])
        world = local @ c2w[:3, :3].T + c2w[:3, 3]
        base = len(points) * 5
        points.append(world)
        lines += [[base, base + k] for k in range(1, 5)] + [[base + k, base + k % 4 + 1] for k in range(1, 5)]
    ls = o3d.geometry.LineSet()
    if points:
        ls.points = o3d.utility.Vector3dVector(np.concatenate(points))
        ls.lines = o3d.utility.Vector2iVector(np.asarray(lines, np.int32))
        ls.colors = o3d.utility.Vector3dVector(np.tile([[1.0, 0.4, 0.0]], (len(lines), 1)))
    return ls


def relevancy_colors(relevancy: np.ndarray) -> np.ndarray:
    """(N,) relevancy -> (N, 3) float colours in [0, 1], dark blue (lowest) -> yellow (highest)."""
    rel = np.asarray(relevancy, np.float64).reshape(-1)
    if len(rel) == 0:
        return np.zeros((0, 3))
    span = max(1e-6, float(rel.max() - rel.min()))
    t = np.clip((rel - rel.min()) / span, 0.0, 1.0)[:, None]
    return np.concatenate([t, 0.9 * t, 0.5 * (1.0 - t)], axis=1)


def write_relevancy_ply(path: str, xyz: np.ndarray, relevancy: np.ndarray) -> None:
    """A relevancy cloud as PLY: points coloured by relevancy, and the relevancy as a float property."""
    import open3d as o3d

    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    rel = np.asarray(relevancy, np.float32).reshape(-1)
    if len(rel) != len(xyz):
        raise ExportError(f"relevancy cloud: {len(xyz)} points but {len(rel)} relevancy values")
    pcd = o3d.t.geometry.PointCloud()
    pcd.point.positions = o3d.core.Tensor(xyz)
    pcd.point.colors = o3d.core.Tensor(relevancy_colors(rel).astype(np.float32))
    pcd.point["relevancy"] = o3d.core.Tensor(rel[:, None])
    _write_atomic(path, lambda tmp: o3d.t.io.write_point_cloud(tmp, pcd))


def export_map(
    snapshot: FieldSnapshot,
    cfg: QueryConfig,
    folder: str,
    relevancy: Optional[Dict[str, np.ndarray]] = None,
    surface: Optional[SurfacePoints] = None,
    mesh: bool = True,
    poisson_depth: int = 8,
) -> ExportResult:
    """Write the map of ``snapshot`` to ``folder`` (see the module docstring).

    Args:
        snapshot: the field; its keyframe cameras are exported and render the surface.
        cfg: query settings of the surface extraction (voxel size, stride, visibility).
        folder: created when missing.
        relevancy: optional {'xyz': (N, 3), 'relevancy': (N,)} of the last answer.
        surface: the snapshot's surface when already extracted (else it is extracted here).
        mesh: also reconstruct and write the mesh.
        poisson_depth: octree depth of the Poisson reconstruction.
    Raises:
        ExportError: the snapshot has no cameras or no surface yet, or a file could not be written.
    """
    import open3d as o3d

    from lerf_ros.query.surface import SurfaceError

    t0 = time.perf_counter()
    cameras = list(snapshot.cameras)
    if not cameras:
        raise ExportError("the map has no keyframe cameras yet: nothing to export")
    if surface is None:
        try:
            surface = extract_surface(snapshot, cfg)
        except SurfaceError as exc:
            raise ExportError(str(exc)) from exc
    if len(surface) == 0:
        raise ExportError(
            f"the field has no surface seen by {cfg.min_views} keyframes yet (step {snapshot.step}): "
            "train longer, then export"
        )
    os.makedirs(folder, exist_ok=True)
    result = ExportResult(folder=os.path.abspath(folder), step=int(snapshot.step))

    path = os.path.join(folder, "surface.ply")
    pcd = _surface_cloud(surface)
    _write_atomic(path, lambda tmp: o3d.io.write_point_cloud(tmp, pcd))
    result.files["surface"], result.points = path, len(surface)

    if mesh:
        tri = poisson_mesh(surface, cfg.voxel_size, depth=poisson_depth)
        if len(tri.triangles) == 0:
            raise ExportError(f"the Poisson mesh of {len(surface)} surface points came out empty")
        path = os.path.join(folder, "mesh.ply")
        _write_atomic(path, lambda tmp: o3d.io.write_triangle_mesh(tmp, tri, write_vertex_normals=True))
        result.files["mesh"], result.triangles = path, len(tri.triangles)

    records = _camera_records(cameras)
    path = os.path.join(folder, "cameras.json")
    doc = {
        "step": int(snapshot.step),
        "conventions": {
            "camera_to_world_opencv": "camera x right, y down, z forward (ROS optical frame)",
            "transform_matrix": "camera x right, y up, z backward (OpenGL, nerfstudio)",
        },
        "frames": records,
    }

    def dump(tmp: str) -> bool:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        return True

    _write_atomic(path, dump)
    result.files["cameras"], result.cameras = path, len(records)
    extent = np.ptp(surface.xyz, axis=0).max() if len(surface) > 1 else 1.0
    frustums = _frustums(cameras, depth=max(0.02, 0.05 * float(extent)))
    path = os.path.join(folder, "cameras.ply")
    _write_atomic(path, lambda tmp: o3d.io.write_line_set(tmp, frustums))
    result.files["frustums"] = path

    path = os.path.join(folder, "relevancy.ply")
    if relevancy is not None and len(np.asarray(relevancy["xyz"])):
        write_relevancy_ply(path, relevancy["xyz"], relevancy["relevancy"])
        result.files["relevancy"], result.relevancy_points = path, int(len(np.asarray(relevancy["xyz"])))
    elif os.path.exists(path):
        os.remove(path)  # an earlier export's answer does not belong to this map
    result.seconds = time.perf_counter() - t0
    return result
