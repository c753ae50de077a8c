"""The pipeline: its stages in order, one loop that checks them, one that runs them.

`STAGES` is the build, in order: select, render, encode, qa, shard (each a `stages.base.Stage`).
Every command runs a sub-list of it through `run_pipeline`: the stage commands one stage each
(render with the select that feeds it), `pvtbuild run` all that `enabled(cfg)`. It checks every
stage before any work (`check_stages`), opens one executor for the whole command (a local dask
cluster starts once), has every worker check that it sees the inputs the stages name and may write
`out`, then plans and runs the stages in order (`run_planned`): a stage that `streams` is planned
beside the stage it reads and runs with it, its tasks starting on each shard as soon as it exists
(render, encode and qa in `pvtbuild run`); any other waits for the stages before it to finish.
To add a stage, see `stages.base`.

A command that starts at select records its config in the build directory (`build_dir`), for the
stage commands that follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pvtbuild.build_dir import save_build_config
from pvtbuild.clip import ClipSpec, Selection
from pvtbuild.config import PipelineConfig
from pvtbuild.engine.executor import Executor, open_executor
from pvtbuild.engine.planning import StageRun, run_stages
from pvtbuild.engine.summary import StageSummary
from pvtbuild.stages.base import Ready, Stage
from pvtbuild.stages.encode import Encode
from pvtbuild.stages.qa import Qa
from pvtbuild.stages.render import Render
from pvtbuild.stages.select import Select, notes_files
from pvtbuild.stages.shard import Shard

STAGES: tuple[Stage, ...] = (Select(), Render(), Encode(), Qa(), Shard())


@dataclass
class Built:
    """What a command's stages did: their summaries in order, and what each planned (for its output)."""

    summaries: list[StageSummary]
    planned: dict[str, StageRun | Ready]

    def output(self, stage: str) -> Any:
        """What `stage` handed on (select: its `Selection`; a stage of shards: its `FinishedStage`)."""
        return self.planned[stage].upstream()


def executor_for(cfg: PipelineConfig) -> Executor:
    return open_executor(cfg.exec.scheduler, cfg.exec.jobs, cfg.exec.threads_per_job,
                         wait_for_workers=cfg.exec.wait_for_workers)


def check_stages(cfg: PipelineConfig, stages: Sequence[Stage]) -> None:
    """Every stage's `check`, in order, before any work: the first bad input stops the command in one line."""
    together = frozenset(stage.name for stage in stages)
    for stage in stages:
        stage.check(cfg, together)


def run_pipeline(cfg: PipelineConfig, out: Path, stages: Sequence[Stage]) -> Built:
    """Check, then run `stages` (a sub-list of `STAGES`, in its order) into the build directory `out`."""
    check_stages(cfg, stages)
    with executor_for(cfg) as ex:
        paths = {what: path for stage in stages for what, path in stage.worker_paths(cfg).items()}
        ex.preflight(paths, writable=str(Path(out).resolve()))
        if stages[0].name == "select":  # a build from MIDI: the config later stage commands go on with
            save_build_config(cfg, out)
        return run_planned(ex, cfg, out, stages)


def run_planned(ex: Executor, cfg: PipelineConfig, out: Path, stages: Sequence[Stage],
                given: dict[str, StageRun | Ready] | None = None) -> Built:
    """Plan each stage on what the stage it reads handed on (or, if that did not run here, on `out`) and run
    the plans: a stage that `streams` joins the runs before it, any other first waits for them to finish.

    `given`: outputs of stages that ran elsewhere (a benchmark's selection), by stage name.
    """
    planned: dict[str, StageRun | Ready] = dict(given or {})
    pending: list[StageRun] = []
    summaries: list[StageSummary] = []
    for stage in stages:
        if pending and not stage.streams:
            summaries += run_stages(ex, pending)
            pending = []
        source = planned.get(stage.reads) if stage.reads else None
        run = stage.plan(cfg, out, ex, source.upstream() if source is not None else None)
        planned[stage.name] = run
        if isinstance(run, StageRun):
            pending.append(run)
    if pending:
        summaries += run_stages(ex, pending)
    return Built(summaries, planned)


def stages_named(*names: str) -> list[Stage]:
    """The stages of `STAGES` called `names`, in pipeline order."""
    return [s for s in STAGES if s.name in names]


def run_select(cfg: PipelineConfig, out: Path) -> tuple[list[ClipSpec], StageSummary]:
    """Only the select stage, from the MIDI folder `cfg.midi` (for writing a selection manifest)."""
    built = run_pipeline(cfg, out, [Select(manifest_ok=False)])
    return built.output("select").clips, built.summaries[0]


def run_render(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """Select (or read the selection manifest `cfg.midi`) and render."""
    return run_pipeline(cfg, out, stages_named("select", "render")).summaries


def run_encode(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """The encode stage alone, on the render output already in `out`."""
    return run_pipeline(cfg, out, stages_named("encode")).summaries


def run_qa(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """The qa stage alone, on the render output already in `out`."""
    return run_pipeline(cfg, out, stages_named("qa")).summaries


def run_shard(cfg: PipelineConfig, out: Path, dataset: Path | None = None,
              formats: tuple[str, ...] | None = None) -> list[StageSummary]:
    """The shard stage alone: the render (and encode) output in `out` into a dataset (default OUT/dataset)."""
    return run_pipeline(cfg, out, [Shard(dataset, formats)]).summaries


def run_all(cfg: PipelineConfig, out: Path) -> list[StageSummary]:
    """Every stage `enabled(cfg)`, each resuming what an earlier run finished: select, then render, encode and
    qa streaming into each other, then shard."""
    return run_pipeline(cfg, out, [s for s in STAGES if s.enabled(cfg)]).summaries


def selected_clips(cfg: PipelineConfig, out: Path, executor: Executor) -> tuple[list[ClipSpec], list[StageSummary]]:
    """Clips from the configured input: select from a MIDI folder, or read a selection manifest."""
    built = run_planned(executor, cfg, out, stages_named("select"))
    return built.output("select").clips, built.summaries


def stream_stages(clips: list[ClipSpec], cfg: PipelineConfig, out: Path, ex: Executor) -> list[StageSummary]:
    """Render, encode and qa of `clips` as `pvtbuild run` streams them (for benchmarks that select elsewhere)."""
    given = {"select": Ready(Selection(clips, notes_files(out, cfg)))}
    stages = [s for s in stages_named("render", "encode", "qa") if s.enabled(cfg)]
    return run_planned(ex, cfg, out, stages, given).summaries
