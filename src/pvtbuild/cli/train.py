"""The training commands: train, export, sample, evaluate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pvtbuild.cli.common import cli, csv_option, echo_lines, writable
from pvtbuild.errors import PvtbuildError


@cli.command("train")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="Training YAML (pipelines/train/NAME.yaml).")
@click.option("--data", "data", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset directory (shapes.txt, train/); toy configs need none.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), callback=writable,
              help="Run directory: checkpoints/, log.csv, run.json.")
@click.option("--steps", type=int, default=None, help="The run's total steps (config: train.steps).")
@click.option("--resume", is_flag=True, help="Continue the latest checkpoint in --out (same config).")
@click.option("--auto-resume", is_flag=True,
              help="Continue the latest checkpoint in --out if there is one, else start (requeued cluster jobs).")
@click.option("--allow-inexact-resume", is_flag=True,
              help="Resume with another number of processes than wrote the checkpoint: every rank continues from "
                   "the furthest data position any rank had reached (not the uninterrupted run's data order).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dry-run", is_flag=True, help="Build the model, print its parameter count and a batch's shapes, exit.")
@click.option("--init-from", "init_from", type=click.Path(path_type=Path), default=None,
              help="Fine-tune: start from the weights and EMA of this checkpoint, run or export; fresh optimizer, "
                   "step 0.")
def train_cmd(config: str, data: Path | None, out: Path, steps: int | None, resume: bool, auto_resume: bool,
              allow_inexact_resume: bool, device: str, dry_run: bool, init_from: Path | None) -> None:
    """Train a diffusion model on a dataset (or a toy) into --out; torchrun runs it on several GPUs."""
    from pvtbuild.train.config import load_train_config  # noqa: PLC0415  (the trainer loads torch: seconds)
    from pvtbuild.train.loop import Resume, TrainOptions, train  # noqa: PLC0415  (the trainer loads torch: seconds)

    if steps is not None and steps < 1:
        raise PvtbuildError(f"--steps must be >= 1, got {steps}")
    if resume and auto_resume:
        raise PvtbuildError("--resume and --auto-resume exclude each other; pass one")
    if resume and init_from is not None:
        raise PvtbuildError("--resume continues a run, --init-from starts one; pass one "
                            "(--auto-resume --init-from suits a requeued fine-tuning job)")
    mode = Resume.AUTO if auto_resume else Resume.YES if resume else Resume.NO
    options = TrainOptions(out, data, steps, mode, device, dry_run, init_from, allow_inexact_resume)
    result = train(load_train_config(config), options, echo=lambda line: click.echo(line, err=True))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalizing(result.exit_code)
    sys.exit(result.exit_code)


def _exit_without_finalizing(code: int) -> None:
    """End a torchrun rank whose run is finished and written, skipping the interpreter's finalization.

    torch (2.13) keeps a process group that DDP used alive after `destroy_process_group`, with its gloo
    worker threads. A worker that drops a finished collective's tensors while Python finalizes takes
    the GIL there and aborts the process (SIGABRT, "terminate called without an active exception"):
    seen in ~1 of 15 two-rank runs here, after every file was written. Nothing is left to do by then,
    so the rank exits at once, streams flushed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@cli.command("export")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A checkpoint file, or a run directory (its latest).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), callback=writable,
              help="The export folder to create: model.safetensors (EMA), config.yaml, export.json, dataset.json.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The training dataset (default: the one run.json records), whose dataset.json is copied.")
def export_cmd(checkpoint: Path, out: Path, data: Path | None) -> None:
    """Export a run's EMA weights as safetensors with its config, data facts and dataset summary."""
    from pvtbuild.train.export import export_run  # noqa: PLC0415  (the trainer loads torch: seconds)

    click.echo(f"export: {export_run(checkpoint, out, data)}", err=True)


@cli.command("sample")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A checkpoint file, a run directory (its latest), or a `pvtbuild export` folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), callback=writable,
              help="Where the samples go (toys: samples.npy; real formats: NNNN.wav/.npy/.controls.npz/.png).")
