"""LerfConfig <-> ROS parameters.

Every leaf of ``LerfConfig`` is declared as a ROS parameter with its dotted name
(``model.hidden_dim``), its description from the config field's docstring, and the chosen preset's
value as default. A params YAML in the usual ``node_name: ros__parameters:`` form (nested maps
give the dotted names) overrides them; ``preset`` picks the defaults and is read first.
"""
from __future__ import annotations

from typing import Any, Dict

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from lerf_ros.config import ConfigError, LerfConfig, preset
from lerf_ros.config_docs import dotted_docs


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


def declare_config(node: Node) -> LerfConfig:
    """Declare the config parameters on ``node`` and return the validated config they give.

    The parameters are read-only: the model's configuration is fixed at start-up.
    Raises ConfigError (with the parameter name) on an invalid value.
    """
    name = node.declare_parameter(
        "preset", "lerf",
        ParameterDescriptor(description="Configuration preset: tiny, lerf-lite, lerf or lerf-big", read_only=True),
    ).value
    base = preset(str(name))
    docs = dotted_docs(base)
    overrides: Dict[str, Any] = {}
    for key, default in _flat_values(base).items():
        if key == "preset":
            continue
        if isinstance(default, list):
            if not default:
                continue  # ROS cannot type an empty array parameter
            default = [float(x) for x in default] if isinstance(default[0], (int, float)) else default
        desc = ParameterDescriptor(description=docs.get(key, ""), read_only=True)
        value = node.declare_parameter(key, default, desc).value
        if value != default:
            overrides[key] = value
    return base.override(overrides) if overrides else base


__all__ = ["declare_config", "ConfigError"]
