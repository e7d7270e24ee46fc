"""Resident memory of the online trainer's keyframes against the bound a user sets.

    python bench/bench_memory.py [--bounds-mb 8 64 192] [--frames 1000] [--out FILE]

For each bound M (``keyframes.max_memory_mb``), in a fresh process: an online trainer over a
320x240 synthetic RGB-D stream with the scene's ground-truth teacher (no CLIP weights needed), every
frame a keyframe candidate (no motion threshold), so the memory bound is what limits the store.
The training thread runs one step (the model and optimiser then exist and stop growing), then
``--frames`` frames are streamed, waiting for each one's teacher features so the store's content is
final. Reported for each M: the growth of the resident set size (RSS) from just before the stream
(free heap pages returned to the system first, so the baseline is live memory) to its end (no such
help: what a long-running node sees), next to M and to the bytes the store itself accounts (images +
depth, teacher features); and between consecutive bounds the marginal cost,
(growth(M2) - growth(M1)) / (M2 - M1): what each megabyte of ``max_memory_mb`` really costs, with
the fixed costs of a run cancelled out. 1.0 means the bound holds exactly; a second copy of every
image would show as about 1.6 here (images are about half a keyframe's bytes at 320x240 with this teacher).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def trim_heap() -> None:
    """Return free heap pages to the system (glibc ``malloc_trim``) so the baseline reading holds only
    live memory; a no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):
        pass


def measure(bound_mb: float, n_frames: int, width: int, height: int) -> dict:
    """One run in this process (see the module doc)."""
    import tempfile

    import torch

    from lerf_ros.config import preset
    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.mapping.online import OnlineTrainer
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    torch.set_num_threads(2)
    scene = make_scene(seed=11, width=width, height=height, n_frames=24, nthreads=2)
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "output_dir": tempfile.mkdtemp(prefix="lerf_mem_"),
            "keyframes.max_memory_mb": bound_mb,
            "keyframes.max_keyframes": 100000,
            "keyframes.min_translation": 0.0,
            "keyframes.min_rotation_deg": 0.0,
            "keyframes.min_keyframes_to_train": 1,
            "keyframes.max_image_side": max(width, height),
            "trainer.max_steps": 1,
            "trainer.checkpoint_every": 0,
        }
    )
    # Small teacher vectors, so that the images (not the features) fill the store.
    ot = OnlineTrainer(cfg, teacher=GroundTruthTeacher(scene, clip_dim=32, dino_dim=4), log=lambda level, text: None)

    def settle() -> None:
        deadline = time.time() + 60
        while ot.status().features_pending > 0 and time.time() < deadline:
            time.sleep(0.002)

    frames = scene.frames

    def frame(k: int):
        f = frames[k % len(frames)]
        # A new image object per message, as a ROS callback would decode one.
        return dataclasses.replace(
            f, rgb=f.rgb.copy(), depth=f.depth.copy(), instance=f.instance.copy(), stamp=1.0 + 0.2 * k
        )

    ot.start()
    ot.submit(frame(0))
    settle()
    deadline = time.time() + 120
    while ot.step < 1 and time.time() < deadline:
        time.sleep(0.01)
    trim_heap()  # the baseline: live memory only (the first step's freed temporaries are not resident)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    for k in range(1, n_frames + 1):
        ot.submit(frame(k))
        settle()
    time.sleep(0.5)  # the training thread attaches the last features
    stream_s = time.perf_counter() - t0
    rss1 = rss_mb()
    st = ot.status()
    store = getattr(ot, "keyframes", None) or ot.store
    stats = store.stats()
    ot.close()
    image_bytes = stats.get("image_bytes", stats["bytes"] - stats["feature_bytes"])
    return {
        "bound_mb": bound_mb,
        "frames": n_frames,
        "size": [width, height],
        "keyframes": st.keyframes,
        "steps": ot.step,
        "store_mb": stats["bytes"] / 2**20,
        "store_image_mb": image_bytes / 2**20,
        "store_feature_mb": stats["feature_bytes"] / 2**20,
        "rss_before_mb": rss0,
        "rss_after_mb": rss1,
        "rss_growth_mb": rss1 - rss0,
        "rss_growth_over_bound": (rss1 - rss0) / bound_mb,
        "stream_s": stream_s,
    }


def marginal_costs(runs: list) -> list:
    """Between consecutive bounds (ascending): the RSS growth difference over the bound difference."""
    runs = sorted(runs, key=lambda r: r["bound_mb"])
    out = []
    for a, b in zip(runs, runs[1:]):
        d = b["rss_growth_mb"] - a["rss_growth_mb"]
        out.append(
            {
                "from_mb": a["bound_mb"],
                "to_mb": b["bound_mb"],
                "growth_delta_mb": d,
                "per_mb_of_bound": d / (b["bound_mb"] - a["bound_mb"]),
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bounds-mb", type=float, nargs="+", default=[8.0, 64.0, 192.0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--out", default=os.path.join(HERE, "results", "memory.json"))
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process: one bound, JSON on stdout
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.frames, args.width, args.height)))
        return 0
    runs = []
    for m in args.bounds_mb:
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                str(m),
                "--frames",
                str(args.frames),
                "--width",
                str(args.width),
                "--height",
                str(args.height),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(r)
        print(
            f"M = {m:g} MB: {r['keyframes']} keyframes, store {r['store_mb']:.1f} MB "
            f"(images {r['store_image_mb']:.1f}, "
            f"features {r['store_feature_mb']:.1f}); RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB, "
            f"growth {r['rss_growth_mb']:.1f} MB = {r['rss_growth_over_bound']:.2f} x M ({r['stream_s']:.0f} s)",
            flush=True,
        )
    marginal = marginal_costs(runs)
    for m in marginal:
        print(
            f"M {m['from_mb']:g} -> {m['to_mb']:g} MB: RSS growth {m['growth_delta_mb']:+.1f} MB = "
            f"{m['per_mb_of_bound']:.2f} MB per MB of bound",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(
            {
                "runs": runs,
                "marginal": marginal,
                "command": "python bench/bench_memory.py " + " ".join(sys.argv[1:]),
            },
            fh,
            indent=2,
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
