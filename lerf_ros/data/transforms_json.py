"""nerfstudio / instant-ngp ``transforms.json`` folders: reader and writer.

The format (one JSON file next to the images):

- intrinsics globally or per frame: ``fl_x``/``fl_y`` (or ``camera_angle_x``/``camera_angle_y`` in
  radians, the original NeRF form), ``cx``/``cy`` (default: image centre), ``w``/``h`` (default:
  the image size); lens distortion ``k1 k2 k3 k4 p1 p2`` with ``camera_model`` ``OPENCV`` (the
  default; radial ``k1 k2 k3`` and tangential ``p1 p2``: OpenCV's ``plumb_bob``) or
  ``OPENCV_FISHEYE`` (``k1..k4``: the ``equidistant`` model), modelled exactly: the images are used
  as they are and training rays go through the inverse of the distortion. ``PINHOLE`` and
  ``SIMPLE_PINHOLE`` take no coefficients;
- ``frames``: list of ``{"file_path", "transform_matrix"}`` where ``transform_matrix`` is the 4x4
  camera-to-world pose in the OpenGL/Blender camera convention (x right, y up, camera looks
  along -z); optional ``depth_file_path`` (16-bit PNG scaled by ``depth_unit_scale_factor``,
  default 0.001 = millimetres, or ``.npy`` metres) and ``timestamp`` (seconds).

Frames whose image file is missing (common in shared datasets) are skipped by default, with one
warning that counts them and names the first few (``missing_images="skip"``); ``"error"`` refuses
the folder with the list instead. Paths are relative to the folder. Poses are converted to this
package's OpenCV camera convention by flipping the camera's y and z axes:
``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``. The pixel-centre convention (centres at u + 0.5,
``cx = w / 2`` for a centred principal point) is the same in both.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.geometry.camera import Distortion, DistortionError

_log = logging.getLogger(__name__)

__all__ = [
    "TransformsFormatError",
    "OPENGL_TO_OPENCV",
    "read_transforms",
    "write_transforms",
    "TransformsSource",
    "TRANSFORMS_FILE",
]

TRANSFORMS_FILE = "transforms.json"
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiply an OpenGL camera-to-world pose by this to get the OpenCV one (and back: it is its
own inverse)."""
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_INTRINSIC_KEYS = (
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "w",
    "h",
    "camera_angle_x",
    "camera_angle_y",
    "camera_model",
) + _DISTORTION_KEYS
CAMERA_MODELS = ("OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE")
"""``camera_model`` values this reader understands (absent: ``OPENCV``)."""
DISTORTION_CHOICES = ("model", "ignore")
MISSING_IMAGE_CHOICES = ("skip", "error")
IGNORED_DISTORTION_WARN_PX = 0.5
"""With ``distortion="ignore"``, a warning is logged once when ignoring the distortion moves some
pixel's ray by more than this many pixels."""


class TransformsFormatError(ValueError):
    """A transforms.json folder that cannot be read; the message names the file and the problem."""


def _resolve_json(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    if not p.exists():
        raise TransformsFormatError(f"{p}: no such file or folder")
    if p.is_dir():
        p = p / TRANSFORMS_FILE
    if not p.is_file():
        raise TransformsFormatError(f"{p}: no such file (expected a folder holding {TRANSFORMS_FILE})")
    return p


def _find_image(folder: Path, rel: str) -> Optional[Path]:
    p = folder / rel
    if p.is_file():
        return p
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):  # original NeRF files omit the extension
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return None


def _image_path(folder: Path, rel: str, jpath: Path, i: int) -> Path:
    p = _find_image(folder, rel)
    if p is None:
        raise TransformsFormatError(f"{jpath}: frame {i}: image '{rel}' not found (looked for {folder / rel})")
    return p


