"""The configuration: presets, overrides, type coercion, YAML (plain and ROS parameter-file form),
node-level keys, removed keys, round trips, field descriptions, and the launch-argument rule."""

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from lerf_ros.config import (
    NODE_PARAMETERS,
    PRESETS,
    REMOVED_KEYS,
    ConfigError,
    KeyframeConfig,
    LerfConfig,
    ModelConfig,
    QueryConfig,
    TeacherConfig,
    TrainerConfig,
    config_keys,
    node_parameters,
    preset,
    preset_names,
    read_yaml_settings,
    split_node_settings,
)
from lerf_ros.config_docs import dotted_docs, field_docs
from lerf_ros.ros.launch_args import NOT_GIVEN, PARAMETER_ARGUMENTS, given_overrides, is_true, launch_plan

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "lerf.yaml"
SECTIONS = (TeacherConfig, ModelConfig, TrainerConfig, KeyframeConfig, QueryConfig)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_and_checks(name):
    cfg = preset(name)
    assert cfg.preset == name
    assert cfg.check() is cfg
    for key, value in PRESETS[name].items():  # the preset's own values are applied
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        assert obj == (tuple(value) if isinstance(value, (list, tuple)) else value), key


def test_presets_differ_where_they_say_and_tiny_runs_on_the_cpu():
    assert set(preset_names()) == {"tiny", "lerf-lite", "lerf", "lerf-big"}
    assert preset("lerf") == LerfConfig()
    assert preset("tiny").device == "cpu" and preset("lerf").device == "auto"
    assert preset("lerf-big").teacher.clip_model == "ViT-L-14"
    assert len(preset("lerf-lite").model.lang_num_levels) == 1
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")


# ---------------------------------------------------------------------------------- overrides
def test_dotted_and_nested_overrides_agree_and_do_not_touch_the_original():
    base = preset("tiny")
    a = base.override({"model.hidden_dim": 48, "query.threshold": 0.6})
    b = base.override({"model": {"hidden_dim": 48}, "query": {"threshold": 0.6}})
    assert a == b
    assert a.model.hidden_dim == 48 and a.query.threshold == 0.6
    assert base.model.hidden_dim == 32 and base.query.threshold == 0.55


def test_an_override_cannot_switch_the_preset_but_from_dict_chooses_it_first():
    with pytest.raises(ConfigError, match="preset"):
        preset("tiny").override({"preset": "lerf"})
    cfg = LerfConfig.from_dict({"preset": "tiny", "model.hidden_dim": 48})
    assert cfg.preset == "tiny" and cfg.model.hidden_dim == 48 and cfg.model.num_levels == 8


@pytest.mark.parametrize(
    "key,value",
    [
        ("query.threshold", 1.5),
        ("model.num_lang_samples", 100),
        ("model.background_color", "green"),
        ("model.lang_num_levels", (8, 8)),
        ("trainer.schedule", "linear"),
        ("trainer.lr_lang", 0.0),
        ("keyframes.min_keyframes_to_train", 0),
        ("keyframes.max_clipped_fraction", 0.0),
        ("teacher.dino_facet", "value"),
        ("teacher.pyramid_min", 0.9),
        ("device", "gpu"),
        ("seed", -1),
    ],
)
def test_invalid_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        preset("tiny").override({key: value})


# ---------------------------------------------------------------------------------- section checks
@pytest.mark.parametrize(
    "section,field_name,value",
    [
        (TeacherConfig, "kind", "oracle"),
        (ModelConfig, "sh_degree", 5),
        (ModelConfig, "near", 0.0),
        (TrainerConfig, "lang_loss", "l2"),
        (TrainerConfig, "keep_checkpoints", 0),
        (KeyframeConfig, "max_keyframes", 2),
        (QueryConfig, "temperature", 0.0),
    ],
)
def test_each_section_checks_its_own_fields(section, field_name, value):
    assert section().check() == section()
    bad = dataclasses.replace(section(), **{field_name: value})
    with pytest.raises(ConfigError, match=field_name):
        bad.check()


def test_the_model_checks_its_configuration_through_the_section():
    import lerf_ros.field.model as model_module
    from lerf_ros.field.model import LerfModel

    assert not hasattr(model_module, "check_model_config") and not hasattr(model_module, "check_trainer_config")
    with pytest.raises(ConfigError, match="model.num_lang_samples"):
        LerfModel(dataclasses.replace(preset("tiny").model, num_lang_samples=999), 8, 8)


