"""ROS message <-> numpy conversions (message classes only: no rclpy.init, no graph)."""

import math
import struct

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseWithCovarianceStamped, Transform, TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from lerf_ros.geometry.poses import make_pose
from lerf_ros.ros.convert import (
    ConversionError,
    K_to_camera_info,
    camera_info_to_K,
    image_to_numpy,
    matrix_to_pose,
    matrix_to_pose_stamped,
    matrix_to_transform,
    matrix_to_transform_stamped,
    numpy_to_image,
    pointcloud2_to_numpy,
    points_to_pointcloud2,
    pose_to_matrix,
    sec_to_stamp,
    stamp_to_ns,
    stamp_to_sec,
    tf_message,
    transform_to_matrix,
)

H, W = 5, 7
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    """A message built by hand, byte by byte, independently of numpy_to_image."""
    h, w = pixels.shape[:2]
    flat = pixels.reshape(h, w, -1)
    rows = []
    for y in range(h):
        row = b""
        for x in range(w):
            for c in flat[y, x]:
                if pixels.dtype == np.uint8:
                    row += struct.pack("B", int(c))
                elif pixels.dtype == np.uint16:
                    row += struct.pack(">H" if big_endian else "<H", int(c))
                else:
                    row += struct.pack(">f" if big_endian else "<f", float(c))
        rows.append(row + b"\xab" * pad)  # non-zero padding must be ignored
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian), step=len(rows[0]))
    msg.data = b"".join(rows)
    return msg


@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_decode(pad):
    cases = {
        "rgb8": RGB,
        "bgr8": RGB[..., ::-1],
        "rgba8": np.concatenate([RGB, np.full((H, W, 1), 7, np.uint8)], axis=2),
        "bgra8": np.concatenate([RGB[..., ::-1], np.full((H, W, 1), 9, np.uint8)], axis=2),
    }
    for enc, wire in cases.items():
        arr, kind = image_to_numpy(raw_image(np.ascontiguousarray(wire), enc, pad=pad))
        assert kind == "rgb" and arr.dtype == np.uint8 and arr.shape == (H, W, 3), enc
        np.testing.assert_array_equal(arr, RGB, err_msg=enc)
    grey = RGB[..., 0]
    arr, kind = image_to_numpy(raw_image(grey, "mono8", pad=pad))
    assert kind == "rgb"
    np.testing.assert_array_equal(arr, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 2])
def test_depth_encodings_decode(big_endian, pad):
    mm = RNG.integers(0, 65536, size=(H, W)).astype(np.uint16)
    mm[0, 0] = 0
    mm[1, 1] = 258  # bytes 0x01 0x02: byte order matters
    arr, kind = image_to_numpy(raw_image(mm, "16UC1", pad=pad, big_endian=big_endian))
    assert kind == "depth" and arr.dtype == np.float32
    np.testing.assert_allclose(arr, mm.astype(np.float64) / 1000.0, rtol=1e-6)
    assert arr[0, 0] == 0.0 and arr[1, 1] == pytest.approx(0.258)
    metres = RNG.uniform(0.1, 10, size=(H, W)).astype(np.float32)
    metres[2, 3] = np.nan
    metres[0, 4] = -np.inf
    arr, kind = image_to_numpy(raw_image(metres, "32FC1", pad=pad, big_endian=big_endian))
    assert kind == "depth"
    assert arr[2, 3] == 0.0 and arr[0, 4] == 0.0  # no measurement is 0, as the rosbag reader gives it
    ok = np.isfinite(metres)
    np.testing.assert_array_equal(arr[ok], metres[ok])


