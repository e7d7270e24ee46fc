"""Memory handed back by the managed nodes' lifecycle transitions (real nodes, over DDS).

What it does (loopback only, its own ROS_DOMAIN_ID, every party a separate process):
  1. a synthetic scene is saved; ``lerf_ros.ros.trainer_node`` and ``lerf_ros.ros.query_node`` (the
     query node of its own process, loading the trainer's checkpoints) start with
     ``autostart: false``, the scene's ground-truth semantics as the teacher;
  2. both are configured and activated through ``/<node>/change_state``; ``lerf-ros replay --loop``
     streams the scene until the trainer has reached ``--steps`` training steps (its
     ``trainer.max_steps``: then it idles) and the query node has answered a query from the checkpoint
     the trainer wrote at that step;
  3. each node is then deactivated, cleaned up, configured and activated again; after each
     transition (and a short settle) the resident set of each process is read from /proc
     (VmRSS), and where a GPU is present the GPU memory of each process (``nvidia-smi``).
Writes JSON (default bench/results/lifecycle_memory.json) and prints a summary.

    python bench/lifecycle_memory.py                           # tiny preset, a few minutes
    python bench/lifecycle_memory.py --preset lerf-lite --steps 100
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from ros_helpers import (  # noqa: E402
    Lifecycle,
    call,
    lerf_ros_argv,
    process_output,
    python_argv,
    ros_context,
    ros_env,
    rss_mb,
    spin_until,
    start_process,
    stop_process,
    wait_for_service,
)

STAGES = ("activated", "trained", "deactivated", "cleaned_up", "configured_again", "activated_again")


def write_params(path: str, scene_dir: str, out_dir: str, args) -> None:
    from lerf_ros.ros.params import write_params_file

    common = {
        "preset": args.preset,
        "output_dir": out_dir,
        "world_frame": "map",
        "device": args.device,
        "autostart": False,
        "teacher": {"kind": "ground_truth", "scene_dir": scene_dir},
        "trainer": {"checkpoint_every": args.steps, "max_steps": args.steps},
        "keyframes": {"min_keyframes_to_train": 2},
    }
    write_params_file(
        path,
        {
            "/**": common,
            "lerf_trainer": {"pose_source": "pose", "status_rate_hz": 2.0},
            "lerf_query": {"reload_period_s": 0.5, "snapshot_min_interval_s": 0.0},
        },
    )


def gpu_mb(pids) -> Optional[Dict[int, float]]:
    """GPU memory (MB) of each process by ``nvidia-smi``; None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = {}
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            used[int(parts[0])] = float(parts[1])
    return {pid: used.get(pid, 0.0) for pid in pids}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--steps", type=int, default=60, help="training steps before the transitions")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--rate", type=float, default=4.0, help="replay frames per second")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after a transition before measuring")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "lifecycle_memory.json"))
    args = p.parse_args()

    from lifecycle_msgs.msg import Transition

    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.msg import TrainingStatus
    from lerf_ros.srv import Query

    tmp = tempfile.mkdtemp(prefix="lifecycle_memory_")
    scene_dir, out_dir = os.path.join(tmp, "scene"), os.path.join(tmp, "out")
    scene = make_scene(seed=args.seed, width=args.width, height=args.height, n_frames=args.frames, nthreads=1)
    scene.save(scene_dir, preview=False)
    params = os.path.join(tmp, "params.yaml")
    write_params(params, scene_dir, out_dir, args)
    domain = 1 + (os.getpid() + 37) % 101
    env = ros_env(domain, {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    node_args = ("--ros-args", "--params-file", params)
    procs = {
        "lerf_trainer": start_process(python_argv("-m", "lerf_ros.ros.trainer_node", *node_args), env=env),
        "lerf_query": start_process(python_argv("-m", "lerf_ros.ros.query_node", *node_args), env=env),
    }
    replay = None
    memory: Dict[str, Dict[str, Dict[str, float]]] = {name: {} for name in procs}
    t0 = time.monotonic()
    try:
        with ros_context(domain) as ctx:
            import rclpy

            node = rclpy.create_node("lifecycle_memory", context=ctx)
            status = []
            node.create_subscription(TrainingStatus, "/lerf/status", status.append, 10)
            nodes = {name: Lifecycle(node, name, proc) for name, proc in procs.items()}
            query = node.create_client(Query, "/lerf/query")

            def pause(seconds: float) -> None:
                t_end = time.monotonic() + seconds
                spin_until(node, lambda: time.monotonic() > t_end, seconds + 5.0)

            def measure(stage: str) -> None:
                pause(args.settle)
                gpu = gpu_mb([proc.pid for proc in procs.values()])
                for name, proc in procs.items():
                    entry = {"rss_mb": round(rss_mb(proc.pid), 1), "state": nodes[name].state()}
                    if gpu is not None:
                        entry["gpu_mb"] = gpu[proc.pid]
                    memory[name][stage] = entry
                print(stage, {n: memory[n][stage] for n in procs}, flush=True)

            def transition(transition_id: int) -> None:
                for name, lc in nodes.items():
                    assert lc.set(transition_id), (
                        f"{name}: transition {transition_id} failed\n{process_output(procs[name])}"
                    )

            transition(Transition.TRANSITION_CONFIGURE)
            transition(Transition.TRANSITION_ACTIVATE)
            measure("activated")
            replay = start_process(
                lerf_ros_argv("replay", scene_dir, "--rate", str(args.rate), "--loop", "--no-tf"), env=env
            )
            done = lambda: status and status[-1].step >= args.steps  # noqa: E731
            assert spin_until(node, done, 3600.0), process_output(procs["lerf_trainer"])
            stop_process(replay, timeout=20.0)
            replay = None
            assert wait_for_service(query, 60.0)
            answered = None
            deadline = time.monotonic() + 600.0
            while time.monotonic() < deadline:
                resp = call(node, query, Query.Request(text=scene.objects[0].class_name), timeout=300.0)
                if resp.model_step >= args.steps:
                    answered = resp
                    break
                pause(2.0)
            assert answered is not None, process_output(procs["lerf_query"])
            measure("trained")
            transition(Transition.TRANSITION_DEACTIVATE)
            measure("deactivated")
            transition(Transition.TRANSITION_CLEANUP)
            measure("cleaned_up")
            transition(Transition.TRANSITION_CONFIGURE)
            measure("configured_again")
            transition(Transition.TRANSITION_ACTIVATE)
            measure("activated_again")
            for lc in nodes.values():
                assert lc.set(Transition.TRANSITION_ACTIVE_SHUTDOWN, exits=True)
            codes = {}
            for name, proc in procs.items():
                try:
                    codes[name] = proc.wait(timeout=30.0)
                except subprocess.TimeoutExpired:
                    codes[name] = stop_process(proc, timeout=10.0)
            node.destroy_node()
    finally:
        if replay is not None:
            stop_process(replay, timeout=20.0)
        for proc in procs.values():
            if proc.poll() is None:
                stop_process(proc, timeout=20.0)

    def drop(name: str, a: str, b: str, key: str = "rss_mb") -> Optional[float]:
        m = memory[name]
        if key not in m.get(a, {}) or key not in m.get(b, {}):
            return None
        return round(m[a][key] - m[b][key], 1)

    import torch

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_1min": os.getloadavg()[0],
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "scene_objects": len(scene.objects),
        "stages": list(STAGES),
        "memory": memory,
        "released_mb": {
            name: {
                "rss_on_deactivate": drop(name, "trained", "deactivated"),
                "rss_on_cleanup": drop(name, "deactivated", "cleaned_up"),
                "rss_deactivate_and_cleanup": drop(name, "trained", "cleaned_up"),
                "gpu_on_deactivate": drop(name, "trained", "deactivated", "gpu_mb"),
                "gpu_deactivate_and_cleanup": drop(name, "trained", "cleaned_up", "gpu_mb"),
            }
            for name in procs
        },
        "exit_codes": codes,
        "seconds": round(time.monotonic() - t0, 1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result["released_mb"], indent=2))
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
