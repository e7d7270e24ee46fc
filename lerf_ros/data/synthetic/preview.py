"""A contact sheet of a synthetic scene (``preview.png``): frames, depth, instances, a labelled top view."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["save_preview", "palette"]


def save_preview(scene, path: Union[str, os.PathLike], tiles: int = 12) -> Path:
    """Write a contact sheet PNG of ``scene`` (a :class:`~lerf_ros.data.synthetic.scene.SyntheticScene`)
    to ``path``: up to ``tiles`` RGB frames spread over the trajectory, then depth and instance maps
    of the first of them, a top view with object labels, and a legend. Returns the path."""
    from PIL import Image, ImageDraw

    tw = 240
    th = int(round(tw * scene.params["height"] / scene.params["width"]))
    idx = np.unique(np.linspace(0, len(scene.frames) - 1, min(tiles, len(scene.frames))).round().astype(int))
    cols = 4
    rows = int(math.ceil(len(idx) / cols))
    pad = 4
    bottom_h = max(th, 200)
    sheet = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + pad) + bottom_h + 3 * pad), (32, 32, 36))
    draw = ImageDraw.Draw(sheet)
    for j, i in enumerate(idx):
        f = scene.frames[i]
        x, y = pad + (j % cols) * (tw + pad), pad + (j // cols) * (th + pad)
        sheet.paste(Image.fromarray(f.rgb).resize((tw, th), Image.NEAREST), (x, y))
        draw.text((x + 3, y + 2), f"#{i} {f.meta.get('segment', '')}", fill=(255, 255, 255))
    y0 = rows * (th + pad) + 2 * pad
    f = scene.frames[idx[0]]
    dep = f.depth.copy()
    valid = dep > 0
    lo, hi = np.percentile(dep[valid], [1, 99]) if valid.any() else (0.0, 1.0)
    dimg = np.where(valid, 255 * (1 - np.clip((dep - lo) / max(hi - lo, 1e-6), 0, 1)), 0).astype(np.uint8)
    sheet.paste(Image.fromarray(dimg).convert("RGB").resize((tw, th), Image.NEAREST), (pad, y0))
    pal = palette(len(scene.objects) + 1)
    sheet.paste(Image.fromarray(pal[f.instance]).resize((tw, th), Image.NEAREST), (2 * pad + tw, y0))
    draw.text((pad + 3, y0 + 2), "depth", fill=(255, 255, 255))
    draw.text((2 * pad + tw + 3, y0 + 2), "instances", fill=(255, 255, 255))
    top = Image.fromarray(scene.top_view())
    scale = min(bottom_h / top.height, (tw * 1.4) / top.width)
    top = top.resize((int(top.width * scale), int(top.height * scale)), Image.BILINEAR)
    tx = 3 * pad + 2 * tw
    sheet.paste(top, (tx, y0))
    ppm = top.width / (scene.table_size[0] + 0.1)
    for o in scene.objects:
        px = tx + (o.center[0] + (scene.table_size[0] + 0.1) / 2) * ppm
        py = y0 + ((scene.table_size[1] + 0.1) / 2 - o.center[1]) * ppm
        draw.text(
            (px - 3 * len(o.name), py - 5),
            o.name,
            fill=tuple(int(c) for c in pal[o.instance_id]),
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
    lx = tx + top.width + 2 * pad
    lines = [f"seed {scene.seed}  {scene.params['width']}x{scene.params['height']}  {len(scene.frames)} frames"]
    lines += [f"{o.instance_id}: {o.name}" for o in scene.objects]
    for k, line in enumerate(lines):
        col = (255, 255, 255) if k == 0 else tuple(int(c) for c in pal[k])
        draw.text((lx, y0 + 2 + 13 * k), line, fill=col)
    path = Path(path)
    sheet.save(path)
    return path


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours; index 0 (background) is dark grey."""
    import colorsys

    rgb = np.array([colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95) for k in range(n)]).reshape(n, 3)
    rgb[0] = [0.2, 0.2, 0.2]
    return np.round(rgb * 255).astype(np.uint8)
