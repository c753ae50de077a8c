"""The dataset-building commands: select, render, encode, run, shard, qa.

Each parses its options into a config (and the few options that are no config key) and calls
its function in `pvtbuild.build_commands`, printing the lines it yields (`show`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import click

from pvtbuild.build_dir import build_config
from pvtbuild.cli.common import DEFAULT_PIPELINE, cli, csv_option, path_str, stage_options, writable
from pvtbuild.config import load_pipeline
from pvtbuild.errors import PvtbuildError


def _commands() -> ModuleType:
    """`pvtbuild.build_commands`, imported when a build command runs, not when the CLI loads."""
    from pvtbuild import build_commands  # noqa: PLC0415  (the stages import torch, ~4 s; --help needs none)

    return build_commands


def show(lines: Iterable[Any]) -> None:
    """Print a command's lines (`build_commands.Line`) as they come: summaries to stderr, paths to stdout."""
    for line in lines:
        click.echo(line.text, err=not line.to_stdout)


@cli.command("select")
@click.option("--pipeline", default=DEFAULT_PIPELINE, show_default=True, help="Pipeline YAML.")
@click.option("--midi", "midi", required=True, type=click.Path(path_type=Path), help="A folder of MIDI files.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files (pipeline: limit).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=writable,
              help="Also write the selection here, sources relative to its folder (e.g. manifests/demo.jsonl).")
@stage_options
def select_cmd(pipeline: str, midi: Path, limit: int | None, manifest: Path | None, out: Path,
               seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Select monophonic clips into a selection manifest, which `render --midi MANIFEST` rebuilds exactly."""
    cfg = load_pipeline(pipeline, seed=seed, limit=limit, **{"exec.jobs": jobs, "exec.scheduler": scheduler,
                                                       "midi": path_str(midi)})
    show(_commands().select(cfg, out, manifest))


@cli.command()
@click.option("--pipeline", default=DEFAULT_PIPELINE, show_default=True, help="Pipeline YAML.")
@click.option("--midi", "midi", default=None, type=click.Path(path_type=Path),
              help="A folder of MIDI files, or a selection manifest (.jsonl). Default: the pipeline's `midi`.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files (pipeline: limit).")
@click.option("--soundfont", default=None, help="A .sf2/.sf3 path or registry name (pipeline: render.soundfont).")
@stage_options
def render(pipeline: str, midi: Path | None, limit: int | None, soundfont: str | None, out: Path,
           seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Select monophonic clips and render them with FluidSynth, with their controls."""
    cfg = load_pipeline(pipeline, seed=seed, limit=limit, **{"render.soundfont": soundfont, "exec.jobs": jobs,
                                                       "exec.scheduler": scheduler, "midi": path_str(midi)})
    show(_commands().render(cfg, out))


def _encode_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the encode stage, taken by `encode` and `run`; each overrides its pipeline value when given."""
    options = [
        click.option("--random-weights", is_flag=True, default=None,
                     help="EnCodec with random weights drawn from --seed (tests, benchmarks; labelled as such)."),
        click.option("--encodec-checkpoint", default=None, type=click.Path(dir_okay=False, path_type=Path),
                     help="Pretrained EnCodec state dict (default: torch hub's cache; encode.encodec.checkpoint)."),
        click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (pipeline: encode.device)."),
        click.option("--batch-size", type=int, default=None,
                     help="Clips per encoder call; 0: per device (pipeline: encode.batch_size)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _encode_overrides(random_weights: bool | None, encodec_checkpoint: Path | None, device: str | None,
                      batch_size: int | None) -> dict[str, Any]:
    if random_weights and encodec_checkpoint is not None:
        raise PvtbuildError("--random-weights and --encodec-checkpoint exclude each other; pass one")
    weights = "random" if random_weights else "pretrained" if encodec_checkpoint is not None else None
    return {"encode.weights": weights, "encode.encodec.checkpoint": path_str(encodec_checkpoint),
            "encode.device": device, "encode.batch_size": batch_size}


@cli.command()
@click.option("--pipeline", default=None, help="Pipeline YAML (default: the config the build directory recorded).")
@click.option("--formats", default=None, help="Comma-separated subset of cqt,encodec,disc (pipeline: encode.formats).")
@_encode_options
@stage_options
def encode(pipeline: str | None, formats: str | None, random_weights: bool | None, encodec_checkpoint: Path | None,
           device: str | None, batch_size: int | None, out: Path, seed: int | None, jobs: int | None,
           scheduler: str | None) -> None:
    """Encode the clips rendered into --out as CQT, EnCodec latents and EnCodec codes."""
    overrides = _encode_overrides(random_weights, encodec_checkpoint, device, batch_size)
    if formats is not None:
        overrides["encode.formats"] = csv_option(formats)
    cfg = build_config(out, pipeline, seed=seed, **overrides, **{"exec.jobs": jobs, "exec.scheduler": scheduler})
    show(_commands().encode(cfg, out))


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--midi", "midi", default=None, type=click.Path(path_type=Path),
              help="A folder of MIDI files or a selection manifest. Default: the pipeline's `midi`.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files.")
@click.option("--soundfont", default=None, help="A .sf2/.sf3 path or registry name.")
@_encode_options
@stage_options
def run(pipeline: str, midi: Path | None, limit: int | None, soundfont: str | None, random_weights: bool | None,
        encodec_checkpoint: Path | None, device: str | None, batch_size: int | None,
        out: Path, seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Run every stage of PIPELINE into --out (finished work is kept)."""
    cfg = load_pipeline(pipeline, seed=seed, limit=limit, **{"render.soundfont": soundfont, "exec.jobs": jobs,
                                                       "exec.scheduler": scheduler, "midi": path_str(midi)},
                        **_encode_overrides(random_weights, encodec_checkpoint, device, batch_size))
    show(_commands().run(cfg, out))


@cli.command()
@click.option("--pipeline", default=None, help="Pipeline YAML (default: the config the build directory recorded).")
@click.option("--formats", default=None,
              help="Comma-separated subset of audio,cqt,encodec,disc (pipeline: shard.formats).")
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=None, callback=writable,
              help="Where the dataset goes (default: OUT/dataset).")