def test_cross_section_rule_tinycudann_needs_cuda():
    with pytest.raises(ConfigError, match="model.hash_backend"):
        preset("tiny").override({"model.hash_backend": "tcnn"})
    assert preset("tiny").override({"device": "cuda:0", "model.hash_backend": "tcnn"}).device == "cuda:0"


# ---------------------------------------------------------------------------------- coercion
def test_strings_and_numbers_are_coerced_to_the_field_type():
    cfg = preset("tiny").override(
        {
            "trainer.lr_fields": "1e-3",
            "model.hidden_dim": "48",
            "trainer.max_steps": "1e3",
            "keyframes.max_memory_mb": 512,
            "trainer.mixed_precision": "false",
            "model.auto_bounds": "yes",
            "keyframes.max_image_side": 320.0,
            "query.scales": "0.1, 0.5",
            "model.num_proposal_samples": "[32]",
            "model.scene_center": "(1, 2, 3)",
            "query.canonical_phrases": "object, stuff",
            "output_dir": 42,
        }
    )
    assert cfg.trainer.lr_fields == 1e-3 and isinstance(cfg.trainer.lr_fields, float)
    assert cfg.model.hidden_dim == 48 and cfg.trainer.max_steps == 1000 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.keyframes.max_memory_mb == 512.0 and isinstance(cfg.keyframes.max_memory_mb, float)
    assert cfg.trainer.mixed_precision is False and cfg.model.auto_bounds is True
    assert cfg.keyframes.max_image_side == 320 and isinstance(cfg.keyframes.max_image_side, int)
    assert cfg.query.scales == (0.1, 0.5) and cfg.model.num_proposal_samples == (32,)
    assert cfg.model.scene_center == (1.0, 2.0, 3.0)
    assert cfg.query.canonical_phrases == ("object", "stuff") and cfg.output_dir == "42"


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("model.hidden_dim", "many", "int"),
        ("model.hidden_dim", 2.5, "int"),
        ("model.hidden_dim", True, "int"),
        ("trainer.lr_fields", "fast", "float"),
        ("trainer.lr_fields", False, "float"),
        ("trainer.lr_fields", [1.0], "float"),
        ("trainer.mixed_precision", "maybe", "bool"),
        ("trainer.mixed_precision", 2, "bool"),
        ("output_dir", ["a", "b"], "str"),
        ("query.scales", "small, large", "list of float"),
        ("model.scene_center", [1.0, 2.0], "3 values"),
        ("model.lang_num_levels", {"a": 1}, "unknown"),
    ],
)
def test_wrong_types_are_refused_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        preset("tiny").override({key: value})
    assert expected in str(err.value)


# ---------------------------------------------------------------------------------- unknown and removed keys
def test_unknown_keys_name_the_key_and_suggest_the_near_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown configuration key 'query\.treshold'.*'query\.threshold'"):
        preset("tiny").override({"query.treshold": 0.6})
    with pytest.raises(ConfigError, match="unknown configuration key 'colour'"):
        preset("tiny").override({"colour": "red"})
    with pytest.raises(ConfigError, match="'model' is a section"):
        preset("tiny").override({"model": 3})
    path = write(tmp_path / "bad.yaml", "preset: tiny\nmodel:\n  hiden_dim: 8\n")
    with pytest.raises(ConfigError, match=r"'model\.hiden_dim'"):
        LerfConfig.load_yaml(path)