def _number(meta: dict, key: str, jpath: Path, i: int) -> Optional[float]:
    v = meta.get(key)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TransformsFormatError(f"{jpath}: frame {i}: '{key}' is not a number: {meta.get(key)!r}") from None
    if not math.isfinite(v):
        raise TransformsFormatError(f"{jpath}: frame {i}: '{key}' is not finite")
    return v


def _intrinsics(meta: dict, w: int, h: int, jpath: Path, i: int) -> np.ndarray:
    def num(key):
        return _number(meta, key, jpath, i)

    fx, fy = num("fl_x"), num("fl_y")
    ax, ay = num("camera_angle_x"), num("camera_angle_y")
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None and fy is None:
        raise TransformsFormatError(f"{jpath}: frame {i}: no focal length (need fl_x/fl_y or camera_angle_x)")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if fx <= 0 or fy <= 0:
        raise TransformsFormatError(f"{jpath}: frame {i}: focal lengths must be positive (fl_x={fx}, fl_y={fy})")
    cx = num("cx")
    cy = num("cy")
    return np.array([[fx, 0.0, w / 2 if cx is None else cx], [0.0, fy, h / 2 if cy is None else cy], [0.0, 0.0, 1.0]])


def transforms_distortion(meta: dict, jpath: Path, i: int) -> Optional[Distortion]:
    """The lens distortion a frame's (merged global and per-frame) entries describe, None when all
    coefficients are zero. Raises TransformsFormatError for an unknown ``camera_model``, NaN
    coefficients, or coefficients the model does not have (naming them)."""
    model = str(meta.get("camera_model", "OPENCV"))
    if model not in CAMERA_MODELS:
        raise TransformsFormatError(
            f"{jpath}: frame {i}: camera_model '{model}' is not supported (supported: {', '.join(CAMERA_MODELS)})"
        )
    c = {}
    for k in _DISTORTION_KEYS:
        v = meta.get(k)
        if v is None:
            c[k] = 0.0
            continue
        try:
            c[k] = float(v)
        except (TypeError, ValueError):
            raise TransformsFormatError(f"{jpath}: frame {i}: '{k}' is not a number: {v!r}") from None
    nonzero = {k: v for k, v in c.items() if v != 0.0}
    if not nonzero:
        return None
    if model in ("PINHOLE", "SIMPLE_PINHOLE"):
        unused = sorted(nonzero)
    elif model == "OPENCV_FISHEYE":
        unused = sorted(k for k in nonzero if k in ("p1", "p2"))
    else:  # OPENCV: k4 would be OpenCV's rational denominator or nerfstudio's r^8 term: ambiguous
        unused = sorted(k for k in nonzero if k == "k4")
    if unused:
        raise TransformsFormatError(
            f"{jpath}: frame {i}: camera_model '{model}' has no coefficient {', '.join(unused)} "
            f"(non-zero here: {nonzero})"
        )
    try:
        if model == "OPENCV_FISHEYE":
            return Distortion.create("equidistant", [c["k1"], c["k2"], c["k3"], c["k4"]])
        return Distortion.create("plumb_bob", [c["k1"], c["k2"], c["p1"], c["p2"], c["k3"]])
    except DistortionError as e:
        raise TransformsFormatError(f"{jpath}: frame {i}: {e}") from None


