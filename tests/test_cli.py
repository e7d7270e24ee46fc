"""The `lerf-ros` command: help, and `query` against a checkpoint file and folder."""

import subprocess
import sys

import pytest

from lerf_ros.commands import key_values
from lerf_ros.config import ConfigError, preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.mapping.checkpoint import checkpoint_name
from lerf_ros.mapping.session import Session
from lerf_ros.teachers.ground_truth import GroundTruthTeacher


def lerf_ros(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lerf_ros.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command():
    out = lerf_ros("--help")
    assert out.returncode == 0
    for name in ("demo", "run", "scene", "replay", "train", "query", "bench"):
        assert name in out.stdout
    assert lerf_ros("no-such-command").returncode == 2


def test_query_a_checkpoint_folder(tmp_path, one_thread):
    scene = make_scene(seed=2, width=40, height=30, n_frames=4, nthreads=1)
    scene.save(tmp_path / "scene", preview=False)
    cfg = preset("tiny").override({"teacher.kind": "ground_truth", "trainer.rays_per_batch": 256})
    teacher = GroundTruthTeacher(scene)
    session = Session(cfg, teacher, online=False)
    for f in scene.frames:
        session.add(f)
    for _ in range(2):
        session.step()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    session.save_checkpoint(str(tmp_path / "run" / "checkpoints" / checkpoint_name(2)))

    name = scene.objects[0].name
    out = lerf_ros("query", name, "zebra", "--checkpoint", str(tmp_path / "run"), "--scene", str(tmp_path / "scene"))
    assert f"'{name}'" in out.stdout and "'zebra'" in out.stdout, out.stdout + out.stderr
    assert "model step 2" in out.stdout
    assert out.returncode in (0, 1)  # 1: some query had nothing above the threshold (a 2-step model)
    missing = lerf_ros("query", name, "--checkpoint", str(tmp_path / "nothing_here"))
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr and "nothing_here" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = lerf_ros("query", name, "--checkpoint", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "no checkpoint in" in empty.stderr


def test_key_value_arguments_parse_as_yaml_and_bad_ones_are_named():
    """``--set`` / ``--reader-option`` items: one parser for train, weights, export and the readers."""
    got = key_values(["query.voxel_size= 0.005", "cameras=[a, b]", "name=x: y: z", " resume =true"])
    assert got == {"query.voxel_size": 0.005, "cameras": ["a", "b"], "name": "x: y: z", "resume": True}
    with pytest.raises(ConfigError, match=r"--set 'teacher': expected KEY=VALUE"):
        key_values(["teacher"], "--set", ConfigError)
    with pytest.raises(ValueError, match=r"--reader-option 'tolerance': expected KEY=VALUE"):
        key_values(["tolerance"], "--reader-option")
    with pytest.raises(ConfigError, match=r"expected query\.KEY=VALUE"):
        key_values(["trainer.max_steps=3"], "--set", ConfigError, prefix="query.")
