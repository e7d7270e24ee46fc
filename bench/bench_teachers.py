"""Cost of the 2D teachers per keyframe.

Measures, with random weights (these numbers are about cost only):
  - crops per keyframe at 640x480 and 1280x720 for the default (reference) pyramid and cheaper ones;
  - OpenCLIP image-encoder throughput in crops/s, end to end (crop cut-out + resize + forward) and
    the forward alone, over a few batches of real pyramid boxes;
  - DINO dense-feature time per keyframe;
  - seconds of teacher work per keyframe = crops / throughput + DINO time, and feature bytes stored.
Writes JSON (default bench/results/teachers.json) and prints a table.

    python bench/bench_teachers.py                  # CPU, 2 torch threads, ViT-B-16
    python bench/bench_teachers.py --device cuda    # fp16 autocast on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lerf_ros.config import TeacherConfig  # noqa: E402
from lerf_ros.teachers.clip import ClipEncoder  # noqa: E402
from lerf_ros.teachers.dino import DinoEncoder, dino_input_size  # noqa: E402
from lerf_ros.teachers.pyramid import crops_per_frame, layout_from_config  # noqa: E402

RESOLUTIONS = [(480, 640), (720, 1280)]

#: name -> overrides of TeacherConfig (the default is the reference pyramid)
PYRAMIDS: Dict[str, dict] = {
    "reference: 7 lv 5-50%, 50% ovl, ramp": {},
    "7 lv 5-50%, 50% ovl, no ramp": dict(pyramid_overlap_ramp=()),
    "5 lv 5-50%, 50% ovl, ramp": dict(pyramid_levels=5),
    "7 lv 10-50%, 50% ovl, ramp": dict(pyramid_min=0.10),
    "5 lv 10-50%, 50% ovl, ramp": dict(pyramid_levels=5, pyramid_min=0.10),
    "4 lv 10-50%, 50% ovl, ramp (tiny)": dict(pyramid_levels=4, pyramid_min=0.10),
    "7 lv 5-50%, 25% ovl, ramp": dict(pyramid_overlap=0.25),
    "4 lv 10-50%, no overlap": dict(pyramid_levels=4, pyramid_min=0.10, pyramid_overlap=0.0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> List[float]:
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def bench_clip(model: str, device: str, batch_size: int, batches: int, rgb: np.ndarray) -> dict:
    t0 = time.perf_counter()
    enc = ClipEncoder(model, random_weights=True, device=device, batch_size=batch_size)
    build_s = time.perf_counter() - t0
    levels = layout_from_config(rgb.shape[0], rgb.shape[1], TeacherConfig())
    boxes = np.concatenate([lv.boxes() for lv in levels])
    # a spread of crops from every level, as one keyframe's batches would hold
    pick = np.linspace(0, len(boxes) - 1, batch_size * (batches + 1)).round().astype(int)
    boxes = boxes[pick]
    warm, timed = boxes[:batch_size], boxes[batch_size:]
    enc.encode_crops(rgb, warm)
    chunks = [timed[i : i + batch_size] for i in range(0, len(timed), batch_size)]
    it = iter(chunks)
    e2e = _timed(lambda: enc.encode_crops(rgb, next(it)), enc.device, len(chunks))
    crops = torch.randn(batch_size, 3, enc.image_size, enc.image_size, device=enc.device)
    fwd = _timed(lambda: enc.encode_images(crops), enc.device, len(chunks))
    return {
        "model": model,
        "device": str(enc.device),
        "batch_size": batch_size,
        "timed_batches": len(chunks),
        "build_s": round(build_s, 2),
        "description": enc.description,
        "crops_per_s_end_to_end": round(batch_size / statistics.median(e2e), 2),
        "crops_per_s_forward_only": round(batch_size / statistics.median(fwd), 2),
        "batch_seconds_end_to_end": [round(t, 3) for t in e2e],
    }


def bench_dino(device: str, repeats: int) -> dict:
    enc = DinoEncoder(random_weights=True, device=device)
    out = {"model": enc.model_name, "facet": enc.facet, "max_side": enc.max_side, "description": enc.description}
    for h, w in RESOLUTIONS:
        rgb = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
        enc.dense_features(rgb)  # warm-up
        ts = _timed(lambda img=rgb: enc.dense_features(img), enc.device, repeats)
        hi, wi = dino_input_size(h, w, enc.max_side, enc.patch_size)
        out[f"{w}x{h}"] = {
            "input": f"{wi}x{hi}",
            "grid": f"{wi // enc.patch_size}x{hi // enc.patch_size}",
            "seconds": round(statistics.median(ts), 3),
            "feature_bytes": (hi // enc.patch_size) * (wi // enc.patch_size) * enc.embed_dim * 2,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--models", default="ViT-B-16", help="comma-separated OpenCLIP architectures")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3, help="timed batches (after one warm-up batch)")
    ap.add_argument("--dino-repeats", type=int, default=2)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "results", "teachers.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    counts = {}
    for name, over in PYRAMIDS.items():
        cfg = replace(TeacherConfig(), **over).check()
        counts[name] = {"config": over, **{f"{w}x{h}": crops_per_frame(h, w, cfg) for h, w in RESOLUTIONS}}

    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    clip = [bench_clip(m.strip(), args.device, args.batch_size, args.batches, rgb) for m in args.models.split(",")]
    dino = bench_dino(args.device, args.dino_repeats)

    per_keyframe = {}
    for c in clip:
        rate = c["crops_per_s_end_to_end"]
        dim = 768 if "L-14" in c["model"] else 512
        for name, cnt in counts.items():
            for h, w in RESOLUTIONS:
                key = f"{w}x{h}"
                n = cnt[key]
                per_keyframe.setdefault(c["model"], {}).setdefault(name, {})[key] = {
                    "crops": n,
                    "clip_s": round(n / rate, 2),
                    "dino_s": dino[key]["seconds"],
                    "total_s": round(n / rate + dino[key]["seconds"], 2),
                    "feature_mb": round((n * dim * 2 + dino[key]["feature_bytes"]) / 2**20, 2),
                }

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "note": "random weights: cost only",
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "crops_per_keyframe": counts,
        "clip": clip,
        "dino": dino,
        "seconds_per_keyframe": per_keyframe,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    _print_table(result)
    print(f"\nwrote {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _print_table(r: dict) -> None:
    m = r["machine"]
    print(
        f"teacher cost (random weights) on {m['cpu']}, {m['torch_threads']} torch threads, load {m['load_average'][0]}"
    )
    for c in r["clip"]:
        print(
            f"  OpenCLIP {c['model']} on {c['device']}: {c['crops_per_s_end_to_end']} crops/s end to end, "
            f"{c['crops_per_s_forward_only']} crops/s forward only (batch {c['batch_size']}, "
            f"{c['timed_batches']} batches)"
        )
    d = r["dino"]
    for key in (f"{w}x{h}" for h, w in RESOLUTIONS):
        print(
            f"  DINO {d['model']} [{d['facet']}] {key} -> input {d[key]['input']}, grid {d[key]['grid']}: "
            f"{d[key]['seconds']} s"
        )
    for model, rows in r["seconds_per_keyframe"].items():
        print(
            f"\n  {'pyramid (' + model + ')':44s} {'crops 640x480':>14s} {'s/kf':>8s} {'crops 1280x720':>15s} "
            f"{'s/kf':>8s} {'MB/kf':>6s}"
        )
        for name, row in rows.items():
            a, b = row["640x480"], row["1280x720"]
            print(
                f"  {name:44s} {a['crops']:14d} {a['total_s']:8.1f} {b['crops']:15d} {b['total_s']:8.1f} "
                f"{a['feature_mb']:6.1f}"
            )


if __name__ == "__main__":
    sys.exit(main())
