"""Typed configuration: dataclasses (`schema`) and YAML loading with dotted overrides (`loader`)."""

from dfm_video.config.loader import (
    CONFIG_DIR,
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
    require,
    resolve_config_path,
    save_config,
    validate,
)
from dfm_video.config.schema import (
    Config,
    DataConfig,
    DFMConfig,
    DistributedConfig,
    ModelConfig,
    OptimConfig,
    PreprocessConfig,
    SampleConfig,
    TrainConfig,
)

__all__ = [
    "CONFIG_DIR",
    "Config",
    "DataConfig",
    "DFMConfig",
    "DistributedConfig",
    "ModelConfig",
    "OptimConfig",
    "PreprocessConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_override",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "require",
    "resolve_config_path",
    "save_config",
    "validate",
]
