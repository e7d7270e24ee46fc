"""Stopping the package's processes: every executable exits within 5 s of SIGINT or SIGTERM with
code 0, leaves no process behind and prints nothing on stderr; the trainer writes a checkpoint of
its current step on the way out.

The processes are real (started as ``ros2 run`` would start them, in their own session so that a
leftover child is found); their ROS log goes to stdout (``RCUTILS_LOGGING_USE_STDOUT``), so stderr
holds only what should never appear (tracebacks, rcl errors). Nothing is logged at WARN or above
after the signal either. ``OnlineTrainer.close`` is also tested without ROS.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping import checkpoint as ckpt
from lerf_ros.mapping.online import OnlineTrainer
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

from ros_helpers import REPO_ROOT, lerf_ros_argv, python_argv, ros_env, unique_domain_id, write_node_params

W, H = 64, 48
BUDGET_S = 5.0
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=W, height=H, n_frames=16, nthreads=1)


@pytest.fixture(scope="module")
def scene_dir(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("shutdown") / "scene"
    scene.save(d, preview=False)
    return d


def write_params(path: Path, scene_dir: Path, output_dir: Path) -> Path:
    # checkpoint_every 0: "only on request and at exit"; short steps: the test is about stopping, on a
    # shared CPU
    common = {"trainer": {"rays_per_batch": 256}}
    return write_node_params(path, scene_dir, output_dir, common=common, query={"reload_period_s": 0.5})


class Proc:
    """A child process in its own session, stdout and stderr to separate files."""

    def __init__(self, argv, env, folder: Path, name: str) -> None:
        self.name = name
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(
                list(argv),
                env=env,
                cwd=str(REPO_ROOT),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.signal_offset = None

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- {self.name} stdout:\n{self.out()[-6000:]}\n--- {self.name} stderr:\n{self.err()[-6000:]}"

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first match of ``pattern`` in stdout; fails the test when the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.out())
            if m:
                return m
            assert self.p.poll() is None, f"{self.name} exited with {self.p.returncode}\n{self.describe()}"
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {pattern!r} within {timeout:g} s\n{self.describe()}")

    def stop(self, sig: int) -> float:
        """Send ``sig`` to the process alone (not its group, as a parent or ``ros2 launch`` would);
        returns the seconds until it exited (killed, and fails, after twice the budget)."""
        self.signal_offset = len(self.out())
        t0 = time.monotonic()
        os.kill(self.p.pid, sig)
        try:
            self.p.wait(timeout=2 * BUDGET_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} still running {2 * BUDGET_S:g} s after {sig!r}\n{self.describe()}"
            ) from None
        return time.monotonic() - t0

    def session_members(self) -> list:
        """Processes still in this child's session (its own children included)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == self.p.pid and fields[0] != "Z":  # field 6 of stat: the session id
                found.append(int(entry))
        return found

    def kill(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()

    def check_clean_exit(self, seconds: float, sig_name: str) -> None:
        """Exit code 0 within the budget, no process left in its session, nothing on stderr, nothing
        at WARN or above logged after the signal."""
        assert self.p.returncode == 0, f"{self.name}: exit code {self.p.returncode} after {sig_name}\n{self.describe()}"
        assert seconds < BUDGET_S, f"{self.name}: {seconds:.1f} s to exit after {sig_name}\n{self.describe()}"
        deadline = time.monotonic() + 1.0
        while self.session_members() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.session_members(), f"{self.name}: processes left running after {sig_name}"
        assert self.err() == "", f"{self.name}: stderr after {sig_name}\n{self.describe()}"
        after = self.out()[self.signal_offset :]
        loud = [line for line in after.splitlines() if re.match(r"\[(WARN|ERROR|FATAL)\]", line)]
        assert not loud, f"{self.name}: logged after {sig_name}: {loud}\n{self.describe()}"


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.p.poll() is None:
            p.kill()


def env_for(domain: int):
    return ros_env(domain, {"RCUTILS_LOGGING_USE_STDOUT": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def node_argv(module: str, params: Path):
    return python_argv("-m", f"lerf_ros.ros.{module}", "--ros-args", "--params-file", str(params))


def replay_argv(scene_dir: Path):
    return lerf_ros_argv("replay", str(scene_dir), "--rate", "8", "--loop")


def wait_for_training(domain: int, proc: Proc, min_step: int = 2, timeout: float = 120.0) -> int:
    """Wait (over DDS, /lerf/status) until the trainer has taken ``min_step`` steps; returns the step."""
    import rclpy

    from lerf_ros.msg import TrainingStatus

    from ros_helpers import ros_context, spin_until

    seen = []
    with ros_context(domain) as ctx:
        node = rclpy.create_node("shutdown_test_status", context=ctx)
        node.create_subscription(TrainingStatus, "/lerf/status", lambda m: seen.append(m.step), 10)
        ok = spin_until(node, lambda: (seen and seen[-1] >= min_step) or proc.p.poll() is not None, timeout)
        node.destroy_node()
    assert ok and proc.p.poll() is None, f"no step {min_step} within {timeout:g} s\n{proc.describe()}"
    return seen[-1]


def exit_checkpoint(proc: Proc, out_dir: Path) -> int:
    """The step of the checkpoint written at exit; checks it is the newest file and reads back."""
    m = re.search(r"saved the checkpoint at exit: step (\d+)", proc.out())
    assert m, f"no checkpoint at exit\n{proc.describe()}"
    step = int(m.group(1))
    path = out_dir / "checkpoints" / ckpt.checkpoint_name(step)
    assert path.is_file(), sorted(os.listdir(out_dir / "checkpoints"))
    assert ckpt.read_checkpoint(str(path))["step"] == step
    assert ckpt.list_checkpoints(str(out_dir / "checkpoints"))[-1] == str(path)
    return step


# ---------------------------------------------------------------------------------- without ROS
@pytest.mark.usefixtures("one_thread")
def test_online_trainer_close_saves_the_steps_not_saved_yet(scene, tmp_path):
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "trainer.rays_per_batch": 128,
            "trainer.checkpoint_every": 0,
            "output_dir": str(tmp_path),
            "keyframes.min_keyframes_to_train": 2,
            "keyframes.min_translation": 0.0,
            "keyframes.min_rotation_deg": 0.0,
        }
    )
    folder = tmp_path / "checkpoints"

    def run(resume: bool, steps: int, paused: bool = False) -> OnlineTrainer:
        ot = OnlineTrainer(cfg, teacher=GroundTruthTeacher(scene), log=lambda level, text: None)
        if resume:
            assert ot.resume_latest() is not None
        for f in scene.frames[:3]:
            ot.submit(f)
        ot.set_paused(paused)  # paused before the thread starts: not a single step
        ot.start()
        deadline = time.monotonic() + 120
        while ot.step < steps and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ot.step >= steps
        return ot

    # No model yet: nothing to save.
    idle = OnlineTrainer(cfg, teacher=GroundTruthTeacher(scene), log=lambda level, text: None)
    assert idle.close(save=True) is None and not folder.exists()
    # Trained steps, none saved: the current step is written (checkpoint_every 0: "at exit").
    ot = run(resume=False, steps=3)
    path = ot.close(save=True)
    assert path is not None and os.path.basename(path) == ckpt.checkpoint_name(ot.step)
    assert ckpt.read_checkpoint(path)["step"] == ot.step
    assert ot.close(save=True) is None  # nothing new since
    # Resumed and stopped before a new step: no duplicate; after new steps: the newer step.
    ot = run(resume=True, steps=0, paused=True)
    resumed = ot.step
    assert not ot.unsaved_steps and ot.close(save=True) is None
    ot = run(resume=True, steps=resumed + 2)
    path = ot.close(save=True)
    assert ckpt.read_checkpoint(path)["step"] == ot.step > resumed
    assert ckpt.list_checkpoints(str(folder))[-1] == path


# ---------------------------------------------------------------------------------- trainer (and replay)
@pytest.mark.parametrize("sig_name", sorted(SIGNALS))
def test_trainer_writes_a_checkpoint_at_exit_and_every_process_exits_cleanly(scene_dir, tmp_path, procs, sig_name):
    """The trainer trains some steps with ``checkpoint_every`` 0; on the signal it writes a checkpoint
    of its final step and exits with 0 within the budget. The replay feeding it stops cleanly too
    (first: frames dropped for other reasons, logged as warnings, are not this test's business; the
    trainer goes on training on its keyframes)."""
    pytest.importorskip("rclpy")
    sig = SIGNALS[sig_name]
    out = tmp_path / "out"
    params = write_params(tmp_path / "params.yaml", scene_dir, out)
    domain = unique_domain_id()
    env = env_for(domain)
    trainer = Proc(node_argv("trainer_node", params), env, tmp_path, "trainer")
    procs.append(trainer)
    trainer.wait_for(r"\[lerf_trainer\]: preset", 120.0)
    replay = Proc(replay_argv(scene_dir), env, tmp_path, "replay")
    procs.append(replay)
    step = wait_for_training(domain, trainer)
    assert not (out / "checkpoints").is_dir() or not os.listdir(out / "checkpoints"), "saved before the signal"

    seconds = replay.stop(sig)
    replay.check_clean_exit(seconds, sig_name)
    assert re.search(r"stopped after \d+ frames", replay.out()), replay.describe()
    time.sleep(0.5)  # the frames in flight are handled

    seconds = trainer.stop(sig)
    trainer.check_clean_exit(seconds, sig_name)
    assert exit_checkpoint(trainer, out) >= step


# ---------------------------------------------------------------------------------- the other executables
def run_argv(params: Path, separate: bool):
    extra = ["--separate-processes"] if separate else []
    return lerf_ros_argv("run", "--params-file", str(params), *extra)


CASES = [
    ("lerf_node", "SIGINT"),
    ("lerf_node", "SIGTERM"),
    ("query_node", "SIGTERM"),
    ("run", "SIGINT"),
    ("run_separate", "SIGINT"),
    ("run_separate", "SIGTERM"),
]


@pytest.mark.parametrize("what,sig_name", CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_process_exits_cleanly(scene_dir, tmp_path, procs, what, sig_name):
    """Each executable, started as a user would and stopped by one signal to its main process
    (``lerf-ros run --separate-processes``: to the parent alone, which forwards it)."""
    pytest.importorskip("rclpy")
    out = tmp_path / "out"
    params = write_params(tmp_path / "params.yaml", scene_dir, out)
    domain = unique_domain_id()
    env = env_for(domain)
    argv = {
        "lerf_node": node_argv("lerf_node", params),
        "query_node": node_argv("query_node", params),
        "run": run_argv(params, separate=False),
        "run_separate": run_argv(params, separate=True),
    }[what]
    proc = Proc(argv, env, tmp_path, what)
    procs.append(proc)
    has_trainer = what != "query_node"
    if what != "query_node":
        proc.wait_for(r"\[lerf_trainer\]: preset", 120.0)
    proc.wait_for(r"\[lerf_query\]: serving /lerf/query", 120.0)
    if has_trainer:  # stop it while it trains (and, in one process, prepares snapshots)
        replay = Proc(replay_argv(scene_dir), env, tmp_path, "replay")
        procs.append(replay)
        step = wait_for_training(domain, proc)
        replay.stop(signal.SIGINT)
        time.sleep(0.5)  # the frames in flight are handled; training goes on
    if what == "run_separate":
        children = proc.session_members()
        assert len(children) >= 3, children  # the command and its two nodes

    seconds = proc.stop(SIGNALS[sig_name])
    proc.check_clean_exit(seconds, sig_name)
    if has_trainer:
        assert exit_checkpoint(proc, out) >= step