def test_sixteen_bit_colour_decodes_like_the_rosbag_reader():
    """The nodes and the rosbag reader share one decoder: 16-bit colour works here too."""
    wire = RGB.astype(np.uint16) * 256 + 17  # the high byte is the 8-bit value
    arr, kind = image_to_numpy(raw_image(wire, "rgb16", pad=2, big_endian=True))
    assert kind == "rgb"
    np.testing.assert_array_equal(arr, RGB)
    arr, kind = image_to_numpy(raw_image(np.ascontiguousarray(wire[..., ::-1]), "bgr16"))
    np.testing.assert_array_equal(arr, RGB)
    with pytest.raises(ConversionError, match="numpy_to_image writes rgb8, .*; not 'rgb16'"):
        numpy_to_image(RGB, "rgb16")


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1"])
@pytest.mark.parametrize("big_endian,pad", [(False, 0), (True, 5)])
def test_round_trip_every_encoding(enc, big_endian, pad):
    if enc == "mono8":
        src = RGB[..., 1]
        expect = np.repeat(src[..., None], 3, axis=2)
    elif enc in ("16UC1", "32FC1"):
        src = np.round(RNG.uniform(0.2, 30.0, size=(H, W)), 3).astype(np.float32)
        src[0, 1] = 0.0
        expect = src
    else:
        src = expect = RGB
    msg = numpy_to_image(src, enc, stamp=12.25, frame_id="cam", big_endian=big_endian, row_padding=pad)
    assert msg.header.frame_id == "cam" and stamp_to_sec(msg.header.stamp) == 12.25
    assert msg.encoding == enc and msg.width == W and msg.height == H
    assert len(msg.data) == msg.step * H
    arr, kind = image_to_numpy(msg)
    assert kind == ("depth" if enc in ("16UC1", "32FC1") else "rgb")
    if enc == "16UC1":
        np.testing.assert_allclose(arr, expect, atol=1e-6)
    else:
        np.testing.assert_array_equal(arr, expect)


def test_16uc1_encoding_of_invalid_and_raw_values():
    m = np.array([[0.0, -1.0, np.nan, np.inf], [0.0004, 0.0006, 65.535, 70.0]], np.float32)
    arr, _ = image_to_numpy(numpy_to_image(m, "16UC1"))
    np.testing.assert_allclose(arr, [[0, 0, 0, 0], [0, 0.001, 65.535, 0]], atol=1e-6)
    raw = np.array([[1, 2], [3, 65535]], np.uint16)
    arr, _ = image_to_numpy(numpy_to_image(raw, "16UC1"))
    np.testing.assert_allclose(arr, raw / 1000.0, rtol=1e-6)


def test_bad_images_raise_clear_errors():
    msg = numpy_to_image(RGB, "rgb8")
    msg.encoding = "yuv422"
    with pytest.raises(ConversionError, match=r"unsupported image encoding 'yuv422' \(supported: rgb8, bgr8"):
        image_to_numpy(msg)
    msg = numpy_to_image(RGB, "rgb8")
    msg.step = W * 3 - 1
    with pytest.raises(ConversionError, match="step 20 is smaller than width 7 x 3 bytes per pixel = 21"):
        image_to_numpy(msg)
    msg = numpy_to_image(RGB, "rgb8")
    msg.height = H + 1
    with pytest.raises(ConversionError, match="image data has 105 bytes, expected step 21 x height 6 = 126"):
        image_to_numpy(msg)
    msg = Image(encoding="rgb8")
    with pytest.raises(ConversionError, match="zero size"):
        image_to_numpy(msg)
    with pytest.raises(ConversionError, match="uint8"):
        numpy_to_image(RGB.astype(np.float32), "rgb8")


