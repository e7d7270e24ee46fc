"""The one ROS-free image decoder (``lerf_ros.geometry.image``): every encoding, row padding, byte
order, the depth conventions, and an error naming each problem. Messages are built by hand, byte
by byte, independently of the decoder."""

import array
import struct

import numpy as np
import pytest

from lerf_ros.geometry.image import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    ImageDecodeError,
    canonical_encoding,
    decode_color,
    decode_depth,
    decode_image,
    raw_pixels,
)

H, W = 4, 5
RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
ALPHA = np.full((H, W, 1), 77, np.uint8)


def fields(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> dict:
    """Raw image fields of ``pixels`` (H, W[, C]) packed one value at a time with ``struct``."""
    h, w = pixels.shape[:2]
    flat = pixels.reshape(h, w, -1)
    fmt = {np.dtype(np.uint8): "B", np.dtype(np.uint16): "H", np.dtype(np.float32): "f"}[pixels.dtype]
    order = ">" if big_endian else "<"
    rows = [b"".join(struct.pack(order + fmt, v.item()) for v in flat[y].reshape(-1)) + b"\xcd" * pad for y in range(h)]
    return dict(encoding=encoding, height=h, width=w, step=len(rows[0]), is_bigendian=big_endian, data=b"".join(rows))


def wide(a: np.ndarray) -> np.ndarray:
    """8-bit values as 16-bit ones whose high byte is the value (low byte set, to be dropped)."""
    return a.astype(np.uint16) * 256 + 0x5A


COLOUR_CASES = {
    "rgb8": RGB,
    "bgr8": RGB[..., ::-1],
    "rgba8": np.concatenate([RGB, ALPHA], axis=2),
    "bgra8": np.concatenate([RGB[..., ::-1], ALPHA], axis=2),
    "8UC3": RGB[..., ::-1],
    "8UC4": np.concatenate([RGB[..., ::-1], ALPHA], axis=2),
    "rgb16": wide(RGB),
    "bgr16": wide(RGB[..., ::-1]),
    "rgba16": wide(np.concatenate([RGB, ALPHA], axis=2)),
    "bgra16": wide(np.concatenate([RGB[..., ::-1], ALPHA], axis=2)),
}
GREY_CASES = {"mono8": RGB[..., 0], "8UC1": RGB[..., 0], "mono16": wide(RGB[..., 0])}


def test_every_colour_encoding_is_covered():
    assert set(COLOUR_CASES) | set(GREY_CASES) == set(COLOR_ENCODINGS)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("enc", sorted(COLOUR_CASES))
def test_colour_encodings(enc, pad, big_endian):
    f = fields(np.ascontiguousarray(COLOUR_CASES[enc]), enc, pad=pad, big_endian=big_endian)
    out = decode_color(**f)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)
    arr, kind = decode_image(**f)
    assert kind == "rgb"
    np.testing.assert_array_equal(arr, RGB)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("enc", sorted(GREY_CASES))
def test_grey_encodings_are_replicated(enc, pad, big_endian):
    out = decode_color(**fields(GREY_CASES[enc], enc, pad=pad, big_endian=big_endian))
    np.testing.assert_array_equal(out, np.repeat(RGB[..., :1], 3, axis=2))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("enc", ["16UC1", "mono16"])
def test_millimetre_depth(enc, pad, big_endian):
    mm = RNG.integers(1, 65536, size=(H, W)).astype(np.uint16)
    mm[0, 0] = 0
    mm[1, 1] = 258  # bytes 0x01 0x02: the byte order matters
    d = decode_depth(**fields(mm, enc, pad=pad, big_endian=big_endian))
    assert d.dtype == np.float32 and d.shape == (H, W)
    np.testing.assert_allclose(d, mm / 1000.0, rtol=1e-6)
    assert d[0, 0] == 0.0 and d[1, 1] == pytest.approx(0.258)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 4])
def test_metre_depth_invalid_values_become_zero(pad, big_endian):
    m = RNG.uniform(0.1, 10, size=(H, W)).astype(np.float32)
    m[0, :4] = [np.nan, np.inf, -np.inf, -0.5]
    d = decode_depth(**fields(m, "32FC1", pad=pad, big_endian=big_endian))
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d[0, :4], 0.0)
    np.testing.assert_array_equal(d[1:], m[1:])
    arr, kind = decode_image(**fields(m, "32FC1", pad=pad, big_endian=big_endian))
    assert kind == "depth"
    np.testing.assert_array_equal(arr, d)


def test_kind_and_encoding_names():
    assert canonical_encoding(" RGB8 ") == "rgb8" and canonical_encoding("16uc1") == "16UC1"
    assert decode_image(**fields(np.zeros((H, W), np.uint16), "16UC1"))[1] == "depth"
    assert decode_image(**fields(np.zeros((H, W), np.uint16), "mono16"))[1] == "rgb"
    assert set(DEPTH_ENCODINGS) == {"16UC1", "mono16", "32FC1"}


def test_data_types_and_ownership():
    f = fields(RGB, "rgb8", pad=2)
    copies = (bytearray(f["data"]), array.array("B", f["data"]), np.frombuffer(f["data"], np.uint8).copy())
    for data in (f["data"], *copies):
        out = decode_color(**dict(f, data=data))
        np.testing.assert_array_equal(out, RGB)
        if not isinstance(data, bytes):
            for i in range(len(data)):  # the output does not share the message's buffer
                data[i] = 0
            np.testing.assert_array_equal(out, RGB)
    px = raw_pixels(**fields(np.arange(H * W, dtype=np.uint16).reshape(H, W), "16UC1", pad=2, big_endian=True))
    assert px.dtype == np.uint16 and px.dtype.isnative and px.shape == (H, W)
    np.testing.assert_array_equal(px, np.arange(H * W).reshape(H, W))


def test_errors_name_the_problem():
    f = fields(RGB, "rgb8")
    with pytest.raises(ImageDecodeError, match=r"unsupported image encoding 'yuv422' \(supported: rgb8, bgr8"):
        decode_color(**dict(f, encoding="yuv422"))
    with pytest.raises(ImageDecodeError, match=r"depth image has encoding 'rgb8'; depth must be 16UC1"):
        decode_depth(**f)
    with pytest.raises(ImageDecodeError, match=r"'32FC1' is a depth encoding, not a colour image"):
        decode_color(**fields(np.ones((H, W), np.float32), "32FC1"))
    with pytest.raises(ImageDecodeError, match=r"step 14 is smaller than width 5 x 3 bytes per pixel = 15 \(rgb8\)"):
        decode_color(**dict(f, step=W * 3 - 1))
    with pytest.raises(ImageDecodeError, match=r"image data has 59 bytes, expected step 15 x height 4 = 60"):
        decode_color(**dict(f, data=f["data"][:-1]))
    with pytest.raises(ImageDecodeError, match=r"image data has 61 bytes, expected step 15 x height 4 = 60"):
        decode_color(**dict(f, data=f["data"] + b"\0"))
    with pytest.raises(ImageDecodeError, match=r"zero size \(0x4\)"):
        decode_color(**dict(f, width=0))
    with pytest.raises(ImageDecodeError, match=r"zero size \(5x0\)"):
        decode_depth(**dict(fields(np.ones((H, W), np.float32), "32FC1"), height=0, data=b""))
    d = fields(np.ones((H, W), np.uint16), "16UC1")
    with pytest.raises(ImageDecodeError, match=r"step 9 is smaller than width 5 x 2 bytes per pixel = 10 \(16UC1\)"):
        decode_depth(**dict(d, step=9))
    assert issubclass(ImageDecodeError, ValueError)
