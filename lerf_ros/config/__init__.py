"""Typed, validated configuration.

One dataclass per component; ``LerfConfig`` nests them. Presets (``tiny``, ``lerf-lite``, ``lerf``,
``lerf-big``) are named overrides of the defaults, not forks of code. YAML files and ROS parameters
map onto the same tree with dotted keys (``model.hidden_dim``). The resolved config is saved with
every run and checkpoint (``to_dict``/``to_yaml``), and ``check()`` validates it once at start-up:
each section checks its own fields in its ``check()``; ``LerfConfig.check()`` runs them and adds the
rules that span sections.

A parameter YAML may also carry the ROS nodes' own settings (``world_frame``, ``pose_source``, ...,
listed in ``NODE_PARAMETERS``): the loader knows them and leaves them out of the model
configuration, so one file serves ``ros2 launch``, ``lerf-ros run`` and ``lerf-ros train``.

The package's modules: ``errors`` (ConfigError), ``model``, ``training`` and ``query`` (the sections),
``nodes`` (the ROS nodes' own settings), ``presets`` (the presets' data), ``parsing`` (YAML files,
dotted keys, value coercion) and ``lerf`` (``LerfConfig``, presets and overrides). This module
re-exports their names, private helpers included.
"""

from .errors import ConfigError, _require
from .lerf import _DEVICE, REMOVED_KEYS, LerfConfig, _set_dotted, _unknown_key, config_keys, preset, preset_names
from .model import TEACHER_KINDS, ModelConfig, TeacherConfig
from .nodes import (
    LERF_NODES,
    NODE_PARAMETERS,
    ROS_NODE_KEY_PREFIXES,
    ROS_NODE_KEYS,
    NodeParameter,
    is_node_key,
    node_parameters,
)
from .parsing import (
    _FALSE,
    _TRUE,
    _coerce,
    _coerce_or_raise,
    _flatten,
    _nest,
    _ros_sections,
    _to_plain,
    _type_name,
    dotted_keys,
    read_yaml_settings,
    split_node_settings,
)
from .presets import PRESETS
from .query import QueryConfig
from .training import ChangeConfig, KeyframeConfig, TrainerConfig

__all__ = [
    "ChangeConfig",
    "ConfigError",
    "KeyframeConfig",
    "LERF_NODES",
    "LerfConfig",
    "ModelConfig",
    "NODE_PARAMETERS",
    "NodeParameter",
    "PRESETS",
    "QueryConfig",
    "REMOVED_KEYS",
    "ROS_NODE_KEYS",
    "ROS_NODE_KEY_PREFIXES",
    "TEACHER_KINDS",
    "TeacherConfig",
    "TrainerConfig",
    "_DEVICE",
    "_FALSE",
    "_TRUE",
    "_coerce",
    "_coerce_or_raise",
    "_flatten",
    "_nest",
    "_require",
    "_ros_sections",
    "_set_dotted",
    "_to_plain",
    "_type_name",
    "_unknown_key",
    "config_keys",
    "dotted_keys",
    "is_node_key",
    "node_parameters",
    "preset",
    "preset_names",
    "read_yaml_settings",
    "split_node_settings",
]
