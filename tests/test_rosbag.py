"""rosbag2 (sqlite3 and mcap): frames written with rosbags come back with the same pixels, depth,
intrinsics, stamps and poses (TF chain or pose topic); TF interpolation; errors name the bag."""

import math

import numpy as np
import pytest

from lerf_ros.data.frame import Frame
from lerf_ros.data.rosbag import (
    RosbagError,
    RosbagSource,
    TfBuffer,
    frame_k_to_ros_k,
    matrix_to_quat,
    quat_to_matrix,
    read_rosbag,
    ros_k_to_frame_k,
    write_rosbag,
)
from lerf_ros.data.sources import SourceError, open_source
from lerf_ros.data.synthetic import make_scene


@pytest.fixture(scope="module")
def frames():
    return make_scene(seed=6, width=40, height=30, n_frames=6).frames


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _same(a_frames, b_frames, depth_tol):
    assert len(a_frames) == len(b_frames)
    for a, b in zip(a_frames, b_frames):
        np.testing.assert_array_equal(b.rgb, a.rgb)
        np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-9)
        np.testing.assert_allclose(b.K, a.K, atol=1e-12)
        assert abs(b.stamp - a.stamp) < 1e-6
        assert b.frame_id == a.frame_id
        np.testing.assert_allclose(b.depth, a.depth, atol=depth_tol)


@pytest.mark.parametrize(
    "storage, pose, encoding, depth_encoding",
    [
        ("sqlite3", "tf", "rgb8", "16UC1"),
        ("mcap", "tf", "bgr8", "32FC1"),
        ("sqlite3", "pose", "rgba8", "32FC1"),
        ("mcap", "odometry", "bgra8", "16UC1"),
    ],
)
def test_round_trip(frames, tmp_path, storage, pose, encoding, depth_encoding):
    bag = write_rosbag(
        tmp_path / "bag", frames, storage=storage, pose=pose, encoding=encoding, depth_encoding=depth_encoding
    )
    src = RosbagSource(bag)
    assert src.topics["image"] == "/camera/color/image_raw"
    assert src.topics["depth"] == "/camera/aligned_depth_to_color/image_raw"
    assert (src.topics["pose"] is None) == (pose == "tf")
    assert src.world_frame == "map" and src.camera_frame == frames[0].frame_id
    back = list(src)
    _same(frames, back, 5e-4 if depth_encoding == "16UC1" else 0.0)
    assert src.stats == {"images": 6, "frames": 6, "dropped_no_pose": 0, "with_depth": 6}
    # the storage file alone (no metadata.yaml) reads the same
    (db,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    _same(frames, read_rosbag(db), 5e-4 if depth_encoding == "16UC1" else 0.0)


def test_tf_chain_is_composed_and_interpolated(tmp_path):
    """TF samples written 20 ms before and 30 ms after each image (never at it, except where clipped
    to the recording's span) through map -> base_link (dynamic) -> camera (static mount): a camera
    turning at a constant rate about a fixed axis while moving linearly is recovered at the image
    stamps by interpolation (slerp exact; the mount's lever arm bends the translation by about 1 mm)."""
    img = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    frames = []
    for i in range(8):
        T = np.eye(4)
        T[:3, :3] = _rot([0.3, -0.2, 1.0], 0.2 * i) @ _rot([1, 0, 0], -2.0)
        T[:3, 3] = [0.1 * i, -0.05 * i, 0.4]
        frames.append(Frame(rgb=img, K=K, c2w=T, stamp=10.0 + 0.1 * i, frame_id="cam_optical"))
    bag = write_rosbag(tmp_path / "b", frames, storage="mcap", depth_topic=None, tf_offsets=(-0.02, 0.03))
    back = read_rosbag(bag)
    assert len(back) == 8
    for a, b in zip(frames, back):
        np.testing.assert_allclose(b.c2w[:3, :3], a.c2w[:3, :3], atol=1e-9)
        np.testing.assert_allclose(b.c2w[:3, 3], a.c2w[:3, 3], atol=2e-3)
    # without interpolation (nearest sample only) the error would be centimetres: the check can fail
    src = RosbagSource(bag, max_interpolation_gap=0.0)
    assert src.stats["frames"] == 8  # still within the 50 ms tolerance of a sample ...
    errs = [np.abs(b.c2w[:3, 3] - a.c2w[:3, 3]).max() for a, b in zip(frames, src)]
    assert max(errs) > 0.01  # ... but not interpolated


def test_sparse_poses_interpolate_or_drop(frames, tmp_path):
    bag = write_rosbag(tmp_path / "b", frames, storage="sqlite3", pose="pose", pose_every=3)
    dense = RosbagSource(bag)  # poses at frames 0 and 3 bracket 1, 2 (0.3 s apart <= 0.5 s gap)
    # frames 4, 5 lie after the last pose (frame 3) by more than the tolerance
    assert [f.index for f in dense] == [0, 1, 2, 3] and dense.stats["dropped_no_pose"] == 2
    sparse = RosbagSource(bag, max_interpolation_gap=0.2)
    got = list(sparse)
    assert [f.index for f in got] == [0, 3]
    assert sparse.stats["dropped_no_pose"] == 4
    np.testing.assert_allclose(got[1].c2w, frames[3].c2w, atol=1e-9)


def test_tf_buffer_interpolation_and_validity():
    buf = TfBuffer(tolerance=0.05, max_interpolation_gap=1.0)
    q90 = matrix_to_quat(_rot([0, 0, 1], math.pi / 2))
    buf.add("world", "base", 0.0, (0, 0, 0), (0, 0, 0, 1))
    buf.add("world", "base", 1.0, (1, 2, 0), q90)
    buf.add("base", "cam", 0.0, (0, 0, 0.5), (0, 0, 0, 1), static=True)
    T, ok = buf.lookup("world", "cam", [0.5, 1.04, 1.2, -0.5])
    assert ok.tolist() == [True, True, False, False]
    np.testing.assert_allclose(T[0][:3, 3], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(T[0][:3, :3], _rot([0, 0, 1], math.pi / 4), atol=1e-12)
    np.testing.assert_allclose(T[1][:3, 3], [1, 2, 0.5])
    # the inverse direction
    Ti, _ = buf.lookup("cam", "world", [0.5])
    np.testing.assert_allclose(Ti[0] @ T[0], np.eye(4), atol=1e-12)
    assert buf.root("cam") == "world"
    buf.add("odom", "other", 0.0, (0, 0, 0), (0, 0, 0, 1))
    with pytest.raises(ValueError, match="not connected"):
        buf.lookup("world", "other", [0.0])


def test_quaternions_and_pixel_convention():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((50, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, 3:])
    np.testing.assert_allclose(matrix_to_quat(quat_to_matrix(q)), q, atol=1e-9)
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])  # ROS: centre of a 640x480 image
    np.testing.assert_allclose(ros_k_to_frame_k(K)[:2, 2], [320.0, 240.0])
    np.testing.assert_allclose(frame_k_to_ros_k(ros_k_to_frame_k(K)), K)


