"""A busy /tf against a quiet one: frames dropped and training rate of the trainer node with poses from TF.

    python bench/busy_tf.py [--repeats 2] [--seconds 60] [--warmup 15] [--rate 5] [--arm-hz 50]
                            [--arm-links 20] [--extra-tf 0] [--out bench/results/busy_tf.json]

Needs tf2 (``tf2_ros``, ``tf2_msgs``) importable by this interpreter: it is not on PyPI; see the README.

Each run starts two processes on a ROS domain of its own:

- the trainer node (``pose_source: tf``, ``tiny`` preset, ground-truth teacher, reliable input);
- a streamer that publishes a synthetic scene's images and camera_info at ``--rate`` Hz with the TF
  tree of a mobile manipulator:

  * ``map -> odom`` at 10 Hz, stamped 0.2 s ahead (as a localisation node publishes it);
  * ``odom -> base_link`` at each image's stamp, so that ``map -> camera_optical_frame`` at the stamp
    is the scene's camera pose;
  * static mounts on ``/tf_static``: ``base_link -> camera_link -> camera_optical_frame``;
  * **busy** only: an arm of ``--arm-links`` chained transforms ``base_link -> arm_link_1 -> ...``,
    all in one message at ``--arm-hz`` (what robot_state_publisher sends), plus ``--extra-tf``
    transforms a second in messages of 20 (other publishers); **quiet**: no arm.

Quiet and busy runs alternate (quiet, busy, busy, quiet, ...) so that both see the same load of a shared
machine. A run waits for training to start, lets ``--warmup`` seconds pass, then measures ``--seconds``
seconds of wall time from ``/lerf/status``: training steps per second, frames received and dropped
(with their reasons). The JSON records each run, the load averages and the comparison (busy steps/s as
a share of quiet, drops).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
CAMERA = "camera_optical_frame"
MAP_TO_ODOM_HZ = 10.0
MAP_TO_ODOM_AHEAD_S = 0.2
EXTRA_TF_PER_MESSAGE = 20


def _rot_z(yaw: float):
    import numpy as np

    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def _translation(x: float, y: float, z: float):
    import numpy as np

    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def tree():
    """The fixed transforms: map -> odom, base_link -> camera_link, camera_link -> camera_optical_frame."""
    import numpy as np

    map_to_odom = _translation(0.4, -0.3, 0.0) @ _rot_z(math.radians(12.0))
    base_to_link = _translation(0.15, 0.0, 0.9)
    optical = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)  # x right, y down, z ahead
    return map_to_odom, base_to_link, optical


# ---------------------------------------------------------------------------------------------- streamer
def stream(args: argparse.Namespace) -> int:
    """The streamer process: images, camera_info and the TF tree until SIGINT."""
    import numpy as np
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from lerf_ros.data.synthetic import SyntheticScene
    from lerf_ros.ros.convert import K_to_camera_info, matrix_to_transform_stamped, numpy_to_image

    scene = SyntheticScene.load(args.scene_dir)
    frames = scene.frames
    map_to_odom, base_to_link, optical = tree()
    base_to_camera = base_to_link @ optical
    camera_to_base = np.linalg.inv(base_to_camera)
    odom_to_map = np.linalg.inv(map_to_odom)

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rclpy.init()
    node = rclpy.create_node("busy_tf_streamer")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, "image", reliable)
    info_pub = node.create_publisher(CameraInfo, "camera_info", reliable)
    tf_pub = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
    static_pub = node.create_publisher(
        TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    )
    static_pub.publish(
        TFMessage(
            transforms=[
                matrix_to_transform_stamped(base_to_link, "base_link", "camera_link", Time().to_msg()),
                matrix_to_transform_stamped(optical, "camera_link", CAMERA, Time().to_msg()),
            ]
        )
    )

    def now_ns() -> int:
        return node.get_clock().now().nanoseconds

    def stamp(ns: int):
        return Time(nanoseconds=ns).to_msg()

    links = int(args.arm_links)
    arm_period = 1.0 / args.arm_hz if args.arm_hz > 0 else None
    extra_period = EXTRA_TF_PER_MESSAGE / args.extra_tf if args.extra_tf > 0 else None
    t0 = time.monotonic()
    due = {"image": t0 + 1.0, "map": t0}
    if arm_period is not None:
        due["arm"] = t0
    if extra_period is not None:
        due["extra"] = t0
    k = 0
    sent = {"images": 0, "tf_messages": 0, "transforms": 0}

    def send_tf(transforms) -> None:
        tf_pub.publish(TFMessage(transforms=transforms))
        sent["tf_messages"] += 1
        sent["transforms"] += len(transforms)

    while not stop:
        now = time.monotonic()
        if now >= due["map"]:
            send_tf(
                [
                    matrix_to_transform_stamped(
                        map_to_odom, "map", "odom", stamp(now_ns() + int(MAP_TO_ODOM_AHEAD_S * 1e9))
                    )
                ]
            )
            due["map"] += 1.0 / MAP_TO_ODOM_HZ
        if arm_period is not None and now >= due["arm"]:
            ns, phase = now_ns(), now - t0
            chain = []
            parent = "base_link"
            for j in range(links):
                T = _translation(0.0, 0.0, 0.08) @ _rot_z(0.5 * math.sin(phase * (1.0 + 0.1 * j)))
                child = f"arm_link_{j + 1}"
                chain.append(matrix_to_transform_stamped(T, parent, child, stamp(ns)))
                parent = child
            send_tf(chain)
            due["arm"] += arm_period
        if extra_period is not None and now >= due["extra"]:
            ns = now_ns()
            send_tf(
                [
                    matrix_to_transform_stamped(_translation(0.01 * j, 0, 0), "base_link", f"sensor_{j}", stamp(ns))
                    for j in range(EXTRA_TF_PER_MESSAGE)
                ]
            )
            due["extra"] += extra_period
        if now >= due["image"]:
            f = frames[k % len(frames)]
            ns = now_ns()
            odom_to_base = odom_to_map @ f.c2w @ camera_to_base
            send_tf([matrix_to_transform_stamped(odom_to_base, "odom", "base_link", stamp(ns))])
            info_pub.publish(K_to_camera_info(f.K, f.width, f.height, stamp(ns), CAMERA))
            image_pub.publish(numpy_to_image(f.rgb, "rgb8", stamp(ns), CAMERA))
            sent["images"] += 1
            k += 1
            due["image"] += 1.0 / args.rate
        wait = min(due.values()) - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.05))
        for key, when in due.items():  # far behind (a stalled machine): do not burst to catch up
            if time.monotonic() - when > 1.0:
                due[key] = time.monotonic()
    print(json.dumps(sent), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------------------------------------- runs
def _env(domain: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
        RCUTILS_LOGGING_BUFFERED_STREAM="0",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        MKL_NUM_THREADS=env.get("MKL_NUM_THREADS", "1"),
    )
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _start(argv: List[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=str(REPO),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop(p: subprocess.Popen, timeout: float = 20.0) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=timeout if sig == signal.SIGINT else 5.0)
            return
        except subprocess.TimeoutExpired:
            continue


def _params(path: Path, scene_dir: Path, out_dir: Path) -> Path:
    lines = [
        "/**:",
        "  ros__parameters:",
        "    preset: tiny",
        f"    output_dir: '{out_dir}'",
        "    world_frame: map",
        "    device: cpu",
        "    teacher:",
        "      kind: ground_truth",
        f"      scene_dir: '{scene_dir}'",
        "    trainer:",
        "      checkpoint_every: 0",
        "      max_steps: 10000000",
        "    keyframes:",
        "      min_keyframes_to_train: 2",
        "lerf_trainer:",
        "  ros__parameters:",
        "    pose_source: tf",
        "    odom_frame: odom",
        "    status_rate_hz: 2.0",
        "    input_qos_reliability: reliable",
        "    input_qos_depth: 20",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_once(mode: str, index: int, args: argparse.Namespace, scene_dir: Path, work: Path) -> Dict[str, Any]:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from lerf_ros.msg import TrainingStatus

    domain = 1 + (os.getpid() + 7 * index) % 101
    env = _env(domain)
    run_dir = work / f"{index:02d}_{mode}"
    run_dir.mkdir(parents=True)
    params = _params(run_dir / "params.yaml", scene_dir, run_dir / "out")
    trainer = _start(
        [sys.executable, "-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)],
        env,
        run_dir / "trainer.log",
    )
    arm_hz = args.arm_hz if mode == "busy" else 0.0
    extra = args.extra_tf if mode == "busy" else 0.0
    streamer = _start(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--stream",
            "--scene-dir",
            str(scene_dir),
            "--rate",
            str(args.rate),
            "--arm-hz",
            str(arm_hz),
            "--arm-links",
            str(args.arm_links),
            "--extra-tf",
            str(extra),
        ],
        env,
        run_dir / "streamer.log",
    )
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("busy_tf_monitor", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    last: List[Any] = [None]
    node.create_subscription(TrainingStatus, "/lerf/status", lambda m: last.__setitem__(0, (time.monotonic(), m)), 10)

    def spin_for(seconds: float, until=None) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if until is not None and until():
                return True
            if trainer.poll() is not None:
                raise RuntimeError(f"trainer exited: {(run_dir / 'trainer.log').read_text()[-3000:]}")
            executor.spin_once(timeout_sec=0.1)
        return until is None or bool(until())

    def snap(entry) -> Dict[str, Any]:
        t, m = entry
        return {
            "t": t,
            "step": int(m.step),
            "received": int(m.frames_received),
            "dropped": int(m.frames_dropped),
            "kept": int(m.frames_kept),
            "reasons": dict(zip(m.drop_reasons, [int(c) for c in m.drop_counts])),
        }

    result: Dict[str, Any] = {"mode": mode, "index": index, "arm_hz": arm_hz, "extra_tf_per_s": extra}
    try:
        t_start = time.monotonic()
        ok = spin_for(240.0, lambda: last[0] is not None and last[0][1].step > 0)
        if not ok:
            raise RuntimeError(f"no training within 240 s: {(run_dir / 'trainer.log').read_text()[-3000:]}")
        result["seconds_to_first_step"] = round(time.monotonic() - t_start, 1)
        spin_for(args.warmup)
        first = snap(last[0])
        load0 = os.getloadavg()
        spin_for(args.seconds)
        end = snap(last[0])
        load1 = os.getloadavg()
        dt = end["t"] - first["t"]
        received = end["received"] - first["received"]
        dropped = end["dropped"] - first["dropped"]
        reasons = {k: v - first["reasons"].get(k, 0) for k, v in end["reasons"].items()}
        result.update(
            seconds=round(dt, 1),
            steps=end["step"] - first["step"],
            steps_per_s=round((end["step"] - first["step"]) / dt, 3),
            frames_received=received,
            frames_dropped=dropped,
            drop_fraction=round(dropped / max(received, 1), 4),
            drop_reasons={k: v for k, v in reasons.items() if v > 0},
            keyframes_at_end=end["kept"],
            startup_drop_reasons=first["reasons"],
            load_average_1min=[round(load0[0], 2), round(load1[0], 2)],
        )
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        _stop(streamer)
        _stop(trainer)
    sent = (run_dir / "streamer.log").read_text().strip().splitlines()
    try:
        result["streamer_sent"] = json.loads(sent[-1]) if sent else {}
    except json.JSONDecodeError:
        result["streamer_sent"] = {"log": sent[-3:]}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="quiet/busy pairs (alternating order)")
    p.add_argument("--seconds", type=float, default=60.0, help="measured wall time per run")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds after the first training step before measuring")
    p.add_argument("--rate", type=float, default=5.0, help="image rate (Hz)")
    p.add_argument("--arm-hz", type=float, default=50.0, help="busy: rate of the arm's message")
    p.add_argument("--arm-links", type=int, default=20, help="busy: transforms in the arm's message")
    p.add_argument("--extra-tf", type=float, default=0.0, help="busy: further transforms a second (messages of 20)")
    p.add_argument("--seed", type=int, default=7, help="scene seed")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=72)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "busy_tf.json"))
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scene-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stream:
        return stream(args)

    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        print("tf2_ros is not importable: this benchmark needs tf2 (see the README's TF section)", file=sys.stderr)
        return 2
    from lerf_ros.data.synthetic import make_scene

    work = Path(tempfile.mkdtemp(prefix="lerf_busy_tf_"))
    scene_dir = work / "scene"
    make_scene(seed=args.seed, width=args.width, height=args.height, n_frames=args.frames, nthreads=1).save(
        scene_dir, preview=False
    )
    order = []
    for r in range(args.repeats):
        order += ["quiet", "busy"] if r % 2 == 0 else ["busy", "quiet"]
    runs = []
    for i, mode in enumerate(order):
        print(f"run {i + 1}/{len(order)}: {mode} ...", flush=True)
        r = run_once(mode, i, args, scene_dir, work)
        print(
            f"  {mode}: {r.get('steps_per_s')} steps/s, {r.get('frames_dropped')}/{r.get('frames_received')} dropped "
            f"{r.get('drop_reasons')}, load {r.get('load_average_1min')}",
            flush=True,
        )
        runs.append(r)

    def mean(mode: str, key: str) -> float:
        vals = [r[key] for r in runs if r["mode"] == mode and key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    busy_received = sum(r.get("frames_received", 0) for r in runs if r["mode"] == "busy")
    busy_dropped = sum(r.get("frames_dropped", 0) for r in runs if r["mode"] == "busy")
    summary = {
        "quiet_steps_per_s": round(mean("quiet", "steps_per_s"), 3),
        "busy_steps_per_s": round(mean("busy", "steps_per_s"), 3),
        "busy_share_of_quiet": round(mean("busy", "steps_per_s") / mean("quiet", "steps_per_s"), 3),
        "busy_drop_fraction": round(busy_dropped / max(busy_received, 1), 4),
        "quiet_drop_fraction": round(
            sum(r.get("frames_dropped", 0) for r in runs if r["mode"] == "quiet")
            / max(sum(r.get("frames_received", 0) for r in runs if r["mode"] == "quiet"), 1),
            4,
        ),
        "busy_tf_per_s": args.arm_hz * args.arm_links + args.extra_tf,
    }
    out = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("stream", "scene_dir", "out")},
        "tree": "map->odom 10 Hz stamped 0.2 s ahead; odom->base_link at image stamps; static base_link->camera_link->"
        "camera_optical_frame; busy: base_link->arm_link_1..N in one message",
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
