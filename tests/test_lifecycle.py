"""The trainer and the query node as managed (lifecycle) nodes, driven over DDS with the standard
lifecycle services (``lifecycle_msgs/srv/ChangeState`` and ``GetState``) from this test process.

- the trainer, started with ``autostart: false``, goes through every transition: unconfigured
  (nothing served), configure (services answer "inactive"), activate (subscribes and trains on a
  replayed scene), deactivate (the input subscriptions are gone, no status, a checkpoint written,
  the session kept: activating again goes on from the same step), cleanup (the resident memory
  falls), configure again (resumes from the checkpoint), activate, and shutdown from active: the
  process exits by itself with code 0 and nothing logged at ERROR;
- the query node of its own process: configure, activate (answers), deactivate (answers
  "inactive"), cleanup (the service is gone), configure, shutdown from inactive;
- ``lerf-ros run --no-autostart``: both nodes of the one-process launch wait unconfigured and a
  shutdown of both from unconfigured ends the process with 0;
- with ``autostart``, a node that cannot be configured ends its process with code 2 and the reason;
- without ROS: ``OnlineTrainer.stop`` / ``start`` (what deactivate and activate do to training).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("lifecycle_msgs")

from lifecycle_msgs.msg import Transition  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.msg import TrainingStatus  # noqa: E402
from lerf_ros.srv import Query  # noqa: E402

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
    unique_domain_id,
    wait_for_service,
    write_node_params,
)

W, H = 64, 48
#: The ROS log lines that must never appear in a clean run (rcl's own errors included).
BAD_LOG = re.compile(r"\[ERROR\]|Traceback|Failed to publish|failed to send response|cannot use Destroyable")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lifecycle") / "scene"
    make_scene(seed=5, width=W, height=H, n_frames=16, nthreads=1).save(d, preview=False)
    return d


def write_params(path: Path, scene_dir: Path, output_dir: Path, autostart: bool = False) -> Path:
    query = {"reload_period_s": 0.5, "snapshot_min_interval_s": 0.0}
    return write_node_params(path, scene_dir, output_dir, common={"autostart": autostart}, query=query)


class StatusWatcher:
    def __init__(self, node) -> None:
        self.all = []
        node.create_subscription(TrainingStatus, "/lerf/status", self.all.append, 10)

    @property
    def last(self):
        return self.all[-1] if self.all else None


def wait_exit(proc, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        return stop_process(proc, timeout=5.0) or -999


def assert_clean_log(proc) -> None:
    out = process_output(proc, tail=200_000)
    bad = [line for line in out.splitlines() if BAD_LOG.search(line)]
    assert not bad, "\n".join(bad[:20])


def test_trainer_every_transition_over_dds(scene_dir, tmp_path):
    out = tmp_path / "out"
    params = write_params(tmp_path / "params.yaml", scene_dir, out)
    domain = unique_domain_id()
    env = ros_env(domain)
    trainer = start_process(
        python_argv("-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)), env=env
    )
    replay = None
    rss = {}
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_lifecycle", context=ctx)
            status = StatusWatcher(node)
            lc = Lifecycle(node, "lerf_trainer", trainer)
            save = node.create_client(Trigger, "/lerf/save_checkpoint")

            # unconfigured: nothing loaded, published or served
            assert lc.state() == "unconfigured"
            assert not save.wait_for_service(timeout_sec=1.0)
            assert node.count_publishers("/lerf/status") == 0

            # configure: the services exist and say the node is inactive
            assert lc.set(Transition.TRANSITION_CONFIGURE)
            assert lc.state() == "inactive"
            assert wait_for_service(save, 30.0)
            resp = call(node, save, Trigger.Request())
            assert not resp.success and "inactive" in resp.message, resp.message
            assert node.count_subscribers("/image") == 0

            # activate: subscribes and trains on a replayed stream
            assert lc.set(Transition.TRANSITION_ACTIVATE)
            assert lc.state() == "active"
            replay = start_process(lerf_ros_argv("replay", str(scene_dir), "--rate", "8", "--loop"), env=env)
            trained = lambda: status.last is not None and status.last.frames_kept >= 3 and status.last.step > 0  # noqa: E731
            assert spin_until(node, trained, 240.0), (process_output(trainer), process_output(replay))
            s1 = status.last.step
            assert spin_until(node, lambda: status.last.step > s1 + 5, 120.0), process_output(trainer)
            rss["before_deactivate"] = rss_mb(trainer.pid)

            # deactivate: inputs unsubscribed, status stops, a checkpoint of the step reached, session kept
            assert lc.set(Transition.TRANSITION_DEACTIVATE)
            assert lc.state() == "inactive"
            assert spin_until(node, lambda: node.count_subscribers("/image") == 0, 30.0), "still subscribed"
            rss["after_deactivate"] = rss_mb(trainer.pid)
            t_end = time.monotonic() + 2.0  # status messages already on their way arrive
            spin_until(node, lambda: time.monotonic() > t_end, 5.0)
            stopped_at = status.last.step
            n = len(status.all)
            t_end = time.monotonic() + 2.0
            spin_until(node, lambda: time.monotonic() > t_end, 5.0)
            assert len(status.all) == n, "status published while inactive"
            resp = call(node, save, Trigger.Request())
            assert not resp.success and "inactive" in resp.message
            checkpoints = sorted((out / "checkpoints").glob("*.ckpt"))
            assert checkpoints, "no checkpoint written on deactivate\n" + process_output(trainer)
            assert "saved the checkpoint" in process_output(trainer, tail=200_000)

            # activate again: training goes on from the same session
            assert lc.set(Transition.TRANSITION_ACTIVATE)
            assert spin_until(node, lambda: len(status.all) > n, 30.0)
            assert status.all[n].step >= stopped_at, "the session was not kept while inactive"
            assert spin_until(node, lambda: status.last.step > stopped_at, 120.0)
            assert spin_until(node, lambda: node.count_subscribers("/image") >= 1, 30.0)

            # deactivate + cleanup: the session is dropped and the memory handed back
            assert lc.set(Transition.TRANSITION_DEACTIVATE)
            stopped_at = status.last.step
            assert lc.set(Transition.TRANSITION_CLEANUP)
            assert lc.state() == "unconfigured"
            rss["after_cleanup"] = rss_mb(trainer.pid)
            assert spin_until(node, lambda: not save.service_is_ready(), 30.0), "services kept after cleanup"

            # configure again: resumes from the checkpoint written on deactivate
            assert lc.set(Transition.TRANSITION_CONFIGURE)
            assert lc.set(Transition.TRANSITION_ACTIVATE)
            n = len(status.all)
            assert spin_until(node, lambda: len(status.all) > n, 60.0)
            assert status.all[n].step >= stopped_at - 1, (status.all[n].step, stopped_at)
            assert process_output(trainer, tail=200_000).count("resumed from checkpoint") >= 1

            # shutdown from active: the process ends by itself, cleanly
            assert lc.set(Transition.TRANSITION_ACTIVE_SHUTDOWN, exits=True)
            code = wait_exit(trainer, 20.0)
            node.destroy_node()
    finally:
        if replay is not None:
            stop_process(replay, timeout=20.0)
        if trainer.poll() is None:
            stop_process(trainer, timeout=20.0)
    print(f"trainer RSS (MB): {rss}")
    assert code == 0, process_output(trainer)
    assert "finalized" in process_output(trainer, tail=200_000)
    assert_clean_log(trainer)
    assert rss["after_cleanup"] < rss["before_deactivate"], rss


def test_query_node_every_transition_over_dds(scene_dir, tmp_path):
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    domain = unique_domain_id()
    argv = python_argv("-m", "lerf_ros.ros.query_node", "--ros-args", "--params-file", str(params))
    proc = start_process(argv, env=ros_env(domain))
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_lifecycle_query", context=ctx)
            lc = Lifecycle(node, "lerf_query", proc)
            query = node.create_client(Query, "/lerf/query")
            assert lc.state() == "unconfigured"
            assert not query.wait_for_service(timeout_sec=1.0), "/lerf/query served while unconfigured"

            assert lc.set(Transition.TRANSITION_CONFIGURE)
            assert lc.state() == "inactive"
            assert wait_for_service(query, 30.0)
            resp = call(node, query, Query.Request(text="mug"))
            assert not resp.success and "lerf_query is inactive" in resp.message, resp.message

            assert lc.set(Transition.TRANSITION_ACTIVATE)
            assert lc.state() == "active"
            resp = call(node, query, Query.Request(text="mug"))
            assert "inactive" not in resp.message and "no model yet" in resp.message, resp.message

            assert lc.set(Transition.TRANSITION_DEACTIVATE)
            resp = call(node, query, Query.Request(text="mug"))
            assert not resp.success and "inactive" in resp.message, resp.message

            assert lc.set(Transition.TRANSITION_CLEANUP)
            assert lc.state() == "unconfigured"
            assert spin_until(node, lambda: not query.service_is_ready(), 30.0), "/lerf/query kept after cleanup"

            assert lc.set(Transition.TRANSITION_CONFIGURE)
            assert wait_for_service(query, 30.0)
            # shutdown from inactive: the process ends by itself, cleanly
            assert lc.set(Transition.TRANSITION_INACTIVE_SHUTDOWN, exits=True)
            code = wait_exit(proc, 20.0)
            node.destroy_node()
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout=20.0)
    assert code == 0, process_output(proc)
    assert_clean_log(proc)


def test_run_without_autostart_waits_unconfigured_and_ends_on_shutdown(scene_dir, tmp_path):
    """``lerf-ros run --no-autostart`` (one process, both nodes), over a params file that says nothing
    about autostart: both wait unconfigured; the query node cannot be configured before the trainer
    it shares the text encoder with (the transition fails with the reason, the node stays
    unconfigured); the process ends with 0 once both are shut down from unconfigured."""
    params = write_params(tmp_path / "params.yaml", scene_dir, tmp_path / "out", autostart=True)
    domain = unique_domain_id()
    proc = start_process(lerf_ros_argv("run", "--params-file", str(params), "--no-autostart"), env=ros_env(domain))
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("test_lifecycle_run", context=ctx)
            trainer = Lifecycle(node, "lerf_trainer", proc)
            query = Lifecycle(node, "lerf_query", proc)
            assert trainer.state() == "unconfigured" and query.state() == "unconfigured"
            assert not query.set(Transition.TRANSITION_CONFIGURE)
            assert query.state() == "unconfigured"
            assert "configure lerf_trainer first" in process_output(proc)

            assert trainer.set(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
            assert trainer.state() == "finalized"
            t_end = time.monotonic() + 1.0
            spin_until(node, lambda: time.monotonic() > t_end, 3.0)
            assert proc.poll() is None, "the process ended while lerf_query was still running"
            assert query.set(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, exits=True)
            code = wait_exit(proc, 20.0)
            node.destroy_node()
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout=20.0)
    assert code == 0, process_output(proc)
    out = process_output(proc, tail=200_000)
    assert "configure failed" in out  # the one expected error: the refused configure
    bad = [line for line in out.splitlines() if BAD_LOG.search(line) and "configure failed" not in line]
    assert not bad, "\n".join(bad)


def test_autostart_that_cannot_configure_ends_the_process_with_the_reason(tmp_path):
    """With autostart, a configure that fails (here: the teacher's scene folder does not exist) ends
    the process with code 2 and says why, as a bad configuration always did."""
    params = write_params(tmp_path / "params.yaml", tmp_path / "no_such_scene", tmp_path / "out", autostart=True)
    argv = python_argv("-m", "lerf_ros.ros.query_node", "--ros-args", "--params-file", str(params))
    proc = start_process(argv, env=ros_env(unique_domain_id()))
    code = wait_exit(proc, 120.0)
    out = process_output(proc)
    assert code == 2, out
    assert "failed to start" in out and "configure failed: the text encoder could not be loaded" in out, out


def test_autostart_argument_of_the_launch_and_of_lerf_ros_run(tmp_path):
    import argparse

    from lerf_ros.commands import run
    from lerf_ros.config import node_parameters
    from lerf_ros.ros.launch_args import NOT_GIVEN, given_overrides

    assert {p.name: p.default for p in node_parameters("trainer")}["autostart"] is True
    assert {p.name: p.default for p in node_parameters("query")}["autostart"] is True
    assert given_overrides({"autostart": NOT_GIVEN}) == {}, "not given: the params file's value stands"
    assert given_overrides({"autostart": "false"}) == {"autostart": False}
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    assert "autostart:=false" in run.ros_args(parser.parse_args(["--no-autostart"]))
    assert not [a for a in run.ros_args(parser.parse_args([])) if a.startswith("autostart")]


def test_online_trainer_stops_and_starts_again_with_its_session(tmp_path):
    """What deactivate and activate do to training, without ROS: ``stop`` ends the training thread
    after the step in flight and writes the unsaved step, the session and keyframes stay, and
    ``start`` trains on from the same step; a thread still finishing a step stays stopped."""
    import threading

    from lerf_ros.config import preset
    from lerf_ros.mapping import checkpoint as ckpt
    from lerf_ros.mapping.online import OnlineTrainer
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    scene = make_scene(seed=5, width=W, height=H, n_frames=4, nthreads=1)
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
    ot = OnlineTrainer(cfg, teacher=GroundTruthTeacher(scene), log=lambda level, text: None)

    def train_until(steps: int) -> None:
        deadline = time.monotonic() + 120
        while ot.step < steps and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ot.step >= steps

    for f in scene.frames[:3]:
        ot.submit(f)
    ot.start()
    train_until(3)
    path = ot.stop(save=True)
    stopped = ot.step
    assert path is not None and ckpt.read_checkpoint(path)["step"] == stopped
    assert not [t for t in threading.enumerate() if t.name == "lerf_train"], "the training thread still runs"
    time.sleep(0.3)
    assert ot.step == stopped, "trained while stopped"
    assert ot.keyframes.stats()["count"] == 3
    ot.start()
    train_until(stopped + 2)
    assert ot.close(save=True) is not None


def test_query_node_activate_deactivate_cycles_keep_one_preparer(monkeypatch):
    """Deactivating the query node while a snapshot is being prepared, then activating it again, many
    times: one preparer (thread) serves every activation (paused while inactive, its preparation under
    way finished), none is left behind; it prepares the newer snapshots after each activation, and
    cleanup ends it."""
    import gc
    import itertools
    import threading
    import weakref

    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from lerf_ros.query.preparer import SnapshotPreparer
    from lerf_ros.ros.query_node import QueryNode
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    from analytic_field import AnalyticSnapshot

    class SlowSnapshot(AnalyticSnapshot):
        def render(self, K, c2w, height, width):
            time.sleep(0.05)  # a preparation of seconds: each deactivation finds one under way
            return super().render(K, c2w, height, width)

    scene = make_scene(seed=5, width=W, height=H, n_frames=8, nthreads=1)
    teacher = GroundTruthTeacher(scene)
    steps = itertools.count(10_000, 10_000)  # each one far enough ahead to render the surface again
    offered = []

    def provider():
        offered.append(SlowSnapshot(scene, teacher.encode_text, step=next(steps)))
        return offered[-1]

    # Preparers are counted through weak references taken when they are made, not by scanning
    # gc.get_objects(): that list holds a reference to every object, so a tuple being built on the
    # preparer's thread meanwhile could not be resized there (CPython's SystemError "bad argument to
    # internal function") and the preparation failed because of the test.
    made = weakref.WeakSet()
    construct = SnapshotPreparer.__init__

    def recording_init(self, *args, **kwargs):
        construct(self, *args, **kwargs)
        made.add(self)

    monkeypatch.setattr(SnapshotPreparer, "__init__", recording_init)

    def preparers():
        gc.collect()
        return list(made)

    def prepare_threads():
        return [t for t in threading.enumerate() if t.name == "lerf_prepare" and t.is_alive()]

    overrides = [
        Parameter("preset", value="tiny"),
        Parameter("autostart", value=False),
        Parameter("reload_period_s", value=0.05),
        Parameter("snapshot_min_interval_s", value=0.0),
        Parameter("prepare_cpu_share", value=1.0),
    ]
    with ros_context() as ctx:
        node = QueryNode(
            snapshot_provider=provider,
            teacher_source=lambda: teacher,
            name="lerf_query_cycles",
            context=ctx,
            parameter_overrides=overrides,
        )
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            for cycle in range(6):
                assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
                under_way = lambda: node.status()["preparing_step"] > 0  # noqa: E731
                deadline = time.monotonic() + 60.0
                while not under_way() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert under_way(), f"cycle {cycle}: no preparation under way"
                assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
                assert len(preparers()) <= 1, f"cycle {cycle}: {len(preparers())} preparers"
                assert len(prepare_threads()) <= 1, f"cycle {cycle}: {len(prepare_threads())} preparation threads"
            # Inactive: the preparation under way is finished and swapped in, nothing newer is fetched.
            settled = lambda: node.status()["preparing_step"] <= 0 and node.status()["step"] == offered[-1].step  # noqa: E731
            deadline = time.monotonic() + 60.0
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert settled(), (node.status(), offered[-1].step)
            fetched, answering = len(offered), node.status()["step"]
            time.sleep(0.5)
            assert len(offered) == fetched, "the inactive node went on fetching snapshots"
            # Active again: newer snapshots are prepared (by the same preparer).
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            deadline = time.monotonic() + 60.0
            while node.status()["step"] <= answering and time.monotonic() < deadline:
                time.sleep(0.02)
            assert node.status()["step"] > answering
            assert len(preparers()) == 1 and len(prepare_threads()) == 1
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            deadline = time.monotonic() + 10.0
            while prepare_threads() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not prepare_threads() and not preparers(), "cleanup left a preparer"
        finally:
            node.close()
            node.destroy_node()
