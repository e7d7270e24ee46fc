"""Teacher kind 'none': geometry and colour only, and a clear "no language field" from the query side.

A session with no teacher stores keyframes without features, trains (the RGB loss falls) with a
model that has no language or DINO field, checkpoints and resumes; the snapshot reports clip_dim 0;
the query engine, ``lerf-ros query`` and the query node over DDS answer with the "no language
field" message instead of a relevancy.
"""

import os

import numpy as np
import pytest
import torch

from lerf_ros.config import ConfigError, preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.field.model import NoLanguageFieldError
from lerf_ros.mapping.checkpoint import load_snapshot
from lerf_ros.mapping.online import OnlineTrainer
from lerf_ros.mapping.session import Session
from lerf_ros.query import QueryEngine
from lerf_ros.teachers import NO_LANGUAGE_MESSAGE, NoLanguageError, NoTeacher, make_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 80


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, n_objects=3, width=40, height=30, n_frames=9, nthreads=1)


def cfg_for(out, **over):
    base = {"teacher.kind": "none", "trainer.rays_per_batch": 256, "output_dir": str(out)}
    base.update(over)
    return preset("tiny").override(base)


def quiet(level, text):
    pass


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory):
    """An offline session trained STEPS steps with teacher 'none', its RGB losses and its checkpoint."""
    out = tmp_path_factory.mktemp("none")
    session = Session(cfg_for(out), online=False, log=quiet)
    for f in scene.frames:
        session.add(f)
    rgb = [session.step()["rgb"] for _ in range(STEPS)]
    path = session.save_checkpoint()
    return session, rgb, path, out


def test_config_and_factory():
    cfg = preset("tiny").override({"teacher.kind": "none"})
    teacher = make_teacher(cfg.teacher)
    assert isinstance(teacher, NoTeacher) and teacher.clip_dim == 0 and teacher.dino_dim == 0
    with pytest.raises(NoLanguageError, match="no language field"):
        teacher.encode_text(["mug"])
    with pytest.raises(ConfigError, match="'none'"):
        preset("tiny").override({"teacher.kind": "nothing"})


def test_training_without_teacher_lowers_the_rgb_loss(trained):
    session, rgb, _, _ = trained
    assert not session.has_language
    assert session.keyframes.num_with_features() == 0 and len(session.keyframes) == 9
    assert session.can_train() and session.ready_keyframes() == 9
    model = session.trainer.model
    assert model.lang is None and not model.has_language
    assert {g["name"] for g in session.trainer.optimizer.param_groups} == {"fields", "proposal"}
    assert "lang" not in session.losses and "dino" not in session.losses
    assert np.all(np.isfinite(rgb))
    first, last = float(np.mean(rgb[:5])), float(np.mean(rgb[-10:]))
    assert last < 0.7 * first, (first, last)


def test_checkpoint_resumes_and_loads_as_a_snapshot_without_language(trained, scene, tmp_path):
    session, _, path, out = trained
    again = Session(cfg_for(out), online=False, log=quiet)
    for f in scene.frames:
        again.add(f)
    assert again.resume(path) == path and again.step_count == STEPS
    for a, b in zip(session.trainer.model.parameters(), again.trainer.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert np.isfinite(again.step()["rgb"])

    snap = load_snapshot(path)
    assert snap.clip_dim == 0 and snap.step == STEPS
    with pytest.raises(NoLanguageFieldError):
        snap.language_basis()
    with pytest.raises(NoLanguageFieldError):
        snap.language(torch.zeros((2, 3)), torch.ones(2))
    f = scene.frames[1]
    r = snap.render(f.K, f.c2w, f.height, f.width)
    assert r["rgb"].shape == (f.height, f.width, 3) and torch.isfinite(r["rgb"]).all()


def test_online_trainer_trains_without_feature_worker(scene, tmp_path):
    trainer = OnlineTrainer(cfg_for(tmp_path, **{"keyframes.min_keyframes_to_train": 2}), log=quiet)
    try:
        assert trainer.session._worker is None
        kept = sum(trainer.submit(f).kept for f in scene.frames)
        assert kept >= 2 and trainer.session.features_pending == 0
        assert trainer.session.can_train()
        stats = trainer.session.step()
        assert np.isfinite(stats["rgb"]) and stats["lang_rays"] == 0
        assert trainer.status().state.value == "training"
    finally:
        trainer.close()


def test_engine_answers_no_language_field(trained):
    session, _, _, _ = trained
    calls = []

    def encode_text(texts):
        calls.append(list(texts))
        raise AssertionError("the text encoder must not be asked for a model without a language field")

    engine = QueryEngine(session.cfg.query, encode_text)
    engine.set_snapshot(session.snapshot())
    engine.prepare()  # surface points only: no language features to project
    result = engine.query("mug")
    assert not result.success
    assert result.message == NO_LANGUAGE_MESSAGE and "teacher kind 'none'" in result.message
    assert result.step == STEPS and len(result.points) == 0 and not result.grasps
    assert calls == []
    # Bad requests are still refused for what they are.
    assert "empty query text" in engine.query("  ").message


def test_train_and_query_commands(tmp_path, capsys):
    from lerf_ros.cli import main

    out = tmp_path / "run"
    spec = "synthetic:seed=3,width=40,height=30,n_frames=9"
    common = ["train", "--scene", spec, "--teacher", "none", "--out", str(out), "--no-progress"]
    assert main(common + ["--steps", "3", "--query", "mug"]) == 2
    assert "--query needs a language field" in capsys.readouterr().err
    rc = main(common + ["--steps", "6", "--max-renders", "1", "--set", "trainer.rays_per_batch=128"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "no teacher features (teacher 'none')" in text
    assert os.path.exists(out / "checkpoints" / "final.ckpt")
    assert main(["query", "mug", "--checkpoint", str(out)]) == 1
    assert "no language field (teacher kind 'none')" in capsys.readouterr().out


def test_query_node_over_dds_says_no_language_field(trained):
    pytest.importorskip("rclpy")
    import rclpy

    from lerf_ros.srv import Query

    from ros_helpers import (
        call,
        process_output,
        python_argv,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
    )

    _, _, _, out = trained
    params = out / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    preset: tiny\n"
        f"    output_dir: '{out}'\n    reload_period_s: 0.5\n    teacher:\n      kind: none\n"
    )
    domain = unique_domain_id()
    proc = start_process(
        python_argv("-m", "lerf_ros.ros.query_node", "--ros-args", "--params-file", str(params)), env=ros_env(domain)
    )
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("query_client", context=ctx)
            client = node.create_client(Query, "/lerf/query")
            assert spin_until(node, lambda: client.service_is_ready() or proc.poll() is not None, 90.0)
            assert proc.poll() is None, process_output(proc)
            resp = call(node, client, Query.Request(text="mug"), timeout=60.0)
            for _ in range(60):  # the checkpoint is loaded shortly after start
                if "no model yet" not in resp.message:
                    break
                spin_until(node, lambda: False, 1.0)
                resp = call(node, client, Query.Request(text="mug"), timeout=60.0)
            assert not resp.success
            # Once the query node has prepared the snapshot (surface points only) the answer also
            # says which snapshot answered: "; snapshot #k, age S s".
            head, _, tail = resp.message.partition("; snapshot #")
            assert head == NO_LANGUAGE_MESSAGE, process_output(proc)
            assert not tail or tail.split(",")[0].isdigit(), resp.message
            assert resp.model_step == STEPS
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)
