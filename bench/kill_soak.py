"""kill -9 of the trainer at random moments, and in the middle of checkpoint writes.

    python bench/kill_soak.py [--rounds 20] [--seed 0] [--checkpoint-every 5] [--out FILE]

A replay process streams a small synthetic scene (loopback only: ``ROS_AUTOMATIC_DISCOVERY_RANGE``
LOCALHOST, a domain id of its own) into the trainer node (``lerf_ros.ros.trainer_node``, preset
``tiny``, the scene's ground-truth teacher, ``resume`` on, a checkpoint every ``--checkpoint-every``
steps). Each round starts the trainer on the same output folder and kills it with SIGKILL:

- even rounds at a random moment, ``--min-delay``..``--max-delay`` s after it was started (start-up,
  resume, waiting for keyframes, training, checkpoint writes: wherever that falls);
- odd rounds in the middle of a checkpoint write: the checkpoint folder is watched and the trainer
  is killed as soon as the temporary file of its 1st, 2nd or 3rd write (drawn) appears.

After each kill every ``*.ckpt`` in the folder is read in full (``read_checkpoint``): a file that does
not read is corrupt. The next start (the next round, and one more at the end) must resume from the
newest valid checkpoint (its "resumed from checkpoint" line names it; none when there is none),
and the temporary files the kill left must be gone once it has started. The last start is stopped
with SIGINT, which must end it with code 0 and a checkpoint of its final step.

Seeded: the same seed gives the same kill schedule (the moments the trainer reaches depend on the
machine). Results: ``bench/results/kill_soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.mapping import checkpoint as ckpt  # noqa: E402

STARTED = re.compile(r"\[lerf_trainer\]: preset '")
RESUMED = re.compile(r"resumed from checkpoint (\S+) \(step (\d+)\)")


def child_env(domain: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ROS_DOMAIN_ID": str(domain),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "PYTHONUNBUFFERED": "1",
            "RCUTILS_LOGGING_USE_STDOUT": "1",
            "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
        }
    )
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def write_params(path: Path, scene_dir: Path, out_dir: Path, checkpoint_every: int) -> None:
    path.write_text(
        "\n".join(
            [
                "/**:",
                "  ros__parameters:",
                "    preset: tiny",
                f"    output_dir: '{out_dir}'",
                "    world_frame: map",
                "    teacher:",
                "      kind: ground_truth",
                f"      scene_dir: '{scene_dir}'",
                "    trainer:",
                f"      checkpoint_every: {checkpoint_every}",
                "      rays_per_batch: 256",
                "    keyframes:",
                "      min_keyframes_to_train: 2",
                "lerf_trainer:",
                "  ros__parameters:",
                "    pose_source: pose",
                "    resume: true",
            ]
        )
        + "\n"
    )


def temp_files(folder: Path) -> List[str]:
    try:
        return sorted(n for n in os.listdir(folder) if ckpt.TEMP_NAME.match(n))
    except FileNotFoundError:
        return []


def scan_checkpoints(folder: Path) -> Dict[str, object]:
    """Every ``*.ckpt`` read in full: the valid ones by step, the corrupt ones by name."""
    valid: Dict[str, int] = {}
    corrupt: Dict[str, str] = {}
    if folder.is_dir():
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".ckpt"):
                continue
            try:
                valid[name] = int(ckpt.read_checkpoint(str(folder / name))["step"])
            except ckpt.CheckpointError as exc:
                corrupt[name] = str(exc)
            except FileNotFoundError:  # pruned meanwhile
                pass
    newest = max(valid, key=lambda n: (valid[n], n)) if valid else None
    return {"valid": valid, "corrupt": corrupt, "newest": newest}


class Trainer:
    """One start of the trainer node, its output in a log file."""

    def __init__(self, argv: List[str], env: Dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as fh:
            self.p = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT)
        self.t0 = time.monotonic()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self, timeout: float = 120.0) -> float:
        """Seconds until the node had started (session built: temp files cleaned, resumed)."""
        while not STARTED.search(self.text()):
            if self.p.poll() is not None or time.monotonic() - self.t0 > timeout:
                raise RuntimeError(f"the trainer did not start (exit {self.p.poll()}):\n{self.text()[-4000:]}")
            time.sleep(0.02)
        return time.monotonic() - self.t0

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()


def check_restart(trainer: Trainer, folder: Path, before: Dict[str, object], stale: List[str]) -> Dict[str, object]:
    """After a start: did it resume from the newest valid checkpoint, and are the kill's temp files gone?"""
    start_s = trainer.wait_started()
    m = RESUMED.search(trainer.text())
    resumed = os.path.basename(m.group(1)) if m else None
    left = [n for n in stale if (folder / n).exists()]
    return {
        "start_s": round(start_s, 2),
        "expected_resume": before["newest"],
        "resumed": resumed,
        "resumed_step": int(m.group(2)) if m else 0,
        "resumed_newest_valid": resumed == before["newest"],
        "stale_temp_files_before": len(stale),
        "stale_temp_files_left": len(left),
    }


