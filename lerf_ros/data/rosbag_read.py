"""Reading rosbag2 files (sqlite3 ``.db3`` and ``.mcap``) as posed frames, without ROS (``rosbags``).

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
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.data.rosbag_schema import (
    CAMERA_INFO,
    COMPRESSED,
    IMAGE,
    POSE_TYPES,
    TF_MSG,
    RosbagError,
    ros_k_to_frame_k,
    stamp_ns,
    stamp_s,
    typestore,
)
from lerf_ros.data.rosbag_tf import TfBuffer
from lerf_ros.geometry.camera import Distortion, DistortionError
from lerf_ros.geometry.image import ImageDecodeError, decode_color, decode_depth


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


def is_rosbag(path: Union[str, os.PathLike]) -> bool:
    """True for a rosbag2 folder (with metadata.yaml) or a .mcap / .db3 file."""
    p = Path(path)
    return (p.is_dir() and (p / "metadata.yaml").is_file()) or (p.is_file() and p.suffix in (".mcap", ".db3"))


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
        self._store = typestore()
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
                    img_stamps.append(stamp_s(msg.header))
                    img_frames.append(msg.header.frame_id)
                    img_sizes.append((int(getattr(msg, "width", -1)), int(getattr(msg, "height", -1))))
                elif topic == depth_topic:
                    depth_stamps.append(stamp_s(msg.header))
                    depth_sizes.append((int(msg.width), int(msg.height)))
                elif topic == info_topic:
                    infos.append(msg)
                elif topic in (tf_topic, tf_static_topic) and conn.msgtype == TF_MSG:
                    for tr in msg.transforms:
                        tt, rr = tr.transform.translation, tr.transform.rotation
                        tf.add(
                            tr.header.frame_id,
                            tr.child_frame_id,
                            stamp_s(tr.header),
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
                        stamp_s(msg.header),
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
        info_stamps = np.asarray([stamp_s(m.header) for m in infos])
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
            image_slots.setdefault(stamp_ns(p.image_stamps[k]), []).append(slot)
        depth_slots: Dict[int, List[int]] = {}
        for slot, d in enumerate(p.depth_index):
            if d >= 0:
                depth_slots.setdefault(stamp_ns(p.depth_stamps[d]), []).append(slot)
        reader = self._reader()
        try:
            conns = [c for c in reader.connections if c.topic in (p.image_topic, p.depth_topic)]
            rgb_ready: Dict[int, np.ndarray] = {}
            depth_ready: Dict[int, np.ndarray] = {}
            nxt = 0
            for conn, _, raw in reader.messages(connections=conns):
                msg = self._deserialize(raw, conn)
                key = stamp_ns(stamp_s(msg.header))
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
