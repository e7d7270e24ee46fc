"""The on-disk form of a synthetic scene: writing a scene folder and reading it back.

A scene folder holds ``scene.json`` (format tag :data:`SCENE_FORMAT`, parameters, table,
vocabulary, objects, and per frame its intrinsics, pose, stamp and file names),
``ground_truth.npz`` (each object's surface points), per frame ``frames/NNNNNN.png`` (RGB) and
``frames/NNNNNN.npz`` (depth float32 metres, instance int32), and usually ``preview.png``.
Reading gives back bit-identical frames and ground truth; a problem raises
:class:`SceneFormatError` naming the file.

A scene made with real-camera conditions (:mod:`lerf_ros.data.synthetic.conditions`) also has, and
only then (a clean scene's folder is exactly what it was before conditions existed):

- in ``scene.json``: ``conditions`` (their JSON form) and, per frame with a lens, ``distortion``
  (``{"model": ..., "coefficients": [...]}`` in ROS ``D`` order); each frame's ``c2w`` is the pose
  the robot reported (corrupted), its PNG the raw image (distorted, with its exposure);
- in ``ground_truth.npz``: ``colour_gains`` (F, 3) r, g, b gains applied to the images;
- ``ground_truth_poses.json``: the true pose of every frame, when the poses are corrupted;
- ``pose_corrections.json``: the late correction (a loop closure at the end of the trajectory:
  the poses with the drift removed), with ``available_after`` = the last frame's stamp.

The two pose files share one format (:data:`POSES_FORMAT`; :func:`write_poses`, :func:`read_poses`)::

    {"format": "lerf_ros.poses/1",
     "kind": "ground_truth" | "late_correction",
     "convention": "...",               # camera-to-world, OpenCV camera axes, the scene's world frame
     "available_after": 105.9,          # late_correction only: the stamp from which it is known
     "poses": [{"stamp": 100.0, "c2w": [[r00, r01, r02, tx], ..., [0, 0, 0, 1]]}, ...]}

``stamp`` is the frame's stamp (seconds, as published by ``lerf-ros replay``); ``c2w`` the 4x4
camera-to-world pose of the camera optical frame (x right, y down, z forward) in the scene's world
frame (replay's ``world_frame``); the numbers round-trip exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic.conditions import Conditions, ConditionsError
from lerf_ros.data.synthetic.layout import SceneObject
from lerf_ros.data.synthetic.objects import CLASS_BY_NAME
from lerf_ros.geometry.camera import Distortion, DistortionError
from lerf_ros.geometry.poses import PoseError, check_pose

__all__ = [
    "SCENE_FORMAT",
    "SCENE_FILE",
    "PREVIEW_FILE",
    "GROUND_TRUTH_FILE",
    "GROUND_TRUTH_POSES_FILE",
    "POSE_CORRECTIONS_FILE",
    "POSES_FORMAT",
    "SceneFormatError",
    "read_poses",
    "write_poses",
    "write_scene",
    "read_scene",
    "read_scene_json",
]

SCENE_FORMAT = "lerf_ros.synthetic_scene/1"
SCENE_FILE = "scene.json"
PREVIEW_FILE = "preview.png"
GROUND_TRUTH_FILE = "ground_truth.npz"
GROUND_TRUTH_POSES_FILE = "ground_truth_poses.json"
POSE_CORRECTIONS_FILE = "pose_corrections.json"
POSES_FORMAT = "lerf_ros.poses/1"
POSE_KINDS = ("ground_truth", "late_correction")
POSES_CONVENTION = (
    "c2w is the 4x4 camera-to-world pose of the camera optical frame (OpenCV axes: x right, y down, "
    "z forward) in the scene's world frame (z-up, metres); stamp in seconds"
)

CONVENTIONS = (
    "world z-up, metres, table top at z=table_height; c2w is camera-to-world in the "
    "OpenCV camera convention (x right, y down, z forward); depth is z-depth in metres "
    "(0 = no hit); instance 0 = background, object i has id i+1"
)
"""The conventions line written into every ``scene.json``."""


class SceneFormatError(ValueError):
    """A scene folder that cannot be loaded; the message names the file and the problem."""


def write_scene(scene, directory: Union[str, os.PathLike]) -> Path:
    """Write ``scene`` (a :class:`~lerf_ros.data.synthetic.scene.SyntheticScene`) to ``directory``
    (created; frames of a scene saved there before are removed), everything except the preview.
    ``scene.json`` is written last, through a temporary file. Returns the folder path."""
    from PIL import Image

    d = Path(directory)
    (d / "frames").mkdir(parents=True, exist_ok=True)
    for old in [*(d / "frames").glob("[0-9]" * 6 + ".png"), *(d / "frames").glob("[0-9]" * 6 + ".npz")]:
        old.unlink()
    for name in (GROUND_TRUTH_POSES_FILE, POSE_CORRECTIONS_FILE):
        if (d / name).is_file():
            (d / name).unlink()  # from a scene saved here before
    frames_json = []
    for i, f in enumerate(scene.frames):
        rgb_name, data_name = f"frames/{i:06d}.png", f"frames/{i:06d}.npz"
        Image.fromarray(f.rgb).save(d / rgb_name)
        np.savez_compressed(d / data_name, depth=f.depth, instance=f.instance)
        frames_json.append(
            {
                "index": i,
                "stamp": f.stamp,
                "frame_id": f.frame_id,
                "rgb": rgb_name,
                "data": data_name,
                "K": f.K.tolist(),
                "c2w": f.c2w.tolist(),
                "segment": f.meta.get("segment", ""),
            }
        )
        if f.distortion is not None:
            frames_json[-1]["distortion"] = {"model": f.distortion.model, "coefficients": list(f.distortion.coeffs)}
    doc = {
        "format": SCENE_FORMAT,
        "conventions": CONVENTIONS,
        "params": scene.params,
        "table": {"height": scene.table_height, "size": list(scene.table_size), "floor_height": scene.floor_height},
        "vocabulary": [{"name": c.name, "synonyms": list(c.synonyms)} for c in scene.vocabulary],
        "objects": [o.to_json() for o in scene.objects],
        "frames": frames_json,
    }
    cond = getattr(scene, "conditions", None)
    gt_arrays = {f"surface_points_{o.instance_id}": o.surface_points for o in scene.objects}
    if cond is not None and cond.active:
        doc["conditions"] = cond.to_json()
        stamps = [f.stamp for f in scene.frames]
        if scene.gains is not None:
            gt_arrays["colour_gains"] = np.asarray(scene.gains, np.float64)
        if scene.ground_truth_poses is not None:
            write_poses(d / GROUND_TRUTH_POSES_FILE, "ground_truth", stamps, scene.ground_truth_poses)
        if scene.corrected_poses is not None:
            write_poses(
                d / POSE_CORRECTIONS_FILE, "late_correction", stamps, scene.corrected_poses, available_after=max(stamps)
            )
    np.savez_compressed(d / GROUND_TRUTH_FILE, **gt_arrays)
    tmp = d / (SCENE_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(d / SCENE_FILE)
    return d


def _read_tagged_json(path: Path, tag: str, what: str, missing: str = "no such file") -> dict:
    """The JSON object in ``path`` whose ``format`` is ``tag``; SceneFormatError (``missing`` when
    the file is not there; ``what`` names the kind of file expected) otherwise."""
    if not path.is_file():
        raise SceneFormatError(f"{path}: {missing}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SceneFormatError(f"{path}: cannot parse JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != tag:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise SceneFormatError(f"{path}: not {what} (format {found!r}, expected {tag!r})")
    return doc


def read_scene_json(path: Path) -> dict:
    """The parsed ``scene.json`` at ``path``; SceneFormatError when it is missing, not JSON, or has
    another format tag."""
    return _read_tagged_json(
        path, SCENE_FORMAT, "a synthetic scene file", "no such file (not a synthetic scene folder)"
    )


def read_scene(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a scene folder written by :func:`write_scene`. Returns the keyword arguments of
    :class:`~lerf_ros.data.synthetic.scene.SyntheticScene`: frames, objects, vocabulary, params,
    table_height, table_size, floor_height. Raises SceneFormatError naming the file and the problem."""
    from PIL import Image

    d = Path(directory)
    jpath = d / SCENE_FILE
    doc = read_scene_json(jpath)
    try:
        vocab = tuple(CLASS_BY_NAME[v["name"]] for v in doc["vocabulary"])
        gt_path = d / GROUND_TRUTH_FILE
        if not gt_path.is_file():
            raise SceneFormatError(f"{gt_path}: missing (surface points of the objects)")
        with np.load(gt_path) as gt:
            objects = [
                SceneObject(
                    o["name"],
                    o["class"],
                    tuple(o["synonyms"]),
                    int(o["instance_id"]),
                    np.asarray(o["center"], float),
                    np.asarray(o["size"], float),
                    np.asarray(o["rotation"], float),
                    gt[f"surface_points_{o['instance_id']}"],
                )
                for o in doc["objects"]
            ]
        conditions = None
        if "conditions" in doc:
            try:
                conditions = Conditions.from_json(doc["conditions"])
            except (ConditionsError, DistortionError) as e:
                raise SceneFormatError(f"{jpath}: conditions: {e}") from None
            with np.load(gt_path) as gt:
                gains = gt["colour_gains"] if "colour_gains" in gt.files else None
            if conditions.colour and gains is None:
                raise SceneFormatError(f"{gt_path}: colour_gains missing (the scene has exposure conditions)")
        frames = []
        for fj in doc["frames"]:
            rp, dp = d / fj["rgb"], d / fj["data"]
            for p in (rp, dp):
                if not p.is_file():
                    raise SceneFormatError(f"{p}: missing (listed in {jpath})")
            rgb = np.asarray(Image.open(rp).convert("RGB"))
            with np.load(dp) as z:
                depth, inst = z["depth"], z["instance"]
            dist = None
            if "distortion" in fj:
                try:
                    dj = fj["distortion"]
                    dist = Distortion.create(dj["model"], dj["coefficients"])
                except DistortionError as e:
                    raise SceneFormatError(f"{jpath}: frame {fj.get('index')}: {e}") from None
            frames.append(
                Frame(
                    rgb=rgb,
                    K=np.asarray(fj["K"], float),
                    c2w=np.asarray(fj["c2w"], float),
                    stamp=float(fj["stamp"]),
                    frame_id=fj["frame_id"],
                    depth=depth,
                    instance=inst,
                    index=int(fj["index"]),
                    meta={"source": "synthetic", "segment": fj.get("segment", "")},
                    distortion=dist,
                )
            )
        table = doc["table"]
        extra: Dict[str, Any] = {}
        if conditions is not None:
            stamps = [f.stamp for f in frames]
            extra = {
                "conditions": conditions,
                "gains": gains,
                "ground_truth_poses": _poses_for(d / GROUND_TRUTH_POSES_FILE, "ground_truth", stamps)
                if conditions.poses
                else None,
                "corrected_poses": _poses_for(d / POSE_CORRECTIONS_FILE, "late_correction", stamps)
                if conditions.late_correction
                else None,
            }
        return {
            **extra,
            "frames": frames,
            "objects": objects,
            "vocabulary": vocab,
            "params": dict(doc["params"]),
            "table_height": float(table["height"]),
            "table_size": tuple(table["size"]),
            "floor_height": float(table["floor_height"]),
        }
    except SceneFormatError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise SceneFormatError(f"{jpath}: malformed scene ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------- pose files
def write_poses(
    path: Union[str, os.PathLike],
    kind: str,
    stamps: Sequence[float],
    c2ws: np.ndarray,
    available_after: Optional[float] = None,
) -> Path:
    """Write stamped camera-to-world poses in the :data:`POSES_FORMAT` file format (module doc)
    through a temporary file; ``kind`` is one of :data:`POSE_KINDS`. Returns the path."""
    if kind not in POSE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(POSE_KINDS)}, got {kind!r}")
    c2ws = np.asarray(c2ws, dtype=np.float64)
    if c2ws.shape != (len(stamps), 4, 4):
        raise ValueError(f"expected ({len(stamps)}, 4, 4) poses for {len(stamps)} stamps, got {c2ws.shape}")
    doc: Dict[str, Any] = {"format": POSES_FORMAT, "kind": kind, "convention": POSES_CONVENTION}
    if available_after is not None:
        doc["available_after"] = float(available_after)
    doc["poses"] = [{"stamp": float(t), "c2w": T.tolist()} for t, T in zip(stamps, c2ws)]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def read_poses(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Read a :data:`POSES_FORMAT` file. Returns (stamps (N,) float64, c2w (N, 4, 4) float64, header:
    the file's other entries such as ``kind`` and ``available_after``). Raises SceneFormatError
    naming the file and the entry for anything malformed (a pose that is not rigid included)."""
    path = Path(path)
    doc = _read_tagged_json(path, POSES_FORMAT, "a pose file")
    entries = doc.get("poses")
    if not isinstance(entries, list):
        raise SceneFormatError(f"{path}: 'poses' must be a list")
    stamps: List[float] = []
    poses: List[np.ndarray] = []
    for k, e in enumerate(entries):
        try:
            t = float(e["stamp"])
            T = np.asarray(e["c2w"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise SceneFormatError(f"{path}: pose {k}: malformed ({type(exc).__name__}: {exc})") from None
        try:
            if not np.isfinite(t):
                raise PoseError("stamp is not finite")
            check_pose(T)
        except PoseError as exc:
            raise SceneFormatError(f"{path}: pose {k}: {exc}") from None
        stamps.append(t)
        poses.append(T)
    header = {k: v for k, v in doc.items() if k not in ("poses", "format")}
    return np.asarray(stamps, np.float64), np.stack(poses) if poses else np.zeros((0, 4, 4)), header


def _poses_for(path: Path, kind: str, stamps: Sequence[float]) -> np.ndarray:
    """The poses of ``path`` (a pose file of ``kind``), one per frame stamp, in frame order."""
    if not path.is_file():
        raise SceneFormatError(f"{path}: missing (the scene's conditions need its {kind.replace('_', ' ')} poses)")
    st, T, header = read_poses(path)
    if header.get("kind") != kind:
        raise SceneFormatError(f"{path}: kind {header.get('kind')!r}, expected {kind!r}")
    if len(st) != len(stamps) or not np.array_equal(st, np.asarray(stamps, np.float64)):
        raise SceneFormatError(f"{path}: its {len(st)} stamps are not the scene's {len(stamps)} frame stamps")
    return T
