"""Conversions between ROS 2 messages and numpy.

Only message classes are used: nothing here needs ``rclpy.init()`` or a node, so the functions
are usable (and tested) without a ROS graph. Images are decoded by the package's one ROS-free
decoder, ``lerf_ros.geometry.image`` (the rosbag2 reader uses the same). ``tf2_msgs`` is used when
importable and never required (see ``tf_message``).

Conventions (see ``lerf_ros.data.frame``):

- Colour images come out as (H, W, 3) uint8 RGB, depth as (H, W) float32 metres (0 means no
  measurement).
- Intrinsics. ROS ``CameraInfo`` (like OpenCV) puts the centre of pixel ``u`` at the integer
  coordinate ``u``; the package's ``Frame.K`` puts it at ``u + 0.5``. ``camera_info_to_K`` and
  ``K_to_camera_info`` add / remove that half pixel on ``cx`` and ``cy``. Lens distortion
  (``distortion_model`` and ``D``) is read by ``camera_info_distortion``: it acts on normalised
  coordinates, the same in both conventions.
- Poses are 4x4 float64 rigid transforms; quaternions are ``(x, y, z, w)``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, Transform, TransformStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from lerf_ros.geometry.camera import Distortion, DistortionError
from lerf_ros.geometry.image import ENCODINGS, ImageDecodeError, canonical_encoding, decode_image, image_kind
from lerf_ros.geometry.poses import PoseError, check_pose, make_pose, matrix_to_quat, quat_normalize

__all__ = [
    "ConversionError",
    "WRITE_ENCODINGS",
    "image_to_numpy",
    "numpy_to_image",
    "camera_info_to_K",
    "K_to_camera_info",
    "camera_info_distortion",
    "pose_to_matrix",
    "transform_to_matrix",
    "matrix_to_pose",
    "matrix_to_pose_stamped",
    "matrix_to_transform",
    "matrix_to_transform_stamped",
    "tf_message",
    "stamp_to_sec",
    "stamp_to_ns",
    "sec_to_stamp",
    "make_header",
    "points_to_pointcloud2",
    "pointcloud2_to_numpy",
]


class ConversionError(ValueError):
    """A message that cannot be converted; the message names the problem."""


WRITE_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1")
"""Encodings ``numpy_to_image`` writes (``image_to_numpy`` reads more: see ``lerf_ros.geometry.image``)."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---------------------------------------------------------------------------- images
def image_to_numpy(msg: Image) -> Tuple[np.ndarray, str]:
    """Convert a ``sensor_msgs/Image`` to numpy with the package's one decoder
    (``lerf_ros.geometry.image.decode_image``).

    Returns ``(array, kind)``: kind 'rgb' with an (H, W, 3) uint8 RGB array for the colour
    encodings (rgb8, bgr8, rgba8, bgra8, mono8, 8UC1/3/4 and their 16-bit forms); kind 'depth' with
    an (H, W) float32 array in metres for 16UC1 (millimetres on the wire) and 32FC1, where 0 means
    no measurement (non-finite and negative values become 0). Row padding (``step``) and
    ``is_bigendian`` are honoured. The array owns its memory.
    Raises ConversionError for an unknown encoding or inconsistent size/step/data length.
    """
    try:
        return decode_image(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
    except ImageDecodeError as exc:
        raise ConversionError(str(exc)) from None


def numpy_to_image(
    array: np.ndarray,
    encoding: str,
    stamp: Any = None,
    frame_id: str = "",
    big_endian: bool = False,
    row_padding: int = 0,
) -> Image:
    """Build a ``sensor_msgs/Image`` from the canonical arrays ``image_to_numpy`` returns.

    Colour encodings take (H, W, 3) uint8 RGB (or (H, W) uint8 grey for mono8; RGB is converted
    to luma for mono8; alpha is 255). Depth encodings take (H, W) float metres; for 16UC1 an
    (H, W) uint16 array is taken as millimetres as is, and metres are rounded to millimetres with
    non-finite, non-positive and over-range (> 65.535 m) values written as 0 (no measurement).
    ``stamp``: seconds (float), a ``builtin_interfaces/Time`` or None (zero). ``big_endian`` and
    ``row_padding`` (extra bytes per row) exist mostly to exercise subscribers.
    """
    try:
        enc = canonical_encoding(encoding)
    except ImageDecodeError as exc:
        raise ConversionError(str(exc)) from None
    if enc not in WRITE_ENCODINGS:
        raise ConversionError(f"numpy_to_image writes {', '.join(WRITE_ENCODINGS)}; not '{enc}'")
    dtype, ch = ENCODINGS[enc]
    a = np.asarray(array)
    if image_kind(enc) == "rgb":
        if a.dtype != np.uint8:
            raise ConversionError(f"{enc} needs a uint8 array, got {a.dtype}")
        if a.ndim == 2:
            a = a[..., None] if enc == "mono8" else np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (1, 3):
            raise ConversionError(f"{enc} needs an (H, W, 3) RGB or (H, W) grey array, got shape {a.shape}")
        if enc == "mono8":
            if a.shape[2] == 1:
                px = a[..., 0]
            else:
                px = np.clip(np.rint(a.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
        else:
            rgb = a if a.shape[2] == 3 else np.repeat(a, 3, axis=2)
            if enc == "bgr8":
                px = rgb[..., ::-1]
            elif enc in ("rgba8", "bgra8"):
                c = rgb if enc == "rgba8" else rgb[..., ::-1]
                px = np.concatenate([c, np.full(c.shape[:2] + (1,), 255, np.uint8)], axis=2)
            else:
                px = rgb
    else:
        if a.ndim != 2:
            raise ConversionError(f"{enc} needs an (H, W) depth array, got shape {a.shape}")
        if enc == "16UC1" and a.dtype == np.uint16:
            px = a
        elif enc == "16UC1":
            mm = np.rint(a.astype(np.float64) * 1000.0)
            ok = np.isfinite(mm) & (mm > 0) & (mm <= 65535)
            px = np.where(ok, mm, 0).astype(np.uint16)
        else:
            px = a.astype(np.float32)
    h, w = px.shape[:2]
    wire = dtype.newbyteorder(">" if big_endian else "<") if dtype.itemsize > 1 else dtype
    rows = np.ascontiguousarray(px, dtype=wire).view(np.uint8).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, int(row_padding)), np.uint8)], axis=1)
    msg = Image()
    msg.header = make_header(stamp, frame_id)
    msg.height, msg.width = int(h), int(w)
    msg.encoding = enc
    msg.is_bigendian = int(bool(big_endian) and dtype.itemsize > 1)
    msg.step = int(rows.shape[1])
    msg.data = rows.tobytes()
    return msg


