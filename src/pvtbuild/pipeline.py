"""The DAG: which stage feeds which, for the stage commands and `pvtbuild run`.

Each stage is a plain function of (its inputs, the config, the build directory,
an executor); this module only chains them and opens one executor for the
whole run, so a local dask cluster starts once.

A build directory remembers the config it was built with (`OUT/pipeline.json`,
written by every stage command), so `pvtbuild encode --out DIR` and
`pvtbuild shard --out DIR` go on with the settings `render` used unless
`--pipeline` says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .clip import ClipSpec
from .config import PipelineConfig, config_from_dict, load_pipeline
from .errors import PvtbuildError
from .executor import Executor, open_executor
from .manifest import atomic_write_bytes
from .stage import StageSummary

BUILD_CONFIG = "pipeline.json"


def executor_for(cfg: PipelineConfig):
    return open_executor(cfg.exec.scheduler, cfg.exec.jobs, cfg.exec.threads_per_job)


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


def selected_clips(cfg: PipelineConfig, out: Path, executor: Executor) -> tuple[list[ClipSpec], list[StageSummary]]:
    """Clips from the configured input: select from a MIDI folder, or read a selection manifest."""
    from .select import read_selection, select

    if not cfg.midi:
        raise PvtbuildError("no MIDI input: pass --midi DIR_OR_MANIFEST or set `midi` in the pipeline")
    source = Path(cfg.midi)
    if source.is_file() and source.suffix == ".jsonl":
        clips = read_selection(source)
        if cfg.limit:  # the limit counts source files, as it does for a MIDI folder
            keep = list(dict.fromkeys(c.source_md5 for c in clips))[:cfg.limit]
            clips = [c for c in clips if c.source_md5 in set(keep)]
        return clips, []
    if not source.exists():
        raise PvtbuildError(f"{source}: no such MIDI folder or selection manifest")
    clips, summary = select(source, out, cfg, executor)
    return clips, [summary]


def _render(cfg: PipelineConfig, out: Path, ex: Executor) -> list[StageSummary]:
    from .render import render

    clips, summaries = selected_clips(cfg, out, ex)
    summaries.append(render(clips, out, cfg, ex))
    return summaries


def run_render(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    save_build_config(cfg, out)
    with executor_for(cfg) as ex:
        return _render(cfg, out, ex)


def run_all(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """Every stage, in order, each resuming what an earlier run finished."""
    save_build_config(cfg, out)
    with executor_for(cfg) as ex:
        summaries = _render(cfg, out, ex)
        # encode and shard are chained here as they land (see their modules).
    return summaries
