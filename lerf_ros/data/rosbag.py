"""rosbag2 files (sqlite3 ``.db3`` and ``.mcap``) as posed frames, without ROS: the ``rosbags`` library.

Reads ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8, and 16-bit variants; decoded by
``lerf_ros.geometry.image``, the decoder the ROS nodes use too) or ``sensor_msgs/CompressedImage``
(JPEG/PNG), ``sensor_msgs/CameraInfo``, optional aligned depth (``16UC1`` / ``mono16``
millimetres or ``32FC1`` metres), and the camera pose either

- from TF (``/tf`` + ``/tf_static``): the chain ``world_frame -> camera frame`` (the image's
  ``header.frame_id``) looked up at the image stamp, each dynamic link interpolated between the
  bracketing samples (linear translation, slerp rotation), or
- from a ``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or ``nav_msgs/Odometry``
  topic matched by stamp the same way (the pose is of ``pose_child_frame``: the camera optical
  frame by default, or e.g. ``base_link`` with ``/tf_static`` supplying the rest of the chain).

A link sample counts when it brackets the stamp with a gap of at most ``max_interpolation_gap``
seconds, or lies within ``tolerance`` seconds of it (then the nearest one is used). Images without a
pose are dropped and counted in :attr:`RosbagSource.stats`.

Conventions: ROS camera optical frames already use the OpenCV axes of :class:`Frame` (x right,
y down, z forward), so poses need no axis change. ROS intrinsics put pixel centres at integer
coordinates, this package at ``u + 0.5``: ``cx``/``cy`` are shifted by +0.5 on reading
(:func:`ros_k_to_frame_k`) and back on writing (:func:`frame_k_to_ros_k`). CameraInfo lens
distortion (``plumb_bob``, ``rational_polynomial``, ``equidistant``) becomes the frames'
``distortion`` (an unknown model is refused, naming it); ``use_projection_matrix=True`` (rectified
images) takes ``P`` and no distortion.

:func:`write_rosbag` writes frames into a bag (used by the tests and the replay tools).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.geometry.camera import Distortion, DistortionError
from lerf_ros.geometry.image import ImageDecodeError, decode_color, decode_depth

# Quaternion and transform helpers live in geometry.poses; two are re-exported here for bag users.
from lerf_ros.geometry.poses import invert_pose, make_pose, matrix_to_quat, quat_slerp, quat_to_matrix

__all__ = [
    "RosbagError",
    "RosbagSource",
    "read_rosbag",
    "write_rosbag",
    "TfBuffer",
    "ros_k_to_frame_k",
    "frame_k_to_ros_k",
    "quat_to_matrix",
    "matrix_to_quat",
    "is_rosbag",
]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MSG = "tf2_msgs/msg/TFMessage"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")


class RosbagError(ValueError):
    """A bag that cannot be turned into frames; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# Small geometry helpers (vectorised)
# --------------------------------------------------------------------------------------------


