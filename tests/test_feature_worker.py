"""The background feature worker, with a real (tiny, random-weights) CLIP + DINO teacher."""

import threading

import numpy as np
import pytest
import torch

from lerf_ros.config import TeacherConfig
from lerf_ros.data.frame import Frame, FrameError
from lerf_ros.teachers import ClipDinoTeacher, ClipEncoder, DinoEncoder, FeatureWorker, FrameFeatures
from lerf_ros.teachers.features import compute_frame_features

torch.set_num_threads(1)
CFG = TeacherConfig(pyramid_levels=2, pyramid_min=0.25, pyramid_max=0.5, batch_size=64, worker_queue_size=4)


@pytest.fixture(scope="module")
def teacher():
    clip = ClipEncoder("test-tiny-vit", random_weights=True, device="cpu")
    dino = DinoEncoder(random_weights=True, device="cpu", max_side=32, model_kwargs=dict(depth=1))
    return ClipDinoTeacher(clip, dino)


def _frame(seed, h=24, w=32):
    rng = np.random.default_rng(seed)
    K = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    return Frame(rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K=K, c2w=np.eye(4))


def test_features_arrive_for_every_frame(teacher):
    with FeatureWorker(teacher, CFG) as worker:
        frames = {k: _frame(k) for k in (3, 7, 11)}
        for k, f in frames.items():
            assert worker.submit(k, f)
        assert worker.wait(timeout=60)
        assert worker.pending == 0 and worker.ready == 3
        done = dict(worker.poll())
        assert worker.poll() == [] and worker.ready == 0
    assert set(done) == {3, 7, 11} and all(isinstance(v, FrameFeatures) for v in done.values())
    direct = compute_frame_features(teacher, frames[7], CFG)
    p, q = done[7].pyramid, direct.pyramid
    u, v, s = torch.tensor([5.0, 20.0]), torch.tensor([3.0, 17.0]), torch.tensor([6.0, 10.0])
    torch.testing.assert_close(p.lookup(u, v, s), q.lookup(u, v, s))
    torch.testing.assert_close(done[7].dino.lookup(u, v), direct.dino.lookup(u, v))
    assert worker.num_done == 3 and not worker.alive


def test_a_bad_frame_is_reported_and_the_thread_goes_on(teacher):
    seen = []
    worker = FeatureWorker(teacher, CFG, on_error=lambda key, exc: seen.append(key))
    bad = _frame(1)
    bad.rgb = bad.rgb.astype(np.float32)  # invalid: not uint8
    worker.submit("good-1", _frame(0))
    worker.submit("bad", bad)
    worker.submit("good-2", _frame(2))
    assert worker.wait(timeout=60)
    errors = worker.take_errors()
    assert [k for k, _ in errors] == ["bad"] and isinstance(errors[0][1], FrameError)
    assert "uint8" in str(errors[0][1])
    assert seen == ["bad"] and worker.take_errors() == []
    assert sorted(k for k, _ in worker.poll()) == ["good-1", "good-2"]
    assert worker.alive and worker.num_failed == 1
    worker.close()
    assert not worker.alive
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit("late", _frame(3))


def test_queue_is_bounded_and_close_can_cancel(teacher):
    gate = threading.Event()
    started = threading.Event()

    def gated(t, frame, cfg):
        started.set()
        assert gate.wait(30)
        return compute_frame_features(t, frame, cfg)

    worker = FeatureWorker(teacher, CFG, max_queue=1, compute=gated)
    assert worker.submit(0, _frame(0))
    assert started.wait(30)  # frame 0 is being computed, the queue is empty
    assert worker.submit(1, _frame(1))  # fills the queue
    assert not worker.submit(2, _frame(2), block=False)
    assert not worker.submit(2, _frame(2), timeout=0.05)
    assert worker.pending == 2
    gate.set()
    assert worker.wait(timeout=60)
    assert [k for k, _ in worker.poll()] == [0, 1]

    gate.clear()
    started.clear()
    worker.submit(10, _frame(10))
    assert started.wait(30)
    worker.submit(11, _frame(11))
    threading.Timer(0.2, gate.set).start()
    worker.close(cancel=True, timeout=60)  # frame 11 is dropped, frame 10 finishes
    assert not worker.alive and worker.pending == 0
    assert [k for k, _ in worker.poll()] == [10]
