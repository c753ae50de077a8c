"""The `pvtbuild` command: parses options, calls the stage functions, prints summaries.

Nothing here knows how a stage works. A `PvtbuildError` (a user mistake or a bad
input) is caught once, in `main`, and printed as one line; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from .config import PipelineConfig, load_pipeline
from .errors import PvtbuildError

DEFAULT_PIPELINE = "pipelines/pvt.yaml"


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every stage command takes; each overrides its pipeline value when given."""
    options = [
        click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Build directory shared by all stages."),
        click.option("--seed", type=int, default=None, help="Global seed (pipeline: seed)."),
        click.option("--jobs", type=int, default=None, help="Worker processes (pipeline: exec.jobs)."),
        click.option("--scheduler", default=None,
                     help="Absent: local dask cluster; 'sync': in-process; tcp://HOST:PORT: a dask cluster."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(pipeline: str, **overrides: Any) -> PipelineConfig:
    return load_pipeline(pipeline, **overrides)


def _echo_summary(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PvtbuildError as e:
            click.echo(f"pvtbuild: error: {' '.join(str(e).split())}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="pvtbuild")
def cli() -> None:
    """Build controllable-music-diffusion datasets from MIDI, and train on them."""


@cli.command()
@click.option("--pipeline", default=DEFAULT_PIPELINE, show_default=True, help="Pipeline YAML.")
@click.option("--midi", "midi", default=None, type=click.Path(path_type=Path),
              help="A folder of MIDI files, or a selection manifest (.jsonl). Default: the pipeline's `midi`.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files (pipeline: limit).")
@click.option("--soundfont", default=None, help="A .sf2/.sf3 path or registry name (pipeline: render.soundfont).")
@_common
def render(pipeline: str, midi: Path | None, limit: int | None, soundfont: str | None, out: Path,
           seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Select monophonic clips and render them with FluidSynth, with their controls."""
    from .pipeline import run_render

    cfg = _load(pipeline, seed=seed, limit=limit, **{"render.soundfont": soundfont, "exec.jobs": jobs,
                                                     "exec.scheduler": scheduler, "midi": _str(midi)})
    summaries = run_render(cfg, out)
    _echo_summary([line for s in summaries for line in s.lines()])
    if summaries[-1].total_ok == 0:
        raise PvtbuildError("no clip was rendered; see the skipped reasons above")


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--midi", "midi", default=None, type=click.Path(path_type=Path),
              help="A folder of MIDI files or a selection manifest. Default: the pipeline's `midi`.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files.")
@click.option("--soundfont", default=None, help="A .sf2/.sf3 path or registry name.")
@click.option("--random-weights", is_flag=True, default=None, help="EnCodec with random weights (tests, benchmarks).")
@_common
def run(pipeline: str, midi: Path | None, limit: int | None, soundfont: str | None, random_weights: bool | None,
        out: Path, seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Run every stage of PIPELINE into --out (finished work is kept)."""
    from .pipeline import run_all

    cfg = _load(pipeline, seed=seed, limit=limit, **{"render.soundfont": soundfont, "exec.jobs": jobs,
                                                     "exec.scheduler": scheduler, "midi": _str(midi),
                                                     "encode.weights": "random" if random_weights else None})
    summaries = run_all(cfg, out)
    _echo_summary([line for s in summaries for line in s.lines()])


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def main() -> None:
    cli(prog_name="pvtbuild")


if __name__ == "__main__":
    sys.exit(main())
