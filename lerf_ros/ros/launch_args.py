"""Which launch arguments override the params file (no ROS launch import, so it is testable anywhere).

``launch/lerf.launch.py`` and ``lerf-ros run`` pass the nodes the params YAML first and then the
parameter overrides of the arguments the user gave. An argument left out must not override the
file: its launch default is the empty string, meaning "not given", and it produces no override.
So a params file saying ``preset: tiny`` runs ``tiny`` unless ``preset:=...`` is given.

``launch_plan`` also reads the params file with the configuration loader, so an unknown key, a key
that was removed or a value of the wrong type stops the launch with a message naming the key
(ROS itself silently ignores parameters a node does not declare).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from lerf_ros.config import ConfigError, LerfConfig, read_yaml_settings, split_node_settings

NOT_GIVEN = ""
"""Launch default of every parameter argument: the argument was not given."""

PARAMETER_ARGUMENTS: Dict[str, str] = {
    "preset": "Model preset: tiny, lerf-lite, lerf or lerf-big",
    "output_dir": "Folder for checkpoints, renders and the resolved config",
    "world_frame": "Fixed frame the field is built in",
    "pose_source": "tf, pose, odom or auto",
    "use_sim_time": "Use /clock (bag replay): true or false",
    "autostart": "Configure and activate the managed nodes at start (default true); false: they wait "
    "unconfigured for a lifecycle manager",
}
"""Launch arguments that set a node parameter: {name (= the parameter's): description}."""

QUERY_ARGUMENTS = ("preset", "output_dir", "world_frame", "use_sim_time", "autostart")
"""The parameter arguments a query node in a process of its own takes."""

BOOLEAN_ARGUMENTS = ("use_sim_time", "autostart")
"""Parameter arguments whose value is a boolean."""

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def is_true(text: str) -> bool:
    """A launch argument's boolean value ('true'/'false', '1'/'0', 'yes'/'no', 'on'/'off')."""
    t = str(text).strip().lower()
    if t not in _TRUE + _FALSE:
        raise ConfigError(f"'{text}' is not a boolean (true or false)")
    return t in _TRUE


def given_overrides(arguments: Mapping[str, str]) -> Dict[str, Any]:
    """{parameter: value} for the parameter arguments that were given (not ``NOT_GIVEN``), with
    the ``BOOLEAN_ARGUMENTS`` as bools; arguments that are not parameter arguments are ignored."""
    out: Dict[str, Any] = {}
    for name in PARAMETER_ARGUMENTS:
        value = str(arguments.get(name, NOT_GIVEN)).strip()
        if value != NOT_GIVEN:
            out[name] = is_true(value) if name in BOOLEAN_ARGUMENTS else value
    return out


@dataclass
class LaunchPlan:
    """What the launch passes each node after the params file."""

    trainer: Dict[str, Any]
    """Parameter overrides of the trainer node (and of the one-process node)."""
    query: Dict[str, Any]
    """Parameter overrides of a query node in a process of its own."""
    use_sim_time: bool
    """For nodes without the params file (RViz): the argument if given, else the file's, else false."""
    config: LerfConfig
    """The trainer's configuration (file plus overrides), validated."""


def launch_plan(
    params_file: str, arguments: Mapping[str, str], extra: Optional[Mapping[str, Any]] = None
) -> LaunchPlan:
    """The overrides the given ``arguments`` produce for the nodes started with ``params_file``.

    ``extra``: further dotted parameter overrides (``lerf-ros run --param``), checked with the rest.
    Raises ConfigError naming the key when the file and overrides do not give a valid configuration
    for the trainer or for the query node, and OSError when the file cannot be read.
    """
    given = given_overrides(arguments)
    trainer = dict(given)
    query = {k: v for k, v in given.items() if k in QUERY_ARGUMENTS}
    checked = dict(extra or {})
    config = LerfConfig.load_yaml(params_file, {**checked, **trainer}, nodes=("lerf_trainer",))
    LerfConfig.load_yaml(params_file, {**checked, **query}, nodes=("lerf_query",))
    if "use_sim_time" in given:
        use_sim_time = bool(given["use_sim_time"])
    else:
        file_value = split_node_settings(read_yaml_settings(params_file, ("lerf_trainer",)))[1].get("use_sim_time")
        use_sim_time = is_true(str(file_value)) if file_value is not None else False
    return LaunchPlan(trainer=trainer, query=query, use_sim_time=use_sim_time, config=config)


__all__ = [
    "NOT_GIVEN",
    "PARAMETER_ARGUMENTS",
    "QUERY_ARGUMENTS",
    "LaunchPlan",
    "given_overrides",
    "is_true",
    "launch_plan",
]
