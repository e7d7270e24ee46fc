"""Scripted changes during a synthetic trajectory: an object removed, moved or added at a frame.

A changing scene is an ordinary :class:`~lerf_ros.data.synthetic.scene.SyntheticScene` whose frames
were rendered with the geometry of the moment: from an event's frame on, the removed object is
gone, the moved object stands at its new place, the added object is there. Events are written
``KIND:NAME@FRAME`` with an optional ``=X,Y`` (table position in metres, world frame) and
``,YAW`` (degrees) for ``move`` and ``add``::

    remove:mug@30           the mug is gone from frame 30 on
    move:mug@30             the mug stands at a free spot (drawn from the seed) from frame 30 on
    move:mug@30=0.2,-0.1    ... at x = 0.2, y = -0.1 on the table
    add:banana@45=0.1,0.2,90  a banana (a vocabulary class not in the scene) appears at frame 45

Ground truth: ``scene.objects`` lists every object that is ever present (the layout's objects in
their initial state, then each added object with its instance id), so a ground-truth teacher knows
every instance id; :func:`objects_at` gives the objects present at a frame with their pose there
(before and after each event). The resolved events (positions and yaws filled in) are saved in
``scene.json`` under ``params['events']`` and read back by :func:`scene_events`, so a saved
changing scene keeps its ground truth.

The trajectory can run several times around the table (``cycles``), so the places that changed
are seen again after the event.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lerf_ros.data.synthetic.layout import (
    PLACEMENT_MARGIN,
    TABLE_SIZE,
    SceneObject,
    build_layout,
    centred_parts,
    footprints_overlap,
    place_object,
    rot_z,
)
from lerf_ros.data.synthetic.objects import CLASS_BY_NAME, VOCABULARY, normalize_phrase
from lerf_ros.data.synthetic.render import Geometry, Renderer
from lerf_ros.data.synthetic.scene import SyntheticScene, rendered_frames
from lerf_ros.data.synthetic.shapes import Part
from lerf_ros.data.synthetic.trajectory import intrinsics_from_fov, trajectory

__all__ = [
    "EVENT_KINDS",
    "SceneEvent",
    "parse_event",
    "make_changing_scene",
    "scene_events",
    "objects_at",
    "changed_objects",
    "objects_at_state",
]

EVENT_KINDS = ("remove", "move", "add")
"""What an event can do to an object."""

_EVENT_RE = re.compile(
    r"^\s*(?P<kind>[a-z]+)\s*:\s*(?P<name>[^@=]+?)\s*@\s*(?P<frame>-?\d+)\s*(?:=\s*(?P<where>[^=]*))?$"
)


@dataclass(frozen=True)
class SceneEvent:
    """One scripted change.

    Attributes:
        kind: 'remove', 'move' or 'add'.
        name: the object's class name (remove, move: an object of the scene; add: a vocabulary class
            not in the scene), or a synonym of it.
        frame: index of the first frame that shows the new state (>= 1).
        position: move/add: (x, y) on the table in metres (world frame), which must be free; None: a
            spot drawn from the scene seed, clear of every place an object has stood so far.
        yaw_deg: move/add: turn about +z in degrees; None: drawn from the scene seed.
    """

    kind: str
    name: str
    frame: int
    position: Optional[Tuple[float, float]] = None
    yaw_deg: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind {self.kind!r}: one of {', '.join(EVENT_KINDS)}")
        if int(self.frame) < 1:
            raise ValueError(f"event '{self.text()}': frame must be >= 1 (frame 0 shows the initial scene)")
        if self.kind == "remove" and (self.position is not None or self.yaw_deg is not None):
            raise ValueError(f"event '{self.text()}': a removal takes no position")
        if self.position is not None and not all(math.isfinite(v) for v in self.position):
            raise ValueError(f"event '{self.text()}': position must be finite")

    def text(self) -> str:
        """The event in the ``KIND:NAME@FRAME[=X,Y[,YAW]]`` syntax."""
        s = f"{self.kind}:{self.name}@{self.frame}"
        if self.position is not None:
            s += f"={self.position[0]:g},{self.position[1]:g}"
            if self.yaw_deg is not None:
                s += f",{self.yaw_deg:g}"
        return s


def parse_event(text: str) -> SceneEvent:
    """A :class:`SceneEvent` from ``KIND:NAME@FRAME[=X,Y[,YAW]]`` (module doc); ValueError naming the
    problem otherwise."""
    m = _EVENT_RE.match(str(text))
    if m is None:
        raise ValueError(
            f"event {text!r}: expected KIND:NAME@FRAME[=X,Y[,YAW_DEG]] with KIND one of "
            f"{', '.join(EVENT_KINDS)} (e.g. remove:mug@30, move:mug@30=0.2,-0.1, add:banana@45)"
        )
    position, yaw = None, None
    if m.group("where") is not None:
        try:
            nums = [float(v) for v in m.group("where").split(",")]
        except ValueError:
            raise ValueError(f"event {text!r}: the position must be numbers X,Y[,YAW_DEG]") from None
        if len(nums) not in (2, 3):
            raise ValueError(f"event {text!r}: the position must be X,Y or X,Y,YAW_DEG, got {len(nums)} numbers")
        position = (nums[0], nums[1])
        yaw = nums[2] if len(nums) == 3 else None
    return SceneEvent(m.group("kind"), m.group("name").strip(), int(m.group("frame")), position, yaw)


# ---------------------------------------------------------------------------- resolving events
def _class_of(phrase: str) -> str:
    key = normalize_phrase(phrase)
    for c in VOCABULARY:
        if key in {normalize_phrase(p) for p in (c.name, *c.synonyms)}:
            return c.name
    raise ValueError(f"'{phrase}' names no vocabulary class")


def _footprint(size: np.ndarray, xy: np.ndarray, yaw: float, grow: float) -> np.ndarray:
    h = size[:2] / 2
    local = np.array([[-h[0], -h[1]], [h[0], -h[1]], [h[0], h[1]], [-h[0], h[1]]])
    local = local + np.sign(local) * grow
    return xy + local @ rot_z(yaw)[:2, :2].T


def _spot(
    rng: np.random.Generator,
    size: np.ndarray,
    taken: Sequence[np.ndarray],
    position: Optional[Tuple[float, float]],
    yaw_deg: Optional[float],
    what: str,
    tries: int = 400,
) -> Tuple[np.ndarray, float]:
    """A table position (2,) and yaw for a box of ``size`` whose footprint stays on the table and off
    the ``taken`` footprints: the given one (checked) or one drawn from ``rng``."""
    hx = TABLE_SIZE[0] / 2 - PLACEMENT_MARGIN
    hy = TABLE_SIZE[1] / 2 - PLACEMENT_MARGIN
    for _ in range(1 if position is not None else tries):
        yaw = math.radians(yaw_deg) if yaw_deg is not None else float(rng.uniform(-np.pi, np.pi))
        if position is not None:
            xy = np.asarray(position, float)
        else:
            xy = np.array([rng.uniform(-hx, hx), rng.uniform(-hy, hy)])
        fp = _footprint(size, xy, yaw, PLACEMENT_MARGIN / 2)
        if np.any(np.abs(fp) > [hx + PLACEMENT_MARGIN / 2, hy + PLACEMENT_MARGIN / 2]):
            continue
        if all(not footprints_overlap(fp, other) for other in taken):
            return xy, yaw
    if position is not None:
        raise ValueError(f"{what}: position {tuple(position)} is off the table or overlaps another object")
    raise ValueError(f"{what}: no free spot on the table")


def _moved(obj: SceneObject, xy: np.ndarray, yaw: float) -> SceneObject:
    """``obj`` standing at table position ``xy`` turned to ``yaw`` (surface points moved with it)."""
    R = rot_z(yaw)
    base_old = obj.center - np.array([0, 0, obj.size[2] / 2])
    base_new = np.array([xy[0], xy[1], base_old[2]])
    rel = R @ obj.rotation.T
    pts = (obj.surface_points - base_old) @ rel.T + base_new
    return dataclasses.replace(obj, center=base_new + [0, 0, obj.size[2] / 2], rotation=R, surface_points=pts)


def _moved_geoms(geoms: Sequence[Geometry], old: SceneObject, new: SceneObject) -> List[Geometry]:
    base_old = old.center - np.array([0, 0, old.size[2] / 2])
    base_new = new.center - np.array([0, 0, new.size[2] / 2])
    rel = new.rotation @ old.rotation.T
    w2l = np.eye(4)
    w2l[:3, :3] = new.rotation.T
    w2l[:3, 3] = -new.rotation.T @ base_new
    out = []
    for g in geoms:
        p = g.part
        v = (p.vertices - base_old) @ rel.T + base_new
        out.append(Geometry(Part(v, p.triangles, p.material, p.smooth), g.instance_id, w2l))
    return out


def _resolve(
    seed: int, layout, events: Sequence[SceneEvent], n_surface_points: int
) -> Tuple[List[SceneObject], List[dict], Dict[int, List[Geometry]]]:
    """Fill in every event's object, position and yaw (in frame order). Returns all objects (layout's,
    then added ones), the resolved events as JSON-ready dicts, and each object's initial geometry."""
    objects = list(layout.objects)
    geoms_by_id: Dict[int, List[Geometry]] = {}
    for g in layout.geoms:
        if g.instance_id:
            geoms_by_id.setdefault(g.instance_id, []).append(g)
    state: Dict[int, Optional[SceneObject]] = {o.instance_id: o for o in objects}  # None: removed
    resolved = []

    def fp(o: SceneObject) -> np.ndarray:
        return _footprint(o.size, o.center[:2], o.yaw, PLACEMENT_MARGIN / 2)

    # a drawn spot keeps clear of every place an object has stood so far (a given one: of the objects there)
    history = [fp(o) for o in objects]
    ordered = sorted(enumerate(events), key=lambda ie: (ie[1].frame, ie[0]))
    for i, ev in ordered:
        rng = np.random.default_rng([seed, 0xE7E47, i])
        try:
            cls_name = _class_of(ev.name)
        except ValueError as exc:
            raise ValueError(f"event '{ev.text()}': {exc}") from None
        by_class = {o.class_name: o.instance_id for o in objects}
        if ev.kind in ("remove", "move"):
            iid = by_class.get(cls_name)
            if iid is None or state[iid] is None:
                raise ValueError(
                    f"event '{ev.text()}': no {cls_name} on the table at frame {ev.frame} "
                    f"(present: {', '.join(sorted(o.class_name for o in state.values() if o is not None))})"
                )
            if ev.kind == "remove":
                state[iid] = None
                resolved.append({"kind": "remove", "name": cls_name, "frame": ev.frame, "instance_id": iid})
                continue
            old = state[iid]
            taken = [fp(o) for k, o in state.items() if o and k != iid] if ev.position else history
            xy, yaw = _spot(rng, old.size, taken, ev.position, ev.yaw_deg, f"event '{ev.text()}'")
            state[iid] = _moved(old, xy, yaw)
            history.append(fp(state[iid]))
        else:
            if cls_name in by_class:
                raise ValueError(f"event '{ev.text()}': the scene already has a {cls_name} (add a class it lacks)")
            cls = CLASS_BY_NAME[cls_name]
            parts, size = centred_parts(cls.build(rng, float(rng.uniform(0.9, 1.1))))
            taken = [fp(o) for o in state.values() if o] if ev.position else history
            xy, yaw = _spot(rng, size, taken, ev.position, ev.yaw_deg, f"event '{ev.text()}'")
            iid = len(objects) + 1
            obj, g = place_object(cls, parts, size, np.array([xy[0], xy[1], 0.0]), yaw, iid, n_surface_points, rng)
            objects.append(obj)
            geoms_by_id[iid] = g
            state[iid] = obj
            history.append(fp(obj))
        o = state[iid]
        resolved.append(
            {
                "kind": ev.kind,
                "name": cls_name,
                "frame": ev.frame,
                "instance_id": iid,
                "center": o.center.tolist(),
                "yaw": o.yaw,
            }
        )
    return objects, resolved, geoms_by_id


