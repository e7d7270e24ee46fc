"""Query latency while training runs and snapshots swap, against an idle node (real nodes, over DDS).

What it does (loopback only, its own ROS_DOMAIN_ID, every party a separate process, all of them
pinned to ``--cpus`` cores when the machine has more):
  1. a small synthetic scene is saved; ``lerf_ros.ros.lerf_node`` (what ``lerf-ros run`` starts:
     the trainer and the query node in one process, the query node answering from the trainer's
     in-memory snapshots) is started with the ``tiny`` preset and the scene's ground-truth
     semantics as the teacher; ``trainer.snapshot_every`` and ``snapshot_min_interval_s`` make the
     query node swap in a new snapshot every few seconds;
  2. ``lerf-ros replay --loop`` streams the scene into the trainer;
  3. once the node answers, this process asks /lerf/query back to back (object names of the scene,
     ``--gap`` seconds between two calls) for ``--seconds`` seconds while the trainer trains:
     latency from the call to its answer, the model step and snapshot number of each answer;
  4. once training has reached ``trainer.max_steps`` (``--max-steps``; or ``--seconds`` have passed,
     then training is paused with ``/lerf/pause``), the replay is stopped, the last preparation left
     to finish, and the same queries are asked for ``--idle-seconds`` seconds: the idle latency;
  5. the query node's own log gives each preparation's duration ("prepared in N ms"), and its
     /diagnostics tell which queries were asked while a snapshot was being prepared.
Writes JSON (default bench/results/query_latency.json) and prints a summary. Targets (issue 16):
p95 while training at most 100 ms and at most twice the idle p95.

    python bench/query_latency.py                  # about 3 minutes
    python bench/query_latency.py --seconds 120
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from ros_helpers import (  # noqa: E402
    lerf_ros_argv,
    process_output,
    python_argv,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
)

SNAPSHOT_RE = re.compile(r"; snapshot #(\d+), age [0-9.]+ s")
AGE_RE = re.compile(r"; snapshot #\d+, age ([0-9.]+) s")
PREPARED_RE = re.compile(r"answering from the model at step (\d+) \(prepared in (\d+) ms")


def write_params(path: str, scene_dir: str, out_dir: str, args) -> None:
    from lerf_ros.ros.params import write_params_file

    write_params_file(
        path,
        {
            "/**": {
                "preset": "tiny",
                "output_dir": out_dir,
                "world_frame": "map",
                "resume": False,
                "teacher": {"kind": "ground_truth", "scene_dir": scene_dir},
                "trainer": {
                    "checkpoint_every": 0,
                    "snapshot_every": args.snapshot_every,
                    "max_steps": args.max_steps,
                },
                "keyframes": {"min_keyframes_to_train": 2},
            },
            "lerf_trainer": {"pose_source": "pose"},
            "lerf_query": {
                "reload_period_s": 0.5,
                "snapshot_min_interval_s": args.swap_interval,
                "prepare_cpu_share": args.cpu_share,
                "prepare_niceness": args.niceness,
            },
        },
    )


def pinned(argv: List[str], cpus: str) -> List[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def summary(ms: List[float]) -> Dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "queries": int(len(a)),
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "max": round(float(a.max()), 1),
        "mean": round(float(a.mean()), 1),
    }


class Asker:
    """This process's client of /lerf/query and /lerf/pause, and a listener of /lerf/status."""

    def __init__(self, domain: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_srvs.srv import SetBool

        from lerf_ros.msg import TrainingStatus
        from lerf_ros.srv import Query

        self._Query, self._SetBool = Query, SetBool
        self._ctx_manager = ros_context(domain)
        ctx = self._ctx_manager.__enter__()
        self.node = rclpy.create_node("latency_client", context=ctx)
        self.client = self.node.create_client(Query, "/lerf/query")
        self.pause_client = self.node.create_client(SetBool, "/lerf/pause")
        self.status: List = []
        self.node.create_subscription(
            TrainingStatus, "/lerf/status", lambda m: self.status.append((time.monotonic(), int(m.step))), 10
        )
        self.preparing = False  # the query node's /diagnostics: a snapshot is being prepared
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            if st.name == "lerf_query: snapshot":
                values = {kv.key: kv.value for kv in st.values}
                self.preparing = values.get("preparing step", "none") != "none"

    def ask(self, text: str, timeout: float = 120.0):
        """(seconds, response or None): one call, no second asking."""
        t0 = time.monotonic()
        future = self.client.call_async(self._Query.Request(text=text))
        spin_until(self.node, future.done, timeout, step=0.002)
        seconds = time.monotonic() - t0
        if not future.done():
            self.client.remove_pending_request(future)
            return seconds, None
        return seconds, future.result()

    def pause(self, on: bool) -> bool:
        from ros_helpers import call

        r = call(self.node, self.pause_client, self._SetBool.Request(data=on), timeout=300.0)
        return bool(r is not None and r.success)

    def spin(self, seconds: float) -> None:
        spin_until(self.node, lambda: False, seconds)

    def close(self) -> None:
        self.node.destroy_node()
        self._ctx_manager.__exit__(None, None, None)


def measure(ask: Asker, texts: List[str], seconds: float, gap: float, proc, until_step: int = 0) -> List[Dict]:
    """Queries back to back for ``seconds`` (or until /lerf/status reaches ``until_step``)."""
    rows = []
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end and not (until_step and ask.status and ask.status[-1][1] >= until_step):
        assert proc.poll() is None, process_output(proc)
        text = texts[i % len(texts)]
        i += 1
        preparing = ask.preparing
        s, r = ask.ask(text)
        row = {"t": time.monotonic(), "ms": 1000.0 * s, "answered": r is not None}
        row["during_preparation"] = preparing or ask.preparing
        if r is not None:
            snap = SNAPSHOT_RE.search(r.message)
            age = AGE_RE.search(r.message)
            row.update(
                success=bool(r.success),
                step=int(r.model_step),
                snapshot=int(snap.group(1)) if snap else -1,
                age_s=float(age.group(1)) if age else -1.0,
                message=r.message[:160],
            )
        rows.append(row)
        ask.spin(gap)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=300.0, help="longest time measuring while training")
    p.add_argument(
        "--max-steps", type=int, default=200, help="trainer.max_steps: training ends there (then the idle phase)"
    )
    p.add_argument("--idle-seconds", type=float, default=30.0, help="measuring with training paused")
    p.add_argument("--gap", type=float, default=0.1, help="seconds between two queries")
    p.add_argument("--cpus", default="0,1", help="cores every process is pinned to ('' = no pinning)")
    p.add_argument("--snapshot-every", type=int, default=10, help="trainer.snapshot_every")
    p.add_argument("--swap-interval", type=float, default=3.0, help="snapshot_min_interval_s")
    p.add_argument("--cpu-share", type=float, default=0.5, help="prepare_cpu_share")
    p.add_argument("--niceness", type=int, default=10, help="prepare_niceness")
    p.add_argument("--rate", type=float, default=2.0, help="replay frames per second")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID (default: from the pid)")
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "query_latency.json"))
    args = p.parse_args(argv)

    from lerf_ros.data.synthetic import make_scene

    cpus = args.cpus if args.cpus and (os.cpu_count() or 1) > len(args.cpus.split(",")) else ""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    domain = args.domain if args.domain is not None else 1 + os.getpid() % 101
    run_dir = tempfile.mkdtemp(prefix="lerf_latency_")
    scene = make_scene(seed=7, n_objects=4, width=64, height=48, n_frames=20, nthreads=1)
    scene_dir = os.path.join(run_dir, "scene")
    scene.save(scene_dir, preview=False)
    texts = [o.class_name for o in scene.objects]
    params = os.path.join(run_dir, "params.yaml")
    write_params(params, scene_dir, os.path.join(run_dir, "out"), args)
    env = ros_env(domain, {"OMP_NUM_THREADS": "2"})
    node = start_process(
        pinned(python_argv("-m", "lerf_ros.ros.lerf_node", "--ros-args", "--params-file", params), cpus), env=env
    )
    replay_argv = pinned(lerf_ros_argv("replay", scene_dir, "--loop", "--rate", str(args.rate)), cpus)
    replay = start_process(replay_argv, env=env)
    out: Dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "pinned_to": cpus or "not pinned (no more cores than asked for)",
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "setup": {
            "how": "over DDS: lerf_ros.ros.lerf_node (trainer + query node in one process, in-memory "
            "snapshots) fed by lerf-ros replay --loop; this process is the client",
            "scene": "synthetic seed 7, 4 objects, 64x48, 20 frames; ground-truth teacher; tiny preset",
            "gap_s": args.gap,
            "trainer.snapshot_every": args.snapshot_every,
            "snapshot_min_interval_s": args.swap_interval,
            "prepare_cpu_share": args.cpu_share,
            "prepare_niceness": args.niceness,
            "replay_rate_hz": args.rate,
            "trainer.max_steps": args.max_steps,
            "during_preparation": "a query counts as asked during a preparation when the query node's "
            "/diagnostics (1 Hz) said so just before or just after it",
        },
    }
    ask = Asker(domain)
    try:
        t0 = time.monotonic()
        while True:
            assert node.poll() is None, process_output(node)
            assert time.monotonic() - t0 < 600, "no model after 10 minutes"
            s, r = ask.ask(texts[0])
            if r is not None and r.model_step > 0 and "no model yet" not in r.message:
                break
            ask.spin(1.0)
        out["setup"]["ready_s"] = round(time.monotonic() - t0, 1)
        print(f"answering at step {r.model_step} after {out['setup']['ready_s']} s; measuring", flush=True)
        ask.spin(2.0)

        ask.status.clear()
        busy = measure(ask, texts, args.seconds, args.gap, node, until_step=args.max_steps)
        steps = [s for _, s in ask.status]
        span = (ask.status[-1][0] - ask.status[0][0]) if len(ask.status) > 1 else 0.0
        answered = [r for r in busy if r["answered"]]
        snaps = sorted({r["snapshot"] for r in answered if r["snapshot"] > 0})
        swaps_t = [b["t"] for a, b in zip(answered, answered[1:]) if b.get("snapshot", -1) > a.get("snapshot", -1) > 0]
        out["training"] = {
            "latency_ms": summary([r["ms"] for r in answered]),
            "latency_ms_while_a_snapshot_was_prepared": summary(
                [r["ms"] for r in answered if r["during_preparation"]] or [0.0]
            ),
            "latency_ms_while_none_was_prepared": summary(
                [r["ms"] for r in answered if not r["during_preparation"]] or [0.0]
            ),
            "lost": len(busy) - len(answered),
            "succeeded": sum(r["success"] for r in answered),
            "steps": [min(steps), max(steps)] if steps else [],
            "steps_per_s": round((max(steps) - min(steps)) / span, 2) if span > 0 else 0.0,
            "snapshots_answered_from": len(snaps),
            "swaps_seen": len(swaps_t),
            "mean_s_between_swaps": round(float(np.mean(np.diff(swaps_t))), 1) if len(swaps_t) > 1 else None,
            "snapshot_age_s": summary([r["age_s"] for r in answered if r["age_s"] >= 0]),
            "worst_query": max(answered, key=lambda r: r["ms"]),
        }
        print(json.dumps(out["training"], indent=1), flush=True)

        # Idle: training has reached trainer.max_steps (asked to pause when --seconds ran out first).
        if not (ask.status and ask.status[-1][1] >= args.max_steps):
            t_pause = time.monotonic()
            assert ask.pause(True), "could not pause the trainer"
            out["setup"]["pause_answered_s"] = round(time.monotonic() - t_pause, 1)
        stop_process(replay, timeout=10.0)
        # Let the last preparation finish: no new snapshot after the pause, so the answers settle.
        settle_deadline = time.monotonic() + 120.0
        last = None
        while time.monotonic() < settle_deadline:
            ask.spin(args.swap_interval + 2.0)
            _, r = ask.ask(texts[0])
            now = SNAPSHOT_RE.search(r.message).group(1) if r is not None and SNAPSHOT_RE.search(r.message) else None
            if now is not None and now == last:
                break
            last = now
        idle = measure(ask, texts, args.idle_seconds, args.gap, node)
        idle_ok = [r for r in idle if r["answered"]]
        out["idle"] = {
            "latency_ms": summary([r["ms"] for r in idle_ok]),
            "lost": len(idle) - len(idle_ok),
            "snapshots_answered_from": len({r["snapshot"] for r in idle_ok}),
        }
        print(json.dumps(out["idle"], indent=1), flush=True)
        preps = [(int(a), int(b)) for a, b in PREPARED_RE.findall(process_output(node, tail=10**7))]
        out["preparations"] = {
            "count": len(preps),
            "ms": summary([b for _, b in preps]) if preps else {},
        }
        p95, idle95 = out["training"]["latency_ms"]["p95"], out["idle"]["latency_ms"]["p95"]
        out["targets"] = {
            "p95_at_most_100_ms": p95 <= 100.0,
            "p95_at_most_2x_idle_p95": p95 <= 2.0 * idle95,
            "ratio_to_idle_p95": round(p95 / idle95, 2) if idle95 > 0 else None,
        }
        out["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        ask.close()
        if replay.poll() is None:
            stop_process(replay, timeout=10.0)
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
            try:
                node.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                stop_process(node, timeout=5.0)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["targets"], indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