def ros_k_to_frame_k(K: np.ndarray) -> np.ndarray:
    """ROS/OpenCV intrinsics (pixel centres at integers) -> this package's (centres at u + 0.5)."""
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def frame_k_to_ros_k(K: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ros_k_to_frame_k`."""
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


# --------------------------------------------------------------------------------------------
# A TF buffer for whole bags (vectorised lookups at many stamps)
# --------------------------------------------------------------------------------------------


@dataclass
class _Link:
    parent: str
    stamps: List[float] = field(default_factory=list)
    t: List[Sequence[float]] = field(default_factory=list)
    q: List[Sequence[float]] = field(default_factory=list)
    static: bool = False


class TfBuffer:
    """Transforms of a whole recording: static links and time series of dynamic links.

    ``lookup(target, source, stamps)`` gives ``T_target_source`` (maps points in ``source`` to
    ``target``) at each stamp, for any two frames of the same tree.

    Args:
        tolerance: a dynamic sample within this many seconds of the stamp is used directly.
        max_interpolation_gap: bracketing samples at most this far apart are interpolated.
    """

    def __init__(self, tolerance: float = 0.05, max_interpolation_gap: float = 0.5):
        self.tolerance = float(tolerance)
        self.max_interpolation_gap = float(max_interpolation_gap)
        self.links: Dict[str, _Link] = {}
        self._arrays: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(
        self,
        parent: str,
        child: str,
        stamp: float,
        translation: Sequence[float],
        rotation_xyzw: Sequence[float],
        static: bool = False,
    ) -> None:
        """Record ``T_parent_child`` at ``stamp`` (seconds)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform '{parent}' -> '{child}'")
        link = self.links.get(child)
        if link is None or link.parent != parent or link.static != static:
            link = self.links[child] = _Link(parent, static=static)
        link.stamps.append(float(stamp))
        link.t.append(translation)
        link.q.append(rotation_xyzw)
        self._arrays.pop(child, None)

    def frames(self) -> List[str]:
        names = set(self.links)
        names.update(link.parent for link in self.links.values())
        return sorted(names)

    def _chain(self, frame: str) -> List[str]:
        chain = [frame]
        while chain[-1] in self.links:
            nxt = self.links[chain[-1]].parent
            if nxt in chain:
                raise ValueError(f"TF loop through '{nxt}'")
            chain.append(nxt)
        return chain

    def root(self, frame: str) -> str:
        return self._chain(frame.lstrip("/"))[-1]

    def _link_at(self, child: str, stamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) T_parent_child at the stamps and (N,) validity."""
        link = self.links[child]
        if child not in self._arrays:
            order = np.argsort(link.stamps, kind="stable")
            self._arrays[child] = (
                np.asarray(link.stamps)[order],
                np.asarray(link.t, float)[order],
                np.asarray(link.q, float)[order],
            )
        ts, tr, q = self._arrays[child]
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        n = len(stamps)
        if link.static:
            return np.broadcast_to(make_pose(tr[-1], q[-1]), (n, 4, 4)).copy(), np.ones(n, bool)
        hi = np.clip(np.searchsorted(ts, stamps), 1, max(len(ts) - 1, 1))
        lo = hi - 1
        if len(ts) == 1:
            lo = hi = np.zeros(n, int)
        t0, t1 = ts[lo], ts[hi]
        gap = t1 - t0
        a = np.where(gap > 0, np.clip((stamps - t0) / np.where(gap > 0, gap, 1), 0, 1), 0.0)
        bracketed = (stamps >= t0) & (stamps <= t1) & (gap <= self.max_interpolation_gap)
        nearest = np.minimum(np.abs(stamps - t0), np.abs(stamps - t1)) <= self.tolerance
        valid = bracketed | nearest
        a = np.where(bracketed, a, np.where(np.abs(stamps - t0) <= np.abs(stamps - t1), 0.0, 1.0))
        trans = tr[lo] + a[:, None] * (tr[hi] - tr[lo])
        rot = quat_slerp(q[lo], q[hi], a)
        return make_pose(trans, rot), valid

    def lookup(self, target: str, source: str, stamps: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) ``T_target_source`` at each stamp and (N,) bool: all links available there.
        Raises ValueError when the frames are not connected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        stamps = np.asarray(stamps, np.float64).reshape(-1)
        n = len(stamps)
        ca, cb = self._chain(source), self._chain(target)
        if ca[-1] != cb[-1]:
            raise ValueError(
                f"TF frames '{target}' and '{source}' are not connected "
                f"(roots '{cb[-1]}' and '{ca[-1]}'; known frames: {', '.join(self.frames())})"
            )
        common = next(f for f in ca if f in cb)

        def to_common(chain: List[str]) -> Tuple[np.ndarray, np.ndarray]:
            T = np.tile(np.eye(4), (n, 1, 1))
            ok = np.ones(n, bool)
            for f in chain[: chain.index(common)]:
                L, v = self._link_at(f, stamps)
                T = L @ T
                ok &= v
            return T, ok

        Ts, vs = to_common(ca)
        Tt, vt = to_common(cb)
        return invert_pose(Tt) @ Ts, vs & vt


# --------------------------------------------------------------------------------------------
# Message decoding
# --------------------------------------------------------------------------------------------


def _stamp(header) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


def _ns(stamp: float) -> int:
    return int(round(float(stamp) * 1e9))


def _decode_image(msg, what: str) -> np.ndarray:
    """Image message -> (H, W, 3) uint8 RGB (``lerf_ros.geometry.image.decode_color``)."""
    try:
        return decode_color(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
    except ImageDecodeError as exc:
        raise RosbagError(f"{what}: {exc}") from None


def _decode_compressed(msg, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(np.asarray(msg.data, np.uint8).tobytes())) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt data
        raise RosbagError(f"{what}: cannot decode compressed image (format '{msg.format}'): {e}") from e


def _decode_depth(msg, what: str) -> np.ndarray:
    """Depth image message -> (H, W) float32 metres, 0 = no measurement (``decode_depth``)."""
    try:
        return decode_depth(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
    except ImageDecodeError as exc:
        raise RosbagError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------


def is_rosbag(path: Union[str, os.PathLike]) -> bool:
    """True for a rosbag2 folder (with metadata.yaml) or a .mcap / .db3 file."""
    p = Path(path)
    return (p.is_dir() and (p / "metadata.yaml").is_file()) or (p.is_file() and p.suffix in (".mcap", ".db3"))


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.LATEST)


@dataclass
class _Plan:
    image_topic: str
    info_topic: str
    depth_topic: Optional[str]
    pose_topic: Optional[str]
    image_stamps: np.ndarray
    keep: np.ndarray  # indices of images that get a frame
    poses: np.ndarray  # (len(keep), 4, 4)
    Ks: np.ndarray  # (len(keep), 3, 3)
    depth_index: np.ndarray  # (len(keep),) index into depth_stamps, -1 = none
    depth_stamps: np.ndarray
    camera_frame: str
    world_frame: str
    distortions: List[Optional[Distortion]] = field(default_factory=list)  # per kept image


class RosbagSource:
    """A rosbag2 recording as an iterable of posed :class:`Frame` (decoded lazily, in stamp order).

    Construction reads the small messages (TF, camera info, poses, image headers), resolves the
    topics and matches poses; iteration decodes images. Topics left as None are found by type:
    the one colour Image/CompressedImage topic (name without "depth"), the CameraInfo topic in the
    image's namespace, the one depth Image topic (name with "depth"; "" disables depth), and TF
    when ``/tf`` is recorded, else the one pose/odometry topic.

    Args:
        path: a bag folder (with metadata.yaml) or a ``.mcap`` / ``.db3`` file.
        image_topic, camera_info_topic, depth_topic, pose_topic: topic names (None = find).
        world_frame: the frame poses are expressed in (None: the root of the camera's TF tree or
            the pose topic's ``header.frame_id``).
        camera_frame: the camera's TF frame (None: the image ``header.frame_id``).
        pose_child_frame: with a pose topic, the frame the pose describes (None: the Odometry
            ``child_frame_id``, else the camera frame); /tf_static links it to the camera frame.
        tf_topic, tf_static_topic: TF topic names.
        tolerance: seconds within which a pose/TF sample, depth image or camera info counts as
            matching an image stamp.
        max_interpolation_gap: pose/TF samples at most this far apart are interpolated.
        use_projection_matrix: take intrinsics from CameraInfo ``P`` (rectified images) instead of ``K``.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        image_topic: Optional[str] = None,
        camera_info_topic: Optional[str] = None,
        depth_topic: Optional[str] = None,
        pose_topic: Optional[str] = None,
        world_frame: Optional[str] = None,
        camera_frame: Optional[str] = None,
        pose_child_frame: Optional[str] = None,
        tf_topic: str = "/tf",
        tf_static_topic: str = "/tf_static",
        tolerance: float = 0.05,
        max_interpolation_gap: float = 0.5,
        use_projection_matrix: bool = False,
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise RosbagError(f"{self.path}: no such file or folder")
        if not is_rosbag(self.path):
            raise RosbagError(f"{self.path}: not a rosbag2 (need a folder with metadata.yaml, or a .mcap/.db3 file)")
        self.tolerance = float(tolerance)
        self.use_projection_matrix = bool(use_projection_matrix)
        self.stats: Dict[str, int] = {}
        self.warnings: List[str] = []
        self._store = _typestore()
        self._plan = self._make_plan(
            image_topic,
            camera_info_topic,
            depth_topic,
            pose_topic,
            world_frame,
            camera_frame,
            pose_child_frame,
            tf_topic,
            tf_static_topic,
            max_interpolation_gap,
        )

    # -- helpers -------------------------------------------------------------------------
    def _distortion_of(self, msg, topic: str) -> Optional[Distortion]:
        """The lens distortion of a CameraInfo message (None: pinhole); RosbagError naming an
        unknown model or a NaN coefficient."""
        d = np.asarray(msg.d, float).reshape(-1)
        if d.size == 0 or (np.all(np.isfinite(d)) and not np.any(d)):
            return None
        try:
            return Distortion.create(str(msg.distortion_model), d.tolist())
        except DistortionError as e:
            raise RosbagError(
                f"{self.path}: camera info on '{topic}': {e} (use_projection_matrix=True reads a rectified topic)"
            ) from None

    def _reader(self):
        from rosbags.rosbag2 import Reader

        try:
            r = Reader(self.path)
            r.open()
        except Exception as e:  # rosbags raises its own and OS/sqlite errors for broken bags
            raise RosbagError(f"{self.path}: cannot open rosbag2: {type(e).__name__}: {e}") from e
        return r

    def _deserialize(self, raw, conn):
        try:
            return self._store.deserialize_cdr(raw, conn.msgtype)
        except Exception as e:
            raise RosbagError(f"{self.path}: cannot decode a {conn.msgtype} message on {conn.topic}: {e}") from e

    def _pick(
        self,
        topics: Dict[str, str],
        kinds: Sequence[str],
        given: Optional[str],
        what: str,
        want=lambda t: True,
        prefer=lambda t: 0,
    ) -> Optional[str]:
        if given:
            if given not in topics:
                raise RosbagError(
                    f"{self.path}: {what} topic '{given}' is not in the bag "
                    f"(topics: {', '.join(f'{t} [{m}]' for t, m in sorted(topics.items()))})"
                )
            if topics[given] not in kinds:
                raise RosbagError(
                    f"{self.path}: {what} topic '{given}' has type {topics[given]}, expected {' or '.join(kinds)}"
                )
            return given
        cands = [t for t, m in topics.items() if m in kinds and want(t)]
        if len(cands) > 1:
            best = max(prefer(t) for t in cands)
            cands = [t for t in cands if prefer(t) == best]
        if len(cands) == 1:
            return cands[0]
        if len(cands) > 1:
            raise RosbagError(f"{self.path}: several {what} topics ({', '.join(sorted(cands))}): name one")
        return None

    def _make_plan(
        self,
        image_topic,
        info_topic,
        depth_topic,
        pose_topic,
        world_frame,
        camera_frame,
        pose_child_frame,
        tf_topic,
        tf_static_topic,
        max_gap,
    ) -> _Plan:
        reader = self._reader()
        try:
            topics = {c.topic: c.msgtype for c in reader.connections}
            image_topic = self._pick(
                topics,
                (IMAGE, COMPRESSED),
                image_topic,
                "colour image",
                want=lambda t: "depth" not in t.lower(),
                prefer=lambda t: int(
                    t.endswith(("image_raw", "image_rect_color", "image_color", "image_raw/compressed"))
                ),
            )
            if image_topic is None:
                raise RosbagError(
                    f"{self.path}: no colour image topic (sensor_msgs/Image or CompressedImage); "
                    f"topics: {', '.join(sorted(topics)) or 'none'}"
                )
            ns = image_topic.rsplit("/", 2 if image_topic.endswith("/compressed") else 1)[0]
            info_topic = self._pick(
                topics, (CAMERA_INFO,), info_topic, "camera info", prefer=lambda t: int(t.rsplit("/", 1)[0] == ns)
            )
            if info_topic is None:
                raise RosbagError(f"{self.path}: no sensor_msgs/CameraInfo topic: the intrinsics are unknown")
            if depth_topic == "":
                depth_topic = None
            else:
                depth_topic = self._pick(
                    topics,
                    (IMAGE,),
                    depth_topic,
                    "depth image",
                    want=lambda t: "depth" in t.lower() and t != image_topic,
                    prefer=lambda t: int("aligned" in t or "registered" in t),
                )
            use_tf = False
            if pose_topic:
                self._pick(topics, POSE_TYPES, pose_topic, "pose")
            elif topics.get(tf_topic) == TF_MSG:
                use_tf = True
            else:
                pose_topic = self._pick(topics, POSE_TYPES, None, "pose")
                if pose_topic is None:
                    raise RosbagError(
                        f"{self.path}: no camera pose: neither '{tf_topic}' nor a "
                        "PoseStamped/PoseWithCovarianceStamped/Odometry topic is recorded"
                    )

            tf = TfBuffer(self.tolerance, max_gap)
            img_stamps, img_frames, infos, depth_stamps, depth_sizes, img_sizes = [], [], [], [], [], []
            pose_frames: List[str] = []
            wanted = {image_topic, info_topic, tf_static_topic} | ({tf_topic} if use_tf else set())
            wanted |= {t for t in (depth_topic, pose_topic) if t}
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn, _, raw in reader.messages(connections=conns):
                msg = self._deserialize(raw, conn)
                topic = conn.topic
                if topic == image_topic:
                    img_stamps.append(_stamp(msg.header))
                    img_frames.append(msg.header.frame_id)
                    img_sizes.append((int(getattr(msg, "width", -1)), int(getattr(msg, "height", -1))))
                elif topic == depth_topic:
                    depth_stamps.append(_stamp(msg.header))
                    depth_sizes.append((int(msg.width), int(msg.height)))
                elif topic == info_topic:
                    infos.append(msg)
                elif topic in (tf_topic, tf_static_topic) and conn.msgtype == TF_MSG:
                    for tr in msg.transforms:
                        tt, rr = tr.transform.translation, tr.transform.rotation
                        tf.add(
                            tr.header.frame_id,
                            tr.child_frame_id,
                            _stamp(tr.header),
                            (tt.x, tt.y, tt.z),
                            (rr.x, rr.y, rr.z, rr.w),
                            static=topic == tf_static_topic,
                        )
                elif topic == pose_topic:
                    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
                    child = pose_child_frame or getattr(msg, "child_frame_id", "") or None
                    pose_frames.append(msg.header.frame_id)
                    p, o = pose.position, pose.orientation
                    tf.add(
                        msg.header.frame_id,
                        child or "__camera__",
                        _stamp(msg.header),
                        (p.x, p.y, p.z),
                        (o.x, o.y, o.z, o.w),
                    )
        finally:
            reader.close()

        if not img_stamps:
            raise RosbagError(f"{self.path}: topic '{image_topic}' has no messages")
        if not infos:
            raise RosbagError(f"{self.path}: topic '{info_topic}' has no messages")
        camera_frame = (camera_frame or img_frames[0] or "").lstrip("/")
        if not camera_frame:
            raise RosbagError(f"{self.path}: images on '{image_topic}' have no header.frame_id; pass camera_frame")
        if "__camera__" in tf.links:  # a pose topic describing the camera frame itself
            link = tf.links.pop("__camera__")
            tf.links[camera_frame] = link
        stamps = np.asarray(img_stamps)
        if world_frame is None:
            world_frame = pose_frames[0] if pose_frames else tf.root(camera_frame)
        world_frame = world_frame.lstrip("/")
        try:
            poses, valid = tf.lookup(world_frame, camera_frame, stamps)
        except ValueError as e:
            raise RosbagError(f"{self.path}: {e}") from e

        # camera info: the latest one at or before the image (within tolerance), else the first
        info_stamps = np.asarray([_stamp(m.header) for m in infos])
        order = np.argsort(info_stamps, kind="stable")
        j = np.searchsorted(info_stamps[order], stamps + self.tolerance, side="right") - 1
        info_idx = order[np.clip(j, 0, len(order) - 1)]
        Ks = []
        dists: List[Optional[Distortion]] = []
        for m in infos:
            K = (
                np.asarray(m.p, float).reshape(3, 4)[:, :3]
                if self.use_projection_matrix
                else np.asarray(m.k, float).reshape(3, 3)
            )
            Ks.append(ros_k_to_frame_k(K))
            dists.append(None if self.use_projection_matrix else self._distortion_of(m, info_topic))
        for i in np.unique(info_idx):
            w, h = int(infos[i].width), int(infos[i].height)
            for k in np.nonzero(info_idx == i)[0][:1]:
                iw, ih = img_sizes[k]
                if iw > 0 and (iw, ih) != (w, h):
                    raise RosbagError(
                        f"{self.path}: camera info on '{info_topic}' is for {w}x{h} images, "
                        f"images on '{image_topic}' are {iw}x{ih}"
                    )
        if not np.all(np.isfinite(np.stack(Ks))) or any(K[0, 0] <= 0 or K[1, 1] <= 0 for K in Ks):
            raise RosbagError(f"{self.path}: camera info on '{info_topic}' has an invalid intrinsic matrix")

        # depth: nearest within tolerance
        depth_index = np.full(len(stamps), -1)
        if depth_topic and depth_stamps:
            ds = np.asarray(depth_stamps)
            o = np.argsort(ds, kind="stable")
            hi = np.clip(np.searchsorted(ds[o], stamps), 0, len(ds) - 1)
            lo = np.clip(hi - 1, 0, len(ds) - 1)
            best = np.where(np.abs(ds[o][lo] - stamps) <= np.abs(ds[o][hi] - stamps), lo, hi)
            ok = np.abs(ds[o][best] - stamps) <= self.tolerance
            depth_index = np.where(ok, o[best], -1)
            for k in np.nonzero(ok)[0][:1]:
                if depth_sizes[depth_index[k]] != img_sizes[k] and img_sizes[k][0] > 0:
                    raise RosbagError(
                        f"{self.path}: depth on '{depth_topic}' is {depth_sizes[depth_index[k]]}, colour "
                        f"on '{image_topic}' is {img_sizes[k]}: use a depth topic aligned to the "
                        "colour image"
                    )
        keep = np.nonzero(valid)[0]
        self.stats = {
            "images": len(stamps),
            "frames": int(len(keep)),
            "dropped_no_pose": int((~valid).sum()),
            "with_depth": int((depth_index[keep] >= 0).sum()) if depth_topic else 0,
        }
        if len(keep) == 0:
            span = f"{stamps.min():.3f}..{stamps.max():.3f}"
            raise RosbagError(
                f"{self.path}: no image has a pose ({world_frame} -> {camera_frame}) within "
                f"{self.tolerance} s of its stamp (image stamps {span})"
            )
        return _Plan(
            image_topic,
            info_topic,
            depth_topic,
            pose_topic if not use_tf else None,
            stamps,
            keep,
            poses[keep],
            np.stack(Ks)[info_idx[keep]],
            depth_index[keep],
            np.asarray(depth_stamps),
            camera_frame,
            world_frame,
            [dists[i] for i in info_idx[keep]],
        )

    # -- public ----------------------------------------------------------------------------
    @property
    def topics(self) -> Dict[str, Optional[str]]:
        """The topics in use: image, camera_info, depth, pose (None = TF)."""
        p = self._plan
        return {"image": p.image_topic, "camera_info": p.info_topic, "depth": p.depth_topic, "pose": p.pose_topic}

    @property
    def world_frame(self) -> str:
        return self._plan.world_frame

    @property
    def camera_frame(self) -> str:
        return self._plan.camera_frame

    def __len__(self) -> int:
        return len(self._plan.keep)

    def __iter__(self) -> Iterator[Frame]:
        """Frames in image order. Depth images are held only until their colour image is emitted."""
        p = self._plan
        # messages are recognised by header stamp (robust to the storage's order of equal times)
        image_slots: Dict[int, List[int]] = {}
        for slot, k in enumerate(p.keep):
            image_slots.setdefault(_ns(p.image_stamps[k]), []).append(slot)
        depth_slots: Dict[int, List[int]] = {}
        for slot, d in enumerate(p.depth_index):
            if d >= 0:
                depth_slots.setdefault(_ns(p.depth_stamps[d]), []).append(slot)
        reader = self._reader()
        try:
            conns = [c for c in reader.connections if c.topic in (p.image_topic, p.depth_topic)]
            rgb_ready: Dict[int, np.ndarray] = {}
            depth_ready: Dict[int, np.ndarray] = {}
            nxt = 0
            for conn, _, raw in reader.messages(connections=conns):
                msg = self._deserialize(raw, conn)
                key = _ns(_stamp(msg.header))
                if conn.topic == p.image_topic:
                    slots = image_slots.get(key)
                    if slots:
                        slot = slots.pop(0)
                        what = f"{self.path}: {p.image_topic} image {p.keep[slot]}"
                        rgb_ready[slot] = (
                            _decode_compressed(msg, what) if conn.msgtype == COMPRESSED else _decode_image(msg, what)
                        )
                elif depth_slots.get(key):
                    slots = depth_slots.pop(key)
                    d = _decode_depth(msg, f"{self.path}: {p.depth_topic} image at {key * 1e-9:.6f} s")
                    for slot in slots:
                        depth_ready[slot] = d
                while nxt < len(p.keep) and nxt in rgb_ready and (p.depth_index[nxt] < 0 or nxt in depth_ready):
                    yield self._frame(nxt, rgb_ready.pop(nxt), depth_ready.pop(nxt, None))
                    nxt += 1
            while nxt < len(p.keep) and nxt in rgb_ready:  # depth that never came
                yield self._frame(nxt, rgb_ready.pop(nxt), depth_ready.pop(nxt, None))
                nxt += 1
        finally:
            reader.close()

    def _frame(self, slot: int, rgb: np.ndarray, depth: Optional[np.ndarray]) -> Frame:
        p = self._plan
        k = int(p.keep[slot])
        f = Frame(
            rgb=rgb,
            K=p.Ks[slot].copy(),
            c2w=p.poses[slot].copy(),
            stamp=float(p.image_stamps[k]),
            frame_id=p.camera_frame,
            depth=depth,
            index=k,
            meta={"source": "rosbag2", "bag": str(self.path), "topic": p.image_topic},
            distortion=p.distortions[slot] if p.distortions else None,
        )
        try:
            return f.validate()
        except FrameError as e:
            raise RosbagError(f"{self.path}: image {k} on {p.image_topic}: {e}") from e


def read_rosbag(path: Union[str, os.PathLike], **kwargs) -> List[Frame]:
    """All posed frames of a bag (see :class:`RosbagSource` for the options)."""
    return list(RosbagSource(path, **kwargs))


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------

DEFAULT_MOUNT = np.array([[0.0, 0.0, 1.0, 0.10], [-1.0, 0.0, 0.0, 0.02], [0.0, -1.0, 0.0, 0.30], [0, 0, 0, 1.0]])
"""A camera optical frame on a robot body (x forward, z up): 0.1 m ahead, 0.3 m up, looking ahead."""


def write_rosbag(
    path: Union[str, os.PathLike],
    frames: Sequence[Frame],
    storage: str = "sqlite3",
    image_topic: str = "/camera/color/image_raw",
    camera_info_topic: str = "/camera/color/camera_info",
    depth_topic: Optional[str] = "/camera/aligned_depth_to_color/image_raw",
    pose: str = "tf",
    pose_topic: str = "/camera/pose",
    world_frame: str = "map",
    base_frame: str = "base_link",
    camera_frame: Optional[str] = None,
    encoding: str = "rgb8",
    depth_encoding: str = "16UC1",
    base_to_camera: Optional[np.ndarray] = None,
    tf_offsets: Sequence[float] = (0.0,),
    pose_every: int = 1,
) -> Path:
    """Write frames into a new rosbag2 at ``path`` (a folder, created).

    Args:
        storage: 'sqlite3' or 'mcap'.
        encoding: colour encoding: rgb8, bgr8, rgba8, bgra8 or mono8 (mono8 keeps the green channel).
        depth_topic, depth_encoding: depth as '16UC1' (mm) or '32FC1' (m); None writes no depth.
        pose: 'tf' (``/tf`` world -> base_frame per frame plus ``/tf_static`` base_frame -> camera),
            'pose' (PoseStamped of the camera frame on ``pose_topic``), 'odometry' (Odometry with
            ``child_frame_id`` = camera frame) or 'none'.
        base_to_camera: (4, 4) static camera mount for 'tf' (default :data:`DEFAULT_MOUNT`).
        tf_offsets: with 'tf', world -> base samples are written at each frame's stamp plus each of
            these offsets (seconds), interpolated between frames (tests exercise TF interpolation).
        camera_frame: header.frame_id of the images (default: the frames' frame_id).
        pose_every: write the pose (TF or topic) of every n-th frame only (a sparse pose stream).
    Returns:
        the bag folder.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise ValueError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
    if pose not in ("tf", "pose", "odometry", "none"):
        raise ValueError(f"pose must be 'tf', 'pose', 'odometry' or 'none', got {pose!r}")
    if encoding not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        raise ValueError(f"unsupported encoding {encoding!r}")
    if depth_encoding not in ("16UC1", "32FC1"):
        raise ValueError(f"unsupported depth encoding {depth_encoding!r}")
    if not frames:
        raise ValueError("no frames to write")
    if pose_every < 1:
        raise ValueError(f"pose_every must be >= 1, got {pose_every}")
    ts = _typestore()
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    V3, Q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]

    def header(stamp: float, frame: str):
        sec = int(np.floor(stamp))
        ns = int(round((stamp - sec) * 1e9))
        if ns >= 1_000_000_000:
            sec, ns = sec + 1, ns - 1_000_000_000
        return Header(stamp=Time(sec=sec, nanosec=ns), frame_id=frame)

    def tstamped(stamp, parent, child, M):
        q = matrix_to_quat(M[:3, :3])
        return T["geometry_msgs/msg/TransformStamped"](
            header=header(stamp, parent),
            child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=V3(x=M[0, 3], y=M[1, 3], z=M[2, 3]), rotation=Q(x=q[0], y=q[1], z=q[2], w=q[3])
            ),
        )

    cam = camera_frame or frames[0].frame_id
    mount = DEFAULT_MOUNT if base_to_camera is None else np.asarray(base_to_camera, float)
    stamps = np.array([f.stamp for f in frames])
    if np.any(np.diff(stamps) <= 0):
        raise ValueError("frame stamps must increase strictly")
    bag = Path(path)
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=plugins[storage]) as w:
        c_img = w.add_connection(image_topic, IMAGE, typestore=ts)
        c_info = w.add_connection(camera_info_topic, CAMERA_INFO, typestore=ts)
        c_depth = (
            w.add_connection(depth_topic, IMAGE, typestore=ts)
            if depth_topic and any(f.depth is not None for f in frames)
            else None
        )
        msgs: List[Tuple[int, object, object, str]] = []  # (time ns, connection, message, type)
        if pose == "tf":
            c_tf = w.add_connection("/tf", TF_MSG, typestore=ts)
            c_static = w.add_connection("/tf_static", TF_MSG, typestore=ts)
            msgs.append(
                (
                    _ns(stamps[0]) - 1,
                    c_static,
                    T[TF_MSG](transforms=[tstamped(stamps[0], base_frame, cam, mount)]),
                    TF_MSG,
                )
            )
            world_base = np.stack([f.c2w for f in frames]) @ invert_pose(mount)
            tq, tt = matrix_to_quat(world_base[:, :3, :3]), world_base[:, :3, 3]
            for off in tf_offsets:
                s = np.clip(stamps + off, stamps[0], stamps[-1])
                hi = np.clip(np.searchsorted(stamps, s), 1, max(len(stamps) - 1, 1))
                lo = hi - 1 if len(stamps) > 1 else hi * 0
                gap = np.where(stamps[hi] > stamps[lo], stamps[hi] - stamps[lo], 1.0)
                a = np.clip((s - stamps[lo]) / gap, 0, 1)
                Ms = make_pose(tt[lo] + a[:, None] * (tt[hi] - tt[lo]), quat_slerp(tq[lo], tq[hi], a))
                for k in range(0, len(frames), pose_every):
                    tf = T[TF_MSG](transforms=[tstamped(s[k], world_frame, base_frame, Ms[k])])
                    msgs.append((_ns(s[k]), c_tf, tf, TF_MSG))
        elif pose in ("pose", "odometry"):
            typ = POSE_TYPES[0] if pose == "pose" else POSE_TYPES[2]
            c_pose = w.add_connection(pose_topic, typ, typestore=ts)
            for f in frames[::pose_every]:
                q = matrix_to_quat(f.c2w[:3, :3])
                point = T["geometry_msgs/msg/Point"](x=f.c2w[0, 3], y=f.c2w[1, 3], z=f.c2w[2, 3])
                p = T["geometry_msgs/msg/Pose"](position=point, orientation=Q(x=q[0], y=q[1], z=q[2], w=q[3]))
                if pose == "pose":
                    m = T[typ](header=header(f.stamp, world_frame), pose=p)
                else:
                    zero = V3(x=0.0, y=0.0, z=0.0)
                    still = T["geometry_msgs/msg/Twist"](linear=zero, angular=zero)
                    m = T[typ](
                        header=header(f.stamp, world_frame),
                        child_frame_id=cam,
                        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=p, covariance=np.zeros(36)),
                        twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=still, covariance=np.zeros(36)),
                    )
                msgs.append((_ns(f.stamp), c_pose, m, typ))
        chans = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2, -1], "bgra8": [2, 1, 0, -1], "mono8": [1]}[
            encoding
        ]
        Image, Info, Roi = T[IMAGE], T[CAMERA_INFO], T["sensor_msgs/msg/RegionOfInterest"]
        for f in frames:
            f.validate()
            h, wd = f.height, f.width
            rgba = np.concatenate([f.rgb, np.full((h, wd, 1), 255, np.uint8)], axis=2)
            data = np.ascontiguousarray(rgba[..., chans]).reshape(-1)
            c = len(chans)
            msgs.append(
                (
                    _ns(f.stamp),
                    c_img,
                    Image(
                        header=header(f.stamp, cam),
                        height=h,
                        width=wd,
                        encoding=encoding,
                        is_bigendian=0,
                        step=wd * c,
                        data=data,
                    ),
                    IMAGE,
                )
            )
            K = frame_k_to_ros_k(f.K)
            P = np.zeros((3, 4))
            P[:, :3] = K
            no_roi = Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            msgs.append(
                (
                    _ns(f.stamp),
                    c_info,
                    Info(
                        header=header(f.stamp, cam),
                        height=h,
                        width=wd,
                        distortion_model="plumb_bob" if f.distortion is None else f.distortion.model,
                        d=np.zeros(5) if f.distortion is None else np.asarray(f.distortion.coeffs, np.float64),
                        k=K.reshape(-1),
                        r=np.eye(3).reshape(-1),
                        p=P.reshape(-1),
                        binning_x=0,
                        binning_y=0,
                        roi=no_roi,
                    ),
                    CAMERA_INFO,
                )
            )
            if c_depth is not None and f.depth is not None:
                d = np.where(np.isfinite(f.depth) & (f.depth > 0), f.depth, 0.0)
                if depth_encoding == "16UC1":
                    raw = np.round(d * 1000).clip(0, 65535).astype("<u2").view(np.uint8).reshape(-1)
                    step = wd * 2
                else:
                    raw = d.astype("<f4").view(np.uint8).reshape(-1)
                    step = wd * 4
                msgs.append(
                    (
                        _ns(f.stamp) + 1,
                        c_depth,
                        Image(
                            header=header(f.stamp, cam),
                            height=h,
                            width=wd,
                            encoding=depth_encoding,
                            is_bigendian=0,
                            step=step,
                            data=raw,
                        ),
                        IMAGE,
                    )
                )
        msgs.sort(key=lambda m: m[0])
        for t_ns, conn, msg, typ in msgs:
            w.write(conn, t_ns, ts.serialize_cdr(msg, typ))
    return bag
