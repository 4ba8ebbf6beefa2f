"""The one configuration tree: the TOML files, every command's flags, and the settings saved with
every output.

Each section is a dataclass (config/training.py: the training run's; config/commands.py: the other
commands'); each field's `help` is its documentation and its `--flag` text, and says whether it may
change on resume. `COMMANDS` says which fields each command reads. Unknown keys in a TOML file are an
error that names them.
"""

from trilora.config.commands import (
    COMMANDS,
    SCHEDULERS,
    SETTINGS_FILE,
    BenchConfig,
    CaptionConfig,
    Command,
    CompareConfig,
    DemoConfig,
    EvaluateConfig,
    GenerateConfig,
    SamplingConfig,
    Tree,
    UIConfig,
    command_settings,
    flag_help,
    settings_toml,
    tree_from_dict,
)
from trilora.config.fields import base_type, build, checked, load_toml, opt, parse_comma_list, to_toml
from trilora.config.fields import iter_fields as iter_fields_of
from trilora.config.training import (
    METHODS,
    AdapterConfig,
    CheckpointConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    ValidationConfig,
    from_dict,
    resumable_keys,
    to_dict,
    unsaved_keys,
)


def iter_fields():
    """(section or None, field, type) of every training setting, in order."""
    return iter_fields_of(RunConfig)


__all__ = [
    "COMMANDS",
    "SCHEDULERS",
    "SETTINGS_FILE",
    "BenchConfig",
    "UIConfig",
    "CaptionConfig",
    "Command",
    "CompareConfig",
    "DemoConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "SamplingConfig",
    "Tree",
    "command_settings",
    "flag_help",
    "settings_toml",
    "tree_from_dict",
    "METHODS",
    "AdapterConfig",
    "CheckpointConfig",
    "DataConfig",
    "ExportConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "ValidationConfig",
    "from_dict",
    "resumable_keys",
    "unsaved_keys",
    "to_dict",
    "base_type",
    "build",
    "checked",
    "load_toml",
    "opt",
    "parse_comma_list",
    "to_toml",
    "iter_fields",
]
