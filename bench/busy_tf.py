"""A busy /tf against a quiet one: frames dropped and training rate of the trainer node with poses from TF.

    python bench/busy_tf.py [--runs 1] [--pairs 6] [--phase 25] [--settle 3] [--warmup 15] [--rate 5]
                            [--arm-hz 50] [--arm-links 20] [--extra-tf 0] [--out bench/results/busy_tf.json]

Needs tf2 (``tf2_ros``, ``tf2_msgs``) importable by this interpreter: it is not on PyPI; see the README.

A run starts two processes on a ROS domain of its own:

- the trainer node (``pose_source: tf``, ``tiny`` preset, ground-truth teacher, reliable input);
- a streamer that publishes a synthetic scene's images and camera_info at ``--rate`` Hz with the TF
  tree of a mobile manipulator:

  * ``map -> odom`` at 10 Hz, stamped 0.2 s ahead (as a localisation node publishes it);
  * ``odom -> base_link`` at each image's stamp, so that ``map -> camera_optical_frame`` at the stamp
    is the scene's camera pose;
  * static mounts on ``/tf_static``: ``base_link -> camera_link -> camera_optical_frame``;
  * **busy** phases only: an arm of ``--arm-links`` chained transforms ``base_link -> arm_link_1 ->
    ...``, all in one message at ``--arm-hz`` (what robot_state_publisher sends), plus ``--extra-tf``
    transforms a second in messages of 20 (other publishers). The messages are built once and only
    stamped when sent, so the streamer itself costs little.

Once training runs (and ``--warmup`` seconds more), quiet and busy phases of ``--phase`` seconds
alternate in the same trainer (quiet, busy, busy, quiet, ...; the streamer's arm is switched with
SIGUSR1, ``--settle`` seconds before each phase is measured), so both see the same load of a shared
machine. Each phase reads ``/lerf/status`` at its start and end: training steps, frames received and
dropped (with their reasons), and the CPU seconds of the trainer process, of its TF listener process
and of the streamer. The summary gives per mode steps/s, drop fraction, the trainer's CPU per step,
the load average, and busy steps/s as a share of quiet (overall, and the median of each busy phase
against the quiet phases next to it). The JSON keeps every phase and the start-up drop reasons.
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
    busy = [False]  # the arm (and --extra-tf) publish while busy; SIGUSR1 switches
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def switch(*_) -> None:
        busy[0] = not busy[0]
        if busy[0]:
            due.update({k: time.monotonic() for k in ("arm", "extra") if k in due})

    signal.signal(signal.SIGUSR1, switch)
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

    def send_msg(msg) -> None:
        tf_pub.publish(msg)
        sent["tf_messages"] += 1
        sent["transforms"] += len(msg.transforms)

    def send_tf(transforms) -> None:
        send_msg(TFMessage(transforms=transforms))

    arm_msgs = []
    if arm_period is not None:
        for i in range(max(1, int(round(args.arm_hz)))):
            phase, chain, parent = i / args.arm_hz, [], "base_link"
            for j in range(links):
                T = _translation(0.0, 0.0, 0.08) @ _rot_z(0.5 * math.sin(2 * math.pi * phase + 0.3 * j))
                chain.append(matrix_to_transform_stamped(T, parent, f"arm_link_{j + 1}"))
                parent = f"arm_link_{j + 1}"
            arm_msgs.append(TFMessage(transforms=chain))
    arm_index = 0
    extra_msg = TFMessage(
        transforms=[
            matrix_to_transform_stamped(_translation(0.01 * j, 0, 0), "base_link", f"sensor_{j}")
            for j in range(EXTRA_TF_PER_MESSAGE)
        ]
    )

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
        if busy[0] and arm_period is not None and now >= due["arm"]:
            # The arm's messages are built once (a second of motion, looped) and only stamped here: the
            # streamer shares the machine with the trainer, so it must cost little itself.
            msg = arm_msgs[arm_index % len(arm_msgs)]
            arm_index += 1
            st = stamp(now_ns())
            for t in msg.transforms:
                t.header.stamp = st
            send_msg(msg)
            due["arm"] += arm_period
        if busy[0] and extra_period is not None and now >= due["extra"]:
            st = stamp(now_ns())
            for t in extra_msg.transforms:
                t.header.stamp = st
            send_msg(extra_msg)
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
        wait = min(v for k, v in due.items() if busy[0] or k in ("image", "map")) - time.monotonic()
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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _cpu(trainer: int, streamer: int) -> Dict[str, float]:
    """CPU seconds so far: the trainer process, its TF listener process(es), the streamer."""
    return {
        "trainer": _cpu_s(trainer),
        "tf_listener": sum(_cpu_s(c) for c in _children(trainer)),
        "streamer": _cpu_s(streamer),
    }


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


def run(index: int, args: argparse.Namespace, scene_dir: Path, work: Path) -> Dict[str, Any]:
    """One trainer and one streamer; quiet and busy phases alternate (the streamer's arm is switched
    on and off with SIGUSR1), so both see the same load of a shared machine."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from lerf_ros.msg import TrainingStatus

    domain = 1 + (os.getpid() + 7 * index) % 101
    env = _env(domain)
    run_dir = work / f"run{index:02d}"
    run_dir.mkdir(parents=True)
    params = _params(run_dir / "params.yaml", scene_dir, run_dir / "out")
    trainer = _start(
        [sys.executable, "-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)],
        env,
        run_dir / "trainer.log",
    )
    streamer = _start(
        [
            sys.executable, str(Path(__file__).resolve()), "--stream", "--scene-dir", str(scene_dir),
            "--rate", str(args.rate), "--arm-hz", str(args.arm_hz), "--arm-links", str(args.arm_links),
            "--extra-tf", str(args.extra_tf),
        ],
        env,
        run_dir / "streamer.log",
    )  # fmt: skip
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

    def snap() -> Dict[str, Any]:
        t, m = last[0]
        return {
            "t": t,
            "step": int(m.step),
            "received": int(m.frames_received),
            "dropped": int(m.frames_dropped),
            "reasons": dict(zip(m.drop_reasons, [int(c) for c in m.drop_counts])),
            "load": os.getloadavg()[0],
            "cpu": _cpu(trainer.pid, streamer.pid),
        }

    result: Dict[str, Any] = {"index": index, "phases": []}
    busy = False
    try:
        t_start = time.monotonic()
        ok = spin_for(300.0, lambda: last[0] is not None and last[0][1].step > 0)
        if not ok:
            raise RuntimeError(f"no training within 300 s: {(run_dir / 'trainer.log').read_text()[-3000:]}")
        result["seconds_to_first_step"] = round(time.monotonic() - t_start, 1)
        result["startup_drop_reasons"] = snap()["reasons"]
        spin_for(args.warmup)
        order: List[str] = []
        for r in range(args.pairs):
            order += ["quiet", "busy"] if r % 2 == 0 else ["busy", "quiet"]
        for k, mode in enumerate(order):
            if (mode == "busy") != busy:
                os.kill(streamer.pid, signal.SIGUSR1)
                busy = not busy
            spin_for(args.settle)  # the switch reaches the trainer; frames in flight are processed
            a = snap()
            spin_for(args.phase)
            b = snap()
            dt = b["t"] - a["t"]
            phase = {
                "mode": mode,
                "seconds": round(dt, 2),
                "steps": b["step"] - a["step"],
                "frames_received": b["received"] - a["received"],
                "frames_dropped": b["dropped"] - a["dropped"],
                "drop_reasons": {
                    r: n - a["reasons"].get(r, 0) for r, n in b["reasons"].items() if n > a["reasons"].get(r, 0)
                },
                "cpu_s": {key: round(b["cpu"][key] - a["cpu"][key], 2) for key in a["cpu"]},
                "load_average_1min": round((a["load"] + b["load"]) / 2, 2),
            }
            phase["steps_per_s"] = round(phase["steps"] / max(dt, 1e-9), 3)
            result["phases"].append(phase)
            print(
                f"  phase {k + 1}/{len(order)} {mode}: {phase['steps_per_s']} steps/s, "
                f"{phase['frames_dropped']}/{phase['frames_received']} dropped, CPU s {phase['cpu_s']}, "
                f"load {phase['load_average_1min']}",
                flush=True,
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


def summarize(phases: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Totals per mode over all phases, and busy against quiet."""
    out: Dict[str, Any] = {}
    for mode in ("quiet", "busy"):
        ph = [p for p in phases if p["mode"] == mode]
        seconds = sum(p["seconds"] for p in ph)
        steps = sum(p["steps"] for p in ph)
        received = sum(p["frames_received"] for p in ph)
        dropped = sum(p["frames_dropped"] for p in ph)
        cpu = {k: sum(p["cpu_s"][k] for p in ph) for k in ("trainer", "tf_listener", "streamer")}
        out[mode] = {
            "phases": len(ph),
            "seconds": round(seconds, 1),
            "steps": steps,
            "steps_per_s": round(steps / max(seconds, 1e-9), 3),
            "frames_received": received,
            "frames_dropped": dropped,
            "drop_fraction": round(dropped / max(received, 1), 4),
            "trainer_cpu_share": round(cpu["trainer"] / max(seconds, 1e-9), 3),
            "trainer_cpu_s_per_step": round(cpu["trainer"] / max(steps, 1), 3),
            "tf_listener_cpu_share": round(cpu["tf_listener"] / max(seconds, 1e-9), 3),
            "streamer_cpu_share": round(cpu["streamer"] / max(seconds, 1e-9), 3),
            "load_average_1min": round(sum(p["load_average_1min"] for p in ph) / max(len(ph), 1), 2),
        }
    out["busy_steps_share_of_quiet"] = round(out["busy"]["steps_per_s"] / max(out["quiet"]["steps_per_s"], 1e-9), 3)
    # Paired: each busy phase against the mean of the quiet phases next to it (load drifts slowly).
    ratios = []
    for i, p in enumerate(phases):
        if p["mode"] != "busy":
            continue
        near = [q["steps_per_s"] for q in phases[max(0, i - 1) : i + 2] if q["mode"] == "quiet"]
        if near and sum(near) > 0:
            ratios.append(p["steps_per_s"] / (sum(near) / len(near)))
    out["busy_share_paired_median"] = round(float(sorted(ratios)[len(ratios) // 2]), 3) if ratios else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1, help="trainer processes, one after the other")
    p.add_argument("--pairs", type=int, default=6, help="quiet/busy phase pairs per run (order alternates)")
    p.add_argument("--phase", type=float, default=25.0, help="measured seconds per phase")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after a switch before measuring")
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
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        runs.append(run(i, args, scene_dir, work))
    summary = summarize([ph for r in runs for ph in r["phases"]])
    out = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("stream", "scene_dir", "out")},
        "tree": "map->odom 10 Hz stamped 0.2 s ahead; odom->base_link at the image stamps; static base_link->"
        "camera_link->camera_optical_frame; busy: base_link->arm_link_1..N in one message",
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