def test_mono8_images_and_no_depth(frames, tmp_path):
    bag = write_rosbag(tmp_path / "b", frames[:2], encoding="mono8", depth_topic=None)
    back = read_rosbag(bag)
    assert back[0].depth is None
    np.testing.assert_array_equal(back[0].rgb, np.repeat(frames[0].rgb[..., 1:2], 3, axis=2))


def test_errors_name_the_bag(frames, tmp_path):
    with pytest.raises(RosbagError, match=r"nobag: no such file or folder"):
        RosbagSource(tmp_path / "nobag")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RosbagError, match=r"plain: not a rosbag2"):
        RosbagSource(tmp_path / "plain")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"definitely not an mcap file")
    with pytest.raises(RosbagError, match=r"junk.mcap: cannot open rosbag2"):
        RosbagSource(junk)
    bad_meta = tmp_path / "badmeta"
    bad_meta.mkdir()
    (bad_meta / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 99}\n")
    with pytest.raises(RosbagError, match=r"badmeta: cannot open rosbag2"):
        RosbagSource(bad_meta)
    bag = write_rosbag(tmp_path / "ok", frames[:2], storage="mcap")
    with pytest.raises(RosbagError, match=r"ok: colour image topic '/nope' is not in the bag \(topics: "):
        RosbagSource(bag, image_topic="/nope")
    with pytest.raises(RosbagError, match=r"has type sensor_msgs/msg/Image, expected"):
        RosbagSource(bag, pose_topic="/camera/color/image_raw")
    with pytest.raises(RosbagError, match=r"frames 'world' and 'camera_optical_frame' are not connected"):
        RosbagSource(bag, world_frame="world")
    nopose = write_rosbag(tmp_path / "nopose", frames[:2], pose="none")
    with pytest.raises(RosbagError, match=r"nopose: no camera pose"):
        RosbagSource(nopose)


def test_open_source_detects_bags(frames, tmp_path):
    bag = write_rosbag(tmp_path / "bag", frames[:3], storage="mcap")
    src = open_source(bag)
    assert src.kind == "rosbag2" and len(src) == 3 and src.info["stats"]["frames"] == 3
    (mcap,) = bag.glob("*.mcap")
    assert open_source(mcap).kind == "rosbag2"
    with pytest.raises(SourceError, match=r"missing: no such file or folder"):
        open_source(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"x.txt: not a posed-frame source"):
        open_source(tmp_path / "x.txt")


