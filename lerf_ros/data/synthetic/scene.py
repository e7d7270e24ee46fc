"""The synthetic scene: its type, its generation (:func:`make_scene`) and loading (:func:`load_scene`).

:func:`make_scene` is three steps, each a function of the seed: the layout (objects on the table,
:mod:`~lerf_ros.data.synthetic.layout`), the camera trajectory
(:mod:`~lerf_ros.data.synthetic.trajectory`) and rendering
(:mod:`~lerf_ros.data.synthetic.render`). A :class:`SyntheticScene` holds the rendered frames and
the ground truth, answers questions about it, and renders further views of the same geometry.

With :class:`~lerf_ros.data.synthetic.conditions.Conditions` (lens distortion, pose noise and
drift, a late pose correction, exposure and white balance), the frames are what such a camera
would deliver and the ground truth stays clean beside them: the true poses
(:attr:`SyntheticScene.ground_truth_poses`), the clean pinhole views at those poses
(:meth:`SyntheticScene.ground_truth_frames`, :meth:`SyntheticScene.ground_truth_scene`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic.conditions import Conditions, apply_gains, colour_gains, corrupt_poses
from lerf_ros.data.synthetic.io import PREVIEW_FILE, SceneFormatError, read_scene, write_scene
from lerf_ros.data.synthetic.layout import FLOOR_Z, TABLE_SIZE, SceneObject, build_layout
from lerf_ros.data.synthetic.objects import VOCABULARY, ObjectClass, normalize_phrase
from lerf_ros.data.synthetic.preview import save_preview
from lerf_ros.data.synthetic.render import Renderer
from lerf_ros.data.synthetic.trajectory import intrinsics_from_fov, trajectory
from lerf_ros.geometry.camera import Distortion

__all__ = ["SyntheticScene", "apply_conditions", "make_scene", "load_scene", "scene_digest"]


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
        conditions: the real-camera conditions the frames were made with (None: a clean scene).
        ground_truth_poses: (F, 4, 4) true camera-to-world poses when the frames' poses are
            corrupted (``conditions.poses``), else None (the frames' poses are the truth).
        corrected_poses: (F, 4, 4) the late correction of the frames' poses (drift removed),
            available after the last frame's stamp, or None (``conditions.late_correction``).
        gains: (F, 3) per-frame r, g, b gains applied to the images, or None (``conditions.colour``).
    """

    frames: List[Frame]
    objects: List[SceneObject]
    vocabulary: Tuple[ObjectClass, ...]
    params: dict
    table_height: float = 0.0
    table_size: Tuple[float, float] = TABLE_SIZE
    floor_height: float = FLOOR_Z
    timings: Dict[str, float] = field(default_factory=dict)
    conditions: Optional[Conditions] = None
    ground_truth_poses: Optional[np.ndarray] = field(default=None, repr=False)
    corrected_poses: Optional[np.ndarray] = field(default=None, repr=False)
    gains: Optional[np.ndarray] = field(default=None, repr=False)
    _renderer: Optional[Renderer] = field(default=None, repr=False)
    _clean_frames: Optional[List[Frame]] = field(default=None, repr=False)

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
        distortion: Optional[Distortion] = None,
    ):
        """Render any pose (e.g. a held-out view); ``K`` defaults to the scene's field of view at the
        requested size; ``distortion``: the lens of the raw image (None: pinhole). Returns rgb
        (H, W, 3) uint8, depth (H, W) float32, instance (H, W) int32."""
        width = width or self.params["width"]
        height = height or self.params["height"]
        if K is None:
            K = intrinsics_from_fov(width, height, self.params["hfov_deg"])
        K = np.asarray(K, float)
        rgb, depth, inst = self.renderer.render(
            K, np.asarray(c2w, float)[None], width, height, shadows, distortion=distortion
        )
        return rgb[0], depth[0], inst[0]

    # -- ground truth under conditions -----------------------------------------------------
    def true_poses(self) -> np.ndarray:
        """(F, 4, 4) true camera-to-world poses of the frames (theirs when they are not corrupted)."""
        if self.ground_truth_poses is not None:
            return self.ground_truth_poses
        return np.stack([f.c2w for f in self.frames])

    def ground_truth_frames(self) -> List[Frame]:
        """The clean views: each frame as a pinhole camera at its true pose with the true colour
        (and its depth and instance map); the frames themselves when no condition is on. Rendered
        once (from the seed's geometry for a loaded scene) and kept."""
        if self.conditions is None or not self.conditions.active:
            return self.frames
        if self._clean_frames is None:
            poses = self.true_poses()
            if self.conditions.lens is None and not self.conditions.colour:
                self._clean_frames = [dataclasses.replace(f, c2w=p.copy()) for f, p in zip(self.frames, poses)]
            else:
                K = self.frames[0].K
                rgb, depth, inst = self.renderer.render(
                    K, poses, self.params["width"], self.params["height"], self.params["shadows"]
                )
                self._clean_frames = [
                    dataclasses.replace(
                        f, rgb=rgb[i], c2w=poses[i].copy(), depth=depth[i], instance=inst[i], distortion=None
                    )
                    for i, f in enumerate(self.frames)
                ]
        return self._clean_frames

    def ground_truth_scene(self) -> "SyntheticScene":
        """This scene with :meth:`ground_truth_frames` as its frames and no conditions: what an
        evaluation compares against (the same objects, geometry and renderer)."""
        if self.conditions is None or not self.conditions.active:
            return self
        return dataclasses.replace(
            self,
            frames=self.ground_truth_frames(),
            conditions=None,
            ground_truth_poses=None,
            corrected_poses=None,
            gains=None,
            timings={},
            _clean_frames=None,
        )

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


