"""Two cameras against one: training rate and 3D localization when a second camera feeds the field.

    python bench/two_cameras.py [--seeds 41 42] [--seconds 60] [--rate 4] [--threads 2]
                                [--width 96 --height 72 --frames 24] [--out bench/results/two_cameras.json]

For each seed (not the main benchmark's, ``lerf_ros.bench.settings``) a synthetic scene (``tiny``
preset, ground-truth teacher) is streamed at ``--rate`` Hz for ``--seconds`` seconds of wall time into
an ``OnlineTrainer``, looping over the trajectory, twice:

- **one camera**: the scene's frames;
- **two cameras**: the same frames and, with the same stamps, a second camera 12 cm beside the first
  (``lerf_ros.data.synthetic.offset_camera_frames``), each camera with its own keyframe selector as
  the trainer node gives it (``Session.submit(frame, selector)``).

Reported per run: training steps, steps/s and rays/s (training throughput while frames arrive),
keyframes taken per camera and held at the end, and localization: for every object, whether the most
relevant point of the query for its class name lies in its box (grown by 2 cm) on the final snapshot.
Numbers are wall-clock on this machine with ``--threads`` torch threads; the JSON records the load.

With ``--steps-per-frame K`` the stream is paced by training instead of the clock (one frame per camera
every K training steps, from the first step on) and each run ends at ``--steps`` training steps: the
localization then does not depend on how busy the machine is (the rates still do).

    python bench/two_cameras.py --seeds 41 42 --steps-per-frame 2 --steps 600
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

import torch  # noqa: E402

from lerf_ros.config import preset  # noqa: E402
from lerf_ros.data.synthetic import make_scene, offset_camera_frames  # noqa: E402

GROW = 0.02
"""Metres a box is grown by when checking that an answer lies in it (as the main benchmark)."""


def run(seed: int, cameras: int, scene, wrist, args) -> Dict[str, Any]:
    from lerf_ros.mapping.online import OnlineTrainer
    from lerf_ros.mapping.selection import KeyframeSelector
    from lerf_ros.query import QueryEngine
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    tmp = tempfile.mkdtemp(prefix="lerf_two_cameras_")
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "device": "cpu",
            "seed": seed,
            "output_dir": tmp,
            "trainer.checkpoint_every": 0,
            "trainer.max_steps": 10**7,
        }
    )
    teacher = GroundTruthTeacher(scene)
    ot = OnlineTrainer(cfg, teacher=teacher, log=lambda lvl, t: None, snapshot_every=50)
    selectors = [ot.session.selector] + [KeyframeSelector(cfg.keyframes) for _ in range(cameras - 1)]
    streams = [scene.frames, wrist][:cameras]
    taken = [0] * cameras
    stop = threading.Event()
    sent = [0]

    paced = args.steps_per_frame > 0

    def feed() -> None:
        t0 = time.perf_counter()
        k = 0
        while not stop.is_set():
            if paced and k >= cfg.keyframes.min_keyframes_to_train:
                # one frame per camera every steps_per_frame training steps (the first ones at once)
                due = (k - cfg.keyframes.min_keyframes_to_train + 1) * args.steps_per_frame
                while ot.step < due and not stop.is_set():
                    stop.wait(0.01)
            stamp = 100.0 + k / args.rate
            for c in range(cameras):
                f = dataclasses.replace(streams[c][k % len(scene.frames)], stamp=stamp, index=k)
                if ot.submit(f, selector=selectors[c]).kept:
                    taken[c] += 1
                sent[0] += 1
            k += 1
            if not paced:
                wait = t0 + k / args.rate - time.perf_counter()
                if wait > 0:
                    stop.wait(wait)

    ot.start()
    feeder = threading.Thread(target=feed, daemon=True)
    t_begin = time.perf_counter()
    feeder.start()
    first_step_t = None
    rays: List[float] = []

    def running() -> bool:
        if paced:
            return ot.step < args.steps
        return time.perf_counter() - t_begin < args.seconds

    while running():
        time.sleep(0.2 if paced else 1.0)
        st = ot.status()
        if first_step_t is None and st.step > 0:
            first_step_t = time.perf_counter() - t_begin
        if st.step > 0:
            rays.append(float(st.rays_per_second))
    stop.set()
    feeder.join(timeout=30.0)
    wall = time.perf_counter() - t_begin
    ot.set_paused(True)  # the step count and the snapshot are final from here on
    st = ot.status()
    steps = int(st.step)
    snap = ot.session.snapshot() if steps > 0 else None
    ot.close(save=False, timeout_s=10.0)

    engine = QueryEngine(cfg.query, teacher.encode_text)
    names = [o.class_name for o in scene.objects]
    engine.texts.embed(names + list(cfg.query.canonical_phrases))
    correct = []
    if snap is not None:
        engine.set_snapshot(snap)
        engine.prepare()
        for obj in scene.objects:
            r = engine.query(obj.class_name)
            correct.append(bool(r.success and len(r.points) and obj.contains(r.points[:1], GROW)[0]))
    shutil.rmtree(tmp, ignore_errors=True)
    train_s = wall - (first_step_t or wall)
    return {
        "seed": seed,
        "cameras": cameras,
        "frames_sent": sent[0],
        "keyframes_taken": taken,
        "keyframes_held": int(st.keyframes),
        "steps": steps,
        "snapshot_step": int(snap.step) if snap is not None else 0,
        "first_step_s": first_step_t,
        "steps_per_s": steps / train_s if train_s >= 1.0 else None,  # from the first step to the end
        "rays_per_s_median": sorted(rays)[len(rays) // 2] if rays else 0.0,
        "localized": sum(correct),
        "objects": len(scene.objects),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[41, 42])
    p.add_argument("--seconds", type=float, default=60.0, help="wall time streamed per run (s)")
    p.add_argument("--rate", type=float, default=4.0, help="frames per second per camera")
    p.add_argument(
        "--steps-per-frame",
        type=float,
        default=0.0,
        help="pace the stream by training: one frame per camera every this many steps (0: by the clock)",
    )
    p.add_argument("--steps", type=int, default=600, help="with --steps-per-frame: training steps per run")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=72)
    p.add_argument("--frames", type=int, default=24, help="frames of the trajectory (looped)")
    p.add_argument("--out", default="bench/results/two_cameras.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        scene = make_scene(seed=seed, width=args.width, height=args.height, n_frames=args.frames)
        wrist = offset_camera_frames(scene)
        for cameras in (1, 2):
            row = run(seed, cameras, scene, wrist, args)
            rows.append(row)
            print(
                f"seed {seed} cameras {cameras}: {row['steps']} steps ({row['steps_per_s'] or 0:.2f}/s, "
                f"{row['rays_per_s_median']:.0f} rays/s), keyframes taken {row['keyframes_taken']} held "
                f"{row['keyframes_held']}, localized {row['localized']}/{row['objects']}",
                flush=True,
            )
    result = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
