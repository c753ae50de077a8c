"""A build directory's recorded config: `OUT/pipeline.json`, so that later stage commands go on with it.

Every command that starts a build from MIDI (select, render, run) records its resolved config there;
`pvtbuild encode --out DIR`, `qa` and `shard` then use the settings `render` used unless `--pipeline`
says otherwise. Kept apart from `pipeline` so that reading it imports no stage (nor torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pvtbuild.config import PipelineConfig, config_from_dict, load_pipeline
from pvtbuild.engine.manifest import atomic_write_bytes
from pvtbuild.errors import PvtbuildError

BUILD_CONFIG = "pipeline.json"


def save_build_config(cfg: PipelineConfig, out: Path) -> None:
    """Record the resolved config in the build directory, for the stage commands that follow."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True, indent=1).encode()
    atomic_write_bytes(Path(out) / BUILD_CONFIG, blob)


def build_config(out: Path, pipeline: str | None, **overrides: Any) -> PipelineConfig:
    """The config of a later stage: `pipeline` if given, else the one the build directory recorded."""
    if pipeline is not None:
        return load_pipeline(pipeline, **overrides)
    path = Path(out) / BUILD_CONFIG
    if not path.is_file():
        raise PvtbuildError(f"{path}: not found; run `pvtbuild render --out {out}` first, or pass --pipeline")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise PvtbuildError(f"{path}: not valid JSON ({e}); pass --pipeline") from None
    return config_from_dict(data, **overrides)
