"""The DAG: which stage feeds which, for `pvtbuild render` and `pvtbuild run`.

Each stage is a plain function of (its inputs, the config, the build directory,
an executor); this module only chains them and opens one executor for the
whole run, so a local dask cluster starts once.
"""

from __future__ import annotations

from pathlib import Path

from .clip import ClipSpec
from .config import PipelineConfig
from .errors import PvtbuildError
from .executor import Executor, open_executor
from .stage import StageSummary


def executor_for(cfg: PipelineConfig):
    return open_executor(cfg.exec.scheduler, cfg.exec.jobs, cfg.exec.threads_per_job)


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


def run_render(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    from .render import render

    with executor_for(cfg) as ex:
        clips, summaries = selected_clips(cfg, out, ex)
        summaries.append(render(clips, out, cfg, ex))
    return summaries


def run_all(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """Every stage that exists, in order, each resuming what an earlier run finished."""
    from .render import render

    with executor_for(cfg) as ex:
        clips, summaries = selected_clips(cfg, out, ex)
        summaries.append(render(clips, out, cfg, ex))
    return summaries