def kill_mid_checkpoint(trainer: Trainer, folder: Path, nth: int, timeout: float) -> bool:
    """Kill as soon as the temporary file of the ``nth`` checkpoint write of this start appears;
    False when there was none in time."""
    old = set(temp_files(folder))
    seen: set = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and trainer.p.poll() is None:
        seen.update(set(temp_files(folder)) - old)
        if len(seen) >= nth:
            trainer.kill()
            return True
        time.sleep(0.001)
    trainer.kill()
    return False


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=5, help="trainer.checkpoint_every (steps)")
    ap.add_argument("--min-delay", type=float, default=2.0, help="earliest random kill after a start (s)")
    ap.add_argument("--max-delay", type=float, default=12.0, help="latest random kill after a start (s)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kill_soak.json"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t_all = time.monotonic()

    work = Path(tempfile.mkdtemp(prefix="lerf_kill_soak_"))
    scene_dir, out_dir = work / "scene", work / "out"
    folder = out_dir / "checkpoints"
    make_scene(seed=5, width=64, height=48, n_frames=16, nthreads=1).save(scene_dir, preview=False)
    params = work / "params.yaml"
    write_params(params, scene_dir, out_dir, args.checkpoint_every)
    env = child_env(1 + (os.getpid() + 50) % 101)
    trainer_argv = [sys.executable, "-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)]
    replay = subprocess.Popen(
        [sys.executable, "-m", "lerf_ros.cli", "replay", str(scene_dir), "--rate", "8", "--loop"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rounds: List[Dict[str, object]] = []
    try:
        before = scan_checkpoints(folder)
        stale: List[str] = []
        for i in range(args.rounds):
            kind = "random" if i % 2 == 0 else "mid_checkpoint"
            delay = rng.uniform(args.min_delay, args.max_delay)  # drawn every round: one schedule per seed
            trainer = Trainer(trainer_argv, env, work / f"trainer_{i:02d}.log")
            row: Dict[str, object] = {"round": i, "kind": kind}
            try:
                if kind == "random":
                    time.sleep(max(0.0, delay - (time.monotonic() - trainer.t0)))
                    row["delay_s"] = round(delay, 2)
                    trainer.kill()
                else:
                    row.update(check_restart(trainer, folder, before, stale))
                    row["killed_in_write"] = nth = rng.choice((1, 2, 3))
                    row["caught_a_write"] = kill_mid_checkpoint(trainer, folder, nth, timeout=90.0)
            finally:
                trainer.kill()
            if kind == "random" and STARTED.search(trainer.text()):
                row.update(check_restart(trainer, folder, before, stale))
            row["started_before_kill"] = bool(STARTED.search(trainer.text()))
            previous, stale = stale, temp_files(folder)
            before = scan_checkpoints(folder)
            row["temp_files_after_kill"] = len(stale)
            row["temp_files_left_by_this_kill"] = len(set(stale) - set(previous))
            row["checkpoints_after_kill"] = len(before["valid"])
            row["corrupt_checkpoints"] = len(before["corrupt"])
            row["newest_step_after_kill"] = before["valid"].get(before["newest"], 0) if before["newest"] else 0
            rounds.append(row)
            print(json.dumps(row), flush=True)

        # A last start: resume and cleanup checked, then a clean stop with SIGINT.
        final = Trainer(trainer_argv, env, work / "trainer_final.log")
        try:
            last = check_restart(final, folder, before, stale)
            time.sleep(6.0)  # trains on: the stop has steps to save
            t0 = time.monotonic()
            final.p.send_signal(signal.SIGINT)
            code = final.p.wait(timeout=30)
            last["sigint_exit_code"] = code
            last["sigint_exit_s"] = round(time.monotonic() - t0, 2)
            m = re.search(r"saved the checkpoint at exit: step (\d+)", final.text())
            last["checkpoint_at_exit_step"] = int(m.group(1)) if m else None
        finally:
            final.kill()
        after = scan_checkpoints(folder)
        last["corrupt_checkpoints"] = len(after["corrupt"])
        last["temp_files_after_stop"] = len(temp_files(folder))
    finally:
        replay.send_signal(signal.SIGINT)
        try:
            replay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            replay.kill()

    restarts = [r for r in rounds if "resumed" in r] + [last]
    summary = {
        "rounds": len(rounds),
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "kills_at_random_moments": sum(r["kind"] == "random" for r in rounds),
        "kills_mid_checkpoint": sum(bool(r.get("caught_a_write")) for r in rounds),
        "kills_that_left_a_temp_file": sum(r["temp_files_left_by_this_kill"] > 0 for r in rounds),
        "kills_before_start_up_finished": sum(not r["started_before_kill"] for r in rounds),
        "corrupt_checkpoints": sum(r["corrupt_checkpoints"] for r in rounds) + last["corrupt_checkpoints"],
        "restarts_checked": len(restarts),
        "restarts_resumed_from_newest_valid": sum(bool(r["resumed_newest_valid"]) for r in restarts),
        "stale_temp_files_seen_at_restart": sum(r["stale_temp_files_before"] for r in restarts),
        "stale_temp_files_left_after_restart": sum(r["stale_temp_files_left"] for r in restarts),
        "resumed_steps": [r["resumed_step"] for r in restarts],
        "final_stop": last,
        "wall_s": round(time.monotonic() - t_all, 1),
    }
    ok = (
        summary["corrupt_checkpoints"] == 0
        and summary["restarts_resumed_from_newest_valid"] == summary["restarts_checked"]
        and summary["stale_temp_files_left_after_restart"] == 0
        and last.get("sigint_exit_code") == 0
    )
    summary["passed"] = ok
    result = {"summary": summary, "rounds": rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