@pytest.mark.parametrize("old", sorted(REMOVED_KEYS))
def test_removed_keys_say_which_key_replaces_them(tmp_path, old):
    new = REMOVED_KEYS[old][0]
    section, name = old.split(".")
    value = 3 if name == "seed" else "cpu"
    path = write(tmp_path / "old.yaml", f"preset: tiny\n{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"'{old}' was removed: set '{new}' instead"):
        LerfConfig.load_yaml(path)
    with pytest.raises(ConfigError, match=rf"'{old}' was removed"):
        preset("tiny").override({old: value})
    assert new in {f.name for f in dataclasses.fields(LerfConfig)}


def test_a_config_saved_by_an_older_version_still_loads():
    saved = preset("tiny").override({"seed": 7}).to_dict()
    saved["trainer"]["seed"] = 7
    saved["teacher"]["device"] = "auto"
    cfg = LerfConfig.from_saved(saved)
    assert cfg == preset("tiny").override({"seed": 7})
    with pytest.raises(ConfigError, match="was removed"):
        LerfConfig.from_dict(saved)


# ---------------------------------------------------------------------------------- YAML forms
def test_plain_yaml_with_an_override_on_top(tmp_path):
    path = write(tmp_path / "plain.yaml", "preset: tiny\nseed: 3\nmodel:\n  hidden_dim: 48\n")
    cfg = LerfConfig.load_yaml(path)
    assert (cfg.preset, cfg.seed, cfg.model.hidden_dim) == ("tiny", 3, 48)
    cfg = LerfConfig.load_yaml(path, {"model.hidden_dim": 16, "preset": "lerf-lite"})
    assert (cfg.preset, cfg.model.hidden_dim) == ("lerf-lite", 16)


ROS_FILE = """\
/**:
  ros__parameters:
    preset: tiny
    world_frame: odom
    use_sim_time: true
    query:
      threshold: 0.6
camera_driver:
  ros__parameters:
    fps: 30
lerf_trainer:
  ros__parameters:
    pose_source: odom
    model:
      hidden_dim: 48
/robot/lerf_query:
  ros__parameters:
    reload_period_s: 5.0
    query:
      threshold: 0.7
"""


def test_ros_parameter_file_form_reads_the_sections_of_each_node(tmp_path):
    path = write(tmp_path / "ros.yaml", ROS_FILE)
    trainer = LerfConfig.load_yaml(path, nodes=("lerf_trainer",))
    assert (trainer.preset, trainer.model.hidden_dim, trainer.query.threshold) == ("tiny", 48, 0.6)
    query = LerfConfig.load_yaml(path, nodes=("lerf_query",))
    assert (query.model.hidden_dim, query.query.threshold) == (32, 0.7)
    both = LerfConfig.load_yaml(path)  # both nodes' sections, in file order: the later value wins
    assert (both.model.hidden_dim, both.query.threshold) == (48, 0.7)
    settings = read_yaml_settings(path)
    assert "fps" not in settings, "another node's section is not read"
    config, node = split_node_settings(settings)
    assert node == {"world_frame": "odom", "use_sim_time": True, "pose_source": "odom", "reload_period_s": 5.0}
    assert "preset" in config and "world_frame" not in config


def test_ros_parameter_file_with_something_else_at_top_level_is_refused(tmp_path):
    path = write(tmp_path / "mixed.yaml", "preset: tiny\nlerf_trainer:\n  ros__parameters:\n    seed: 1\n")
    with pytest.raises(ConfigError, match="'preset' is not a node section"):
        LerfConfig.load_yaml(path)


def test_node_level_keys_are_known_and_kept_out_of_the_model_configuration(tmp_path):
    names = [p.name for p in NODE_PARAMETERS]
    assert len(names) == len(set(names))
    assert not set(names) & set(config_keys()), "a node-level key must not shadow a configuration key"
    assert all(p.description and p.nodes and set(p.nodes) <= {"trainer", "query"} for p in NODE_PARAMETERS)
    assert {p.name for p in node_parameters("trainer")} >= {"world_frame", "pose_source", "resume"}
    assert {p.name for p in node_parameters("query")} >= {"world_frame", "checkpoint_dir"}
    lines = ["preset: tiny"] + [f"{p.name}: {p.default!r}" for p in NODE_PARAMETERS]
    lines += ["use_sim_time: true", "qos_overrides:", "  /image:", "    subscription:", "      depth: 5"]
    cfg = LerfConfig.load_yaml(write(tmp_path / "node.yaml", "\n".join(lines) + "\n"))
    assert cfg == preset("tiny")
    with pytest.raises(ConfigError, match="unknown configuration key 'world_frames'"):
        LerfConfig.load_yaml(write(tmp_path / "typo.yaml", "world_frames: map\n"))


def test_the_shipped_yaml_loads_for_the_cli_and_the_nodes():
    cfg = LerfConfig.load_yaml(str(SHIPPED))
    raw = read_yaml_settings(str(SHIPPED))
    assert cfg.preset == raw["preset"] and cfg.output_dir == raw["output_dir"]
    assert cfg.query.threshold == raw["query"]["threshold"]
    assert cfg.keyframes.max_keyframes == raw["keyframes"]["max_keyframes"]
    # a robot's poses come from TF (odometry, SLAM): the file starts pose refinement earlier than the preset
    assert cfg.trainer.pose_warmup_steps == raw["trainer"]["pose_warmup_steps"]
    assert cfg.trainer.pose_warmup_steps < preset(cfg.preset).trainer.pose_warmup_steps
    assert split_node_settings(raw)[1]["world_frame"] == "map"
    for node in ("lerf_trainer", "lerf_query"):
        assert LerfConfig.load_yaml(str(SHIPPED), nodes=(node,)) == cfg


# ---------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("name", preset_names())
def test_round_trip_through_dict_and_yaml(tmp_path, name):
    cfg = preset(name).override({"seed": 5, "query.scales": (0.1, 0.3), "model.num_proposal_samples": ()})
    assert LerfConfig.from_dict(cfg.to_dict()) == cfg
    assert LerfConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    cfg.save_yaml(str(tmp_path / "cfg.yaml"))
    assert LerfConfig.load_yaml(str(tmp_path / "cfg.yaml")) == cfg
    assert LerfConfig.from_saved(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------- descriptions
def test_every_field_of_every_section_has_a_description():
    docs = dotted_docs(LerfConfig())
    assert set(docs) == set(config_keys())
    missing = sorted(k for k, v in docs.items() if not v.strip())
    assert not missing, f"fields without a docstring (their ROS parameters have no description): {missing}"
    top = field_docs(LerfConfig)
    assert all(top.get(f.name, "").strip() for f in dataclasses.fields(LerfConfig)), top
    for section in SECTIONS:
        assert set(field_docs(section)) == {f.name for f in dataclasses.fields(section)}, section.__name__


# ---------------------------------------------------------------------------------- launch arguments
def test_launch_arguments_not_given_do_not_override_the_params_file(tmp_path):
    path = write(
        tmp_path / "my.yaml",
        "/**:\n  ros__parameters:\n    preset: tiny\n    output_dir: mine\n"
        "    world_frame: odom\n    use_sim_time: true\n",
    )
    nothing = {name: NOT_GIVEN for name in PARAMETER_ARGUMENTS}
    assert given_overrides(nothing) == {} and given_overrides({}) == {}
    plan = launch_plan(path, nothing)
    assert plan.trainer == {} and plan.query == {}
    assert plan.config.preset == "tiny" and plan.config.output_dir == "mine" and plan.use_sim_time is True

    plan = launch_plan(path, {**nothing, "preset": "lerf", "use_sim_time": "false", "pose_source": "odom"})
    assert plan.trainer == {"preset": "lerf", "use_sim_time": False, "pose_source": "odom"}
    assert plan.query == {"preset": "lerf", "use_sim_time": False}, "the query node has no pose_source"
    assert plan.config.preset == "lerf" and plan.config.output_dir == "mine" and plan.use_sim_time is False


def test_launch_refuses_a_params_file_with_an_unknown_key(tmp_path):
    path = write(tmp_path / "typo.yaml", "/**:\n  ros__parameters:\n    query:\n      treshold: 0.6\n")
    with pytest.raises(ConfigError, match="query.treshold"):
        launch_plan(path, {})
    with pytest.raises(ConfigError, match="not a boolean"):
        launch_plan(str(SHIPPED), {"use_sim_time": "sometimes"})
    assert is_true("True") and not is_true("0")


def test_the_launch_file_gives_its_parameter_arguments_no_default_of_their_own():
    tree = ast.parse((REPO / "launch" / "lerf.launch.py").read_text())
    declared = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    ]
    literal_names = {n.args[0].value for n in declared if n.args and isinstance(n.args[0], ast.Constant)}
    assert not literal_names & set(PARAMETER_ARGUMENTS), "a parameter argument with its own default overrides the file"
    calls = {getattr(n.func, "id", "") for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "launch_plan" in calls and "NOT_GIVEN" in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_lerf_ros_run_follows_the_same_rule(tmp_path):
    import argparse

    from lerf_ros.commands import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args = parser.parse_args(["--params-file", str(SHIPPED)])
    assert run.check(args) == ""
    assert run.ros_args(args) == ["--ros-args", "--params-file", str(SHIPPED)]
    args = parser.parse_args(
        ["--params-file", str(SHIPPED), "--preset", "tiny", "--param", "query.threshold:=0.6", "--remap", "image:=/cam"]
    )
    assert run.check(args) == ""
    assert run.ros_args(args) == [
        "--ros-args",
        "--params-file",
        str(SHIPPED),
        "-p",
        "preset:=tiny",
        "-p",
        "query.threshold:=0.6",
        "-r",
        "image:=/cam",
    ]
    args = parser.parse_args(["--params-file", str(SHIPPED), "--param", "query.treshold:=0.6"])
    assert "query.treshold" in run.check(args)
    old = write(tmp_path / "old.yaml", "/**:\n  ros__parameters:\n    trainer:\n      seed: 1\n")
    assert "set 'seed' instead" in run.check(parser.parse_args(["--params-file", old]))