# ---------------------------------------------------------------------------- camera info
def camera_info_to_K(msg: CameraInfo, use_projection: bool = False) -> Tuple[np.ndarray, int, int]:
    """Intrinsics of the images that go with this ``CameraInfo``, in the package convention.

    Returns ``(K, width, height)``: K (3, 3) float64 with pixel centres at ``u + 0.5`` (``cx`` and
    ``cy`` are the message's plus 0.5), and the image size. Binning and a region of interest are
    applied (K then describes the binned / cropped image). ``use_projection`` takes the intrinsics
    from ``P`` (right for rectified images) instead of ``K``. The lens distortion of raw images is
    read by ``camera_info_distortion``.

    Raises ConversionError for a zero/negative/non-finite focal length or a zero image size.
    """
    src = np.asarray(msg.p if use_projection else msg.k, dtype=np.float64)
    name = "P" if use_projection else "K"
    if src.size != (12 if use_projection else 9):
        raise ConversionError(f"camera_info {name} has {src.size} values")
    K = src.reshape(3, 4)[:, :3].copy() if use_projection else src.reshape(3, 3).copy()
    if not np.all(np.isfinite(K)):
        raise ConversionError(f"camera_info {name} contains NaN or infinite values")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError(
            f"camera_info has zero or negative focal length (fx={K[0, 0]:g}, fy={K[1, 1]:g}): "
            "the camera is not calibrated"
        )
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ConversionError(f"camera_info has zero image size ({width}x{height})")
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    roi = msg.roi
    if roi.width > 0 and roi.height > 0 and (roi.width, roi.height) != (width, height):
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
        width, height = int(roi.width), int(roi.height)
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if bx > 1 or by > 1:
        K[0, :] /= bx
        K[1, :] /= by
        width, height = width // bx, height // by
    return K, width, height


