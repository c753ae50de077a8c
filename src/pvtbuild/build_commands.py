"""What each dataset-building command does, as one library function per command.

`cli/build.py` parses a command's options into a config (and the few options that are not
config keys) and calls the function of the same name here. Each yields the command's output
line by line as the work produces it (`Line`: a summary line for stderr, or a path for stdout),
and raises `PvtbuildError` after its lines when the command failed as a whole (no clip
selected, rendered or encoded; a shard failed), so what a user sees, and in which order, does
not depend on who prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pvtbuild.config import PipelineConfig
from pvtbuild.engine.summary import StageSummary
from pvtbuild.errors import PvtbuildError
from pvtbuild.pipeline import run_all, run_encode, run_qa, run_render, run_select, run_shard
from pvtbuild.stages.qa import plot_failing
from pvtbuild.stages.qa_output import read_summary, summary_lines
from pvtbuild.stages.select import SELECTION_NAME, write_selection


@dataclass(frozen=True)
class Line:
    """One line of a command's output: for people (stderr, `to_stdout` False), or a result path (stdout)."""

    text: str
    to_stdout: bool = False


def select(cfg: PipelineConfig, out: Path, manifest: Path | None) -> Iterator[Line]:
    """Select clips into OUT/select and, with `manifest`, also there (sources relative to its folder)."""
    clips, summary = run_select(cfg, out)
    written = [out / "select" / SELECTION_NAME]
    if manifest is not None:
        write_selection(manifest, clips)
        written.append(manifest)
    yield from _lines(summary.lines() + [f"selection: {len(clips)} clips in {', '.join(map(str, written))}"])
    if not clips:
        raise PvtbuildError("no clip was selected; see the skipped reasons above")


def render(cfg: PipelineConfig, out: Path) -> Iterator[Line]:
    """Select (or read the selection manifest) and render."""
    yield from _report(run_render(cfg, out), "rendered")


def encode(cfg: PipelineConfig, out: Path) -> Iterator[Line]:
    """Encode the render output in `out`."""
    yield from _report(run_encode(cfg, out), "encoded")


def run(cfg: PipelineConfig, out: Path) -> Iterator[Line]:
    """Every stage, then the qa summary when qa ran."""
    yield from _report(run_all(cfg, out))
    if cfg.qa.enabled:
        yield from _lines(summary_lines(read_summary(out) or {}))


def shard(cfg: PipelineConfig, out: Path, dataset: Path | None, formats: tuple[str, ...] | None) -> Iterator[Line]:
    """The dataset of `out`; fails when a shard failed (no dataset.json is written then)."""
    summaries = run_shard(cfg, out, dataset, formats)
    yield from _report(summaries)
    if summaries[-1].failed_shards:
        raise PvtbuildError("some shards failed (listed above), so no dataset.json was written; rerun to finish them")


def qa(cfg: PipelineConfig, out: Path, plots: int, plot_dir: Path | None) -> Iterator[Line]:
    """Judge the render output in `out`, print the qa summary, and plot `plots` failing clips."""
    yield from _report(run_qa(cfg, out))
    yield from _lines(summary_lines(read_summary(out) or {}))
    for path in plot_failing(out, cfg, plots, plot_dir or out / "qa" / "plots") if plots else []:
        yield Line(f"plot: {path}", to_stdout=True)


def _lines(texts: list[str]) -> Iterator[Line]:
    return (Line(text) for text in texts)


def _report(summaries: list[StageSummary], nothing: str | None = None) -> Iterator[Line]:
    """Every stage's summary; with `nothing` ("rendered"), then fail when the last stage has no clip at all."""
    yield from _lines([line for s in summaries for line in s.lines()])
    if nothing and summaries[-1].total_ok == 0:
        raise PvtbuildError(f"no clip was {nothing}; see the skipped reasons above")
