"""Decoding of raw ``sensor_msgs/Image`` fields into numpy (ROS-free).

The one image decoder of the package: the ROS message conversions (``lerf_ros.ros.convert``) and
the rosbag2 reader (``lerf_ros.data.rosbag``) both hand it the message fields (``encoding``,
``height``, ``width``, ``step``, ``is_bigendian``, ``data``) and get the package's arrays back:

- colour: (H, W, 3) uint8 RGB. 8-bit rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8 (grey
  replicated), OpenCV's 8UC1 / 8UC3 / 8UC4 (grey, BGR, BGRA); 16-bit rgb16, bgr16, rgba16, bgra16
  and mono16 keep their high byte.
- depth: (H, W) float32 metric z-depth. 16UC1 and mono16 are millimetres on the wire, 32FC1 is
  metres. Non-finite and negative values become 0: 0 is the one "no measurement" value.

Row padding (``step`` larger than a row) is skipped and ``is_bigendian`` is honoured for multi-byte
encodings. Encoding names are matched case-insensitively. Every problem raises ``ImageDecodeError``
naming it: an unknown encoding, a colour encoding where depth is wanted (or the reverse), a zero
size, a row step smaller than a row, or data whose length is not ``step * height``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = [
    "ImageDecodeError",
    "ENCODINGS",
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "canonical_encoding",
    "image_kind",
    "raw_pixels",
    "decode_color",
    "decode_depth",
    "decode_image",
]


class ImageDecodeError(ValueError):
    """Image fields that cannot be decoded; the message names the problem."""


_U8, _U16, _F32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)

#: encoding -> (channel dtype, channels, RGB channel order; None for depth)
_LAYOUTS: Dict[str, Tuple[np.dtype, int, Optional[Tuple[int, int, int]]]] = {
    "rgb8": (_U8, 3, (0, 1, 2)),
    "bgr8": (_U8, 3, (2, 1, 0)),
    "rgba8": (_U8, 4, (0, 1, 2)),
    "bgra8": (_U8, 4, (2, 1, 0)),
    "mono8": (_U8, 1, (0, 0, 0)),
    "8UC1": (_U8, 1, (0, 0, 0)),
    "8UC3": (_U8, 3, (2, 1, 0)),
    "8UC4": (_U8, 4, (2, 1, 0)),
    "rgb16": (_U16, 3, (0, 1, 2)),
    "bgr16": (_U16, 3, (2, 1, 0)),
    "rgba16": (_U16, 4, (0, 1, 2)),
    "bgra16": (_U16, 4, (2, 1, 0)),
    "mono16": (_U16, 1, (0, 0, 0)),
    "16UC1": (_U16, 1, None),
    "32FC1": (_F32, 1, None),
}

ENCODINGS: Dict[str, Tuple[np.dtype, int]] = {name: (dt, ch) for name, (dt, ch, _) in _LAYOUTS.items()}
"""Every decodable encoding -> (channel dtype, channels per pixel)."""
COLOR_ENCODINGS = tuple(name for name, (_, _, order) in _LAYOUTS.items() if order is not None)
"""Encodings ``decode_color`` takes (and ``decode_image`` returns as kind 'rgb')."""
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
"""Encodings ``decode_depth`` takes: 16UC1 and mono16 in millimetres, 32FC1 in metres."""

_BY_LOWER = {name.lower(): name for name in _LAYOUTS}


def canonical_encoding(encoding: str) -> str:
    """The package's spelling of ``encoding`` (matched case-insensitively); raises ImageDecodeError."""
    name = _BY_LOWER.get(str(encoding).strip().lower())
    if name is None:
        raise ImageDecodeError(f"unsupported image encoding '{encoding}' (supported: {', '.join(_LAYOUTS)})")
    return name


def image_kind(encoding: str) -> str:
    """'depth' for 16UC1 and 32FC1, 'rgb' for the colour encodings (mono16 counts as colour here;
    ``decode_depth`` also takes it as millimetres)."""
    return "depth" if canonical_encoding(encoding) in ("16UC1", "32FC1") else "rgb"


def _as_bytes(data: Any) -> np.ndarray:
    """A flat uint8 view of bytes, a bytearray, an ``array.array`` or a numpy array."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def raw_pixels(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    """The pixels as stored, in native byte order, row padding removed.

    Returns (H, W, C) for multi-channel encodings and (H, W) for one channel, with the encoding's
    channel dtype (uint8, uint16 or float32). The array owns its memory.
    Raises ImageDecodeError for an unknown encoding, a zero size, a row step smaller than a row or
    data whose length is not ``step * height``.
    """
    enc = canonical_encoding(encoding)
    dtype, ch = ENCODINGS[enc]
    h, w, step = int(height), int(width), int(step)
    if h <= 0 or w <= 0:
        raise ImageDecodeError(f"image has zero size ({w}x{h})")
    row = w * ch * dtype.itemsize
    if step < row:
        raise ImageDecodeError(
            f"image step {step} is smaller than width {w} x {ch * dtype.itemsize} bytes per pixel = {row} ({enc})"
        )
    buf = _as_bytes(data)
    if buf.size != step * h:
        raise ImageDecodeError(
            f"image data has {buf.size} bytes, expected step {step} x height {h} = {step * h} ({w}x{h} {enc})"
        )
    rows = buf.reshape(h, step)[:, :row]
    wire = dtype.newbyteorder(">" if is_bigendian else "<") if dtype.itemsize > 1 else dtype
    px = np.ascontiguousarray(rows).view(wire).astype(dtype, copy=True)
    return px.reshape(h, w, ch) if ch > 1 else px.reshape(h, w)


def decode_color(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    """Image fields -> (H, W, 3) uint8 RGB (see the module doc for the encodings).

    Raises ImageDecodeError for a depth encoding and for the problems ``raw_pixels`` names.
    """
    enc = canonical_encoding(encoding)
    order = _LAYOUTS[enc][2]
    if order is None:
        raise ImageDecodeError(
            f"'{enc}' is a depth encoding, not a colour image (colour encodings: {', '.join(COLOR_ENCODINGS)})"
        )
    px = raw_pixels(enc, height, width, step, is_bigendian, data)
    if px.ndim == 2:
        px = px[..., None]
    rgb = px[..., list(order)]
    if rgb.dtype == np.uint16:
        rgb = rgb >> 8
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def decode_depth(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    """Image fields -> (H, W) float32 metres; non-finite and negative values become 0 (no measurement).

    Raises ImageDecodeError for an encoding other than 16UC1 / mono16 (millimetres) or 32FC1
    (metres), and for the problems ``raw_pixels`` names.
    """
    enc = canonical_encoding(encoding)
    if enc not in DEPTH_ENCODINGS:
        raise ImageDecodeError(
            f"depth image has encoding '{enc}'; depth must be 16UC1 or mono16 (millimetres) or 32FC1 (metres)"
        )
    px = raw_pixels(enc, height, width, step, is_bigendian, data)
    if px.dtype == np.uint16:
        return px.astype(np.float32) * np.float32(0.001)
    depth = px.astype(np.float32, copy=False)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def decode_image(
    encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any
) -> Tuple[np.ndarray, str]:
    """Image fields -> ``(array, kind)``: kind 'depth' with ``decode_depth``'s array for 16UC1 and
    32FC1, else kind 'rgb' with ``decode_color``'s array."""
    if image_kind(encoding) == "depth":
        return decode_depth(encoding, height, width, step, is_bigendian, data), "depth"
    return decode_color(encoding, height, width, step, is_bigendian, data), "rgb"
