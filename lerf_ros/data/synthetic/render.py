"""The renderer: a vectorised ray caster over world-space parts (open3d's ``RaycastingScene``).

Shading is Lambertian with ambient light and hard shadows from one directional light
(:data:`LIGHT_DIR`); rays that hit nothing get the sky colour. Views are cameras in the OpenCV
convention, pinhole or with a lens distortion; rays go through pixel centres (a distorted pixel's
ray is its undistorted direction), and since a camera ray's z component is 1 the hit parameter is
the z-depth. open3d is imported only when a :class:`Renderer` is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from lerf_ros.data.synthetic.shapes import PATTERNS, Part, vertex_normals
from lerf_ros.geometry.camera import Distortion, effective_distortion, pixel_directions

__all__ = ["LIGHT_DIR", "AMBIENT", "DIFFUSE", "SKY", "Geometry", "Renderer"]

LIGHT_DIR = np.array([0.35, -0.45, 1.0]) / np.linalg.norm([0.35, -0.45, 1.0])
"""Unit direction towards the directional light (world frame)."""
AMBIENT = 0.35
"""Ambient share of the albedo (what a surface in shadow shows)."""
DIFFUSE = 0.65
"""Diffuse share of the albedo, times the cosine to the light."""
SKY = np.array([0.78, 0.85, 0.95])
"""RGB of rays that hit nothing."""


@dataclass
class Geometry:
    """One part to draw: its mesh in world coordinates, the instance id its pixels get (0 for the
    room and table) and its owner's (4, 4) world-to-local transform (textures are evaluated in the
    owning object's local frame, so they move with it)."""

    part: Part
    instance_id: int
    world_to_local: np.ndarray


class Renderer:
    """Vectorised ray caster over a fixed set of world-space parts (open3d RaycastingScene)."""

    def __init__(self, geoms: List[Geometry], nthreads: int = 0):
        """Build the ray-casting scene of ``geoms`` (in order: geometry ids follow the list);
        ``nthreads``: ray-casting threads (0 = all cores)."""
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
            vn.append(vertex_normals(g.part.vertices, g.part.triangles))
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
        hit_idx = order[: starts[-1]]
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
                ns = (1 - uv[:, :1] - uv[:, 1:]) * vn[tri[:, 0]] + uv[:, :1] * vn[tri[:, 1]] + uv[:, 1:] * vn[tri[:, 2]]
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

    def render(
        self,
        K: np.ndarray,
        c2ws: np.ndarray,
        width: int,
        height: int,
        shadows: bool = True,
        max_rays: int = 1 << 20,
        distortion: Optional[Distortion] = None,
    ):
        """Render views. K: (3, 3); c2ws: (F, 4, 4) OpenCV camera-to-world; ``distortion``: the lens
        of the raw image (None: pinhole), each raw pixel rendered along its own undistorted ray
        (``lerf_ros.geometry.camera.pixel_directions``), so the image is exact with no resampling.

        Returns rgb (F, H, W, 3) uint8, depth (F, H, W) float32 z-depth (0 on a miss, and for a
        fisheye ray 90 degrees or more off axis), instance (F, H, W) int32."""
        F = len(c2ws)
        lens = effective_distortion(distortion)
        if lens is None:
            u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
            pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
            dcam = pix @ np.linalg.inv(K).T  # camera z component is exactly 1 -> t_hit is z-depth
            ahead = None
        else:
            dcam = pixel_directions(K, width, height, lens).astype(np.float64)
            ahead = dcam[:, 2] > 1e-6
            dcam[ahead] /= dcam[ahead, 2:3]  # z = 1 where the ray looks ahead: t_hit is z-depth
        rgb = np.zeros((F, height * width, 3), np.uint8)
        depth = np.zeros((F, height * width), np.float32)
        inst = np.zeros((F, height * width), np.int32)
        per = max(1, max_rays // (height * width))
        for s in range(0, F, per):
            cs = c2ws[s : s + per]
            nf = len(cs)
            rays = np.empty((nf, height * width, 6), np.float32)
            rays[..., :3] = cs[:, None, :3, 3]
            rays[..., 3:] = np.einsum("fij,nj->fni", cs[:, :3, :3].astype(np.float32), dcam.astype(np.float32))
            c, t, i = self.shade(rays.reshape(-1, 6), shadows)
            rgb[s : s + nf] = np.round(c * 255).astype(np.uint8).reshape(nf, -1, 3)
            t = t.reshape(nf, -1)
            valid = np.isfinite(t) if ahead is None else np.isfinite(t) & ahead
            depth[s : s + nf] = np.where(valid, t, 0.0)
            inst[s : s + nf] = i.reshape(nf, -1)
        return (rgb.reshape(F, height, width, 3), depth.reshape(F, height, width), inst.reshape(F, height, width))
