"""Check command-line overrides against the schema before Hydra runs, so a typo costs one clear line.

Hydra would reject the same mistakes, but over several lines and without the
allowed keys or values; this names the key and what it may be.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sgrad.config import GROUPS, ConfigError, TrainConfig


def _choices(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _values(o: Override) -> list[Any]:
    v = o.value()
    if isinstance(v, ChoiceSweep):
        return list(v.list)
    if o.is_sweep_override():
        return []  # ranges and intervals are left to Hydra
    return [v]


def _check_group(o: Override, config_dir: Path) -> None:
    allowed = _choices(config_dir, o.key_or_group)
    for v in _values(o):
        if str(v) not in allowed:
            raise ConfigError(f"{o.key_or_group}={v} is not a known choice: "
                              f"{o.key_or_group} must be one of {', '.join(allowed)}")


def _check_key(o: Override, schema: Any) -> None:
    parts = o.key_or_group.split(".")
    node = schema
    for depth, part in enumerate(parts):
        if depth and OmegaConf.is_dict(node) and node._metadata.object_type in (None, dict):
            return  # a free-form mapping (model.args: the user's function's keyword arguments) takes any key
        if not OmegaConf.is_dict(node) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            keys = ", ".join(k for k in node.keys() if k != "defaults") if OmegaConf.is_dict(node) else ""
            raise ConfigError(f"unknown config key '{o.key_or_group}': keys under {where} are: {keys}")
        node = node._get_node(part)
    if o.is_delete():
        return
    meta = node._metadata
    ref = meta.ref_type
    for v in _values(o):
        trial = OmegaConf.structured(TrainConfig)
        try:
            OmegaConf.update(trial, o.key_or_group, v, merge=True)
        except OmegaConfBaseException:
            if isinstance(ref, type) and issubclass(ref, enum.Enum):
                allowed = ", ".join(m.name for m in ref)
            else:
                allowed = f"a value of type {getattr(ref, '__name__', ref)}"
                allowed += " or null" if meta.optional else ""
            raise ConfigError(f"{o.key_or_group}={v!r} is not allowed: {o.key_or_group} must be {allowed}") from None


# Hydra plugins behind choices of hydra/launcher, hydra/sweeper (and presets that pick them); none of them
# comes with `pip install -e .`.
PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher",
           "submitit_slurm": "hydra_plugins.hydra_submitit_launcher", "optuna": "hydra_plugins.hydra_optuna_sweeper",
           "cdni_optuna": "hydra_plugins.hydra_optuna_sweeper"}


def _check_plugin(key: str, value: str) -> None:
    import importlib.util
    module = PLUGINS.get(value)
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key}={value} needs the official Hydra plugin {module.split('.')[-1]}, which "
                          "`pip install -e .` does not bring: pip install -e '.[sweep]'")


def check_overrides(argv: list[str], config_dir: str | Path) -> None:
    """Raise ConfigError for the first override that names an unknown key, group choice or bad value."""
    config_dir = Path(config_dir)
    modes = [a for a in argv if a in ("-m", "--multirun", "--run") or a.startswith(("--cfg", "--info", "-c"))]
    if len({"multirun" if a in ("-m", "--multirun") else a.split("=")[0] for a in modes}) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined: print a sweep's config with --cfg job alone "
                          "(it shows the first job), or run the sweep with -m alone")
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    if not args:
        return
    parser = OverridesParser.create()
    parsed = []
    for arg in args:  # one at a time, so a grammar error can name the argument
        try:
            parsed += parser.parse_overrides([arg])
        except Exception as e:
            reason = str(e).splitlines()[0]
            hint = " (quote a value holding '=' or other special characters: key='a=b')" if arg.count("=") > 1 else ""
            raise ConfigError(f"cannot parse the argument {arg!r}: {reason}{hint}") from None
    schema = OmegaConf.structured(TrainConfig)
    for o in parsed:
        key = o.key_or_group
        if key in ("hydra/launcher", "hydra/sweeper", "hparams_search"):
            for v in _values(o):
                _check_plugin(key, str(v))
        if key.startswith("hydra") or o.package:
            continue
        if key in ("exp", "hparams_search", "debug") and not o.is_add():
            raise ConfigError(f"{o.input_line}: {key} presets are added to the config, not chosen: write "
                              f"+{o.input_line}")
        if key in GROUPS and not o.is_add() or key in ("exp", "hparams_search", "debug"):
            _check_group(o, config_dir)
        elif isinstance(o.value(), str) and o.value().startswith("${"):
            continue  # interpolations resolve later; Hydra checks them
        else:
            _check_key(o, schema)