@click.option("--n", "n", type=int, default=None, help="Number of samples [toys: 1000; real formats: 4].")
@click.option("--midi", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Controls from a MIDI file's melody, selected and folded as the render stage does.")
@click.option("--track", type=int, default=None, help="With --midi: the track (default: the first with a window).")
@click.option("--start", type=float, default=None, help="With --midi: the window nearest this time (s).")
@click.option("--like", default=None, help="Controls of a dataset clip: DATASET:ID.")
@click.option("--controls", "controls_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Controls from a .npz or .json of arrays (velocity, chroma, instrument, beat, ...).")
@click.option("--instrument", default=None, help="Instrument class (piano, violin, ...); overrides the controls'.")
@click.option("--bpm", type=float, default=None, help="A constant tempo: beat sawtooth of period 60/BPM s.")
@click.option("--cfg-scale", type=float, default=None,
              help="Classifier-free guidance scale (config: guidance.cfg_scale).")
@click.option("--steps", type=int, default=None, help="Sampler steps (default: the config's / formalism's).")
@click.option("--batch-size", type=int, default=None, help="Samples per sampler call [min(n, 8)].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The training dataset (default: the one run.json records); its encoder decodes the samples.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG per sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def sample_cmd(checkpoint: Path, out: Path, n: int | None, midi: Path | None, track: int | None, start: float | None,
               like: str | None, controls_file: Path | None, instrument: str | None, bpm: float | None,
               cfg_scale: float | None, steps: int | None, batch_size: int | None, data: Path | None, no_plot: bool,
               seed: int, device: str) -> None:
    """Sample a trained model: a toy into OUT/samples.npy; a real format to WAVs from controls you write."""
    from pvtbuild.train.conditioning import ControlRequest  # noqa: PLC0415  (the trainer loads torch: seconds)
    from pvtbuild.train.sample import SampleOptions, sample  # noqa: PLC0415  (the trainer loads torch: seconds)

    request = ControlRequest(midi, track, start, like, controls_file, instrument, bpm)
    echo_lines(sample(SampleOptions(checkpoint, out, n, request, cfg_scale, steps, batch_size, data, not no_plot, seed,
                                    device)).lines)


@cli.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A checkpoint file, a run directory (its latest), or a `pvtbuild export` folder.")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The dataset the model was trained on; its valid split gives the controls and the real audio.")
@click.option("--n", "n", type=int, default=16, show_default=True, help="Valid clips to sample and score.")
@click.option("--cfg-scale", "cfg_scale", default="1", show_default=True,
              help="Comma-separated guidance scales, one row each (e.g. 1,2,4).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None, callback=writable,
              help="Where metrics.json goes [RUN/eval-STEP].")
@click.option("--steps", type=int, default=None, help="Sampler steps (default: the config's / formalism's).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Samples per sampler call.")
@click.option("--plot", is_flag=True, help="Also draw OUT/adherence.png (adherence against guidance scale).")
@click.option("--vggish", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="torchvggish weights for FAD (default: torch hub's cache, if there).")
@click.option("--split", type=click.Choice(["valid", "train"]), default="valid", show_default=True,
              help="Which split's clips give the controls and the real audio.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--judge-model", type=click.Choice(["auto", "tiny", "full"]), default="auto", show_default=True,
              help="CREPE model of the pitch judge: auto = full on CUDA, tiny on CPU.")
def evaluate_cmd(checkpoint: Path, data: Path, n: int, cfg_scale: str, out: Path | None, steps: int | None,
                 batch_size: int, plot: bool, vggish: Path | None, split: str, seed: int, device: str,
                 judge_model: str) -> None:
    """Sample with the controls of N valid clips and measure how well the audio obeys them (metrics.json)."""
    from pvtbuild.train.evaluate import EvalOptions, evaluate  # noqa: PLC0415  (the trainer loads torch: seconds)

    try:
        scales = tuple(float(x) for x in csv_option(cfg_scale) or ())
    except ValueError:
        raise PvtbuildError(f"--cfg-scale {cfg_scale!r}: expected comma-separated numbers, e.g. 1,2,4") from None
    report = evaluate(EvalOptions(checkpoint, data, n, scales, out, steps, seed, batch_size, device, plot, vggish,
                                  split, judge_model))
    click.echo("\n".join(report.lines))
