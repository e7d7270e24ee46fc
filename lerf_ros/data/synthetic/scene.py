"""The synthetic scene: its type, its generation (:func:`make_scene`) and loading (:func:`load_scene`).

:func:`make_scene` is three steps, each a function of the seed: the layout (objects on the table,
:mod:`~lerf_ros.data.synthetic.layout`), the camera trajectory
(:mod:`~lerf_ros.data.synthetic.trajectory`) and rendering
(:mod:`~lerf_ros.data.synthetic.render`). A :class:`SyntheticScene` holds the rendered frames and
the ground truth, answers questions about it, and renders further views of the same geometry.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic.io import PREVIEW_FILE, SceneFormatError, read_scene, write_scene
from lerf_ros.data.synthetic.layout import FLOOR_Z, TABLE_SIZE, SceneObject, build_layout
from lerf_ros.data.synthetic.objects import VOCABULARY, ObjectClass, normalize_phrase
from lerf_ros.data.synthetic.preview import save_preview
from lerf_ros.data.synthetic.render import Renderer
from lerf_ros.data.synthetic.trajectory import intrinsics_from_fov, trajectory

__all__ = ["SyntheticScene", "make_scene", "load_scene", "scene_digest"]


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
    _renderer: Optional[Renderer] = field(default=None, repr=False)

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
        """The scene seed."""
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
    def renderer(self) -> Renderer:
        """The ray caster of this scene's geometry (rebuilt from the seed for a loaded scene)."""
        if self._renderer is None:
            p = self.params
            layout = build_layout(p["seed"], p["n_objects"], p["n_surface_points"])
            for a, b in zip(layout.objects, self.objects):
                if a.class_name != b.class_name or not np.allclose(a.center, b.center, atol=1e-6):
                    raise SceneFormatError(
                        "the scene's saved ground truth does not match the geometry its "
                        "seed generates (made by a different generator version)"
                    )
            self._renderer = Renderer(layout.geoms)
        return self._renderer

    def render_view(
        self,
        c2w: np.ndarray,
        K: Optional[np.ndarray] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        shadows: bool = True,
    ):
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
        and ``frames/NNNNNN.npz`` (depth float32 m, instance int32), and ``preview.png``
        (see :mod:`lerf_ros.data.synthetic.io`). Returns the folder path."""
        d = write_scene(self, directory)
        if preview:
            self.save_preview(d / PREVIEW_FILE)
        return d

    def save_preview(self, path: Union[str, os.PathLike], tiles: int = 12) -> Path:
        """Write a contact sheet PNG: up to ``tiles`` RGB frames spread over the trajectory, then
        depth and instance maps of the first of them, a top view with object labels, and a legend."""
        return save_preview(self, path, tiles)


def make_scene(
    seed: int = 0,
    n_objects: Optional[int] = None,
    width: int = 160,
    height: int = 120,
    n_frames: int = 60,
    hfov_deg: float = 60.0,
    fps: float = 10.0,
    start_stamp: float = 100.0,
    n_surface_points: int = 2048,
    shadows: bool = True,
    frame_id: str = "camera_optical_frame",
    nthreads: int = 0,
) -> SyntheticScene:
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
    layout = build_layout(int(seed), n_objects, n_surface_points)
    c2ws, segments = trajectory(int(seed), n_frames, layout.objects)
    K = intrinsics_from_fov(width, height, hfov_deg)
    t1 = time.perf_counter()
    renderer = Renderer(layout.geoms, nthreads=nthreads)
    rgb, depth, inst = renderer.render(K, c2ws, width, height, shadows)
    t2 = time.perf_counter()
    frames = [
        Frame(
            rgb=rgb[i],
            K=K.copy(),
            c2w=c2ws[i],
            stamp=start_stamp + i / fps,
            frame_id=frame_id,
            depth=depth[i],
            instance=inst[i],
            index=i,
            meta={"source": "synthetic", "segment": segments[i]},
        )
        for i in range(n_frames)
    ]
    params = {
        "seed": int(seed),
        "n_objects": len(layout.objects),
        "width": int(width),
        "height": int(height),
        "n_frames": int(n_frames),
        "hfov_deg": float(hfov_deg),
        "fps": float(fps),
        "start_stamp": float(start_stamp),
        "n_surface_points": int(n_surface_points),
        "shadows": bool(shadows),
    }
    return SyntheticScene(
        frames,
        layout.objects,
        VOCABULARY,
        params,
        timings={"layout_s": t1 - t0, "render_s": t2 - t1},
        _renderer=renderer,
    )


def load_scene(directory: Union[str, os.PathLike]) -> SyntheticScene:
    """Load a scene written by :meth:`SyntheticScene.save`; frames and ground truth come back
    bit-identical. Raises SceneFormatError naming the file and the problem."""
    return SyntheticScene(**read_scene(directory))


def scene_digest(scene: SyntheticScene) -> str:
    """A short hash of all frames' pixels, depth and instance maps (to compare renders)."""
    h = hashlib.sha256()
    for f in scene.frames:
        for a in (f.rgb, f.depth, f.instance, f.c2w):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