def _load_rgb(path: Path, background: Sequence[float]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            a = np.asarray(im.convert("RGBA"), np.float32) / 255.0
            rgb = a[..., :3] * a[..., 3:] + np.asarray(background, np.float32) * (1 - a[..., 3:])
            return np.round(rgb * 255).astype(np.uint8)
        return np.asarray(im.convert("RGB"))


def _load_depth(path: Path, scale: float, jpath: Path, i: int) -> np.ndarray:
    if not path.is_file():
        raise TransformsFormatError(f"{jpath}: frame {i}: depth file '{path}' not found")
    if path.suffix == ".npy":
        d = np.load(path).astype(np.float32)
    else:
        from PIL import Image

        with Image.open(path) as im:
            d = np.asarray(im)
        if d.ndim != 2:
            raise TransformsFormatError(
                f"{jpath}: frame {i}: depth image '{path}' must be single-channel, got shape {d.shape}"
            )
        d = d.astype(np.float32)
    d = d * np.float32(scale)
    d[~np.isfinite(d)] = 0.0
    return d


def _default_depth_scale(path: Path) -> float:
    return 1.0 if path.suffix == ".npy" else 1e-3


def _iter_frames(
    path: Union[str, os.PathLike],
    depth_unit_scale: Optional[float],
    frame_interval: float,
    frame_id: str,
    distortion: str,
    background: Sequence[float],
    skip: frozenset = frozenset(),
    warned: Optional[list] = None,
) -> Iterator[Frame]:
    jpath = _resolve_json(path)
    folder = jpath.parent
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TransformsFormatError(f"{jpath}: cannot parse JSON: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise TransformsFormatError(f"{jpath}: no 'frames' list")
    if not meta["frames"]:
        raise TransformsFormatError(f"{jpath}: 'frames' is empty")
    scale_json = meta.get("depth_unit_scale_factor")
    glob = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    for i, fr in enumerate(meta["frames"]):
        if i in skip:
            continue
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise TransformsFormatError(f"{jpath}: frame {i}: needs 'file_path' and 'transform_matrix'")
        try:
            c2w_gl = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise TransformsFormatError(f"{jpath}: frame {i}: transform_matrix is not a numeric matrix") from None
        if c2w_gl.shape == (3, 4):
            c2w_gl = np.vstack([c2w_gl, [0.0, 0.0, 0.0, 1.0]])
        if c2w_gl.shape != (4, 4):
            raise TransformsFormatError(f"{jpath}: frame {i}: transform_matrix must be 4x4, got shape {c2w_gl.shape}")
        img_path = _image_path(folder, str(fr["file_path"]), jpath, i)
        rgb = _load_rgb(img_path, background)
        h, w = rgb.shape[:2]
        fmeta = {**glob, **{k: fr[k] for k in _INTRINSIC_KEYS if k in fr}}
        for key, actual in (("w", w), ("h", h)):
            if key in fmeta and int(fmeta[key]) != actual:
                raise TransformsFormatError(
                    f"{jpath}: frame {i}: '{key}' is {fmeta[key]} but image '{img_path.name}' is {w}x{h}"
                )
        K = _intrinsics(fmeta, w, h, jpath, i)
        dist = transforms_distortion(fmeta, jpath, i)
        if dist is not None and distortion == "ignore":
            px = dist.max_displacement_px(K, w, h)
            if px > IGNORED_DISTORTION_WARN_PX and warned is not None and not warned:
                warned.append(True)
                _log.warning(
                    "%s: lens distortion %s %s moves rays by up to %.1f px and is ignored (distortion='ignore'); "
                    "drop that option to model it",
                    jpath,
                    dist.model,
                    dist.as_dict(),
                    px,
                )
            dist = None
        depth = None
        if fr.get("depth_file_path"):
            dpath = folder / str(fr["depth_file_path"])
            scale = (
                depth_unit_scale
                if depth_unit_scale is not None
                else (float(scale_json) if scale_json is not None else _default_depth_scale(dpath))
            )
            depth = _load_depth(dpath, scale, jpath, i)
            if depth.shape != (h, w):
                raise TransformsFormatError(
                    f"{jpath}: frame {i}: depth '{dpath.name}' is {depth.shape[1]}x{depth.shape[0]}, image is {w}x{h}"
                )
        stamp = float(fr.get("timestamp", fr.get("time", i * frame_interval)))
        frame = Frame(
            rgb=rgb,
            K=K,
            c2w=c2w_gl @ OPENGL_TO_OPENCV,
            stamp=stamp,
            frame_id=str(fr.get("frame_id", frame_id)),
            depth=depth,
            index=i,
            meta={"source": "transforms.json", "file_path": str(fr["file_path"])},
            distortion=dist,
        )
        try:
            frame.validate()
        except FrameError as e:
            raise TransformsFormatError(f"{jpath}: frame {i}: {e}") from e
        yield frame


class TransformsSource:
    """A transforms.json folder as an iterable of :class:`Frame` (images are read lazily, on
    iteration). The JSON is checked when the source is made; per-frame problems raise
    :class:`TransformsFormatError` naming the file and frame when reached.

    Args:
        path: the folder, or the ``transforms.json`` file itself.
        depth_unit_scale: metres per depth unit; default: the file's ``depth_unit_scale_factor``,
            else 0.001 for PNG depth, 1.0 for ``.npy``.
        frame_interval: seconds between frames when the file has no ``timestamp``.
        frame_id: the frames' ``frame_id`` when the file names none.
        distortion: 'model' (default): frames carry their lens distortion and rays go through its
            inverse; 'ignore': treat the images as pinhole (a warning is logged once when that
            moves rays by more than ``IGNORED_DISTORTION_WARN_PX`` pixels).
        background: RGB in [0, 1] that transparent pixels are composited onto.
        missing_images: 'skip' (default): frames whose image file is missing are left out, with
            one warning that counts them (also in ``warnings`` and ``missing``); 'error': refuse the
            folder with the list of missing files.
        allow_distortion: the older spelling of ``distortion='ignore'``.

    Attributes:
        missing: (index, file_path) of the frames left out because their image file is missing.
        warnings: warnings raised when the source was opened (one line each).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        depth_unit_scale: Optional[float] = None,
        frame_interval: float = 0.1,
        frame_id: str = "camera",
        distortion: str = "model",
        background: Sequence[float] = (1.0, 1.0, 1.0),
        missing_images: str = "skip",
        allow_distortion: bool = False,
    ):
        if distortion not in DISTORTION_CHOICES:
            raise ValueError(f"distortion must be one of {', '.join(DISTORTION_CHOICES)}, got {distortion!r}")
        if missing_images not in MISSING_IMAGE_CHOICES:
            raise ValueError(
                f"missing_images must be one of {', '.join(MISSING_IMAGE_CHOICES)}, got {missing_images!r}"
            )
        if allow_distortion:
            distortion = "ignore"
        self.json_path = _resolve_json(path)
        self.path = self.json_path.parent
        try:
            meta = json.loads(self.json_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TransformsFormatError(f"{self.json_path}: cannot parse JSON: {e}") from e
        if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
            raise TransformsFormatError(f"{self.json_path}: no non-empty 'frames' list")
        self.missing: List[tuple] = [
            (i, str(fr["file_path"]))
            for i, fr in enumerate(meta["frames"])
            if isinstance(fr, dict) and "file_path" in fr and _find_image(self.path, str(fr["file_path"])) is None
        ]
        self.warnings: List[str] = []
        n_all = len(meta["frames"])
        if self.missing:
            names = ", ".join(p for _, p in self.missing[:10]) + (", ..." if len(self.missing) > 10 else "")
            if missing_images == "error" or len(self.missing) == n_all:
                raise TransformsFormatError(
                    f"{self.json_path}: {len(self.missing)} of {n_all} frames have no image file: {names}"
                    + ("" if len(self.missing) == n_all else " (missing_images='skip' leaves them out)")
                )
            line = (
                f"{self.json_path}: skipping {len(self.missing)} of {n_all} frames whose image file is missing: "
                f"{names} (missing_images='error' refuses the folder instead)"
            )
            self.warnings.append(line)
            _log.warning("%s", line)
        self._warned: list = []
        self._args = (depth_unit_scale, frame_interval, frame_id, distortion, background)
        self._skip = frozenset(i for i, _ in self.missing)
        self._n = n_all - len(self.missing)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Frame]:
        return _iter_frames(self.json_path, *self._args, skip=self._skip, warned=self._warned)


def read_transforms(path: Union[str, os.PathLike], **kwargs) -> List[Frame]:
    """All frames of a transforms.json folder (see :class:`TransformsSource` for the options)."""
    return list(TransformsSource(path, **kwargs))


def write_transforms(
    folder: Union[str, os.PathLike],
    frames: Sequence[Frame],
    depth: bool = True,
    depth_format: str = "png",
    image_dir: str = "images",
    depth_dir: str = "depth",
) -> Path:
    """Write frames as a nerfstudio-style folder: ``images/NNNNN.png``, optional depth (16-bit PNG
    in millimetres with ``depth_unit_scale_factor`` 0.001, or ``.npy`` float metres) and
    ``transforms.json`` (OpenGL poses, per-frame intrinsics when they differ between frames).
    Returns the JSON path."""
    from PIL import Image

    if depth_format not in ("png", "npy"):
        raise ValueError(f"depth_format must be 'png' or 'npy', got {depth_format!r}")
    if not frames:
        raise ValueError("no frames to write")
    folder = Path(folder)
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    Ks = np.stack([f.K for f in frames])
    sizes = {(f.width, f.height) for f in frames}
    shared = bool(np.allclose(Ks, Ks[0]) and len(sizes) == 1 and len({f.distortion for f in frames}) == 1)

    def intr(f: Frame) -> dict:
        out = {
            "fl_x": float(f.K[0, 0]),
            "fl_y": float(f.K[1, 1]),
            "cx": float(f.K[0, 2]),
            "cy": float(f.K[1, 2]),
            "w": f.width,
            "h": f.height,
            "camera_model": "OPENCV",
        }
        d = f.distortion
        if d is not None and not d.is_identity:
            c = d.as_dict()
            if d.model == "plumb_bob":
                out.update({k: c[k] for k in ("k1", "k2", "k3", "p1", "p2")})
            elif d.model == "equidistant":
                out.update(camera_model="OPENCV_FISHEYE", **c)
            else:
                raise ValueError(f"frame {f.index}: distortion model '{d.model}' has no transforms.json form")
        return out

    doc: dict = {"camera_model": "OPENCV"}
    if shared:
        doc.update(intr(frames[0]))
    write_depth = depth and any(f.depth is not None for f in frames)
    if write_depth:
        (folder / depth_dir).mkdir(parents=True, exist_ok=True)
        if depth_format == "png":
            doc["depth_unit_scale_factor"] = 1e-3
    out = []
    for i, f in enumerate(frames):
        f.validate()
        name = f"{image_dir}/{i:05d}.png"
        Image.fromarray(f.rgb).save(folder / name)
        fr = {
            "file_path": name,
            "transform_matrix": (f.c2w @ OPENGL_TO_OPENCV).tolist(),
            "timestamp": float(f.stamp),
            "frame_id": f.frame_id,
        }
        if not shared:
            fr.update(intr(f))
        if write_depth and f.depth is not None:
            d = np.where(np.isfinite(f.depth) & (f.depth > 0), f.depth, 0.0)
            if depth_format == "png":
                if d.max() > 65.535:
                    raise ValueError(
                        f"frame {i}: depth {d.max():.1f} m does not fit a 16-bit millimetre PNG; use depth_format='npy'"
                    )
                dname = f"{depth_dir}/{i:05d}.png"
                Image.fromarray(np.round(d * 1000).astype(np.uint16)).save(folder / dname)
            else:
                dname = f"{depth_dir}/{i:05d}.npy"
                np.save(folder / dname, d.astype(np.float32))
            fr["depth_file_path"] = dname
        out.append(fr)
    doc["frames"] = out
    jpath = folder / TRANSFORMS_FILE
    tmp = folder / (TRANSFORMS_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(jpath)
    return jpath