# ---------------------------------------------------------------------------- ground truth at a frame
def scene_events(scene: SyntheticScene) -> List[dict]:
    """The scene's resolved events (empty for a static scene), in frame order: dicts with kind, name,
    frame, instance_id, and for move/add the object's new centre (3,) and yaw (radians)."""
    return [dict(e) for e in scene.params.get("events", [])]


def objects_at(scene: SyntheticScene, frame_index: int) -> List[SceneObject]:
    """The objects on the table in frame ``frame_index``, with their pose there (world frame)."""
    by_id: Dict[int, Optional[SceneObject]] = {}
    added = {e["instance_id"] for e in scene_events(scene) if e["kind"] == "add"}
    for o in scene.objects:
        by_id[o.instance_id] = None if o.instance_id in added else o
    originals = {o.instance_id: o for o in scene.objects}
    for e in scene_events(scene):
        if e["frame"] > frame_index:
            break
        iid = e["instance_id"]
        if e["kind"] == "remove":
            by_id[iid] = None
        else:
            src = originals[iid]
            center = np.asarray(e["center"], float)
            by_id[iid] = src if e["kind"] == "add" else _moved(src, center[:2], float(e["yaw"]))
    return [o for o in by_id.values() if o is not None]


def changed_objects(scene: SyntheticScene) -> Dict[str, Tuple[Optional[SceneObject], Optional[SceneObject]]]:
    """Per object an event touches: (its state before its first event, its state after the last
    one); None where it is absent."""
    out: Dict[str, Tuple[Optional[SceneObject], Optional[SceneObject]]] = {}
    for e in scene_events(scene):
        before = {o.instance_id: o for o in objects_at(scene, e["frame"] - 1)}
        first = out.get(e["name"], (before.get(e["instance_id"]), None))[0]
        after = {o.instance_id: o for o in objects_at(scene, len(scene.frames))}
        out[e["name"]] = (first, after.get(e["instance_id"]))
    return out


