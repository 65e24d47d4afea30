"""Typed configuration: dataclasses (`schema`) and YAML loading with dotted overrides (`loader`).

The loader (and with it PyYAML) is imported lazily, so `dfm_video.config.schema` and the model
package import on a bare GPU image that has torch but no yaml.
"""

from typing import Any

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

_LOADER_NAMES = (
    "CONFIG_DIR",
    "apply_override",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "read_config_file",
    "require",
    "resolve_config_path",
    "save_config",
    "validate",
)


def __getattr__(name: str) -> Any:
    if name in _LOADER_NAMES:
        from dfm_video.config import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'dfm_video.config' has no attribute '{name}'")


__all__ = [
    "Config",
    "DataConfig",
    "DFMConfig",
    "DistributedConfig",
    "ModelConfig",
    "OptimConfig",
    "PreprocessConfig",
    "SampleConfig",
    "TrainConfig",
    *_LOADER_NAMES,
]
