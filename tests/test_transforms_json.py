"""nerfstudio / instant-ngp transforms.json folders: round trip, the OpenGL -> OpenCV flip, errors."""

import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from lerf_ros.data.sources import open_source
from lerf_ros.data.synthetic import make_scene
from lerf_ros.data.transforms_json import TransformsFormatError, TransformsSource, read_transforms, write_transforms


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=4, width=48, height=36, n_frames=5)


@pytest.mark.parametrize("depth_format", ["png", "npy"])
def test_round_trip(scene, tmp_path, depth_format):
    jpath = write_transforms(tmp_path / "ds", scene.frames, depth_format=depth_format)
    back = read_transforms(tmp_path / "ds")
    assert len(back) == len(scene.frames)
    for a, b in zip(scene.frames, back):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_allclose(b.K, a.K)
        np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-12)
        assert b.stamp == a.stamp and b.frame_id == a.frame_id
        tol = 5e-4 if depth_format == "png" else 0.0
        np.testing.assert_allclose(b.depth, a.depth, atol=tol + 1e-7)
    # the file holds OpenGL poses: camera +y up and looking along -z
    doc = json.loads(jpath.read_text())
    gl = np.array(doc["frames"][0]["transform_matrix"])
    cv = scene.frames[0].c2w
    np.testing.assert_allclose(gl[:3, 0], cv[:3, 0])
    np.testing.assert_allclose(gl[:3, 1], -cv[:3, 1])
    np.testing.assert_allclose(gl[:3, 2], -cv[:3, 2])
    np.testing.assert_allclose(gl[:3, 3], cv[:3, 3])
    assert gl[2, 1] > 0  # the scene is upright: the OpenGL camera "up" has a +z world component


