"""Pipeline configs: YAML files in `pipelines/` turned into typed, validated objects.

Every number of the data contract (docs/data-contract.md) lives in a pipeline file, not in code. The
YAML is checked once, against the section dataclasses: an unknown key, a value of the wrong type or
out of range fails with one line naming the key (`select.clip_seconds: must be > 0, got -1`), before
any work starts. Code downstream reads only these frozen objects.

Modules (each imports only those above it; callers import from this package):

- `yaml_file`: a YAML file read safely as plain data (no bombs, no duplicate keys).
- `loader`: the generic typed loader (`build_section`, `require`, `to_plain`, `config_hash`).
- `sections`: the sections of a pipeline file and their checks.
- `grids`: control grids derived from the clip and the format each serves.
- `pipeline_config`: `PipelineConfig`, `load_pipeline`, `config_from_dict`.
"""

from __future__ import annotations

from pvtbuild.config.loader import MAX_INT, build_section, config_hash, naming_file, read_config_file, require, to_plain
from pvtbuild.config.pipeline_config import PipelineConfig, config_from_dict, load_pipeline
from pvtbuild.config.sections import (
    ENCODEC_HOP,
    FORMATS,
    KNOWN_INSTRUMENTS,
    ControlsConfig,
    CqtConfig,
    EncodecConfig,
    EncodeConfig,
    ExecConfig,
    GridConfig,
    InstrumentConfig,
    QaConfig,
    RenderConfig,
    SelectConfig,
    ShardConfig,
)

__all__ = [
    "ENCODEC_HOP", "FORMATS", "KNOWN_INSTRUMENTS", "MAX_INT", "ControlsConfig", "CqtConfig", "EncodecConfig",
    "EncodeConfig", "ExecConfig", "GridConfig", "InstrumentConfig", "PipelineConfig", "QaConfig", "RenderConfig",
    "SelectConfig", "ShardConfig", "build_section", "config_from_dict", "config_hash", "load_pipeline",
    "naming_file", "read_config_file", "require", "to_plain",
]
