"""Progress of long work as log lines (``lerf_ros.mapping.progress``) and in ``lerf-ros train``.

The reporter is driven by a fake clock: lines come every 10% of the work, or every 10 s when the
work is slow, never two within the minimum interval (the last line excepted), with the right rate
and ETA. ``lerf-ros train --no-progress`` prints such lines for the teacher features and training.
"""

import re

import pytest

from lerf_ros.mapping.progress import ProgressLog, format_duration


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def reporter(total, clock, **kw):
    lines = []
    log = ProgressLog("work", total, "items", log=lines.append, clock=clock, **kw)
    return log, lines


def test_a_line_every_tenth_of_steady_work_with_rate_and_eta():
    clock = FakeClock()
    log, lines = reporter(100, clock)
    log.start()
    assert lines == ["work: 0/100 items"]
    for n in range(1, 101):
        clock.t += 0.5  # 2 items/s: a tenth every 5 s, before the 10 s rule
        log.update(n)
    assert len(lines) == 11
    assert lines[5] == "work: 50/100 items (50%), 2 items/s, 25.0 s elapsed, ETA 25.0 s"
    assert lines[-1] == "work: 100/100 items (100%), 2 items/s, 50.0 s elapsed"


def test_slow_work_reports_every_10_s():
    clock = FakeClock()
    log, lines = reporter(1000, clock)
    log.start()
    times = []
    for n in range(1, 61):
        clock.t += 3.0  # a tenth would take 300 s
        if log.update(n):
            times.append(clock.t)
    gaps = [b - a for a, b in zip([100.0] + times, times)]
    assert len(times) == 15 and all(10.0 <= g < 13.0 for g in gaps), gaps
    m = re.search(r"ETA (\d+) min (\d+) s", lines[-1])
    assert m, lines[-1]
    eta = int(m.group(1)) * 60 + int(m.group(2))
    assert eta == pytest.approx((1000 - 60) * 3.0, abs=1)  # 0.333 items/s


def test_fast_work_is_bounded_by_the_minimum_interval():
    clock = FakeClock()
    log, lines = reporter(10_000, clock, min_interval_s=1.0)
    log.start()
    for n in range(1, 10_001):
        clock.t += 1e-5  # 0.1 s in all
        log.update(n)
    assert len(lines) == 2 and lines[-1].startswith("work: 10000/10000 items (100%)")


def test_resumed_work_counts_only_new_units_in_the_rate():
    clock = FakeClock()
    log, lines = reporter(200, clock, initial=100)
    log.start()
    clock.t += 10.0
    log.update(120, note="psnr 20.00")
    assert lines[-1] == "work: 120/200 items (60%), 2 items/s, 10.0 s elapsed, ETA 40.0 s; psnr 20.00"


def test_bad_arguments_and_durations():
    with pytest.raises(ValueError, match="total"):
        ProgressLog("work", 0, "items")
    with pytest.raises(ValueError, match="every_fraction"):
        ProgressLog("work", 5, "items", every_fraction=0.0)
    assert format_duration(5.04) == "5.0 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(7500) == "2 h 05 min"
    assert format_duration(float("inf")) == "?"


@pytest.mark.usefixtures("one_thread")
def test_train_command_prints_progress_lines(tmp_path, capsys):
    from lerf_ros.cli import main

    spec = "synthetic:seed=2,width=40,height=30,n_frames=9"
    args = ["train", "--scene", spec, "--steps", "20", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args + ["--max-renders", "0", "--set", "trainer.rays_per_batch=128"]) == 0
    out = capsys.readouterr().out
    feats = [ln for ln in out.splitlines() if ln.startswith("teacher features: ")]
    train = [ln for ln in out.splitlines() if ln.startswith("train: ")]
    assert feats[0].startswith("teacher features: 0/7 frames")  # before the first frame's features
    assert any(re.match(r"teacher features: 7/7 frames \(100%\), [\d.e+]+ frames/s", ln) for ln in feats), feats
    assert train[0] == "train: 0/20 steps"
    assert re.match(r"train: 20/20 steps \(100%\), [\d.e+]+ steps/s, .* elapsed; psnr [\d.]+", train[-1]), train
    assert len(train) <= 12 and len(feats) <= 13  # bounded: about one line per tenth at most


@pytest.mark.usefixtures("one_thread")
def test_online_trainer_logs_a_teacher_feature_backlog(tmp_path):
    import time

    from lerf_ros.config import preset
    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.mapping.online import OnlineTrainer
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    scene = make_scene(seed=4, n_objects=3, width=40, height=30, n_frames=12, nthreads=1)

    class SlowTeacher(GroundTruthTeacher):
        """The ground-truth teacher at the pace of a CLIP pyramid on a small CPU."""

        def dense_features(self, frame):
            time.sleep(0.25)
            return super().dense_features(frame)

    lines = []
    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "output_dir": str(tmp_path),
            "trainer.rays_per_batch": 64,
            "keyframes.min_translation": 0.001,
            "keyframes.min_rotation_deg": 0.1,
        }
    )
    trainer = OnlineTrainer(cfg, teacher=SlowTeacher(scene), log=lambda level, text: lines.append(text))
    trainer.features_log_every_s = 0.5
    try:
        trainer.start()
        t0 = time.monotonic()
        kept = sum(trainer.submit(f).kept for f in scene.frames)
        while trainer.session.features_pending and time.monotonic() < t0 + 60.0:
            time.sleep(0.05)
        assert trainer.session.features_pending == 0
        elapsed = time.monotonic() - t0
    finally:
        trainer.close()
    backlog = [ln for ln in lines if ln.startswith("teacher features: ")]
    assert kept >= 6 and backlog, lines
    pattern = r"teacher features: \d+ keyframes ready, \d+ pending, [\d.e+-]+ keyframes/s, (ETA [\d.]+ s|none finished)"
    assert all(re.fullmatch(pattern, ln) for ln in backlog), backlog
    assert any("ETA" in ln for ln in backlog), backlog
    # Bounded: at most one line per period of the backlog, not one per frame.
    assert len(backlog) <= elapsed / 0.5 + 1, (elapsed, backlog)
