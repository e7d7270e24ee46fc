"""Reading settings: YAML files (plain mappings or ROS parameter files), nested and dotted keys, and
the coercion of values (strings from command lines and launch arguments included) to field types.

Values of the wrong type raise ``ConfigError`` naming the key; ``split_node_settings`` separates the
nodes' own settings from configuration keys.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .errors import ConfigError
from .nodes import LERF_NODES, is_node_key


def split_node_settings(settings: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(configuration settings, node-level settings) of a nested or dotted mapping, both dotted."""
    config: Dict[str, Any] = {}
    node: Dict[str, Any] = {}
    flat = _flatten(settings)
    cameras = flat.get("cameras")  # each named camera has a section of node-level keys: <name>.image_topic ...
    sections = {str(n) for n in cameras} if isinstance(cameras, (list, tuple)) else set()
    for key, value in flat.items():
        (node if is_node_key(key) or key.split(".", 1)[0] in sections and "." in key else config)[key] = value
    return config, node


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def read_yaml_settings(path: str, nodes: Sequence[str] = LERF_NODES) -> Dict[str, Any]:
    """The settings of a config YAML, nested: a plain mapping, or a ROS parameter file
    (``{node_name: {ros__parameters: {...}}}``, node names possibly namespaced, or the wildcards
    ``/*`` and ``/**``). Of a parameter file, the sections that apply to the nodes named ``nodes``
    (default: this package's two nodes) are merged in file order, a later value winning as in ROS;
    sections of other nodes are not read."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    sections = _ros_sections(data, "", path)
    if sections is None:
        return data
    merged: Dict[str, Any] = {}
    for name, params in sections:
        last = name.rstrip("/").rsplit("/", 1)[-1]
        if last in ("*", "**") or last in nodes:
            merged.update(_flatten(params))
    return _nest(merged)


def _ros_sections(data: Mapping[str, Any], prefix: str, path: str) -> Optional[List[Tuple[str, Dict[str, Any]]]]:
    """[(node name, parameters)] of a ROS parameter file's mapping; None when it is not one."""
    if not any(isinstance(v, dict) and ("ros__parameters" in v or _ros_sections(v, "", path)) for v in data.values()):
        return None
    out: List[Tuple[str, Dict[str, Any]]] = []
    for k, v in data.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) and "ros__parameters" in v:
            params = v["ros__parameters"] or {}
            if not isinstance(params, dict):
                raise ConfigError(f"{path}: '{name}: ros__parameters' must be a mapping")
            out.append((name, params))
        elif isinstance(v, dict) and _ros_sections(v, name, path):
            out.extend(_ros_sections(v, name, path))
        else:
            raise ConfigError(
                f"{path}: '{name}' is not a node section ('node_name: ros__parameters: ...'); "
                "a ROS parameter file holds nothing else at top level"
            )
    return out


def dotted_keys(data: Mapping[str, Any]) -> List[str]:
    """The dotted names of the leaves of a nested mapping ({'a': {'b': 1}} -> ['a.b'])."""
    return list(_flatten(data))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[name] = value
    return out


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _type_name(typ: Any) -> str:
    if getattr(typ, "__origin__", None) is tuple:
        args = typ.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(typ, str(typ))


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """``value`` as the field type ``typ`` (bool, int, float, str or a tuple of them). Strings are
    parsed (command lines and launch arguments give strings); anything else of the wrong type
    raises ConfigError naming the key."""
    try:
        return _coerce_or_raise(value, typ)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} = {value!r} is invalid: expected {_type_name(typ)}") from exc


def _coerce_or_raise(value: Any, typ: Any) -> Any:
    if getattr(typ, "__origin__", None) is tuple:
        args = typ.__args__
        if isinstance(value, str):
            text = value.strip()
            if text[:1] in "[(" and text[-1:] in "])":
                text = text[1:-1]
            value = [v.strip() for v in text.split(",")] if text.strip() else []
        elif not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce_or_raise(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{len(value)} values")
        return tuple(_coerce_or_raise(v, a) for v, a in zip(value, args))
    if isinstance(value, (list, tuple, dict)) or value is None:
        raise TypeError(type(value).__name__)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if isinstance(value, bool):  # YAML true/false for a number or a string: a mistake
        raise TypeError("bool")
    if typ is int:
        if isinstance(value, str):
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if typ is float:
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise TypeError(type(value).__name__)
        return str(value)
    raise TypeError(f"unsupported field type {typ}")