def test_camera_info_half_pixel_convention_and_round_trip():
    K = np.array([[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]])
    msg = K_to_camera_info(K, 640, 480, stamp=3.5, frame_id="cam")
    # on the wire: OpenCV convention, the centre of pixel u at coordinate u
    assert msg.k[2] == pytest.approx(319.5) and msg.k[5] == pytest.approx(239.5)
    assert msg.p[0] == 500.0 and msg.p[3] == 0.0 and msg.p[10] == 1.0 and list(msg.r) == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    K2, w, h = camera_info_to_K(msg)
    np.testing.assert_allclose(K2, K)
    assert (w, h) == (640, 480)
    # a point projecting on the centre of pixel (100, 50) in OpenCV terms is at (100.5, 50.5) in ours
    kcv = np.array(msg.k).reshape(3, 3)
    p = np.linalg.inv(kcv) @ [100.0, 50.0, 1.0]
    q = K2 @ p
    np.testing.assert_allclose(q[:2] / q[2], [100.5, 50.5])
    K3, _, _ = camera_info_to_K(msg, use_projection=True)
    np.testing.assert_allclose(K3, K)


def test_camera_info_binning_roi_and_errors():
    msg = K_to_camera_info(np.array([[400.0, 0, 320.0], [0, 400.0, 240.0], [0, 0, 1]]), 640, 480)
    msg.binning_x = msg.binning_y = 2
    K, w, h = camera_info_to_K(msg)
    assert (w, h) == (320, 240)
    np.testing.assert_allclose(K, [[200, 0, 160], [0, 200, 120], [0, 0, 1]])
    msg.binning_x = msg.binning_y = 0
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 40, 200, 100
    K, w, h = camera_info_to_K(msg)
    assert (w, h) == (200, 100)
    np.testing.assert_allclose(K[:2, 2], [220, 200])
    bad = CameraInfo(width=640, height=480)
    with pytest.raises(ConversionError, match="zero or negative focal length .*not calibrated"):
        camera_info_to_K(bad)
    bad = K_to_camera_info(np.eye(3), 0, 0)
    with pytest.raises(ConversionError, match="zero image size"):
        camera_info_to_K(bad)
    nan = K_to_camera_info(np.eye(3), 4, 4)
    k = list(nan.k)
    k[2] = float("nan")
    nan.k = k
    with pytest.raises(ConversionError, match="NaN"):
        camera_info_to_K(nan)


T_REF = make_pose([1.0, -2.0, 0.5], [0.1, 0.2, -0.3, 0.9])


