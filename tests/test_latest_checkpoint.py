"""One rule for "the newest checkpoint" (``lerf_ros.mapping.checkpoint.latest_checkpoint``), shared by
the trainer's resume, the query node and ``lerf-ros query``: ``final.ckpt`` and ``step-*.ckpt``
compared by training step, then by modification time; unreadable files skipped with a warning."""

from __future__ import annotations

import os

import torch

from lerf_ros.mapping import checkpoint as ckpt


def write(path, step, **extra):
    """A file that opens as a checkpoint of ``step`` (the selection reads only format, version, step)."""
    payload = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "step": step, "model": {"w": torch.zeros(8)}}
    payload.update(extra)
    ckpt.write_atomic(str(path), payload)
    return str(path)


def touch(path, seconds):
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_final_and_periodic_checkpoints_compare_by_step_then_time(tmp_path):
    a = write(tmp_path / ckpt.checkpoint_name(200), 200)
    final = write(tmp_path / "final.ckpt", 300)
    touch(final, 1_000)  # older on disk than the periodic one: the step decides, not the time
    touch(a, 2_000)
    assert ckpt.latest_checkpoint(str(tmp_path)) == final
    b = write(tmp_path / ckpt.checkpoint_name(400), 400)
    assert ckpt.latest_checkpoint(str(tmp_path)) == b
    # equal steps: the more recently written one
    write(tmp_path / "final.ckpt", 400)
    touch(final, 3_000)
    touch(b, 2_500)
    assert ckpt.latest_checkpoint(str(tmp_path)) == final
    touch(b, 3_500)
    assert ckpt.latest_checkpoint(str(tmp_path)) == b
    assert ckpt.checkpoint_step(final) == (400, "")


def test_unreadable_checkpoints_are_skipped_with_a_warning(tmp_path):
    good = write(tmp_path / ckpt.checkpoint_name(100), 100)
    newer = write(tmp_path / ckpt.checkpoint_name(500), 500)
    data = open(newer, "rb").read()
    open(newer, "wb").write(data[: len(data) // 2])  # truncated
    open(tmp_path / ckpt.checkpoint_name(600), "wb").close()  # empty
    open(tmp_path / "final.ckpt", "wb").write(b"not a checkpoint")
    foreign = write(tmp_path / ckpt.checkpoint_name(700), 700)
    torch.save({"format": "something else", "step": 700}, foreign)
    warnings = []
    assert ckpt.latest_checkpoint(str(tmp_path), warn=warnings.append) == good
    text = "\n".join(warnings)
    for name in ("final.ckpt", "step-0000500.ckpt", "step-0000600.ckpt", "step-0000700.ckpt"):
        assert name in text, text
    assert "format tag missing" in text
    step, why = ckpt.checkpoint_step(newer)
    assert step is None and "cannot be read" in why
    # a file repaired in place is read again (the cache is keyed by size and modification time)
    write(tmp_path / ckpt.checkpoint_name(500), 500)
    assert ckpt.latest_checkpoint(str(tmp_path), warn=warnings.append) != good


def test_several_folders_and_empty_ones(tmp_path):
    assert ckpt.latest_checkpoint(str(tmp_path)) is None
    assert ckpt.latest_checkpoint(str(tmp_path / "missing")) is None
    (tmp_path / "checkpoints").mkdir()
    inner = write(tmp_path / "checkpoints" / ckpt.checkpoint_name(50), 50)
    top = write(tmp_path / "final.ckpt", 40)
    assert ckpt.latest_checkpoint([str(tmp_path), str(tmp_path / "checkpoints")]) == inner
    write(tmp_path / "final.ckpt", 60)
    assert ckpt.latest_checkpoint([str(tmp_path), str(tmp_path / "checkpoints")]) == top


def test_session_resume_takes_the_newest_by_the_same_rule(tmp_path):
    """The trainer's resume (``Session.resume``) goes through the same rule: a final.ckpt with the
    highest step is the one resumed, and a corrupt newest file is passed over."""
    from lerf_ros.config import preset
    from lerf_ros.data.synthetic import make_scene
    from lerf_ros.mapping.session import Session
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    torch.set_num_threads(1)
    scene = make_scene(seed=3, width=32, height=24, n_frames=4, nthreads=1)
    over = {"teacher.kind": "ground_truth", "trainer.rays_per_batch": 64, "output_dir": str(tmp_path)}
    over["keyframes.min_keyframes_to_train"] = 2
    cfg = preset("tiny").override(over)

    def session():
        s = Session(cfg, GroundTruthTeacher(scene), online=False, log=lambda level, text: None)
        for f in scene.frames:
            s.add(f)
        return s

    a = session()
    a.step()
    a.save_checkpoint()  # step-0000001.ckpt
    a.step()
    final = a.save_checkpoint(os.path.join(a.checkpoint_dir, "final.ckpt"))
    assert session().resume() == final
    a.step()
    newest = a.save_checkpoint()  # step-0000003.ckpt, then damaged
    data = open(newest, "rb").read()
    open(newest, "wb").write(data[:100])
    b = session()
    assert b.resume() == final and b.step_count == 2