def camera_info_distortion(msg: CameraInfo) -> Optional[Distortion]:
    """The lens distortion of the raw images that go with this ``CameraInfo``; None when ``D`` is
    empty or all zero (whatever the model is called: there is nothing to model).

    Models: ``plumb_bob`` (k1 k2 t1 t2 k3), ``rational_polynomial`` (k1 k2 t1 t2 k3 k4 k5 k6) and
    ``equidistant`` (fisheye k1 k2 k3 k4). Raises ConversionError naming the model when it is not
    one of these, and for NaN/infinite coefficients or non-zero coefficients the model lacks."""
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if d.size == 0 or (np.all(np.isfinite(d)) and not np.any(d)):
        return None
    model = str(msg.distortion_model)
    try:
        return Distortion.create(model, d.tolist())
    except DistortionError as exc:
        raise ConversionError(f"camera_info: {exc}") from None


def K_to_camera_info(
    K: np.ndarray,
    width: int,
    height: int,
    stamp: Any = None,
    frame_id: str = "",
    distortion: Optional[Distortion] = None,
) -> CameraInfo:
    """A ``CameraInfo`` (identity R, P = [K | 0]) for package-convention intrinsics ``K`` (3, 3)
    and an optional lens ``distortion`` (None: plumb_bob with zero ``D``): the inverse of
    ``camera_info_to_K`` and ``camera_info_distortion``."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError(f"K must be a finite 3x3 matrix with positive focal lengths, got {K.tolist()}")
    k = K.copy()
    k[0, 2] -= 0.5
    k[1, 2] -= 0.5
    msg = CameraInfo()
    msg.header = make_header(stamp, frame_id)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob" if distortion is None else distortion.model
    msg.d = [0.0] * 5 if distortion is None else [float(c) for c in distortion.coeffs]
    msg.k = k.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.concatenate([k, np.zeros((3, 1))], axis=1).reshape(-1).tolist()
    return msg


# ---------------------------------------------------------------------------- poses
def _checked(T: np.ndarray, what: str) -> np.ndarray:
    try:
        check_pose(T)
    except PoseError as exc:
        raise ConversionError(f"{what}: {exc}") from exc
    return T


def _tq_to_matrix(t, q, what: str, quat_tol: float) -> np.ndarray:
    t = np.array([t.x, t.y, t.z], dtype=np.float64)
    q = np.array([q.x, q.y, q.z, q.w], dtype=np.float64)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise ConversionError(f"{what} contains NaN or infinite values")
    try:
        q = quat_normalize(q, tol=quat_tol)
    except ValueError as exc:
        raise ConversionError(f"{what}: {exc}") from exc
    return _checked(make_pose(t, q), what)


def pose_to_matrix(msg: Any, quat_tol: float = 1e-2) -> np.ndarray:
    """4x4 transform from a ``geometry_msgs`` Pose, PoseStamped, PoseWithCovariance(Stamped) or a
    ``nav_msgs/Odometry`` (its ``pose.pose``). Raises ConversionError for NaN values, a zero
    quaternion, or one whose norm is off by more than ``quat_tol``."""
    what = type(msg).__name__
    m = msg
    while not hasattr(m, "position") and hasattr(m, "pose"):
        m = m.pose
    if not (hasattr(m, "position") and hasattr(m, "orientation")):
        raise ConversionError(f"{what} is not a Pose, PoseStamped, PoseWithCovariance(Stamped) or Odometry")
    return _tq_to_matrix(m.position, m.orientation, f"{what} pose", quat_tol)


def transform_to_matrix(msg: Any, quat_tol: float = 1e-2) -> np.ndarray:
    """4x4 transform from a ``geometry_msgs`` Transform or TransformStamped (same checks as
    ``pose_to_matrix``)."""
    what = type(msg).__name__
    m = msg.transform if hasattr(msg, "transform") else msg
    if not (hasattr(m, "translation") and hasattr(m, "rotation")):
        raise ConversionError(f"{what} is not a Transform or TransformStamped")
    return _tq_to_matrix(m.translation, m.rotation, f"{what} transform", quat_tol)


def _matrix_tq(T: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    T = _checked(np.asarray(T, dtype=np.float64), "matrix")
    return T[:3, 3], matrix_to_quat(T[:3, :3])


def matrix_to_pose(T: np.ndarray) -> Pose:
    """``geometry_msgs/Pose`` of a rigid 4x4 transform (ConversionError if it is not rigid)."""
    t, q = _matrix_tq(T)
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in t)
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = (float(v) for v in q)
    return p


def matrix_to_pose_stamped(T: np.ndarray, frame_id: str, stamp: Any = None) -> PoseStamped:
    msg = PoseStamped()
    msg.header = make_header(stamp, frame_id)
    msg.pose = matrix_to_pose(T)
    return msg


def matrix_to_transform(T: np.ndarray) -> Transform:
    """``geometry_msgs/Transform`` of a rigid 4x4 transform (ConversionError if it is not rigid)."""
    t, q = _matrix_tq(T)
    tr = Transform()
    tr.translation.x, tr.translation.y, tr.translation.z = (float(v) for v in t)
    tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w = (float(v) for v in q)
    return tr


def matrix_to_transform_stamped(T: np.ndarray, parent: str, child: str, stamp: Any = None) -> TransformStamped:
    """TF entry ``parent -> child``: ``T`` is the child frame's pose in the parent frame."""
    msg = TransformStamped()
    msg.header = make_header(stamp, parent)
    msg.child_frame_id = child
    msg.transform = matrix_to_transform(T)
    return msg


