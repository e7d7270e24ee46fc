"""Live queries while a new snapshot is prepared: answered at once from the previous one.

The ground-truth field of a synthetic scene (tests/analytic_field.py) is made slow to render (each
strip of a view sleeps), so preparing a newer snapshot takes seconds; queries asked meanwhile must
come back within a fraction of that, stamped with the previous snapshot's step and version, and the
newer one must answer once it is swapped in. Also: the pacing of the preparation, the preparation
thread's lower priority, and a failed preparation leaving the previous snapshot answering.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import numpy as np
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.query import QueryEngine
from lerf_ros.query.cancel import PacedStop, StopFlag
from lerf_ros.query.preparer import SnapshotPreparer, lower_thread_priority
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

from analytic_field import AnalyticSnapshot

torch.set_num_threads(1)

#: seconds each rendered strip of the slow snapshot sleeps
STRIP_SLEEP_S = 0.05


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, n_frames=12, width=96, height=72)


@pytest.fixture(scope="module")
def teacher(scene):
    return GroundTruthTeacher(scene)


def qcfg(**kw):
    base = dict(surface_stride=1, surface_max_views=12, max_candidate_points=3000, refresh_every_steps=500)
    base.update(kw)
    return dataclasses.replace(preset("tiny").query, **base).check()


class SlowSnapshot(AnalyticSnapshot):
    """Renders each strip ``STRIP_SLEEP_S`` slower, and records when it rendered."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.render_times = []

    def render(self, K, c2w, height, width):
        self.render_times.append(time.monotonic())
        time.sleep(STRIP_SLEEP_S)
        return super().render(K, c2w, height, width)


def test_queries_during_preparation_are_answered_from_the_previous_snapshot(scene, teacher):
    eng = QueryEngine(qcfg(), teacher.encode_text)
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=100))
    eng.prepare()
    name = scene.objects[0].class_name
    ref = eng.query(name)
    assert ref.success and ref.step == 100 and ref.snapshot_version == 1, ref.message

    # Step 2000: the surface is stale (refresh_every_steps 500), so it is re-rendered, slowly.
    slow = SlowSnapshot(scene, teacher.encode_text, step=2000)
    offered = []

    def fetch():
        if offered:
            return None
        offered.append(time.monotonic())
        return slow

    swapped = threading.Event()
    prep = SnapshotPreparer(
        lambda: eng, fetch, period_s=0.05, cpu_share=1.0, on_prepared=lambda snap, ms: swapped.set()
    ).start()
    try:
        deadline = time.monotonic() + 30.0
        while len(slow.render_times) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert prep.preparing_step == 2000 and eng.status()["preparing"]
        during = []
        for _ in range(5):
            t0 = time.monotonic()
            r = eng.query(name)
            during.append((time.monotonic() - t0, r, len(slow.render_times)))
        assert swapped.wait(60.0), "the new snapshot was never swapped in"
        t_swap = time.monotonic()
    finally:
        prep.close()
    strips = len(slow.render_times)
    prepare_s = t_swap - offered[0]
    assert prepare_s > strips * STRIP_SLEEP_S * 0.9  # the preparation really was slow
    assert strips >= 20, strips
    for seconds, r, _ in during:
        assert r.success, r.message
        # answered from the previous snapshot, its points unchanged, without waiting for the new one
        assert r.step == 100 and r.snapshot_version == 1 and r.surface_step == 100
        np.testing.assert_array_equal(r.points, ref.points)
        assert seconds < 0.25 * prepare_s, (seconds, prepare_s)
        assert r.timings["surface"] == 0 and r.timings["features"] == 0
    # the queries were asked while the preparation was still rendering (more strips came after)
    assert during[-1][2] < strips
    new = eng.query(name)
    assert new.success and new.step == 2000 and new.surface_step == 2000 and new.snapshot_version == 2
    assert 0 <= new.snapshot_age_s < 120
    st = eng.status()
    assert st["step"] == 2000 and st["version"] == 2 and not st["preparing"] and st["error"] == ""


