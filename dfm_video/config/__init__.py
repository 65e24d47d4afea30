"""Typed configuration: dataclasses (`schema`), YAML loading with dotted overrides and every
cross-field check (`loader`), named presets such as the flow-matching baseline (`presets`).

PyYAML is imported on first use (`loader`), so the config and the model package import on a bare
GPU image that has torch but no yaml.
"""

from dfm_video.config.loader import (
    CONFIG_DIR,
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
    read_config_file,
    require,
    resolve_config_path,
    save_config,
    validate,
)
from dfm_video.config.presets import single_stage, single_stage_dfm
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
    "read_config_file",
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
    "single_stage",
    "single_stage_dfm",
    "validate",
]