def test_hand_written_nerf_style_file(tmp_path):
    """Original NeRF layout: camera_angle_x, image names without extension, RGBA on white, and an
    OpenGL camera at (0, 0, 2) looking down -z: a world point at the origin is straight ahead."""
    w, h = 40, 30
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 0] = 200
    img[:, : w // 2, 3] = 255  # left half opaque red, right half transparent
    (tmp_path / "train").mkdir()
    Image.fromarray(img).save(tmp_path / "train" / "r_0.png")
    angle = 0.8
    c2w_gl = np.eye(4)
    c2w_gl[2, 3] = 2.0
    (tmp_path / "transforms.json").write_text(
        json.dumps(
            {"camera_angle_x": angle, "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w_gl.tolist()}]}
        )
    )
    (f,) = read_transforms(tmp_path)
    fx = 0.5 * w / math.tan(0.5 * angle)
    np.testing.assert_allclose(f.K, [[fx, 0, w / 2], [0, fx, h / 2], [0, 0, 1]])
    w2c = np.linalg.inv(f.c2w)
    p = w2c @ np.array([0.0, 0.0, 0.0, 1.0])
    assert p[2] == pytest.approx(2.0)  # in front of the camera, 2 m away
    uv = f.K @ p[:3] / p[2]
    np.testing.assert_allclose(uv[:2], [w / 2, h / 2])
    # world +y (up in the OpenGL image) is image up: smaller v
    q = w2c @ np.array([0.0, 0.5, 0.0, 1.0])
    assert (f.K @ q[:3] / q[2])[1] < h / 2
    assert tuple(f.rgb[0, 0]) == (200, 0, 0) and tuple(f.rgb[0, -1]) == (255, 255, 255)


def test_per_frame_intrinsics_and_3x4_matrices(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(tmp_path / "b.png")
    m = np.eye(4)[:3].tolist()
    (tmp_path / "transforms.json").write_text(
        json.dumps(
            {
                "fl_x": 25.0,
                "frames": [
                    {
                        "file_path": "a.png",
                        "transform_matrix": m,
                        "cx": 14.0,
                        "cy": 9.0,
                        "w": 30,
                        "h": 20,
                        "timestamp": 3.5,
                    },
                    {"file_path": "b.png", "transform_matrix": m, "fl_x": 12.0, "fl_y": 13.0},
                ],
            }
        )
    )
    a, b = TransformsSource(tmp_path, frame_interval=0.5)
    np.testing.assert_allclose(a.K, [[25, 0, 14], [0, 25, 9], [0, 0, 1]])
    np.testing.assert_allclose(b.K, [[12, 0, 8], [0, 13, 5], [0, 0, 1]])
    assert a.stamp == 3.5 and b.stamp == 0.5


def _write(tmp_path, doc, image=True):
    if image:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "transforms.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


FRAME = {"file_path": "img.png", "transform_matrix": np.eye(4).tolist()}


@pytest.mark.parametrize(
    "doc, image, pattern",
    [
        ("{oops", True, r"transforms.json: cannot parse JSON"),
        ({"fl_x": 5.0}, True, r"transforms.json: no non-empty 'frames' list"),
        (
            {"fl_x": 5.0, "frames": [{"file_path": "img.png"}]},
            True,
            r"frame 0: needs 'file_path' and 'transform_matrix'",
        ),
        (
            {"fl_x": 5.0, "frames": [{**FRAME, "transform_matrix": [[1, 0], [0, 1]]}]},
            True,
            r"frame 0: transform_matrix must be 4x4",
        ),
        ({"frames": [FRAME]}, True, r"frame 0: no focal length"),
        ({"fl_x": 5.0, "frames": [FRAME]}, False, r"1 of 1 frames have no image file: img.png"),
        ({"fl_x": 5.0, "w": 9, "frames": [FRAME]}, True, r"frame 0: 'w' is 9 but image 'img.png' is 8x8"),
        (
            {"fl_x": 5.0, "camera_model": "EQUIRECTANGULAR", "k1": 0.1, "frames": [FRAME]},
            True,
            r"frame 0: camera_model 'EQUIRECTANGULAR' is not supported",
        ),
        ({"fl_x": 5.0, "k1": float("nan"), "frames": [FRAME]}, True, r"frame 0: .*k1 is NaN or infinite"),
        ({"fl_x": 5.0, "k4": 0.1, "frames": [FRAME]}, True, r"frame 0: camera_model 'OPENCV' has no coefficient k4"),
        (
            {"fl_x": 5.0, "camera_model": "OPENCV_FISHEYE", "p1": 0.01, "frames": [FRAME]},
            True,
            r"camera_model 'OPENCV_FISHEYE' has no coefficient p1",
        ),
        ({"fl_x": 5.0, "frames": [{**FRAME, "transform_matrix": (2 * np.eye(4)).tolist()}]}, True, r"frame 0: pose"),
        (
            {"fl_x": 5.0, "frames": [{**FRAME, "depth_file_path": "d.png"}]},
            True,
            r"frame 0: depth file .*d.png' not found",
        ),
    ],
)
def test_errors_name_the_file_and_problem(tmp_path, doc, image, pattern):
    _write(tmp_path, doc, image)
    with pytest.raises(TransformsFormatError, match=pattern) as e:
        read_transforms(tmp_path)
    assert str(tmp_path / "transforms.json") in str(e.value)


def test_missing_folder(tmp_path):
    with pytest.raises(TransformsFormatError, match=r"nope: no such file or folder"):
        read_transforms(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransformsFormatError, match=r"empty/transforms.json: no such file"):
        read_transforms(tmp_path / "empty")


def test_open_source_detects_folder_and_file(scene, tmp_path):
    jpath = write_transforms(tmp_path / "ds", scene.frames[:2])
    for p in (tmp_path / "ds", jpath):
        src = open_source(p)
        assert src.kind == "transforms" and len(src) == 2
        np.testing.assert_allclose(next(iter(src)).c2w, scene.frames[0].c2w, atol=1e-12)


def test_opencv_and_fisheye_coefficients_load_as_distortion(tmp_path):
    doc = {"fl_x": 5.0, "camera_model": "OPENCV", "k1": -0.2, "k2": 0.05, "p1": 0.001, "p2": -0.002, "frames": [FRAME]}
    _write(tmp_path, doc)
    (f,) = read_transforms(tmp_path)
    assert f.distortion.model == "plumb_bob"
    assert f.distortion.coeffs == (-0.2, 0.05, 0.001, -0.002, 0.0)
    (f,) = read_transforms(tmp_path, distortion="ignore")  # a pinhole frame; a warning is logged once
    assert f.distortion is None
    doc = {**doc, "camera_model": "OPENCV_FISHEYE", "p1": 0, "p2": 0, "k3": 0.01, "k4": -0.003}
    _write(tmp_path, doc)
    (f,) = read_transforms(tmp_path)
    assert f.distortion.model == "equidistant" and f.distortion.coeffs == (-0.2, 0.05, 0.01, -0.003)
    with pytest.raises(ValueError, match="distortion must be one of model, ignore"):
        read_transforms(tmp_path, distortion="undistort")


def test_distorted_frames_round_trip_through_the_writer(scene, tmp_path):
    from lerf_ros.geometry.camera import Distortion

    d = Distortion.create("plumb_bob", [-0.1, 0.02, 0.001, 0.0, 0.003])
    frames = [dataclasses.replace(f, distortion=d) for f in scene.frames[:3]]
    write_transforms(tmp_path, frames)
    back = read_transforms(tmp_path)
    assert [f.distortion for f in back] == [d] * 3


def test_missing_images_are_skipped_with_one_counting_warning_or_refused(tmp_path, caplog):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    frames = [FRAME, {**FRAME, "file_path": "gone1.png"}, FRAME, {**FRAME, "file_path": "gone2.png"}]
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 5.0, "frames": frames}))
    with caplog.at_level("WARNING", logger="lerf_ros.data.transforms_json"):
        src = TransformsSource(tmp_path)
        got = list(src)
    assert len(src) == 2 and [f.index for f in got] == [0, 2]
    assert src.missing == [(1, "gone1.png"), (3, "gone2.png")]
    warned = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warned) == 1 and "skipping 2 of 4 frames" in warned[0] and "gone1.png, gone2.png" in warned[0]
    with pytest.raises(TransformsFormatError, match=r"2 of 4 frames have no image file: gone1.png, gone2.png"):
        TransformsSource(tmp_path, missing_images="error")


def test_reader_options_reach_the_reader_from_the_commands(tmp_path):
    from lerf_ros.commands.train import open_with_options

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    frames = [FRAME, {**FRAME, "file_path": "gone.png"}]
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 5.0, "k1": -0.1, "frames": frames}))
    src = open_with_options(str(tmp_path), ["distortion=ignore", "frame_interval=0.5"])
    (f,) = list(src)
    assert f.distortion is None
    with pytest.raises(TransformsFormatError, match="1 of 2 frames have no image file: gone.png"):
        open_with_options(str(tmp_path), ["missing_images=error"])
    with pytest.raises(ValueError, match="reader option not accepted"):
        open_with_options(str(tmp_path), ["no_such_option=1"])