def test_first_query_waits_for_the_first_snapshot_only(scene, teacher):
    """Before any snapshot is prepared the query prepares it (there is nothing older to answer from)."""
    eng = QueryEngine(qcfg(surface_max_views=4), teacher.encode_text)
    slow = SlowSnapshot(scene, teacher.encode_text, step=5)
    eng.set_snapshot(slow)
    assert eng.prepared is None and eng.current_step() == 5
    t0 = time.monotonic()
    r = eng.query(scene.objects[1].class_name)
    assert r.success and r.step == 5 and r.snapshot_version == 1, r.message
    assert time.monotonic() - t0 >= len(slow.render_times) * STRIP_SLEEP_S and r.timings["surface"] > 0


def test_failed_preparation_keeps_the_previous_snapshot(scene, teacher):
    class Broken(AnalyticSnapshot):
        def language_multi_scale(self, xyz, scales, project=None):
            raise RuntimeError("field exploded")

        def language_basis(self):
            raise RuntimeError("field exploded")

    eng = QueryEngine(qcfg(surface_max_views=4), teacher.encode_text)
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=10))
    eng.prepare()
    eng.set_snapshot(Broken(scene, teacher.encode_text, step=20))
    with pytest.raises(RuntimeError, match="field exploded"):
        eng.prepare()
    r = eng.query(scene.objects[0].class_name)
    assert r.success and r.step == 10 and r.snapshot_version == 1, r.message
    st = eng.status()
    assert st["step"] == 10 and st["offered_step"] == 20
    assert st["error"] == "preparing the model at step 20 failed: RuntimeError: field exploded"


def test_paced_stop_pauses_for_the_rest_of_its_share():
    flag = StopFlag()
    paced = PacedStop(flag, share=0.25)
    t0 = time.perf_counter()
    busy = 0.0
    for _ in range(5):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.02:  # a chunk of work
            pass
        busy += time.perf_counter() - t
        paced.check()
    wall = time.perf_counter() - t0
    # each chunk is followed by three times its length of pause: work is about a quarter of the time
    assert paced.paused_s == pytest.approx(3 * busy, rel=0.3)
    assert wall >= 3.5 * busy
    flag.set()  # the paced view shares the flag: a stop ends its pause at once
    t = time.perf_counter()
    with pytest.raises(Exception, match="shutting down"):
        paced.check()
    assert time.perf_counter() - t < 0.2
    with pytest.raises(ValueError):
        PacedStop(flag, share=0.0)


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are Linux/Unix only")
def test_preparation_thread_runs_at_lower_priority():
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def body():
        seen["note"] = lower_thread_priority(5)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["note"] == "" and seen["nice"] == min(19, main_nice + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice  # only that thread


def test_a_pause_during_the_fetch_drops_the_fetched_snapshot(scene, teacher):
    """A ``pause`` that lands while the preparer fetches a snapshot: nothing is prepared or swapped in
    after ``pause`` returned (the lifecycle's deactivate); after ``resume`` it is."""
    eng = QueryEngine(qcfg(surface_max_views=4), teacher.encode_text)
    eng.set_snapshot(AnalyticSnapshot(scene, teacher.encode_text, step=10))
    eng.prepare()
    fetching, release = threading.Event(), threading.Event()
    new = AnalyticSnapshot(scene, teacher.encode_text, step=20)

    def fetch():
        fetching.set()
        assert release.wait(30.0)
        return new

    swapped = threading.Event()
    prep = SnapshotPreparer(
        lambda: eng, fetch, period_s=0.05, cpu_share=1.0, on_prepared=lambda snap, ms: swapped.set()
    ).start()
    try:
        assert fetching.wait(30.0)
        prep.pause()
        release.set()
        assert not swapped.wait(1.5), "a preparation started after pause returned"
        assert prep.preparing_step is None and eng.status()["offered_step"] == 10 and eng.current_step() == 10
        prep.resume()
        assert swapped.wait(60.0), "not prepared after resume"
    finally:
        prep.close()
    assert eng.query(scene.objects[0].class_name).step == 20
