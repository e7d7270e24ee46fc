"""``LerfConfig``, the whole configuration, which nests one section per component, and the presets
and dotted overrides that build it.

Unknown, removed and ill-typed keys raise ``ConfigError`` naming the key (with the closest known
key as a hint); ``check()`` runs each section's check and the rules that span sections.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, get_type_hints

import yaml

from .errors import ConfigError, _require
from .model import ModelConfig, TeacherConfig
from .nodes import LERF_NODES, NODE_PARAMETERS
from .parsing import _coerce, _flatten, _to_plain, dotted_keys, read_yaml_settings, split_node_settings
from .presets import PRESETS
from .query import QueryConfig
from .training import ChangeConfig, KeyframeConfig, TrainerConfig


@dataclass
class LerfConfig:
    """Everything a run needs."""

    preset: str = "lerf"
    """Preset the configuration starts from (tiny, lerf-lite, lerf or lerf-big); chosen first, every
    other key overrides its values."""
    output_dir: str = "outputs/lerf"
    """Folder of the run's checkpoints, renders and resolved configuration."""
    device: str = "auto"
    """Device of the whole run (field, training, teachers, queries): 'auto' (CUDA when available),
    'cpu' or 'cuda[:N]'."""
    seed: int = 0
    """Seed of the whole run: the field's initial weights and the trainer's ray sampling."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The 2D teachers (CLIP crop pyramid, DINO)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The radiance, language and DINO fields."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Optimisation."""
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    """The bounded keyframe store."""
    query: QueryConfig = field(default_factory=QueryConfig)
    """The query engine (relevancy, scale search, grasps)."""
    changes: ChangeConfig = field(default_factory=ChangeConfig)
    """Change detection and forgetting in a live stream."""

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """The configuration as nested plain dicts, lists and scalars (what ``to_yaml`` writes)."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The configuration as YAML (nested keys; ``load_yaml``/``from_dict`` read it back)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LerfConfig":
        """Build from a (possibly partial) nested or dotted dict; a 'preset' key selects the base.

        Unknown keys, removed keys and values of the wrong type raise ConfigError naming the key."""
        flat = _flatten(data)
        base = preset(str(flat.pop("preset", "lerf")))
        return base.override(flat)

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> "LerfConfig":
        """A configuration that ``to_dict`` saved (in a checkpoint or a run folder), possibly by an
        older version: keys removed since (``REMOVED_KEYS``) are dropped, as such a save always holds
        their replacement too. Anything else is read as ``from_dict`` reads it."""
        return cls.from_dict({k: v for k, v in _flatten(data).items() if k not in REMOVED_KEYS})

    def override(self, data: Mapping[str, Any]) -> "LerfConfig":
        """A validated copy with nested or dotted overrides applied; unknown keys raise ConfigError."""
        out = copy.deepcopy(self)
        for key, value in _flatten(data).items():
            _set_dotted(out, key, value)
        return out.check()

    def check(self) -> "LerfConfig":
        """Validate once at start-up; raise ConfigError naming the key.

        Each section checks its own fields; this adds the top-level fields and the rules that span
        sections."""
        for section in (self.teacher, self.model, self.trainer, self.keyframes, self.query, self.changes):
            section.check()
        _require(self.preset in PRESETS, "preset", self.preset, f"one of {', '.join(PRESETS)}")
        _require(bool(self.output_dir.strip()), "output_dir", self.output_dir, "a folder")
        _require(_DEVICE.fullmatch(self.device) is not None, "device", self.device, "'auto', 'cpu' or 'cuda[:N]'")
        _require(self.seed >= 0, "seed", self.seed, ">= 0")
        _require(
            not (self.model.hash_backend == "tcnn" and self.device == "cpu"),
            "model.hash_backend",
            self.model.hash_backend,
            "'auto' or 'torch' with device 'cpu' (tinycudann runs on CUDA only)",
        )
        return self

    @classmethod
    def load_yaml(
        cls, path: str, overrides: Optional[Mapping[str, Any]] = None, nodes: Sequence[str] = LERF_NODES
    ) -> "LerfConfig":
        """The configuration a YAML file gives (plain mapping or ROS parameter file, of which the
        sections for ``nodes``: see ``read_yaml_settings``), with ``overrides`` (nested or dotted) on
        top; a 'preset' among the overrides replaces the file's. Node-level keys
        (``NODE_PARAMETERS``) are accepted and left out."""
        settings = _flatten(read_yaml_settings(path, nodes))
        settings.update(_flatten(overrides or {}))
        return cls.from_dict(split_node_settings(settings)[0])

    def save_yaml(self, path: str) -> None:
        """Write ``to_yaml()`` to ``path``."""
        with open(path, "w") as f:
            f.write(self.to_yaml())

    def resolved_device(self) -> str:
        """``device`` with 'auto' resolved: 'cuda' when CUDA is available, else 'cpu'."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

REMOVED_KEYS: Dict[str, Tuple[str, str]] = {
    "trainer.seed": ("seed", "one seed for the whole run"),
    "teacher.device": ("device", "one device for the whole run"),
}
"""Keys that earlier versions had: {old dotted key: (the key that replaces it, why)}."""


def preset_names() -> List[str]:
    """The names of the presets (``tiny``, ``lerf-lite``, ``lerf``, ``lerf-big``)."""
    return list(PRESETS)


def preset(name: str) -> LerfConfig:
    """The named preset, validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    cfg = LerfConfig(preset=name)
    for key, value in PRESETS[name].items():
        _set_dotted(cfg, key, value)
    return cfg.check()


def config_keys() -> List[str]:
    """Every dotted key of ``LerfConfig`` (``preset``, ``model.hidden_dim``, ...)."""
    return dotted_keys(LerfConfig().to_dict())


def _unknown_key(key: str) -> ConfigError:
    import difflib

    near = difflib.get_close_matches(key, config_keys() + [p.name for p in NODE_PARAMETERS], n=1, cutoff=0.75)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return ConfigError(f"unknown configuration key '{key}'{hint}")


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    if key in REMOVED_KEYS:
        new, why = REMOVED_KEYS[key]
        raise ConfigError(f"configuration key '{key}' was removed: set '{new}' instead ({why})")
    if key == "preset":
        if value != cfg.preset:
            # Switching preset through an override would silently drop the preset's values.
            raise ConfigError(f"preset = {value!r} must be chosen first (LerfConfig.from_dict / preset())")
        return
    parts = key.split(".")
    obj = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise _unknown_key(key)
        obj = getattr(obj, p)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown_key(key)
    hints = get_type_hints(type(obj))
    if dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"'{key}' is a section; set its fields instead")
    setattr(obj, name, _coerce(value, hints[name], key))
