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

The package, one concern per module (lower ones never import higher ones):

- :mod:`.shapes`: triangle-mesh primitives and surface materials;
- :mod:`.objects`: the vocabulary (classes, synonyms, mesh builders) and phrase matching;
- :mod:`.render`: the ray caster and its shading;
- :mod:`.layout`: the room, placing objects on the table, their ground truth (:class:`SceneObject`);
- :mod:`.trajectory`: intrinsics, look-at poses, the camera path;
- :mod:`.io`: the scene folder on disk; :mod:`.preview`: its contact sheet;
- :mod:`.scene`: :class:`SyntheticScene`, :func:`make_scene`, :func:`load_scene`;
- :mod:`.cameras`: a second camera rigidly offset from the first (:func:`offset_camera_frames`).
"""

from lerf_ros.data.synthetic.cameras import WRIST_FRAME, WRIST_OFFSET, offset_camera_frames
from lerf_ros.data.synthetic.io import PREVIEW_FILE, SCENE_FILE, SceneFormatError
from lerf_ros.data.synthetic.layout import SceneObject
from lerf_ros.data.synthetic.objects import VOCABULARY, ObjectClass, normalize_phrase
from lerf_ros.data.synthetic.scene import SyntheticScene, load_scene, make_scene, scene_digest
from lerf_ros.data.synthetic.trajectory import intrinsics_from_fov, look_at

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
    "offset_camera_frames",
    "WRIST_OFFSET",
    "WRIST_FRAME",
    "SCENE_FILE",
    "PREVIEW_FILE",
]