def rendered_frames(
    rgb: np.ndarray,
    depth: np.ndarray,
    inst: np.ndarray,
    K: np.ndarray,
    c2ws: np.ndarray,
    start_stamp: float,
    fps: float,
    frame_id: str,
    segments,
) -> List[Frame]:
    """The frames of a rendered trajectory: (N, H, W, ...) images, (N, 4, 4) poses, stamps at ``fps``."""
    return [
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
        for i in range(len(c2ws))
    ]


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
    conditions: Optional[Conditions] = None,
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
        conditions: real-camera conditions applied to the frames, seeded from ``seed`` (see
            :mod:`~lerf_ros.data.synthetic.conditions`); the ground truth stays clean. None, or
            all conditions off, gives exactly the scene made without them.
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
    frames = rendered_frames(rgb, depth, inst, K, c2ws, start_stamp, fps, frame_id, segments)
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
    scene = SyntheticScene(
        frames,
        layout.objects,
        VOCABULARY,
        params,
        timings={"layout_s": t1 - t0, "render_s": t2 - t1},
        _renderer=renderer,
    )
    if conditions is None or not conditions.active:
        return scene
    return apply_conditions(scene, conditions)


def apply_conditions(scene: SyntheticScene, conditions: Conditions) -> SyntheticScene:
    """``scene`` (a clean one) as a camera with ``conditions`` would deliver it, seeded from the
    scene seed: raw distorted images rendered exactly at the true poses, the colour gains applied
    to the images, the poses corrupted. The clean frames become the new scene's
    :meth:`~SyntheticScene.ground_truth_frames`; ``scene`` itself is not changed. Conditions that
    are all off return ``scene``."""
    if not isinstance(conditions, Conditions):
        raise TypeError(f"conditions must be a Conditions, got {type(conditions).__name__}")
    if scene.conditions is not None and scene.conditions.active:
        raise ValueError("the scene already has conditions: apply them to its ground_truth_scene()")
    if not conditions.active:
        return scene
    t0 = time.perf_counter()
    clean = scene.frames
    true = np.stack([f.c2w for f in clean])
    lens = conditions.lens
    if lens is not None:
        p = scene.params
        rgb, depth, inst = scene.renderer.render(
            clean[0].K, true, p["width"], p["height"], p["shadows"], distortion=lens
        )
    else:
        rgb = [f.rgb for f in clean]
        depth = [f.depth for f in clean]
        inst = [f.instance for f in clean]
    gains = colour_gains(scene.seed, len(clean), conditions) if conditions.colour else None
    published, corrected = corrupt_poses(scene.seed, true, conditions) if conditions.poses else (true, None)
    frames = [
        dataclasses.replace(
            f,
            rgb=rgb[i] if gains is None else apply_gains(rgb[i], gains[i]),
            c2w=published[i].copy(),
            depth=depth[i],
            instance=inst[i],
            distortion=lens,
            meta=dict(f.meta),
        )
        for i, f in enumerate(clean)
    ]
    return dataclasses.replace(
        scene,
        frames=frames,
        conditions=conditions,
        ground_truth_poses=true if conditions.poses else None,
        corrected_poses=corrected,
        gains=gains,
        timings={**scene.timings, "conditions_s": time.perf_counter() - t0},
        _clean_frames=list(clean),
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