def test_pose_messages_round_trip():
    p = matrix_to_pose(T_REF)
    assert isinstance(p, Pose)
    np.testing.assert_allclose(pose_to_matrix(p), T_REF, atol=1e-12)
    ps = matrix_to_pose_stamped(T_REF, "map", stamp=5.5)
    assert ps.header.frame_id == "map" and stamp_to_sec(ps) == 5.5
    np.testing.assert_allclose(pose_to_matrix(ps), T_REF, atol=1e-12)
    odom = Odometry()
    odom.pose.pose = p
    np.testing.assert_allclose(pose_to_matrix(odom), T_REF, atol=1e-12)
    pwc = PoseWithCovarianceStamped()
    pwc.pose.pose = p
    np.testing.assert_allclose(pose_to_matrix(pwc), T_REF, atol=1e-12)
    tr = matrix_to_transform(T_REF)
    assert isinstance(tr, Transform)
    np.testing.assert_allclose(transform_to_matrix(tr), T_REF, atol=1e-12)
    ts = matrix_to_transform_stamped(T_REF, "map", "cam", stamp=1.0)
    assert isinstance(ts, TransformStamped) and ts.child_frame_id == "cam" and ts.header.frame_id == "map"
    np.testing.assert_allclose(transform_to_matrix(ts), T_REF, atol=1e-12)
    # a known value: 90 degrees about z
    q = Pose()
    q.orientation.z, q.orientation.w = math.sin(math.pi / 4), math.cos(math.pi / 4)
    np.testing.assert_allclose(pose_to_matrix(q)[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_bad_poses_raise():
    with pytest.raises(ConversionError, match="zero length"):
        pose_to_matrix(Pose(orientation=Pose().orientation.__class__(x=0.0, y=0.0, z=0.0, w=0.0)))
    p = matrix_to_pose(T_REF)
    p.position.x = float("nan")
    with pytest.raises(ConversionError, match="NaN"):
        pose_to_matrix(p)
    p = matrix_to_pose(T_REF)
    p.orientation.w *= 3.0
    with pytest.raises(ConversionError, match="not normalised"):
        pose_to_matrix(p)
    shear = np.eye(4)
    shear[0, 1] = 0.3
    with pytest.raises(ConversionError, match="not a rigid transform"):
        matrix_to_pose(shear)
    with pytest.raises(ConversionError, match="is not a Pose"):
        pose_to_matrix(Time())
    with pytest.raises(ConversionError, match="is not a Transform"):
        transform_to_matrix(Pose())


def test_stamps():
    t = sec_to_stamp(1712345678.123456789)
    assert t.sec == 1712345678 and abs(t.nanosec - 123456789) < 300  # float64 resolution at 1.7e9 s
    assert stamp_to_ns(Time(sec=3, nanosec=5)) == 3_000_000_005
    assert stamp_to_sec(sec_to_stamp(2.999999999)) == pytest.approx(2.999999999)
    assert sec_to_stamp(1.9999999999).sec == 2  # rounding carries into seconds
    with pytest.raises(ConversionError, match=">= 0"):
        sec_to_stamp(-1.0)
    with pytest.raises(ConversionError, match="finite"):
        sec_to_stamp(float("nan"))


def test_tf_message_optional():
    msg = tf_message([matrix_to_transform_stamped(T_REF, "map", "cam")])
    try:
        import tf2_msgs  # noqa: F401
    except ImportError:
        assert msg is None
    else:
        assert len(msg.transforms) == 1


def test_pointcloud2_round_trip_and_rviz_rgb_packing():
    n = 50
    xyz = RNG.normal(size=(n, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, size=(n, 3), dtype=np.uint8)
    rel = RNG.uniform(size=n).astype(np.float32)
    msg = points_to_pointcloud2(xyz, rgb, {"relevancy": rel}, frame_id="map", stamp=2.0)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "relevancy"]
    assert all(f.datatype == PointField.FLOAT32 and f.count == 1 for f in msg.fields)
    assert [f.offset for f in msg.fields] == [0, 4, 8, 12, 16]
    assert msg.point_step == 20 and msg.row_step == 20 * n and msg.height == 1 and msg.width == n
    assert msg.is_dense and msg.header.frame_id == "map"
    # byte layout RViz reads: little-endian float x at 0; rgb bytes B, G, R, 0 at offset 12
    raw = bytes(msg.data)
    assert struct.unpack_from("<f", raw, 20 * 3)[0] == xyz[3, 0]
    assert tuple(raw[20 * 4 + 12 : 20 * 4 + 16]) == (rgb[4, 2], rgb[4, 1], rgb[4, 0], 0)
    out = pointcloud2_to_numpy(msg)
    np.testing.assert_array_equal(out["xyz"], xyz)
    np.testing.assert_array_equal(out["rgb"], rgb)
    np.testing.assert_array_equal(out["relevancy"], rel)
    # no colour, no extras, empty
    out = pointcloud2_to_numpy(points_to_pointcloud2(xyz[:3]))
    assert set(out) == {"x", "y", "z", "xyz"}
    assert pointcloud2_to_numpy(points_to_pointcloud2(np.zeros((0, 3))))["xyz"].shape == (0, 3)
    xyz[0, 0] = np.nan
    assert not points_to_pointcloud2(xyz).is_dense


def test_pointcloud2_foreign_layout():
    """An organised, big-endian cloud with padding and mixed types, built by hand."""
    h, w = 2, 3
    fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT64, count=1),
        PointField(name="y", offset=8, datatype=PointField.FLOAT64, count=1),
        PointField(name="z", offset=16, datatype=PointField.FLOAT64, count=1),
        PointField(name="intensity", offset=24, datatype=PointField.UINT16, count=1),
        PointField(name="normal", offset=28, datatype=PointField.FLOAT32, count=3),
    ]
    point_step, row_step = 48, 48 * w + 8
    data = b""
    expect = []
    for r in range(h):
        row = b""
        for c in range(w):
            x, y, z, i, nrm = r + 0.5, c - 1.0, 2.0 * r + c, 1000 * r + c, (0.1 * c, 0.2, 0.3 * r)
            expect.append((x, y, z, i, nrm))
            row += struct.pack(">dddH2x3f", x, y, z, i, *nrm) + b"\x00" * 8
        data += row + b"\xff" * 8
    msg = PointCloud2(
        height=h, width=w, fields=fields, is_bigendian=True, point_step=point_step, row_step=row_step, is_dense=True
    )
    msg.data = data
    out = pointcloud2_to_numpy(msg)
    np.testing.assert_allclose(out["xyz"], [e[:3] for e in expect])
    np.testing.assert_array_equal(out["intensity"], [e[3] for e in expect])
    np.testing.assert_allclose(out["normal"], [e[4] for e in expect], rtol=1e-6)
    msg.fields[3].datatype = 42
    with pytest.raises(ConversionError, match="unknown datatype 42"):
        pointcloud2_to_numpy(msg)


