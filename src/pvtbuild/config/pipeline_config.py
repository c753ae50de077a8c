"""A whole pipeline file as one frozen `PipelineConfig` (`load_pipeline`, `config_from_dict`): its
sections built and checked, its control grids derived, command-line overrides applied on top.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvtbuild.config.grids import resolve_grids
from pvtbuild.config.loader import build_section, naming_file, read_config_file, require, to_plain
from pvtbuild.config.sections import (
    ControlsConfig,
    EncodeConfig,
    ExecConfig,
    QaConfig,
    RenderConfig,
    SelectConfig,
    ShardConfig,
)


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline file: its sections, the MIDI source and the seed; control grids derived at creation."""

    name: str = "pvt"
    # A folder of MIDI files or a selection manifest (.jsonl); in a pipeline file,
    # relative to that file's folder.
    midi: str = ""
    seed: int = 0
    limit: int = 0  # at most this many source MIDI files (0: all)
    select: SelectConfig = field(default_factory=SelectConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    qa: QaConfig = field(default_factory=QaConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)

    def __post_init__(self) -> None:
        controls = resolve_grids(self)
        if controls is not None:
            object.__setattr__(self, "controls", controls)

    def check(self, key: str = "") -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.limit >= 0, "limit", f"must be >= 0, got {self.limit}")
        sections = [f.name for f in dataclasses.fields(self) if dataclasses.is_dataclass(getattr(self, f.name))]
        for name in sorted(sections, key=lambda n: n == "controls"):  # grids are derived from the others: last
            getattr(self, name).check(name)
        for fmt, grid in self.shard.control_grids.items():
            self.controls.grid(grid)  # raises naming the missing grid
        if self.qa.grid:
            self.controls.grid(self.qa.grid)

    @property
    def clip_samples(self) -> int:
        """Samples of one rendered clip."""
        return int(round(self.select.clip_seconds * self.render.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def load_pipeline(path: str | Path, **overrides: Any) -> PipelineConfig:
    """Read and validate a pipeline file; `overrides` are dotted keys (`render.soundfont`) set on top."""
    p = Path(path)
    data = read_config_file(p, "pipeline file")
    if isinstance(data.get("midi"), str) and data["midi"] and not Path(data["midi"]).is_absolute():
        data["midi"] = str((p.parent / data["midi"]).resolve())
    with naming_file(p, [key for key, value in overrides.items() if value is not None]):
        return config_from_dict(data, **overrides)


def config_from_dict(data: dict[str, Any], **overrides: Any) -> PipelineConfig:
    """A checked `PipelineConfig` from a pipeline file's data, with `overrides` (dotted keys; None: not given)
    set on top of a copy."""
    data = copy.deepcopy(data)  # overrides must not change the caller's dict
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg = build_section(PipelineConfig, data, "")
    cfg.check()
    return cfg