def tf_message(transforms):
    """A ``tf2_msgs/TFMessage`` holding ``transforms``; None when tf2_msgs is not installed."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return None
    return TFMessage(transforms=list(transforms))


# ---------------------------------------------------------------------------- time
def _time_of(stamp: Any) -> Any:
    s = stamp.header if hasattr(stamp, "header") else stamp
    s = s.stamp if hasattr(s, "stamp") else s
    if not (hasattr(s, "sec") and hasattr(s, "nanosec")):
        raise ConversionError(f"{type(stamp).__name__} is not a Time, a Header or a stamped message")
    return s


def stamp_to_ns(stamp: Any) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/Time``, a Header or a stamped message."""
    s = _time_of(stamp)
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


def stamp_to_sec(stamp: Any) -> float:
    """Seconds (float) of a ``builtin_interfaces/Time``, a Header or a stamped message."""
    s = _time_of(stamp)
    return int(s.sec) + int(s.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """``builtin_interfaces/Time`` of ``t`` seconds (rounded to the nanosecond; must be >= 0)."""
    t = float(t)
    if not math.isfinite(t) or t < 0:
        raise ConversionError(f"cannot make a ROS time stamp from {t} s (needs a finite value >= 0)")
    ns = int(round(t * 1e9))
    sec, nsec = divmod(ns, 1_000_000_000)
    if sec >= 2**31:
        raise ConversionError(f"time {t} s does not fit a ROS time stamp (int32 seconds)")
    return Time(sec=sec, nanosec=nsec)


def make_header(stamp: Any = None, frame_id: str = "") -> Header:
    """A Header from ``stamp`` (seconds, a Time, or None for zero) and ``frame_id``."""
    h = Header()
    if stamp is None:
        h.stamp = Time()
    elif isinstance(stamp, Time):
        h.stamp = stamp
    else:
        h.stamp = sec_to_stamp(float(stamp))
    h.frame_id = str(frame_id)
    return h


# ---------------------------------------------------------------------------- point clouds
_PF_DTYPES = {
    PointField.INT8: np.dtype(np.int8),
    PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16),
    PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32),
    PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32),
    PointField.FLOAT64: np.dtype(np.float64),
}


