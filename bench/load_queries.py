"""Load on a real query node: many clients at once, every answer accounted for, memory bounded.

What it does (loopback only, its own ROS_DOMAIN_ID, every party a separate process):
  1. a small trained checkpoint: ``--run-dir`` (a folder with ``scene/`` and ``out/checkpoints/``, as
     this script leaves it), or one trained here (``--train-steps`` of the ``tiny`` preset on a
     synthetic scene, its ground-truth semantics as the teacher);
  2. the query node as its own process (``python -m lerf_ros.ros.query_node``) loads it;
  3. ``--clients`` client processes each send ``--queries`` queries back to back (object names,
     synonyms, words absent from the scene, a few with negatives), after one warm-up call each.
     A request is lost when no answer came within ``--timeout`` seconds (no second asking: a
     lost answer is counted, not hidden). Latency is from the call to its answer, per query;
  4. one request with the most negatives the node accepts (``query.max_negatives`` phrases of
     ``query.max_text_length`` characters, all new to its text cache): the node's peak resident
     memory above its level before the request (``VmHWM`` after resetting it via
     ``/proc/<pid>/clear_refs``), and what it keeps after;
  5. SIGINT to the node: its exit code and how long it took.
Writes JSON (default bench/results/load_queries.json) and prints a summary.

    python bench/load_queries.py                      # trains a small checkpoint first (minutes)
    python bench/load_queries.py --run-dir /tmp/run   # reuses one
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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

from ros_helpers import process_output, python_argv, ros_env, start_process, stop_process  # noqa: E402


# ---------------------------------------------------------------------------------- the checkpoint
def train_run(run_dir: str, steps: int, threads: int) -> None:
    """A ``tiny`` checkpoint of ``steps`` steps on a synthetic scene, in ``run_dir``."""
    import torch

    from lerf_ros.config import preset
    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.mapping.session import Session
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    torch.set_num_threads(threads)
    scene = make_scene(seed=1, n_objects=5, width=80, height=60, n_frames=24, nthreads=1)
    scene.save(os.path.join(run_dir, "scene"), preview=False)
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "teacher.scene_dir": os.path.join(run_dir, "scene"),
            "output_dir": os.path.join(run_dir, "out"),
        }
    )
    session = Session(cfg, GroundTruthTeacher(scene), online=False, log=lambda level, text: None)
    for f in scene.frames:
        session.add(f)
    for _ in range(steps):
        session.step()
    session.save_checkpoint()


def query_texts(scene_dir: str) -> List[str]:
    """Object names and synonyms of the scene, and words absent from it."""
    from lerf_ros.data.synthetic import load_scene

    scene = load_scene(scene_dir)
    texts = []
    for obj in scene.objects:
        texts.append(obj.name)
        texts.extend(obj.synonyms[:1])
    return texts + scene.absent_classes()[:3] + ["zebra crossing"]


# ---------------------------------------------------------------------------------- one client
def run_client(args) -> int:
    """Client mode: ``--queries`` raw calls (no second asking); JSON lines of results to ``--out``."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from lerf_ros.ros.common import call_service
    from lerf_ros.srv import Query

    texts = json.loads(args.texts)
    rclpy.init(args=[])
    node = rclpy.create_node(f"load_client_{args.client_id}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    client = node.create_client(Query, "/lerf/query")
    rng = np.random.default_rng(args.client_id)
    results: List[Dict] = []
    try:
        deadline = time.monotonic() + 60.0
        while not client.service_is_ready() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        # Warm-up (not counted): right after discovery an answer can be dropped; call_service asks again.
        call_service(client, Query.Request(text=texts[0]), lambda s: executor.spin_once(timeout_sec=s), timeout=60.0)
        for i in range(args.queries):
            text = texts[int(rng.integers(len(texts)))]
            negatives = [texts[int(rng.integers(len(texts)))]] if i % 5 == 4 else []
            if negatives == [text]:
                negatives = []
            t0 = time.monotonic()
            future = client.call_async(Query.Request(text=text, negatives=negatives))
            while not future.done() and time.monotonic() - t0 < args.timeout:
                executor.spin_once(timeout_sec=0.05)
            ms = 1000.0 * (time.monotonic() - t0)
            if future.done():
                r = future.result()
                results.append(
                    {
                        "text": text,
                        "negatives": len(negatives),
                        "ms": ms,
                        "answered": True,
                        "success": bool(r.success),
                        "refused": (not r.success) and ("nothing above threshold" not in r.message),
                        "model_step": int(r.model_step),
                        "message": r.message[:120],
                    }
                )
            else:
                client.remove_pending_request(future)
                results.append({"text": text, "negatives": len(negatives), "ms": ms, "answered": False})
    finally:
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown(timeout_sec=0)
        rclpy.try_shutdown()
    with open(args.out, "w") as f:
        json.dump(results, f)
    return 0


# ---------------------------------------------------------------------------------- the node's memory
def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Asker:
    """This process's own client of /lerf/query on ``domain`` (one context for the whole run, so
    discovery happens once)."""

    def __init__(self, domain: int) -> None:
        import rclpy

        from lerf_ros.srv import Query

        from ros_helpers import ros_context

        self._Query = Query
        self._ctx_manager = ros_context(domain)
        ctx = self._ctx_manager.__enter__()
        self.node = rclpy.create_node("load_main_client", context=ctx)
        self.client = self.node.create_client(Query, "/lerf/query")

    def __call__(self, timeout: float = 120.0, **request):
        from ros_helpers import call

        return call(self.node, self.client, self._Query.Request(**request), timeout=timeout)

    def close(self) -> None:
        self.node.destroy_node()
        self._ctx_manager.__exit__(None, None, None)


# ---------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", help="folder with scene/ and out/checkpoints/ (trained here when absent)")
    p.add_argument("--train-steps", type=int, default=300, help="training steps when a checkpoint is trained here")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--queries", type=int, default=100, help="queries per client")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request counts as lost")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID (default: from the pid)")
    p.add_argument("--threads", type=int, default=2, help="torch threads when training")
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "load_queries.json"))
    # client mode (started by this script)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--texts", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        return run_client(args)

    from lerf_ros.config import QueryConfig

    domain = args.domain if args.domain is not None else 1 + os.getpid() % 101
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="lerf_load_")
    t_train = 0.0
    if not os.path.isdir(os.path.join(run_dir, "out", "checkpoints")):
        t0 = time.monotonic()
        print(f"training a tiny checkpoint ({args.train_steps} steps) in {run_dir} ...", flush=True)
        train_run(run_dir, args.train_steps, args.threads)
        t_train = time.monotonic() - t0
    params = os.path.join(run_dir, "load_params.yaml")
    with open(params, "w") as f:
        f.write(
            "/**:\n  ros__parameters:\n    preset: tiny\n"
            f"    output_dir: '{os.path.join(run_dir, 'out')}'\n    reload_period_s: 0.5\n"
            f"    teacher:\n      kind: ground_truth\n      scene_dir: '{os.path.join(run_dir, 'scene')}'\n"
        )
    texts = query_texts(os.path.join(run_dir, "scene"))
    env = ros_env(domain)
    node = start_process(python_argv("-m", "lerf_ros.ros.query_node", "--ros-args", "--params-file", params), env=env)
    out: Dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "setup": {
            "clients": args.clients,
            "queries_per_client": args.queries,
            "lost_timeout_s": args.timeout,
            "ros_domain_id": domain,
            "discovery": "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST",
            "checkpoint": "tiny preset on a synthetic scene (ground-truth teacher)",
            "train_s": round(t_train, 1),
        },
    }
    ask = Asker(domain)
    try:
        # The node is up and answering from the checkpoint before the clients start.
        t0 = time.monotonic()
        while True:
            assert node.poll() is None, process_output(node)
            r = ask(text=texts[0])
            if "no model yet" not in r.message:
                break
            time.sleep(1.0)
        out["setup"]["model_step"] = int(r.model_step)
        out["setup"]["ready_s"] = round(time.monotonic() - t0, 1)
        print(f"node ready at step {r.model_step} after {out['setup']['ready_s']} s", flush=True)

        # Clients, all at once.
        tmp = tempfile.mkdtemp(prefix="lerf_load_clients_")
        procs = []
        t0 = time.monotonic()
        for i in range(args.clients):
            argv_i = [
                os.path.abspath(__file__),
                "--client",
                "--client-id",
                str(i),
                "--queries",
                str(args.queries),
                "--timeout",
                str(args.timeout),
                "--texts",
                json.dumps(texts),
                "--out",
                os.path.join(tmp, f"client_{i}.json"),
            ]
            procs.append(start_process(python_argv(*argv_i), env=env))
        codes = [c.wait() for c in procs]
        wall = time.monotonic() - t0
        results = []
        for i, c in enumerate(procs):
            path = os.path.join(tmp, f"client_{i}.json")
            if codes[i] != 0 or not os.path.exists(path):
                raise RuntimeError(f"client {i} failed ({codes[i]}): {process_output(c)}")
            results.extend(json.load(open(path)))
        answered = [r for r in results if r["answered"]]
        ms = np.array([r["ms"] for r in answered])
        worst = max(answered, key=lambda r: r["ms"])
        out["load"] = {
            "requests": len(results),
            "lost": len(results) - len(answered),
            "answered": len(answered),
            "succeeded": sum(r["success"] for r in answered),
            "nothing_above_threshold": sum((not r["success"]) and not r["refused"] for r in answered),
            "refused_or_failed": sum(r["refused"] for r in answered),
            "model_steps": sorted({r["model_step"] for r in answered}),
            "wall_s": round(wall, 1),
            "throughput_qps": round(len(answered) / wall, 2),
            "latency_ms": {
                "p50": round(float(np.percentile(ms, 50)), 1),
                "p95": round(float(np.percentile(ms, 95)), 1),
                "max": round(float(ms.max()), 1),
                "mean": round(float(ms.mean()), 1),
            },
            "worst_query": {k: worst[k] for k in ("text", "negatives", "ms", "message")},
        }
        print(json.dumps(out["load"], indent=1), flush=True)

        # The most negatives allowed, of the longest length, new to the node's text cache.
        q = QueryConfig()
        negs = [(f"distractor {i} " * 40)[: q.max_text_length] for i in range(q.max_negatives)]
        ask(text=texts[0])
        before = rss_kib(node.pid)
        with open(f"/proc/{node.pid}/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        t0 = time.monotonic()
        r = ask(text=texts[0], negatives=negs)
        seconds = time.monotonic() - t0
        out["max_negatives_request"] = {
            "negatives": len(negs),
            "characters_each": q.max_text_length,
            "success": bool(r.success),
            "message": r.message[:160],
            "seconds": round(seconds, 2),
            "rss_before_mb": round(before / 1024, 1),
            "peak_extra_mb": round((rss_kib(node.pid, "VmHWM") - before) / 1024, 1),
            "kept_extra_mb": round((rss_kib(node.pid) - before) / 1024, 1),
        }
        print(json.dumps(out["max_negatives_request"], indent=1), flush=True)
        r = ask(text=texts[0], negatives=negs + ["one too many"])
        out["one_more_negative"] = {"success": bool(r.success), "message": r.message[:160]}
    finally:
        ask.close()
        t0 = time.monotonic()
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
            try:
                node.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                stop_process(node, timeout=5.0)
        out["node_exit"] = {"code": node.returncode, "seconds_after_sigint": round(time.monotonic() - t0, 2)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.output}")
    lost = out.get("load", {}).get("lost", -1)
    return 0 if lost == 0 and out["node_exit"]["code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
