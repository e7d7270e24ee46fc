"""The on-disk form of a synthetic scene: writing a scene folder and reading it back.

A scene folder holds ``scene.json`` (format tag :data:`SCENE_FORMAT`, parameters, table,
vocabulary, objects, and per frame its intrinsics, pose, stamp and file names),
``ground_truth.npz`` (each object's surface points), per frame ``frames/NNNNNN.png`` (RGB) and
``frames/NNNNNN.npz`` (depth float32 metres, instance int32), and usually ``preview.png``.
Reading gives back bit-identical frames and ground truth; a problem raises
:class:`SceneFormatError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic.layout import SceneObject
from lerf_ros.data.synthetic.objects import CLASS_BY_NAME

__all__ = [
    "SCENE_FORMAT",
    "SCENE_FILE",
    "PREVIEW_FILE",
    "GROUND_TRUTH_FILE",
    "SceneFormatError",
    "write_scene",
    "read_scene",
    "read_scene_json",
]

SCENE_FORMAT = "lerf_ros.synthetic_scene/1"
SCENE_FILE = "scene.json"
PREVIEW_FILE = "preview.png"
GROUND_TRUTH_FILE = "ground_truth.npz"

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
    doc = {
        "format": SCENE_FORMAT,
        "conventions": CONVENTIONS,
        "params": scene.params,
        "table": {"height": scene.table_height, "size": list(scene.table_size), "floor_height": scene.floor_height},
        "vocabulary": [{"name": c.name, "synonyms": list(c.synonyms)} for c in scene.vocabulary],
        "objects": [o.to_json() for o in scene.objects],
        "frames": frames_json,
    }
    np.savez_compressed(
        d / GROUND_TRUTH_FILE, **{f"surface_points_{o.instance_id}": o.surface_points for o in scene.objects}
    )
    tmp = d / (SCENE_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(d / SCENE_FILE)
    return d


def read_scene_json(path: Path) -> dict:
    """The parsed ``scene.json`` at ``path``; SceneFormatError when it is missing, not JSON, or has
    another format tag."""
    if not path.is_file():
        raise SceneFormatError(f"{path}: no such file (not a synthetic scene folder)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SceneFormatError(f"{path}: cannot parse JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != SCENE_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise SceneFormatError(f"{path}: not a synthetic scene file (format {found!r}, expected {SCENE_FORMAT!r})")
    return doc


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
        frames = []
        for fj in doc["frames"]:
            rp, dp = d / fj["rgb"], d / fj["data"]
            for p in (rp, dp):
                if not p.is_file():
                    raise SceneFormatError(f"{p}: missing (listed in {jpath})")
            rgb = np.asarray(Image.open(rp).convert("RGB"))
            with np.load(dp) as z:
                depth, inst = z["depth"], z["instance"]
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
                )
            )
        table = doc["table"]
        return {
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