def points_to_pointcloud2(
    xyz: np.ndarray,
    rgb: Optional[np.ndarray] = None,
    fields: Optional[Mapping[str, np.ndarray]] = None,
    frame_id: str = "",
    stamp: Any = None,
) -> PointCloud2:
    """An unorganised ``sensor_msgs/PointCloud2`` (height 1) with fields x y z [rgb] [extra...].

    Args:
        xyz: (N, 3) positions, stored as float32.
        rgb: optional (N, 3) uint8 colours, packed as RViz and PCL expect: one FLOAT32 field 'rgb'
            whose 4 bytes are the little-endian uint32 ``0x00RRGGBB``.
        fields: optional extra per-point scalars by name (e.g. ``{"relevancy": (N,)}``), float32.
        frame_id, stamp: header (stamp in seconds or a Time).
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ConversionError(f"xyz must be (N, 3), got shape {xyz.shape}")
    n = xyz.shape[0]
    names = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    columns: Dict[str, np.ndarray] = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != (n, 3) or rgb.dtype != np.uint8:
            raise ConversionError(f"rgb must be (N, 3) uint8 with N = {n}, got shape {rgb.shape} dtype {rgb.dtype}")
        c = rgb.astype(np.uint32)
        names.append(("rgb", "<u4"))
        columns["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    for name, values in (fields or {}).items():
        if name in columns:
            raise ConversionError(f"extra field name '{name}' clashes with a standard field")
        v = np.asarray(values)
        if v.shape != (n,):
            raise ConversionError(f"field '{name}' must have shape ({n},), got {v.shape}")
        names.append((name, "<f4"))
        columns[name] = v
    arr = np.empty(n, dtype=np.dtype(names))
    for name, _ in names:
        arr[name] = columns[name]
    msg = PointCloud2()
    msg.header = make_header(stamp, frame_id)
    msg.height, msg.width = 1, int(n)
    msg.fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, (name, _) in enumerate(names)
    ]
    msg.is_bigendian = False
    msg.point_step = 4 * len(names)
    msg.row_step = msg.point_step * n
    msg.is_dense = bool(np.all(np.isfinite(xyz)))
    msg.data = arr.tobytes()
    return msg


def pointcloud2_to_numpy(msg: PointCloud2) -> Dict[str, np.ndarray]:
    """Fields of a ``sensor_msgs/PointCloud2`` as arrays over its ``height * width`` points.

    Every field comes back under its name ((N,) or (N, count)); in addition 'xyz' (N, 3) float32
    when x, y, z exist, and a packed 'rgb' / 'rgba' field is decoded to (N, 3) uint8 under 'rgb'.
    Honours ``point_step``, ``row_step`` padding and ``is_bigendian``.
    """
    h, w = int(msg.height), int(msg.width)
    step, row_step = int(msg.point_step), int(msg.row_step)
    n = h * w
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _PF_DTYPES:
            raise ConversionError(f"point field '{f.name}' has unknown datatype {f.datatype}")
        base = _PF_DTYPES[f.datatype].newbyteorder(order)
        count = max(int(f.count), 1)
        if f.offset + base.itemsize * count > step:
            raise ConversionError(f"point field '{f.name}' ends beyond point_step {step}")
        names.append(f.name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(int(f.offset))
    if row_step < w * step:
        raise ConversionError(f"row_step {row_step} is smaller than width {w} x point_step {step}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != row_step * h:
        raise ConversionError(f"point cloud data has {buf.size} bytes, expected row_step {row_step} x height {h}")
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})
    rows = np.ascontiguousarray(buf.reshape(h, row_step)[:, : w * step]) if n else np.zeros(0, np.uint8)
    pts = rows.reshape(-1).view(dt) if n else np.zeros(0, dtype=dt)
    out: Dict[str, np.ndarray] = {}
    for name in names:
        col = pts[name]
        out[name] = col.astype(col.dtype.newbyteorder("="), copy=True)
    if all(k in out for k in ("x", "y", "z")):
        out["xyz"] = np.stack([out["x"], out["y"], out["z"]], axis=-1).astype(np.float32)
    for key in ("rgb", "rgba"):
        if key in out and out[key].ndim == 1 and out[key].dtype.itemsize == 4:
            packed = out[key].view(np.uint32)
            out["rgb"] = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)
            break
    return out
