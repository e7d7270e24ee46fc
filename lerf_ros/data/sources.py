"""One entry point for every posed-frame source: ``open_source(path_or_spec)``.

Recognised inputs:

- ``synthetic:seed=3,width=160,height=120,frames=60,objects=6`` (all keys optional): a synthetic
  scene generated on the fly;
- a synthetic scene folder (holds ``scene.json``, written by ``lerf-ros scene``);
- a nerfstudio / instant-ngp folder holding ``transforms.json`` (or that file itself);
- a rosbag2: a folder with ``metadata.yaml``, or a ``.mcap`` / ``.db3`` file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Union

from lerf_ros.data.frame import Frame

__all__ = ["FrameSource", "SourceError", "open_source", "source_kind"]


class SourceError(ValueError):
    """A path or spec that is not a posed-frame source; the message says what was found."""


@dataclass
class FrameSource:
    """An opened source: iterate it for :class:`Frame` objects.

    Attributes:
        kind: 'synthetic', 'transforms' or 'rosbag2'.
        path: where it came from (the spec string for an on-the-fly synthetic scene).
        frames: the underlying iterable (a list, or a lazily decoding reader).
        scene: the :class:`~lerf_ros.data.synthetic.SyntheticScene` (ground truth) for synthetic
            sources, else None.
    """

    kind: str
    path: str
    frames: Iterable[Frame]
    scene: Optional[Any] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]


_SPEC_KEYS = {
    "seed": "seed",
    "width": "width",
    "height": "height",
    "frames": "n_frames",
    "n_frames": "n_frames",
    "objects": "n_objects",
    "n_objects": "n_objects",
}


def _parse_synthetic_spec(spec: str) -> Dict[str, int]:
    body = spec.split(":", 1)[1].strip()
    kwargs: Dict[str, int] = {}
    if not body:
        return kwargs
    for item in body.split(","):
        if "=" not in item:
            if item.strip().isdigit() and "seed" not in kwargs:  # "synthetic:3"
                kwargs["seed"] = int(item)
                continue
            raise SourceError(f"'{spec}': expected key=value items, got '{item}'")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in _SPEC_KEYS:
            raise SourceError(f"'{spec}': unknown key '{k}' (known: seed, width, height, frames, objects)")
        try:
            kwargs[_SPEC_KEYS[k]] = int(v)
        except ValueError:
            raise SourceError(f"'{spec}': '{k}' must be an integer, got '{v}'") from None
    return kwargs


def source_kind(path_or_spec: Union[str, os.PathLike]) -> str:
    """'synthetic', 'synthetic_folder', 'transforms' or 'rosbag2'; SourceError when none fits."""
    from lerf_ros.data.rosbag import is_rosbag
    from lerf_ros.data.synthetic import SCENE_FILE
    from lerf_ros.data.transforms_json import TRANSFORMS_FILE

    s = str(path_or_spec)
    if s.startswith("synthetic:"):
        return "synthetic"
    p = Path(s)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder (and not a 'synthetic:...' spec)")
    if p.is_dir() and (p / SCENE_FILE).is_file():
        return "synthetic_folder"
    if (p.is_dir() and (p / TRANSFORMS_FILE).is_file()) or (p.is_file() and p.name.endswith(".json")):
        return "transforms"
    if is_rosbag(p):
        return "rosbag2"
    if p.is_dir():
        listing = sorted(x.name for x in p.iterdir())[:10]
        raise SourceError(
            f"{p}: not a posed-frame source: no {SCENE_FILE} (synthetic scene), {TRANSFORMS_FILE} "
            f"or metadata.yaml (rosbag2) in it (found: {', '.join(listing) or 'nothing'})"
        )
    raise SourceError(f"{p}: not a posed-frame source (expected a folder, a transforms .json, or a .mcap/.db3 bag)")


def open_source(path_or_spec: Union[str, os.PathLike], **kwargs: Any) -> FrameSource:
    """Open a synthetic spec, synthetic scene folder, transforms.json folder or rosbag2.

    Extra keyword arguments go to the reader (e.g. ``image_topic=`` for a bag, ``depth_unit_scale=``
    for a transforms folder, ``width=`` for a synthetic spec)."""
    kind = source_kind(path_or_spec)
    s = str(path_or_spec)
    if kind == "synthetic":
        from lerf_ros.data.synthetic import make_scene

        scene = make_scene(**{**_parse_synthetic_spec(s), **kwargs})
        return FrameSource("synthetic", s, scene.frames, scene, {"params": scene.params})
    if kind == "synthetic_folder":
        from lerf_ros.data.synthetic import load_scene

        scene = load_scene(s)
        return FrameSource("synthetic", s, scene.frames, scene, {"params": scene.params})
    if kind == "transforms":
        from lerf_ros.data.transforms_json import TransformsSource

        return FrameSource("transforms", s, TransformsSource(s, **kwargs))
    from lerf_ros.data.rosbag import RosbagSource

    bag = RosbagSource(s, **kwargs)
    return FrameSource("rosbag2", s, bag, None, {"topics": bag.topics, "stats": bag.stats, "warnings": bag.warnings})
