"""The recorder's settings: strict models loaded from YAML, with every mistake reported by line.

The package is split by purpose: `schema` (the models and their defaults), `loading` (finding
and reading the file, YAML with line numbers), `explain` (turning errors into messages) and
`reference` (the README table and the example config). Import the public names from here.
"""

from controller.config.loading import (
    CONFIG_ENV_VAR,
    DEFAULTS_SOURCE,
    SEARCH_PATHS,
    LoadedConfig,
    load_config,
    parse_config_text,
)
from controller.config.problems import ConfigError, ConfigProblem
from controller.config.reference import describe_defaults, reference_table
from controller.config.schema import (
    DEFAULT_API_LISTEN,
    DEFAULT_API_TOKEN_FILE,
    ApiConfig,
    BudgetConfig,
    BudgetsConfig,
    CameraBackend,
    CameraConfig,
    EncoderPreset,
    FaultInjectionConfig,
    FaultKind,
    GpioConfig,
    InputFormat,
    LoggingConfig,
    LogLevel,
    MergeMode,
    MergeVerify,
    MqttConfig,
    PinFactoryName,
    RecordingConfig,
    RecoveryConfig,
    StorageConfig,
    UnitConfig,
    UploadConfig,
    VigilConfig,
    default_unit_id,
    parse_listen,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULTS_SOURCE",
    "DEFAULT_API_LISTEN",
    "DEFAULT_API_TOKEN_FILE",
    "SEARCH_PATHS",
    "ApiConfig",
    "BudgetConfig",
    "BudgetsConfig",
    "CameraBackend",
    "CameraConfig",
    "ConfigError",
    "ConfigProblem",
    "EncoderPreset",
    "FaultInjectionConfig",
    "FaultKind",
    "GpioConfig",
    "InputFormat",
    "LoadedConfig",
    "LogLevel",
    "LoggingConfig",
    "MergeMode",
    "MergeVerify",
    "MqttConfig",
    "PinFactoryName",
    "RecordingConfig",
    "RecoveryConfig",
    "StorageConfig",
    "UnitConfig",
    "UploadConfig",
    "VigilConfig",
    "default_unit_id",
    "describe_defaults",
    "load_config",
    "parse_config_text",
    "parse_listen",
    "reference_table",
]