def _bag_with_raw_images(path, frames, colour, depth):
    """A bag whose image and depth messages carry the fields ``colour(frame)`` / ``depth(frame)``
    return (encoding, is_bigendian, step, data bytes), as a camera driver might record them; the
    camera pose is on a PoseStamped topic."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    T = ts.types
    names = {
        "image": "sensor_msgs/msg/Image",
        "info": "sensor_msgs/msg/CameraInfo",
        "pose": "geometry_msgs/msg/PoseStamped",
    }
    with Writer(path, version=Writer.VERSION_LATEST) as w:
        conns = {k: w.add_connection(f"/cam/{k}", typ, typestore=ts) for k, typ in names.items()}
        conns["depth"] = w.add_connection("/cam/depth", names["image"], typestore=ts)
        for f in frames:
            sec = int(f.stamp)
            stamp = T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((f.stamp - sec) * 1e9)))
            head = T["std_msgs/msg/Header"](stamp=stamp, frame_id=f.frame_id)
            q = matrix_to_quat(f.c2w)
            pose = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=f.c2w[0, 3], y=f.c2w[1, 3], z=f.c2w[2, 3]),
                orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
            )
            K = frame_k_to_ros_k(f.K)
            info = T[names["info"]](
                header=head,
                height=f.height,
                width=f.width,
                distortion_model="plumb_bob",
                d=np.zeros(5),
                k=K.reshape(-1),
                r=np.eye(3).reshape(-1),
                p=np.concatenate([K, np.zeros((3, 1))], 1).reshape(-1),
                binning_x=0,
                binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            )
            world = T["std_msgs/msg/Header"](stamp=stamp, frame_id="map")
            msgs = [("pose", names["pose"], T[names["pose"]](header=world, pose=pose)), ("info", names["info"], info)]
            for key, make in (("image", colour), ("depth", depth)):
                enc, big, step, data = make(f)
                msgs.append(
                    (
                        key,
                        names["image"],
                        T[names["image"]](
                            header=head,
                            height=f.height,
                            width=f.width,
                            encoding=enc,
                            is_bigendian=int(big),
                            step=step,
                            data=np.frombuffer(data, np.uint8),
                        ),
                    )
                )
            t_ns = int(round(f.stamp * 1e9))
            for key, typ, msg in msgs:
                w.write(conns[key], t_ns, ts.serialize_cdr(msg, typ))
    return path


def test_sixteen_bit_colour_padded_rows_and_invalid_depth(frames, tmp_path):
    """A big-endian rgb16 colour stream with padded rows and a 32FC1 depth stream with NaN, inf and
    negative values: colour keeps the high byte, invalid depth becomes 0 (the decoder the nodes use)."""
    pad = 6

    def rgb16(f):
        wide = (f.rgb.astype(np.uint16) * 256 + 3).astype(">u2").reshape(f.height, -1).view(np.uint8)
        return "rgb16", True, wide.shape[1] + pad, np.pad(wide, ((0, 0), (0, pad))).tobytes()

    def depth32(f):
        d = f.depth.astype("<f4")
        d[0, :3] = [np.nan, np.inf, -1.0]
        return "32FC1", False, d.shape[1] * 4, d.tobytes()

    back = read_rosbag(_bag_with_raw_images(tmp_path / "b16", frames[:2], rgb16, depth32))
    assert len(back) == 2
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(b.rgb, a.rgb)
        np.testing.assert_array_equal(b.depth[0, :3], 0.0)
        np.testing.assert_array_equal(b.depth[1:], a.depth[1:])


def test_undecodable_images_name_the_bag_topic_and_problem(frames, tmp_path):
    def rgb8(f):
        return "rgb8", False, f.width * 3, f.rgb.tobytes()

    def short_rows(f):
        return "rgb8", False, f.width * 3 - 1, f.rgb.tobytes()

    bad_depth = _bag_with_raw_images(tmp_path / "colour_depth", frames[:1], rgb8, rgb8)
    with pytest.raises(
        RosbagError,
        match=r"colour_depth: /cam/depth image at [\d.]+ s: depth image has encoding "
        r"'rgb8'; depth must be 16UC1 or mono16 \(millimetres\) or 32FC1",
    ):
        read_rosbag(bad_depth)
    bad_step = _bag_with_raw_images(tmp_path / "step", frames[:1], short_rows, rgb8)
    with pytest.raises(RosbagError, match=r"step: /cam/image image 0: image step 119 is smaller than width 40"):
        read_rosbag(bad_step, depth_topic="")


def test_camera_info_distortion_passes_through_and_unknown_models_are_refused(frames, tmp_path):
    import dataclasses

    from lerf_ros.geometry.camera import Distortion

    d = Distortion.create("rational_polynomial", [0.4, -0.05, 0.001, 0.0, 0.01, 0.7, 0.05, 0.0])
    distorted = [dataclasses.replace(f, distortion=d) for f in frames]
    bag = write_rosbag(tmp_path / "bag", distorted)
    assert [f.distortion for f in RosbagSource(bag)] == [d] * len(frames)
    # a rectified topic: intrinsics from P, no distortion
    assert all(f.distortion is None for f in RosbagSource(bag, use_projection_matrix=True))
    odd = [dataclasses.replace(f, distortion=Distortion.create("equidistant", [0.1, 0, 0, 0])) for f in frames]
    bag2 = write_rosbag(tmp_path / "bag2", odd)
    assert RosbagSource(bag2).__iter__().__next__().distortion.model == "equidistant"
