"""Queries first (``lerf_ros.mapping.priority``): the training thread waits while a query is
answered, within its share of time, and an online trainer takes no new step during an answer."""

from __future__ import annotations

import threading
import time

import pytest

from lerf_ros.config import ConfigError, preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping.online import OnlineTrainer
from lerf_ros.mapping.priority import QueryPriority
from lerf_ros.teachers.ground_truth import GroundTruthTeacher


def hold(priority: QueryPriority, seconds: float) -> threading.Thread:
    """A query answered for ``seconds`` on another thread (started once it is answering)."""
    started = threading.Event()

    def run():
        with priority.answering():
            started.set()
            time.sleep(seconds)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(5.0)
    return t


def test_no_query_no_wait():
    p = QueryPriority(0.5)
    t0 = time.monotonic()
    assert p.wait(threading.Event()) == 0.0
    assert time.monotonic() - t0 < 0.05


def test_waits_until_the_answer_is_given():
    p = QueryPriority(0.5, window_s=10.0)
    t = hold(p, 0.4)
    waited = p.wait(threading.Event())
    t.join()
    assert 0.25 <= waited <= 1.5, waited
    assert p.answering_now == 0
    assert p.waited_s == pytest.approx(waited)


def test_the_share_caps_the_wait_and_a_flood_cannot_stop_training():
    p = QueryPriority(0.2, window_s=1.0)  # at most 0.2 s of waiting per second
    t = hold(p, 1.5)
    first = p.wait(threading.Event())
    assert 0.1 <= first <= 0.6, first
    assert p.wait(threading.Event()) < 0.05  # the share is spent: trains on while the query runs
    t.join()
    # Once the old wait has left the window, it waits again.
    time.sleep(1.05)
    t = hold(p, 0.3)
    assert p.wait(threading.Event()) >= 0.1
    t.join()


def test_stop_ends_the_wait():
    p = QueryPriority(0.5, window_s=10.0)
    t = hold(p, 2.0)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert p.wait(stop) < 1.0
    t.join()


def test_zero_share_never_waits_and_bad_shares_are_refused():
    p = QueryPriority(0.0)
    t = hold(p, 0.5)
    assert p.wait(threading.Event()) == 0.0
    t.join()
    with pytest.raises(ValueError, match="share"):
        QueryPriority(1.0)
    with pytest.raises(ConfigError, match="trainer.query_yield_share"):
        preset("tiny").override({"trainer.query_yield_share": 0.95})


@pytest.mark.usefixtures("one_thread")
def test_online_trainer_takes_no_new_step_while_a_query_is_answered(tmp_path):
    scene = make_scene(seed=5, width=48, height=36, n_frames=6, nthreads=1)
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "trainer.rays_per_batch": 64,
            "trainer.checkpoint_every": 0,
            "output_dir": str(tmp_path),
            "keyframes.min_keyframes_to_train": 2,
            "keyframes.min_translation": 0.0,
            "keyframes.min_rotation_deg": 0.0,
        }
    )
    ot = OnlineTrainer(cfg, teacher=GroundTruthTeacher(scene), log=lambda level, text: None)
    try:
        for f in scene.frames[:3]:
            ot.submit(f)
        ot.start()
        deadline = time.monotonic() + 120
        while ot.step < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ot.step >= 3
        with ot.priority.answering():
            before = ot.step
            time.sleep(1.5)
            during = ot.step - before
        assert during <= 1, f"{during} steps while a query was answered (at most the one in flight)"
        deadline = time.monotonic() + 60
        after = ot.step
        while ot.step < after + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ot.step >= after + 2, "training did not go on after the answer"
        assert ot.priority.waited_s >= 1.0
    finally:
        ot.close(save=False)
