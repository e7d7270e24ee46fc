"""LerfConfig <-> ROS parameters.

Each node declares the part of ``LerfConfig`` it reads, every leaf as a ROS parameter with its
dotted name (``model.hidden_dim``), its description from the config field's docstring, and the
chosen preset's value as default:

- the trainer: ``preset``, ``output_dir``, ``device``, ``seed`` and the ``teacher``, ``model``,
  ``trainer``, ``keyframes`` and ``changes`` sections (``TRAINER_PARAMETERS``);
- a query node of its own: ``preset``, ``output_dir``, ``device``, ``teacher`` (its text encoder)
  and ``query`` (``QUERY_PARAMETERS``);
- a query node in the trainer's process shares the trainer's configuration and teacher and declares
  only the ``query`` section on top of it (``QUERY_OWN_PARAMETERS``).

Both also declare their own node-level parameters (``lerf_ros.config.NODE_PARAMETERS``). A params
YAML in the usual ``node_name: ros__parameters:`` form (nested maps give the dotted names) sets
them; ``preset`` picks the defaults and is read first. The configuration parameters are read-only
(fixed at start-up) and dynamically typed, so that the configuration's own type coercion applies
(an integer YAML value for a float key is fine; a wrong type raises ConfigError naming the key).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Sequence

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from lerf_ros.config import ConfigError, LerfConfig, node_parameters, preset
from lerf_ros.config_docs import dotted_docs

TRAINER_PARAMETERS = ("output_dir", "device", "seed", "teacher", "model", "trainer", "keyframes", "changes")
"""Top-level configuration fields and sections the trainer node declares (besides ``preset``)."""
QUERY_PARAMETERS = ("output_dir", "device", "teacher", "query")
"""What a query node in a process of its own declares (besides ``preset``): where the trainer's
checkpoints are, the device it loads them on, its text encoder, and the query engine."""
QUERY_OWN_PARAMETERS = ("query",)
"""What a query node sharing the trainer's process declares on top of the trainer's configuration."""


def _plain(value: Any) -> Any:
    """A parameter value as Python scalars and lists (ROS arrays come back as ``array.array``)."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    return list(value)


def _flat_values(cfg: LerfConfig) -> Dict[str, Any]:
    out: Dict[str, Any] = {}

    def walk(d: Dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                out[prefix + k] = v

    walk(cfg.to_dict(), "")
    return out


def declare_config(node: Node, keys: Sequence[str], base: Optional[LerfConfig] = None) -> LerfConfig:
    """Declare the configuration parameters under ``keys`` (top-level fields or section names) on
    ``node`` and return the validated configuration they give.

    Without ``base``, ``preset`` is declared too and gives the defaults; with ``base`` (the
    configuration another node of this process declared), its values are the defaults and the rest
    of it is kept as it is. The parameters are read-only: the configuration is fixed at start-up.
    Raises ConfigError (with the parameter name) on an invalid value.
    """
    if base is None:
        name = node.declare_parameter(
            "preset",
            "lerf",
            ParameterDescriptor(
                description="Configuration preset: tiny, lerf-lite, lerf or lerf-big "
                "(gives every other configuration parameter its default)",
                read_only=True,
            ),
        ).value
        base = preset(str(name))
    unknown = [k for k in keys if k not in {f.name for f in dataclasses.fields(LerfConfig)}]
    if unknown:
        raise ValueError(f"not configuration fields or sections: {unknown}")
    docs = dotted_docs(base)
    overrides: Dict[str, Any] = {}
    for key, default in _flat_values(base).items():
        if key.split(".", 1)[0] not in keys:
            continue
        desc = ParameterDescriptor(description=docs[key], read_only=True, dynamic_typing=True)
        # An empty array has no ROS type: it is declared unset, and a value given for it still counts.
        value = _plain(node.declare_parameter(key, default if default != [] else None, desc).value)
        if value is not None and value != default:
            overrides[key] = value
    return base.override(overrides) if overrides else base


def declare_node_parameters(node: Node, role: str) -> Dict[str, Any]:
    """Declare the node-level parameters of ``role`` ('trainer' or 'query') on ``node``
    (``lerf_ros.config.NODE_PARAMETERS``) and return {name: value}."""
    out: Dict[str, Any] = {}
    for p in node_parameters(role):
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        desc = ParameterDescriptor(description=p.description)
        out[p.name] = _plain(node.declare_parameter(p.name, default, desc).value)
    return out


def params_file_text(sections: Dict[str, Dict[str, Any]]) -> str:
    """A params file in the ``node_name: ros__parameters:`` form (what ``--params-file``, ``lerf-ros
    run --params-file`` and the launch file's ``params_file`` read): ``sections`` maps node names
    (``/**`` for every node) to their parameters, nested maps giving the dotted names. Paths may be
    given as ``os.PathLike``."""
    import yaml

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        item = getattr(value, "item", None)  # a numpy scalar (np.float64, np.int64, np.bool_)
        return item() if callable(item) and getattr(value, "shape", None) == () else value

    return yaml.safe_dump(
        {name: {"ros__parameters": plain(params)} for name, params in sections.items()}, sort_keys=False
    )


def write_params_file(path: "os.PathLike[str] | str", sections: Dict[str, Dict[str, Any]]) -> str:
    """Write ``params_file_text(sections)`` to ``path``; returns the path."""
    with open(path, "w") as f:
        f.write(params_file_text(sections))
    return os.fspath(path)


__all__ = [
    "declare_config",
    "declare_node_parameters",
    "params_file_text",
    "write_params_file",
    "ConfigError",
    "TRAINER_PARAMETERS",
    "QUERY_PARAMETERS",
    "QUERY_OWN_PARAMETERS",
]
