"""Compose the config the way `sgrad-train` does, for scripts, tests and notebooks (no copies of YAML in code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_DIR = str(Path(__file__).resolve().parent.parent.parent / "configs")


def compose_config(*overrides: str, hydra: bool = False) -> Any:
    """The composed config for these command-line overrides (`hydra=True` keeps the `hydra` node)."""
    from hydra import compose, initialize_config_dir

    from sgrad.config.schema import register
    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)
