"""`lerf-ros demo`: the whole product on a bare machine, end to end, over ROS.

1. renders (once) the bundled synthetic tabletop scene;
2. starts the trainer + query nodes (one process) and `lerf-ros replay` (another process) that
   streams the scene as a live posed camera at 5 Hz;
3. shows training progress from /lerf/status;
4. asks /lerf/query for every object of the scene (by name), a synonym, and absent objects, and
   prints each answer, its best grasp pose and the latency; writes a PLY of each relevancy cloud
   and a PNG per query (a keyframe image with the relevancy overlaid and the grasp drawn).

The teacher is the synthetic scene's ground truth (no CLIP weights are needed or used); see the
README for real CLIP weights on real data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEMO_SEED = 3
TEACHER_NOTE = (
    "NOTE: the 2D teacher in this demo is the synthetic scene's GROUND TRUTH (its instance maps and class\n"
    "labels), not CLIP. It measures the 3D system honestly without model weights. For real data:\n"
    "  - real CLIP/DINO weights: set teacher.kind: clip and teacher.clip_checkpoint / dino_checkpoint\n"
    "    (or warm the OpenCLIP/timm caches once), see README 'Real CLIP and DINO weights';\n"
    "  - a rosbag2 file: `lerf-ros replay BAG_DIR` instead of the synthetic scene, or play it with ros2 bag;\n"
    "  - a live camera: `lerf-ros run --remap image:=/camera/color/image_raw --remap camera_info:=...`\n"
    "    (or `ros2 launch lerf_ros lerf.launch.py ...`) with the camera pose on TF or a pose topic."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (scene, checkpoints, PLY, PNG, summary)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="synthetic scene seed")
    p.add_argument("--steps", type=int, default=1500, help="training steps before querying")
    p.add_argument("--max-minutes", type=float, default=12.0, help="query anyway after this long")
    p.add_argument("--rate", type=float, default=5.0, help="replay rate (frames per second)")
    p.add_argument("--preset", default="tiny", help="model preset (tiny trains on a CPU)")


def _ros_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(domain_id))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _write_params(path: Path, scene_dir: Path, out: Path, preset: str, steps: int) -> None:
    path.write_text(
        "/**:\n  ros__parameters:\n"
        f"    preset: {preset}\n    output_dir: '{out / 'run'}'\n    world_frame: map\n"
        f"    teacher:\n      kind: ground_truth\n      scene_dir: '{scene_dir}'\n"
        f"    trainer:\n      max_steps: {steps}\n      checkpoint_every: 500\n"
        "lerf_trainer:\n  ros__parameters:\n    pose_source: pose\n    status_rate_hz: 2.0\n    resume: false\n"
    )


def run(args: argparse.Namespace) -> int:
    """Render the scene, start the nodes and the replay as child processes, then follow and query.
    SIGTERM stops it as Ctrl-C does (the children are stopped on the way out), also before the ROS
    client has installed rclpy's own handlers."""
    import signal

    from lerf_ros.data.synthetic import load_scene, make_scene

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _interrupt)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(TEACHER_NOTE, "\n", flush=True)
    scene_dir = out / f"scene_seed{args.seed}"
    if (scene_dir / "scene.json").is_file():
        scene = load_scene(scene_dir)
    else:
        print(f"rendering the synthetic scene (seed {args.seed}) ...", flush=True)
        scene = make_scene(seed=args.seed, width=160, height=120, n_frames=60)
        scene.save(scene_dir)
    print(f"scene: {len(scene.objects)} objects on a table: {', '.join(o.name for o in scene.objects)}")
    print(f"preview: {scene_dir / 'preview.png'}\n", flush=True)

    params = out / "params.yaml"
    _write_params(params, scene_dir, out, args.preset, args.steps)
    env = _ros_env(domain_id=42)
    logs = {name: open(out / f"{name}.log", "wb") for name in ("nodes", "replay")}
    nodes = subprocess.Popen(
        [sys.executable, "-m", "lerf_ros.ros.lerf_node", "--ros-args", "--params-file", str(params)],
        env=env,
        stdout=logs["nodes"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    replay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lerf_ros.cli",
            "replay",
            str(scene_dir),
            "--rate",
            str(args.rate),
            "--loop",
            "--wait-for-subscribers",
            "1",
        ],
        env=env,
        stdout=logs["replay"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    print(
        f"started the nodes (log {out / 'nodes.log'}) and the replay at {args.rate:g} Hz (log {out / 'replay.log'})",
        flush=True,
    )
    try:
        return _client(args, scene, out, env, nodes)
    finally:
        for p in (replay, nodes):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in (replay, nodes):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in logs.values():
            f.close()


def _client(args, scene, out: Path, env: dict, nodes) -> int:
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    from tqdm import tqdm

    from lerf_ros.ros.client import LerfClient

    client = LerfClient("lerf_demo", follow_status=True)
    t_start = time.monotonic()
    bar = tqdm(total=args.steps, desc="training", unit="step", dynamic_ncols=True)
    try:
        first_frame_t = None
        while True:
            client.spin_once(0.2)
            if nodes.poll() is not None:
                print(f"the nodes exited with code {nodes.returncode}; see {out / 'nodes.log'}", file=sys.stderr)
                return 1
            s = client.status
            if s is not None:
                if first_frame_t is None and s.frames_received > 0:
                    first_frame_t = time.monotonic()
                bar.n = min(int(s.step), args.steps)
                bar.set_postfix_str(
                    f"{s.state_name}, {s.frames_kept} keyframes, PSNR {s.psnr:.1f} dB, {s.rays_per_second:.0f} rays/s",
                    refresh=False,
                )
                bar.refresh()
                if s.step >= args.steps:
                    break
            if time.monotonic() - t_start > 60 * args.max_minutes:
                print(f"\nstill training after {args.max_minutes:g} min: querying the current model", flush=True)
                break
        bar.close()
        # Give the query node a moment to take the newest snapshot.
        t_wait = time.monotonic() + 5.0
        while time.monotonic() < t_wait:
            client.spin_once(0.1)
        queries = []
        for o in scene.objects:
            queries.append((o.name, o))
        if scene.objects and scene.objects[0].synonyms:
            queries.append((scene.objects[0].synonyms[0], scene.objects[0]))
        for absent in scene.absent_classes()[:2]:
            queries.append((absent, None))
        summary = []
        print()
        for text, obj in queries:
            t0 = time.perf_counter()
            result = client.query(text, timeout=120.0)
            ms = 1000.0 * (time.perf_counter() - t0)
            if result is None:
                print(f"'{text}': no reply from /lerf/query within 120 s; see {out / 'nodes.log'}", file=sys.stderr)
                return 1
            summary.append(_report(text, obj, result, ms, scene, out))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        correct = [r for r in summary if r["expected"] is not None]
        n_ok = sum(r["top_point_on_object"] for r in correct)
        print(
            f"\n{n_ok}/{len(correct)} object queries answered on the right object; "
            f"absent-object queries above threshold: {sum(r['success'] for r in summary if r['expected'] is None)}"
        )
        if first_frame_t is not None:
            print(f"training time from the first frame: {time.monotonic() - first_frame_t:.0f} s")
        print(f"wrote {out / 'summary.json'}, PLY clouds and PNG overlays in {out / 'queries'}")
        print("\n" + TEACHER_NOTE)
        return 0
    finally:
        bar.close()  # ends the bar's line (an interrupt's message starts on its own line)
        client.close()


def _report(text, obj, result, ms, scene, out: Path) -> dict:
    """Print one answer (a ``lerf_ros.query.QueryResult``) and write its PLY and PNG; the summary record."""
    import numpy as np

    from lerf_ros.commands.query import write_relevancy_ply
    from lerf_ros.geometry.poses import matrix_to_quat

    qdir = out / "queries"
    qdir.mkdir(exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in text)[:40]
    rec = {
        "text": text,
        "expected": obj.name if obj is not None else None,
        "success": bool(result.success),
        "message": result.message,
        "latency_ms": round(ms, 1),
        "model_step": int(result.step),
        "scale_m": round(float(result.scale), 3),
        "max_relevancy": round(float(result.max_relevancy), 3),
        "top_point_on_object": False,
        "grasp": None,
    }
    head = f"'{text}'" + (f" (object: {obj.name})" if obj is not None else " (absent)")
    if not result.success:
        print(f"{head}: no answer: {result.message} [{ms:.0f} ms]")
        return rec
    xyz = np.asarray(result.points, np.float64)
    rel = np.asarray(result.relevancy, np.float64)
    top = xyz[int(np.argmax(rel))]
    if obj is not None:
        rec["top_point_on_object"] = bool(obj.contains(top[None], margin=0.02)[0])
    line = (
        f"{head}: {len(xyz)} points, max relevancy {result.max_relevancy:.2f} at scale {result.scale:.2f} m, "
        f"step {result.step}, {ms:.0f} ms"
    )
    if result.grasps:
        g = result.grasps[0]
        p, q = g.pose[:3, 3], matrix_to_quat(g.pose)
        rec["grasp"] = {
            "position": p.tolist(),
            "orientation_xyzw": q.tolist(),
            "width_m": float(g.width),
            "score": float(g.score),
        }
        line += (
            f"\n    best grasp: position ({p[0]:+.3f}, {p[1]:+.3f}, {p[2]:+.3f}) m, quaternion "
            f"({q[0]:+.2f}, {q[1]:+.2f}, {q[2]:+.2f}, {q[3]:+.2f}), width {g.width * 100:.1f} cm"
        )
    if obj is not None:
        line += "  [on the object]" if rec["top_point_on_object"] else "  [NOT on the object]"
    print(line, flush=True)
    write_relevancy_ply(qdir / f"{slug}.ply", xyz, rel)
    _write_overlay(qdir / f"{slug}.png", text, scene, obj, xyz, rel, result)
    return rec


def _write_overlay(path: Path, text: str, scene, obj, xyz, rel, result) -> None:
    """A keyframe image (the one seeing the object best), relevancy points projected on it, grasp drawn."""
    import numpy as np
    from PIL import Image, ImageDraw

    frames = scene.frames
    if obj is not None:
        idx = int(np.argmax([(f.instance == obj.instance_id).sum() for f in frames]))
    else:
        idx = len(frames) // 2
    f = frames[idx]
    up = 4
    img = Image.fromarray(f.rgb).resize((f.width * up, f.height * up), Image.NEAREST).convert("RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    w2c = np.linalg.inv(f.c2w)

    def project(p):
        pc = (w2c[:3, :3] @ np.asarray(p).T).T + w2c[:3, 3]
        uv = (f.K @ pc.T).T
        return uv[:, :2] / np.maximum(uv[:, 2:3], 1e-6) * up, pc[:, 2]

    uv, z = project(xyz)
    order = np.argsort(rel)
    lo, hi = float(rel.min()), float(max(rel.max(), rel.min() + 1e-6))
    for i in order:
        if z[i] <= 0:
            continue
        t = (rel[i] - lo) / (hi - lo)
        draw.ellipse(
            [uv[i, 0] - 2, uv[i, 1] - 2, uv[i, 0] + 2, uv[i, 1] + 2],
            fill=(int(255 * t), int(220 * t), int(255 * (1 - t)), 200),
        )
    for k, g in enumerate(result.grasps[:3]):
        T = g.pose
        w = float(g.width) / 2
        pts = np.array(
            [
                T[:3, 3] + T[:3, :3] @ v
                for v in ([0, -w, 0], [0, w, 0], [0, -w, -0.04], [0, w, -0.04], [0, 0, -0.04], [0, 0, -0.12])
            ]
        )
        (a, b, c, d, e, s), zz = project(pts)
        if (zz <= 0).any():
            continue
        col = (40, 255, 60, 255) if k == 0 else (200, 200, 200, 180)
        for p0, p1 in ((a, c), (b, d), (c, d), (e, s)):
            draw.line([tuple(p0), tuple(p1)], fill=col, width=3 if k == 0 else 1)
    draw.text((6, 6), f"'{text}'  max relevancy {result.max_relevancy:.2f}", fill=(255, 255, 255, 255))
    img.save(path)
