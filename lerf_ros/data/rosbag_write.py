"""Writing posed frames into a rosbag2 (sqlite3 or mcap) with ``rosbags``, without ROS: colour,
camera info, optional depth, and the camera pose as TF, a pose topic or odometry (used by the tests
and the replay tools; :mod:`lerf_ros.data.rosbag_read` reads them back)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from lerf_ros.data.frame import Frame
from lerf_ros.data.rosbag_schema import CAMERA_INFO, IMAGE, POSE_TYPES, TF_MSG, frame_k_to_ros_k, stamp_ns, typestore
from lerf_ros.geometry.poses import invert_pose, make_pose, matrix_to_quat, quat_slerp

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
    ts = typestore()
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
                    stamp_ns(stamps[0]) - 1,
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
                    msgs.append((stamp_ns(s[k]), c_tf, tf, TF_MSG))
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
                msgs.append((stamp_ns(f.stamp), c_pose, m, typ))
        chans = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2, -1], "bgra8": [2, 1, 0, -1], "mono8": [1]}[
            encoding
        ]
        Image, Info, Roi = T[IMAGE], T[CAMERA_INFO], T["sensor_msgs/msg/RegionOfInterest"]

        def image(f: Frame, image_encoding: str, step: int, data: np.ndarray):
            return Image(
                header=header(f.stamp, cam),
                height=f.height,
                width=f.width,
                encoding=image_encoding,
                is_bigendian=0,
                step=step,
                data=data,
            )

        for f in frames:
            f.validate()
            h, wd = f.height, f.width
            rgba = np.concatenate([f.rgb, np.full((h, wd, 1), 255, np.uint8)], axis=2)
            data = np.ascontiguousarray(rgba[..., chans]).reshape(-1)
            msgs.append((stamp_ns(f.stamp), c_img, image(f, encoding, wd * len(chans), data), IMAGE))
            K = frame_k_to_ros_k(f.K)
            P = np.zeros((3, 4))
            P[:, :3] = K
            no_roi = Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            msgs.append(
                (
                    stamp_ns(f.stamp),
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
                msgs.append((stamp_ns(f.stamp) + 1, c_depth, image(f, depth_encoding, step, raw), IMAGE))
        msgs.sort(key=lambda m: m[0])
        for t_ns, conn, msg, typ in msgs:
            w.write(conn, t_ns, ts.serialize_cdr(msg, typ))
    return bag
