"""Soak and fuzz test of the trainer node's input side (rerun it: ``python bench/soak.py --minutes 3``).

Starts a trainer node (preset ``tiny``, the ground-truth teacher of a synthetic scene made here) as a
child process on a ROS domain of its own, loopback only (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``),
and streams a valid replay of the scene at a live clock interleaved with fuzzed messages: wrong
encodings, bad sizes and row steps, NaN / zero / non-unit / absurd poses, poses in a wrong frame,
far-future and far-past stamps on poses and images, stamps going backwards, bad camera_info, depth in
a colour encoding or of the wrong size. Bounded in time (``--minutes``, default 10) and in messages
(``--max-messages``).

Checks, written to ``bench/results/soak.json`` and ``soak.md``:

- the node stays alive, and exits with code 0 on SIGINT at the end;
- the status keeps coming (largest gap between two /lerf/status messages) and never reports an error;
- resident memory is flat once the keyframe store is full (growth over the second half of the run);
- training continues (the step increases in every minute after training started);
- every distinct drop reason in the status was logged exactly once (no reason stays silent, none is
  repeated within its quiet period);
- after every poisoned stamp the valid stream is learning again within 10 s: a new keyframe enters
  the store (a new ``/lerf/keyframes`` message) at most 10 s after the poison was sent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RECOVERY_LIMIT_S = 10.0
CAMERA = "camera_optical_frame"


def child_env(domain: int) -> Dict[str, str]:
    """Environment of the trainer (and of this process): own domain, loopback discovery, one thread."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def write_params(path: Path, scene_dir: Path, output_dir: Path, max_keyframes: int) -> None:
    path.write_text(
        "\n".join(
            [
                "lerf_trainer:",
                "  ros__parameters:",
                "    preset: tiny",
                f"    output_dir: '{output_dir}'",
                "    world_frame: map",
                "    pose_source: pose",
                "    status_rate_hz: 2.0",
                "    resume: false",
                "    teacher:",
                "      kind: ground_truth",
                f"      scene_dir: '{scene_dir}'",
                "    trainer:",
                "      checkpoint_every: 0",
                "      max_steps: 1000000",
                "    keyframes:",
                "      min_keyframes_to_train: 2",
                f"      max_keyframes: {max_keyframes}",
            ]
        )
        + "\n"
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def logged_reasons(log: str) -> Dict[str, int]:
    """{reason key: first-time log lines} of the trainer's 'dropping frame: ...' warnings."""
    from lerf_ros.ros.trainer_node import reason_key

    out: Dict[str, int] = {}
    for m in re.finditer(r"\]: dropping frame: (.*?) \(repeats are counted in ", log):
        key = reason_key(m.group(1))
        out[key] = out.get(key, 0) + 1
    return out


class Soak:
    """The publisher side: a valid stream, fuzz, and what the trainer reports back."""

    def __init__(self, node, scene, rng: np.random.Generator) -> None:
        from geometry_msgs.msg import PoseArray, PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from lerf_ros.msg import TrainingStatus
        from lerf_ros.ros.common import LATCHED_QOS

        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.node, self.frames, self.rng = node, scene.frames, rng
        self.image = node.create_publisher(Image, "image", qos)
        self.info = node.create_publisher(CameraInfo, "camera_info", qos)
        self.depth = node.create_publisher(Image, "depth", qos)
        self.pose = node.create_publisher(PoseStamped, "pose", qos)
        self.status: List[tuple] = []  # (wall time, msg)
        self.keyframe_updates: List[float] = []
        node.create_subscription(TrainingStatus, "/lerf/status", lambda m: self.status.append((time.time(), m)), 10)
        node.create_subscription(
            PoseArray, "/lerf/keyframes", lambda m: self.keyframe_updates.append(time.time()), LATCHED_QOS
        )
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.sent: Dict[str, int] = {}
        self.poisons: List[dict] = []
        self.messages = 0

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    # ------------------------------------------------------------------ messages
    def _image(self, i: int, stamp: float, encoding: str = "rgb8"):
        from lerf_ros.ros.convert import numpy_to_image

        return numpy_to_image(self.frames[i % len(self.frames)].rgb, encoding, stamp, CAMERA)

    def _info(self, i: int, stamp: float):
        from lerf_ros.ros.convert import K_to_camera_info

        f = self.frames[i % len(self.frames)]
        return K_to_camera_info(f.K, f.width, f.height, stamp, CAMERA)

    def _pose(self, i: int, stamp: float, frame_id: str = "map"):
        from geometry_msgs.msg import PoseStamped

        from lerf_ros.ros.convert import matrix_to_pose, sec_to_stamp

        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = sec_to_stamp(stamp), frame_id
        msg.pose = matrix_to_pose(self.frames[i % len(self.frames)].c2w)
        return msg

    def _publish(self, pub, msg) -> None:
        pub.publish(msg)
        self.messages += 1

    def valid(self, i: int, stamp: float) -> None:
        """One valid frame: camera_info, pose, then (a moment later) the image."""
        self._publish(self.info, self._info(i, stamp))
        self._publish(self.pose, self._pose(i, stamp))
        self.spin(0.03)
        self._publish(self.image, self._image(i, stamp))

    def fuzz(self, i: int, stamp: float) -> str:
        """One fuzzed message (or a bad frame) of a randomly chosen kind; returns the kind."""
        kinds = list(self.FUZZ)
        kind = kinds[int(self.rng.integers(len(kinds)))]
        self.FUZZ[kind](self, i, stamp)
        self.sent[kind] = self.sent.get(kind, 0) + 1
        return kind

    def _far(self) -> float:
        return float(self.rng.choice([-1.0, 1.0]) * 10 ** self.rng.uniform(4.0, 7.0))

    def _poison(self, kind: str, offset: float) -> None:
        self.poisons.append({"kind": kind, "offset_s": offset, "sent": time.time()})

    def _f_encoding(self, i, stamp):
        msg = self._image(i, stamp)
        msg.encoding = str(self.rng.choice(["yuv422_yuy2", "bayer_rggb8", "jpeg", "x" * 500]))
        self._publish(self.image, msg)

    def _f_depth_as_image(self, i, stamp):
        self._publish(self.image, self._depth_image(i, stamp))  # a depth encoding on the colour topic

    def _depth_image(self, i, stamp):
        from lerf_ros.ros.convert import numpy_to_image

        f = self.frames[i % len(self.frames)]
        return numpy_to_image(np.ones((f.height, f.width), np.float32), "32FC1", stamp, CAMERA)

    def _f_small_image(self, i, stamp):
        from lerf_ros.ros.convert import numpy_to_image

        f = self.frames[i % len(self.frames)]
        self._publish(self.image, numpy_to_image(f.rgb[: f.height // 2, : f.width // 2].copy(), "rgb8", stamp, CAMERA))

    def _f_zero_image(self, i, stamp):
        msg = self._image(i, stamp)
        msg.height = msg.width = msg.step = 0
        msg.data = b""
        self._publish(self.image, msg)

    def _f_short_step(self, i, stamp):
        msg = self._image(i, stamp)
        msg.step -= 1
        msg.data = bytes(msg.data[: msg.step * msg.height])
        self._publish(self.image, msg)

    def _f_short_data(self, i, stamp):
        msg = self._image(i, stamp)
        msg.data = bytes(msg.data[: len(msg.data) // 2])
        self._publish(self.image, msg)

    def _bad_pose(self, i, stamp, edit: Callable) -> None:
        msg = self._pose(i, stamp)
        edit(msg.pose)
        self._publish(self.pose, msg)

    def _f_nan_pose(self, i, stamp):
        self._bad_pose(i, stamp, lambda p: setattr(p.position, "x", float("nan")))

    def _f_zero_quat(self, i, stamp):
        def edit(p):
            p.orientation.x = p.orientation.y = p.orientation.z = p.orientation.w = 0.0

        self._bad_pose(i, stamp, edit)

    def _f_scaled_quat(self, i, stamp):
        self._bad_pose(i, stamp, lambda p: setattr(p.orientation, "w", p.orientation.w * 3.0 + 1.0))

    def _f_absurd_pose(self, i, stamp):
        self._bad_pose(i, stamp, lambda p: setattr(p.position, "x", 1e12))

    def _f_pose_frame(self, i, stamp):
        self._publish(self.pose, self._pose(i, stamp, frame_id=str(self.rng.choice(["odom", "f" * 10000]))))

    def _f_far_pose(self, i, stamp):
        off = self._far()
        self._publish(self.pose, self._pose(i, max(stamp + off, 1.0)))
        self._poison("pose", off)

    def _f_far_image(self, i, stamp):
        off = self._far()
        self._publish(self.info, self._info(i, stamp))
        self._publish(self.image, self._image(i, max(stamp + off, 1.0)))
        self._poison("image", off)

    def _f_backwards(self, i, stamp):
        self._publish(self.image, self._image(i, stamp - float(self.rng.uniform(0.5, 5.0))))

    def _f_nan_k(self, i, stamp):
        msg = self._info(i, stamp)
        k = list(msg.k)
        k[int(self.rng.integers(9))] = float("nan")
        msg.k = k
        self._publish(self.info, msg)

    def _f_zero_info(self, i, stamp):
        msg = self._info(i, stamp)
        msg.width = msg.height = 0
        self._publish(self.info, msg)

    def _f_zero_focal(self, i, stamp):
        msg = self._info(i, stamp)
        k = list(msg.k)
        k[0] = 0.0
        msg.k = k
        self._publish(self.info, msg)

    def _f_depth_rgb8(self, i, stamp):
        s = stamp + 0.01
        self._publish(self.info, self._info(i, s))
        self._publish(self.pose, self._pose(i, s))
        self._publish(self.depth, self._image(i, s))  # a colour image on the depth topic
        self.spin(0.03)
        self._publish(self.image, self._image(i, s))

    def _f_depth_size(self, i, stamp):
        from lerf_ros.ros.convert import numpy_to_image

        s = stamp + 0.01
        self._publish(self.info, self._info(i, s))
        self._publish(self.pose, self._pose(i, s))
        self._publish(self.depth, numpy_to_image(np.ones((5, 7), np.float32), "32FC1", s, CAMERA))
        self.spin(0.03)
        self._publish(self.image, self._image(i, s))

    FUZZ = {
        "wrong_encoding": _f_encoding,
        "depth_on_image": _f_depth_as_image,
        "image_smaller_than_info": _f_small_image,
        "zero_image_size": _f_zero_image,
        "row_step_too_small": _f_short_step,
        "image_data_short": _f_short_data,
        "nan_pose": _f_nan_pose,
        "zero_quaternion": _f_zero_quat,
        "non_unit_quaternion": _f_scaled_quat,
        "pose_1e12_m": _f_absurd_pose,
        "pose_wrong_frame": _f_pose_frame,
        "far_stamp_pose": _f_far_pose,
        "far_stamp_image": _f_far_image,
        "stamp_backwards": _f_backwards,
        "nan_in_K": _f_nan_k,
        "zero_camera_info_size": _f_zero_info,
        "zero_focal_length": _f_zero_focal,
        "depth_in_rgb8": _f_depth_rgb8,
        "depth_wrong_size": _f_depth_size,
    }


def run(args) -> dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.msg import TrainingStatus

    domain = args.domain_id or 1 + os.getpid() % 101
    env = child_env(domain)
    for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RCUTILS_LOGGING_BUFFERED_STREAM"):
        os.environ[k] = env[k]
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lerf_soak_"))
    scene = make_scene(seed=5, width=64, height=48, n_frames=24, nthreads=1)
    scene.save(work / "scene", preview=False)
    params = work / "params.yaml"
    write_params(params, work / "scene", work / "out", args.max_keyframes)
    log_path = work / "trainer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)],
            env=env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("lerf_soak", context=ctx)
    soak = Soak(node, scene, rng)
    result: dict = {"domain_id": domain, "seed": args.seed, "rate_hz": args.rate, "fuzz_per_frame": args.fuzz_per_frame}
    rss: List[tuple] = []
    t_start = time.time()
    try:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and proc.poll() is None:
            soak.spin(0.1)
            if soak.status and soak.image.get_subscription_count() and soak.pose.get_subscription_count():
                break
        if proc.poll() is not None or not soak.status:
            raise RuntimeError("the trainer did not start:\n" + log_path.read_text(errors="replace")[-4000:])
        t_start = time.time()
        end = time.monotonic() + 60.0 * args.minutes
        period = 1.0 / args.rate
        i = 0
        last_rss = 0.0
        while time.monotonic() < end and soak.messages < args.max_messages and proc.poll() is None:
            t0 = time.monotonic()
            stamp = time.time()
            soak.valid(i, stamp)
            soak.spin(period * 0.3)
            for _ in range(args.fuzz_per_frame):
                soak.fuzz(i, stamp)
            i += 1
            if time.monotonic() - last_rss >= 2.0:
                last_rss = time.monotonic()
                rss.append((time.time() - t_start, rss_mb(proc.pid)))
            soak.spin(max(0.0, period - (time.monotonic() - t0)))
        soak.spin(RECOVERY_LIMIT_S + 1.0)  # the last poisons' recovery window (the valid stream has stopped)
        alive = proc.poll() is None
        result["valid_frames_sent"] = i
    finally:
        duration = time.time() - t_start
        t_stop = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=30.0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        exit_s = time.monotonic() - t_stop
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    log = log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ the checks
    statuses = [(t - t_start, m) for t, m in soak.status if t >= t_start]
    last = statuses[-1][1]
    gaps = np.diff([t for t, _ in statuses]) if len(statuses) > 1 else np.array([0.0])
    errors = [m.message for _, m in statuses if m.state == TrainingStatus.STATE_ERROR]
    steps = [(t, int(m.step)) for t, m in statuses]
    train_t0 = next((t for t, s in steps if s > 0), None)
    minute_gains = []
    if train_t0 is not None:
        t = train_t0
        while t + 60.0 <= duration:
            a = max(s for tt, s in steps if tt <= t)
            b = max(s for tt, s in steps if tt <= t + 60.0)
            minute_gains.append(b - a)
            t += 60.0
    # Flat memory: the median of the last quarter against that of the second quarter (the store is
    # full by then); single samples swing by tens of MB with the allocator.
    q2 = [v for t, v in rss if duration / 4 <= t < duration / 2]
    q4 = [v for t, v in rss if t >= 3 * duration / 4]
    rss_growth = float(np.median(q4) - np.median(q2)) if q2 and q4 else 0.0
    status_reasons = dict(zip(last.drop_reasons, [int(n) for n in last.drop_counts]))
    logged = logged_reasons(log)
    unlogged = sorted(k for k in status_reasons if logged.get(k, 0) == 0)
    repeated = sorted(k for k, n in logged.items() if n > 1)
    updates = np.array(soak.keyframe_updates)
    recoveries = []
    for p in soak.poisons:
        later = updates[updates > p["sent"]]
        recoveries.append(float(later[0] - p["sent"]) if later.size else math.inf)
    slow = [dict(p, recovery_s=r) for p, r in zip(soak.poisons, recoveries) if r > RECOVERY_LIMIT_S]
    finite = [r for r in recoveries if math.isfinite(r)]
    result.update(
        {
            "minutes_requested": args.minutes,
            "duration_s": round(duration, 1),
            "messages_sent": soak.messages,
            "fuzz_sent": dict(sorted(soak.sent.items())),
            "node_alive_at_end": bool(alive),
            "exit_code_on_sigint": code,
            "exit_s": round(exit_s, 2),
            "status_messages": len(statuses),
            "status_max_gap_s": round(float(gaps.max()), 2),
            "status_errors": errors[:5],
            "final_state": last.state_name,
            "final_step": int(last.step),
            "frames_received": int(last.frames_received),
            "frames_dropped": int(last.frames_dropped),
            "frames_kept": int(last.frames_kept),
            "time_jumps": int(last.time_jumps),
            "training_started_s": None if train_t0 is None else round(train_t0, 1),
            "steps_per_minute": minute_gains,
            "rss_mb_first": round(rss[0][1], 1) if rss else None,
            "rss_mb_last": round(rss[-1][1], 1) if rss else None,
            "rss_mb_max": round(max(v for _, v in rss), 1) if rss else None,
            "rss_growth_mb": round(rss_growth, 1),
            "rss_samples": [(round(t, 1), round(v, 1)) for t, v in rss],
            "drop_reasons": status_reasons,
            "reasons_logged_once": len(status_reasons) - len(unlogged) - len(repeated),
            "reasons_never_logged": unlogged,
            "reasons_logged_more_than_once": repeated,
            "poisoned_stamps": len(soak.poisons),
            "recovery_s_max": round(max(recoveries), 2) if recoveries else None,
            "recovery_s_median": round(float(np.median(finite)), 2) if finite else None,
            "recoveries_over_limit": slow,
        }
    )
    checks = {
        "node alive": bool(alive),
        "status steady (no gap > 3 s, no error)": float(gaps.max()) <= 3.0 and not errors,
        "RSS flat (last quarter vs second quarter, medians: < 50 MB)": rss_growth < 50.0,
        "training continues (steps in every minute)": bool(minute_gains) and min(minute_gains) > 0,
        "each distinct reason logged exactly once": not unlogged and not repeated,
        f"learning again within {RECOVERY_LIMIT_S:g} s of every poisoned stamp": bool(recoveries) and not slow,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    result["log_tail"] = log[-3000:] if not result["passed"] else ""
    return result


def write_report(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    r = result
    lines = [
        "# Trainer soak / fuzz run",
        "",
        f"Ran for **{r['duration_s'] / 60:.1f} minutes** ({r['duration_s']:.0f} s;"
        f" requested {r['minutes_requested']:g})"
        f" with `python bench/soak.py --minutes {r['minutes_requested']:g}`: a valid stream at {r['rate_hz']:g} Hz"
        f" (live clock stamps) with {r['fuzz_per_frame']} fuzzed message(s) after each valid frame;"
        f" {r['messages_sent']} messages in all, {r['poisoned_stamps']} of them poisoned stamps"
        " (poses and images 1e4..1e7 s ahead or behind). Preset `tiny`, ground-truth teacher of a synthetic"
        " scene, CPU, ROS domain of its own, loopback only.",
        "",
        "| check | result |",
        "|---|---|",
    ]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in r["checks"].items()]
    lines += [
        "",
        f"- Node alive at the end: {r['node_alive_at_end']}; exit code on SIGINT {r['exit_code_on_sigint']}"
        f" after {r['exit_s']} s.",
        f"- Status: {r['status_messages']} messages, largest gap {r['status_max_gap_s']} s, final state"
        f" `{r['final_state']}`, step {r['final_step']}; frames received {r['frames_received']}, dropped"
        f" {r['frames_dropped']}, kept {r['frames_kept']}; time jumps {r['time_jumps']}.",
        f"- Training started after {r['training_started_s']} s; steps per minute: {r['steps_per_minute']}.",
        f"- Resident memory: {r['rss_mb_first']} MB at the start, {r['rss_mb_last']} MB at the end (max"
        f" {r['rss_mb_max']}); median of the last quarter minus that of the second quarter:"
        f" {r['rss_growth_mb']} MB.",
        f"- Poisoned stamps: {r['poisoned_stamps']}; learning again (a new keyframe) after at most"
        f" {r['recovery_s_max']} s (median {r['recovery_s_median']} s).",
        f"- Distinct drop reasons: {len(r['drop_reasons'])}, logged exactly once: {r['reasons_logged_once']}"
        f" (never logged: {len(r['reasons_never_logged'])}, logged more than once within the quiet period:"
        f" {len(r['reasons_logged_more_than_once'])}).",
        "",
        "| drop reason (numbers as #) | count |",
        "|---|---|",
    ]
    lines += [f"| {k.replace('|', '/')[:160]} | {n} |" for k, n in r["drop_reasons"].items()]
    (out_dir / "soak.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to stream (default 10)")
    ap.add_argument("--rate", type=float, default=4.0, help="valid frames per second")
    ap.add_argument("--fuzz-per-frame", type=int, default=1, help="fuzzed messages after each valid frame")
    ap.add_argument("--max-messages", type=int, default=200000, help="stop after this many messages")
    ap.add_argument("--max-keyframes", type=int, default=40, help="keyframe store size (memory reaches its plateau)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain-id", type=int, default=0, help="ROS domain (default: from the pid, 1..101)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for soak.json and soak.md")
    args = ap.parse_args(argv)
    result = run(args)
    write_report(result, Path(args.out))
    print(json.dumps({k: result[k] for k in ("duration_s", "passed", "checks")}, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
