"""The typed config schema (Hydra ConfigStore) and the one-line checks of command-line overrides."""

from sgrad.config.schema import (GROUPS, ConfigError, DatasetName, ModelName, OptimName, Parallel, Schedule,
                                 TrainConfig, flat_config, register, require, validate)

__all__ = ["GROUPS", "ConfigError", "DatasetName", "ModelName", "OptimName", "Parallel", "Schedule",
           "TrainConfig", "flat_config", "register", "require", "validate"]