def test_pointcloud2_bad_input():
    with pytest.raises(ConversionError, match=r"xyz must be \(N, 3\)"):
        points_to_pointcloud2(np.zeros((4, 2)))
    with pytest.raises(ConversionError, match="rgb must be"):
        points_to_pointcloud2(np.zeros((4, 3)), rgb=np.zeros((4, 3), np.float32))
    with pytest.raises(ConversionError, match="clashes"):
        points_to_pointcloud2(np.zeros((4, 3)), fields={"x": np.zeros(4)})
    with pytest.raises(ConversionError, match="must have shape"):
        points_to_pointcloud2(np.zeros((4, 3)), fields={"relevancy": np.zeros(3)})
    msg = points_to_pointcloud2(np.zeros((4, 3)))
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ConversionError, match="expected row_step"):
        pointcloud2_to_numpy(msg)


def test_camera_info_distortion_models_round_trip_and_errors():
    from lerf_ros.geometry.camera import Distortion
    from lerf_ros.ros.convert import camera_info_distortion

    K = np.array([[400.0, 0, 320.0], [0, 400.0, 240.0], [0, 0, 1]])
    assert camera_info_distortion(K_to_camera_info(K, 640, 480)) is None  # zero D: pinhole
    for d in (
        Distortion.create("plumb_bob", [-0.3, 0.1, 0.001, -0.002, 0.01]),
        Distortion.create("rational_polynomial", [0.5, -0.1, 0.001, 0.0, 0.01, 0.8, 0.05, 0.0]),
        Distortion.create("equidistant", [0.04, -0.01, 0.002, -0.0005]),
    ):
        msg = K_to_camera_info(K, 640, 480, distortion=d)
        assert msg.distortion_model == d.model
        assert camera_info_distortion(msg) == d
    msg = K_to_camera_info(K, 640, 480)
    msg.distortion_model = "kannala_brandt8"
    assert camera_info_distortion(msg) is None  # nothing to model whatever the name
    msg.d = [0.1, 0.0, 0.0, 0.0]
    with pytest.raises(ConversionError, match="model 'kannala_brandt8' is not supported"):
        camera_info_distortion(msg)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.1, float("nan"), 0.0, 0.0, 0.0]
    with pytest.raises(ConversionError, match="k2 is NaN"):
        camera_info_distortion(msg)
    msg.d = [0.1, 0.0, 0.0, 0.0, 0.0]  # drivers that publish 4 or 8 values for plumb_bob
    assert camera_info_distortion(msg).coeffs == (0.1, 0.0, 0.0, 0.0, 0.0)