# ---------------------------------------------------------------------------- generation
def make_changing_scene(
    seed: int = 0,
    events: Sequence[SceneEvent | str] = (),
    n_objects: Optional[int] = None,
    width: int = 160,
    height: int = 120,
    n_frames: int = 60,
    cycles: int = 1,
    hfov_deg: float = 60.0,
    fps: float = 10.0,
    start_stamp: float = 100.0,
    n_surface_points: int = 2048,
    shadows: bool = True,
    frame_id: str = "camera_optical_frame",
    nthreads: int = 0,
) -> SyntheticScene:
    """A synthetic scene (as :func:`~lerf_ros.data.synthetic.scene.make_scene` with the same
    arguments, whose layout and first pass it shares) in which ``events`` happen.

    Args:
        events: :class:`SceneEvent` objects or their text form (module doc); frames are indices into
            the whole sequence (``n_frames * cycles`` frames).
        n_frames: frames of one pass of the trajectory.
        cycles: passes of the trajectory (>= 1): the camera goes round again, so the places that
            changed are seen after the event.
        the rest: as ``make_scene``.
    Returns:
        the scene; ``params['events']`` holds the resolved events, ``params['cycles']`` the passes and
        ``params['n_frames']`` the total frame count. ValueError for an event that cannot happen (an
        object that is not there, an added class already present, a frame past the end, a position
        off the table or on another object).
    """
    if width < 8 or height < 8:
        raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
    if n_frames < 1 or cycles < 1:
        raise ValueError(f"n_frames and cycles must be >= 1, got {n_frames}, {cycles}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    evs = [e if isinstance(e, SceneEvent) else parse_event(e) for e in events]
    total = n_frames * cycles
    for e in evs:
        if e.frame >= total:
            raise ValueError(f"event '{e.text()}': frame {e.frame} is past the last frame ({total - 1})")
    t0 = time.perf_counter()
    layout = build_layout(int(seed), n_objects, n_surface_points)
    objects, resolved, geoms_by_id = _resolve(int(seed), layout, evs, n_surface_points)
    c2ws, segments = trajectory(int(seed), n_frames, layout.objects)
    c2ws, segments = np.concatenate([c2ws] * cycles), segments * cycles
    K = intrinsics_from_fov(width, height, hfov_deg)
    env = [g for g in layout.geoms if g.instance_id == 0]
    t1 = time.perf_counter()
    starts = sorted({0, *(e["frame"] for e in resolved)}) + [total]
    rgb = np.zeros((total, height, width, 3), np.uint8)
    depth = np.zeros((total, height, width), np.float32)
    inst = np.zeros((total, height, width), np.int32)
    first_renderer = None
    originals = {o.instance_id: o for o in objects}
    for a, b in zip(starts[:-1], starts[1:]):
        geoms = list(env)
        for o in objects_at_state(objects, resolved, a):
            g = geoms_by_id[o.instance_id]
            orig = originals[o.instance_id]
            geoms += g if o is orig else _moved_geoms(g, orig, o)
        renderer = Renderer(geoms, nthreads=nthreads)
        first_renderer = first_renderer or renderer
        rgb[a:b], depth[a:b], inst[a:b] = renderer.render(K, c2ws[a:b], width, height, shadows)
    t2 = time.perf_counter()
    frames = rendered_frames(rgb, depth, inst, K, c2ws, start_stamp, fps, frame_id, segments)
    params = {
        "seed": int(seed),
        "n_objects": len(layout.objects),
        "width": int(width),
        "height": int(height),
        "n_frames": int(total),
        "hfov_deg": float(hfov_deg),
        "fps": float(fps),
        "start_stamp": float(start_stamp),
        "n_surface_points": int(n_surface_points),
        "shadows": bool(shadows),
        "cycles": int(cycles),
        "events": resolved,
    }
    scene = SyntheticScene(
        frames,
        objects,
        VOCABULARY,
        params,
        timings={"layout_s": t1 - t0, "render_s": t2 - t1},
        _renderer=first_renderer if not resolved or resolved[0]["frame"] > 0 else None,
    )
    return scene


def objects_at_state(objects: Sequence[SceneObject], resolved: Sequence[dict], frame_index: int) -> List[SceneObject]:
    """:func:`objects_at` for an object list and resolved events (no scene needed)."""
    shell = SyntheticScene([], list(objects), VOCABULARY, {"events": list(resolved)})
    return objects_at(shell, frame_index)