@click.option("--drop-failing/--keep-failing", default=None,
              help="Leave clips that failed qa out of the dataset (pipeline: qa.drop_failing).")
@stage_options
def shard(pipeline: str | None, formats: str | None, dataset: Path | None, drop_failing: bool | None, out: Path,
          seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Write the clips rendered (and encoded) in --out as TFRecord shards with shapes.txt and dataset.json."""
    cfg = build_config(out, pipeline, seed=seed, **{"exec.jobs": jobs, "exec.scheduler": scheduler,
                                                    "qa.drop_failing": drop_failing})
    show(_commands().shard(cfg, out, dataset, csv_option(formats)))


@cli.command("qa")
@click.option("--pipeline", default=None, help="Pipeline YAML (default: the config the build directory recorded).")
@click.option("--plot-failing", type=int, default=0,
              help="Plot controls against the audio's estimates for N failing clips.")
@click.option("--plot-dir", type=click.Path(file_okay=False, path_type=Path), default=None, callback=writable,
              help="Where --plot-failing writes (default: OUT/qa/plots).")
@stage_options
def qa_cmd(pipeline: str | None, plot_failing: int, plot_dir: Path | None, out: Path, seed: int | None,
           jobs: int | None, scheduler: str | None) -> None:
    """Check every rendered clip in --out against its controls, from the audio alone (results: OUT/qa)."""
    cfg = build_config(out, pipeline, seed=seed, **{"exec.jobs": jobs, "exec.scheduler": scheduler})
    show(_commands().qa(cfg, out, plot_failing, plot_dir))
