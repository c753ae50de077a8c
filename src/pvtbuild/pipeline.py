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

from pvtbuild.clip import ClipSpec
from pvtbuild.config import PipelineConfig, config_from_dict, load_pipeline
from pvtbuild.engine.executor import Executor, open_executor
from pvtbuild.engine.manifest import atomic_write_bytes
from pvtbuild.engine.stage import StageSummary, run_stages
from pvtbuild.errors import ConfigError, PvtbuildError

BUILD_CONFIG = "pipeline.json"
DATASET_DIR = "dataset"  # where the shard stage writes unless told otherwise


def executor_for(cfg: PipelineConfig):
    return open_executor(cfg.exec.scheduler, cfg.exec.jobs, cfg.exec.threads_per_job,
                         wait_for_workers=cfg.exec.wait_for_workers)


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
    from pvtbuild.stages.select import read_selection, select

    source = midi_source(cfg)
    if source.is_file() and source.suffix == ".jsonl":
        clips = read_selection(source)
        if cfg.limit:  # the limit counts source files, as it does for a MIDI folder
            keep = list(dict.fromkeys(c.source_md5 for c in clips))[:cfg.limit]
            clips = [c for c in clips if c.source_md5 in set(keep)]
        return clips, []
    clips, summary = select(source, out, cfg, executor)
    return clips, [summary]


def midi_source(cfg: PipelineConfig) -> Path:
    """The configured MIDI input (a folder or a selection manifest), which must exist."""
    if not cfg.midi:
        raise PvtbuildError("no MIDI input: pass --midi DIR_OR_MANIFEST or set `midi` in the pipeline")
    source = Path(cfg.midi)
    if not source.exists():
        raise PvtbuildError(f"{source}: no such MIDI folder or selection manifest")
    return source


def check_render_inputs(cfg: PipelineConfig) -> None:
    """Stop before any work (no executor started, nothing written) if the MIDI input or SoundFont is unusable."""
    from pvtbuild.stages.render import render_soundfont

    midi_source(cfg)
    render_soundfont(cfg)


def preflight(cfg: PipelineConfig, out: Path, ex: Executor, midi: bool = False, soundfont: bool = False) -> None:
    """Before any work: every worker runs our versions, sees the inputs asked for and may write `out`."""
    from pvtbuild.stages.render import render_soundfont

    paths = {}
    if midi:
        paths["MIDI input"] = str(midi_source(cfg).resolve())
    if soundfont:
        paths["SoundFont"] = str(render_soundfont(cfg).resolve())
    ex.preflight(paths, writable=str(Path(out).resolve()))


def _render(cfg: PipelineConfig, out: Path, ex: Executor) -> list[StageSummary]:
    from pvtbuild.stages.render import render

    clips, summaries = selected_clips(cfg, out, ex)
    summaries.append(render(clips, out, cfg, ex))
    return summaries


def run_select(cfg: PipelineConfig, out: Path) -> tuple[list[ClipSpec], StageSummary]:
    """Only the select stage, from the MIDI folder `cfg.midi` (for writing a selection manifest)."""
    from pvtbuild.stages.select import select

    if not cfg.midi or not Path(cfg.midi).is_dir():
        raise PvtbuildError(f"--midi {cfg.midi or '(none)'}: select needs a folder of MIDI files")
    with executor_for(cfg) as ex:
        preflight(cfg, out, ex, midi=True)
        save_build_config(cfg, out)
        return select(Path(cfg.midi), out, cfg, ex)


def run_render(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    check_render_inputs(cfg)
    with executor_for(cfg) as ex:
        preflight(cfg, out, ex, midi=True, soundfont=True)
        save_build_config(cfg, out)
        return _render(cfg, out, ex)


def _check_encode_inputs(cfg: PipelineConfig) -> None:
    """Stop before any work (no executor started) if the EnCodec weights or the device asked for are missing."""
    from pvtbuild.stages.encode import check_encode_config

    check_encode_config(cfg)


def _encode(cfg: PipelineConfig, out: Path, ex: Executor) -> StageSummary:
    from pvtbuild.stages.encode import encode

    return encode(out, cfg, ex)


def run_encode(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """The encode stage alone, on the render output already in `out`."""
    _check_encode_inputs(cfg)
    with executor_for(cfg) as ex:
        preflight(cfg, out, ex)
        return [_encode(cfg, out, ex)]


def run_all(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """Every stage, each resuming what an earlier run finished: select, then render, encode and qa
    streaming into each other (`stream_stages`), then shard."""
    check_render_inputs(cfg)
    _check_encode_inputs(cfg)
    check_shard_formats(cfg)
    with executor_for(cfg) as ex:
        preflight(cfg, out, ex, midi=True, soundfont=True)
        save_build_config(cfg, out)
        clips, summaries = selected_clips(cfg, out, ex)
        summaries += stream_stages(clips, cfg, out, ex)
        summaries.append(_shard(cfg, out, out / DATASET_DIR, ex))
    return summaries


def stream_stages(clips: list[ClipSpec], cfg: PipelineConfig, out: Path, ex: Executor) -> list[StageSummary]:
    """Render, encode and qa as one stream of tasks: the encode and qa tasks of render shard i
    start as soon as shard i is rendered, while other workers render on (CPU workers render
    while GPU workers encode), so the three take about as long as the slowest, not the sum.

    Each stage plans as its stage command would (the same shards, parameters, records and
    resume), except that a render shard not rendered yet is the render task's `After`.
    The shard stage needs every clip (it splits and packs them), so it comes after.
    """
    from pvtbuild.stages.encode import plan_encode
    from pvtbuild.stages.qa import plan_qa
    from pvtbuild.stages.render import plan_render

    render = plan_render(clips, out, cfg)
    runs = [render, plan_encode(out, cfg, ex, render.upstream())]
    if cfg.qa.enabled:
        runs.append(plan_qa(out, cfg, render.upstream()))
    return run_stages(ex, runs)


def _qa(cfg: PipelineConfig, out: Path, ex: Executor) -> StageSummary:
    from pvtbuild.stages.qa import qa

    return qa(out, cfg, ex)


def run_qa(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """The qa stage alone, on the render output already in `out`."""
    with executor_for(cfg) as ex:
        preflight(cfg, out, ex)
        return [_qa(cfg, out, ex)]


def check_shard_formats(cfg: PipelineConfig) -> None:
    """Stop before any work when the dataset asks for a format the encode stage will not compute."""
    from pvtbuild.stages.shard import ENCODED

    missing = [f for f in cfg.shard.formats if f in ENCODED and f not in cfg.encode.formats]
    if missing:
        raise ConfigError(f"shard.formats: asks for {', '.join(missing)}, which encode.formats "
                          f"({', '.join(cfg.encode.formats)}) does not compute; add it there or drop it here")


def _shard(cfg: PipelineConfig, out: Path, dataset: Path, ex: Executor,
           formats: tuple[str, ...] | None = None) -> StageSummary:
    from pvtbuild.stages.shard import shard

    return shard(out, dataset, cfg, ex, formats)


def run_shard(cfg: PipelineConfig, out: Path, dataset: Path | None = None,
              formats: tuple[str, ...] | None = None) -> list[StageSummary]:
    """The shard stage alone: the render (and encode) output in `out` into a dataset (default OUT/dataset)."""
    with executor_for(cfg) as ex:
        preflight(cfg, out, ex)
        return [_shard(cfg, out, dataset or out / DATASET_DIR, ex, formats)]
