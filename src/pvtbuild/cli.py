"""The `pvtbuild` command: parses options, calls the stage functions, prints summaries.

Nothing here knows how a stage works. A `PvtbuildError` (a user mistake or a bad
input) is caught once, in `main`, and printed as one line; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from .clip import clip_path
from .config import PipelineConfig, load_pipeline
from .errors import PvtbuildError
from .manifest import check_writable

DEFAULT_PIPELINE = "pipelines/pvt.yaml"


def _writable(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Option callback: an output path must be writable, checked before any work (`check_writable`)."""
    if value is not None:
        check_writable(value, param.opts[0])
    return value


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every stage command takes; each overrides its pipeline value when given."""
    options = [
        click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     callback=_writable, help="Build directory shared by all stages."),
        click.option("--seed", type=int, default=None, help="Global seed (pipeline: seed)."),
        click.option("--jobs", type=int, default=None, help="Worker processes (pipeline: exec.jobs)."),
        click.option("--scheduler", default=None,
                     help="Absent: local dask cluster; 'sync': in-process; tcp://HOST:PORT or tls://HOST:PORT: "
                          "a dask cluster (TLS certificates from dask config)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(pipeline: str, **overrides: Any) -> PipelineConfig:
    return load_pipeline(pipeline, **overrides)


def _echo_summary(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)


def _report(summaries: list[Any], nothing: str | None = None) -> None:
    """Print every stage's summary; with `nothing` ("rendered"), fail when the last stage has no clip at all."""
    _echo_summary([line for s in summaries for line in s.lines()])
    if nothing and summaries[-1].total_ok == 0:
        raise PvtbuildError(f"no clip was {nothing}; see the skipped reasons above")


def _csv(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option (`--formats cqt,disc`) as a tuple; None when it was not given."""
    return None if text is None else tuple(f.strip() for f in text.split(",") if f.strip())


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PvtbuildError as e:
            click.echo(f"pvtbuild: error: {' '.join(str(e).split())}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("pvtbuild: interrupted; finished shards are kept: rerun the same command to resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="pvtbuild")
def cli() -> None:
    """Build controllable-music-diffusion datasets from MIDI, and train on them."""


@cli.command("select")
@click.option("--pipeline", default=DEFAULT_PIPELINE, show_default=True, help="Pipeline YAML.")
@click.option("--midi", "midi", required=True, type=click.Path(path_type=Path), help="A folder of MIDI files.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files (pipeline: limit).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_writable,
              help="Also write the selection here, sources relative to its folder (e.g. manifests/demo.jsonl).")
@_common
def select_cmd(pipeline: str, midi: Path, limit: int | None, manifest: Path | None, out: Path,
               seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Select monophonic clips into a selection manifest, which `render --midi MANIFEST` rebuilds exactly."""
    from .pipeline import run_select
    from .select import SELECTION_NAME, write_selection

    cfg = _load(pipeline, seed=seed, limit=limit, **{"exec.jobs": jobs, "exec.scheduler": scheduler,
                                                     "midi": _str(midi)})
    clips, summary = run_select(cfg, out)
    written = [out / "select" / SELECTION_NAME]
    if manifest is not None:
        write_selection(manifest, clips)
        written.append(manifest)
    _echo_summary(summary.lines() + [f"selection: {len(clips)} clips in {', '.join(map(str, written))}"])
    if not clips:
        raise PvtbuildError("no clip was selected; see the skipped reasons above")


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
    _report(summaries, "rendered")


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
    return {"encode.weights": weights, "encode.encodec.checkpoint": _str(encodec_checkpoint),
            "encode.device": device, "encode.batch_size": batch_size}


@cli.command()
@click.option("--pipeline", default=None, help="Pipeline YAML (default: the config the build directory recorded).")
@click.option("--formats", default=None, help="Comma-separated subset of cqt,encodec,disc (pipeline: encode.formats).")
@_encode_options
@_common
def encode(pipeline: str | None, formats: str | None, random_weights: bool | None, encodec_checkpoint: Path | None,
           device: str | None, batch_size: int | None, out: Path, seed: int | None, jobs: int | None,
           scheduler: str | None) -> None:
    """Encode the clips rendered into --out as CQT, EnCodec latents and EnCodec codes."""
    from .pipeline import build_config, run_encode

    overrides = _encode_overrides(random_weights, encodec_checkpoint, device, batch_size)
    if formats is not None:
        overrides["encode.formats"] = _csv(formats)
    cfg = build_config(out, pipeline, seed=seed, **overrides, **{"exec.jobs": jobs, "exec.scheduler": scheduler})
    summaries = run_encode(cfg, out)
    _report(summaries, "encoded")


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--midi", "midi", default=None, type=click.Path(path_type=Path),
              help="A folder of MIDI files or a selection manifest. Default: the pipeline's `midi`.")
@click.option("--limit", type=int, default=None, help="At most N MIDI files.")
@click.option("--soundfont", default=None, help="A .sf2/.sf3 path or registry name.")
@_encode_options
@_common
def run(pipeline: str, midi: Path | None, limit: int | None, soundfont: str | None, random_weights: bool | None,
        encodec_checkpoint: Path | None, device: str | None, batch_size: int | None,
        out: Path, seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Run every stage of PIPELINE into --out (finished work is kept)."""
    from .pipeline import run_all

    cfg = _load(pipeline, seed=seed, limit=limit, **{"render.soundfont": soundfont, "exec.jobs": jobs,
                                                     "exec.scheduler": scheduler, "midi": _str(midi)},
                **_encode_overrides(random_weights, encodec_checkpoint, device, batch_size))
    summaries = run_all(cfg, out)
    _report(summaries)
    if cfg.qa.enabled:
        from .qa import read_summary, summary_lines

        _echo_summary(summary_lines(read_summary(out) or {}))


@cli.command()
@click.option("--pipeline", default=None, help="Pipeline YAML (default: the config the build directory recorded).")
@click.option("--formats", default=None, help="Comma-separated subset of audio,cqt,encodec,disc (pipeline: shard.formats).")
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=None, callback=_writable,
              help="Where the dataset goes (default: OUT/dataset).")
@click.option("--drop-failing/--keep-failing", default=None,
              help="Leave clips that failed qa out of the dataset (pipeline: qa.drop_failing).")
@_common
def shard(pipeline: str | None, formats: str | None, dataset: Path | None, drop_failing: bool | None, out: Path,
          seed: int | None, jobs: int | None, scheduler: str | None) -> None:
    """Write the clips rendered (and encoded) in --out as TFRecord shards with shapes.txt and dataset.json."""
    from .pipeline import build_config, run_shard

    cfg = build_config(out, pipeline, seed=seed, **{"exec.jobs": jobs, "exec.scheduler": scheduler,
                                                    "qa.drop_failing": drop_failing})
    summaries = run_shard(cfg, out, dataset, _csv(formats))
    _report(summaries)
    if summaries[-1].failed_shards:
        raise PvtbuildError("some shards failed (listed above), so no dataset.json was written; rerun to finish them")


@cli.command("qa")
@click.option("--pipeline", default=None, help="Pipeline YAML (default: the config the build directory recorded).")
@click.option("--plot-failing", type=int, default=0, help="Plot controls against the audio's estimates for N failing clips.")
@click.option("--plot-dir", type=click.Path(file_okay=False, path_type=Path), default=None, callback=_writable,
              help="Where --plot-failing writes (default: OUT/qa/plots).")
@_common
def qa_cmd(pipeline: str | None, plot_failing: int, plot_dir: Path | None, out: Path, seed: int | None,
           jobs: int | None, scheduler: str | None) -> None:
    """Check every rendered clip in --out against its controls, from the audio alone (results: OUT/qa)."""
    from .pipeline import build_config, run_qa
    from .qa import plot_failing as plot, read_summary, summary_lines

    cfg = build_config(out, pipeline, seed=seed, **{"exec.jobs": jobs, "exec.scheduler": scheduler})
    _report(run_qa(cfg, out))
    _echo_summary(summary_lines(read_summary(out) or {}))
    for path in plot(out, cfg, plot_failing, plot_dir or out / "qa" / "plots") if plot_failing else []:
        click.echo(f"plot: {path}")


@cli.command("soundfont-audit")
@click.argument("soundfont")
@click.option("--programs", default="0,40,56", show_default=True, help="GM programs (bank 0) to audit, comma-separated.")
@click.option("--pitch-min", type=int, default=48, show_default=True, help="Lowest MIDI pitch played.")
@click.option("--pitch-max", type=int, default=72, show_default=True, help="Highest MIDI pitch played.")
@click.option("--velocities", default="40,80,120", show_default=True, help="Velocities each note is played at.")
def soundfont_audit(soundfont: str, programs: str, pitch_min: int, pitch_max: int, velocities: str) -> None:
    """Play every note of SOUNDFONT (a .sf2/.sf3 path or registry name) through FluidSynth and check it.

    Pitch within 30 cents, onset latency, loudness rising with velocity, no silence, no clipping,
    release length; prints a table and exits non-zero when a note fails (see audit.py).
    """
    from .audit import audit_soundfont, parse_programs

    report = audit_soundfont(soundfont, parse_programs(programs, "--programs"), pitch_min, pitch_max,
                             parse_programs(velocities, "--velocities"))
    click.echo("\n".join(report.lines()))
    if not report.ok:
        raise PvtbuildError(f"{report.soundfont}: {len(report.failures)} of {len(report.notes)} notes fail the audit "
                            "(rows marked FAIL above)")


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--verify", is_flag=True, help="Re-hash every shard, decode every record; exit non-zero on any mismatch.")
@click.option("--plot", "plot_ids", multiple=True, help="Write ID.png (controls over time, CQT or mel above). Repeatable.")
@click.option("--plot-random", type=int, default=0, help="Plot N clips drawn with --seed.")
@click.option("--wav", "wav_ids", multiple=True, help="Write ID.wav, decoded from whichever format is stored. Repeatable.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Where plots and WAVs go.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --plot-random.")
def inspect(dataset: Path, verify: bool, plot_ids: tuple[str, ...], plot_random: int, wav_ids: tuple[str, ...],
            out_dir: Path, seed: int) -> None:
    """Summarise DATASET; optionally verify it, plot clips, export WAVs."""
    from . import inspect as insp
    from .dataset import verify_dataset

    click.echo("\n".join(insp.summary_lines(dataset)))
    if plot_random or plot_ids or wav_ids:
        check_writable(out_dir, "--out-dir")
    if plot_random:
        plot_ids += tuple(insp.random_clip_ids(dataset, plot_random, seed))
    for clip_id in plot_ids:
        click.echo(f"plot: {insp.plot_clip(dataset, clip_id, clip_path(out_dir, clip_id, '.png'))}")
    for clip_id in wav_ids:
        path, fmt = insp.export_wav(dataset, clip_id, clip_path(out_dir, clip_id, ".wav"))
        click.echo(f"wav: {path} (decoded from {fmt})")
    if verify:
        report = verify_dataset(dataset)
        click.echo(f"verify: {report.summary()}")
        if not report.ok:
            raise PvtbuildError(f"{dataset}: verify found {len(report.problems)} problem(s), listed above")


@cli.command("train")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="Training YAML (pipelines/train/NAME.yaml).")
@click.option("--data", "data", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset directory (shapes.txt, train/); toy configs need none.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), callback=_writable,
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
              help="Fine-tune: start from the weights and EMA of this checkpoint, run or export; fresh optimizer, step 0.")
def train_cmd(config: str, data: Path | None, out: Path, steps: int | None, resume: bool, auto_resume: bool,
              allow_inexact_resume: bool, device: str, dry_run: bool, init_from: Path | None) -> None:
    """Train a diffusion model on a dataset (or a toy) into --out; torchrun runs it on several GPUs."""
    from .train.config import load_train_config
    from .train.loop import train

    if steps is not None and steps < 1:
        raise PvtbuildError(f"--steps must be >= 1, got {steps}")
    if resume and auto_resume:
        raise PvtbuildError("--resume and --auto-resume exclude each other; pass one")
    if resume and init_from is not None:
        raise PvtbuildError("--resume continues a run, --init-from starts one; pass one "
                            "(--auto-resume --init-from suits a requeued fine-tuning job)")
    cfg = load_train_config(config)
    result = train(cfg, out, data, steps, "auto" if auto_resume else resume, device, dry_run,
                   echo=lambda line: click.echo(line, err=True), init_from=init_from,
                   allow_inexact_resume=allow_inexact_resume)
    code = 143 if result.stopped_by_signal else 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalizing(code)
    sys.exit(code)


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
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), callback=_writable,
              help="The export folder to create: model.safetensors (EMA), config.yaml, export.json, dataset.json.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The training dataset (default: the one run.json records), whose dataset.json is copied.")
def export_cmd(checkpoint: Path, out: Path, data: Path | None) -> None:
    """Export a run's EMA weights as safetensors with its config, data facts and dataset summary."""
    from .train.export import export_run

    click.echo(f"export: {export_run(checkpoint, out, data)}", err=True)


@cli.command("sample")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A checkpoint file, a run directory (its latest), or a `pvtbuild export` folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), callback=_writable,
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
@click.option("--cfg-scale", type=float, default=None, help="Classifier-free guidance scale (config: guidance.cfg_scale).")
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
    from .train.conditioning import ControlRequest
    from .train.loop import pick_device
    from .train.sample import load_for_sampling, sample_to_wav, sample_toy

    _check_finite("--cfg-scale", cfg_scale)
    request = ControlRequest(midi, track, start, like, controls_file, instrument, bpm)
    dev = pick_device(device)
    sampler = load_for_sampling(checkpoint, dev)
    if sampler.cfg.is_toy:
        if request != ControlRequest() or cfg_scale is not None or data is not None:
            raise PvtbuildError(f"{checkpoint}: a toy model takes no controls, --cfg-scale or --data")
        count = _sample_count(n, 1000, 1_000_000)
        path = sample_toy(sampler, out, count, steps, seed)
        click.echo(f"sample: {count} samples in {path}", err=True)
        return
    report = sample_to_wav(sampler, out, _sample_count(n, 4, 10_000), request, data, steps, cfg_scale, seed,
                           batch_size, dev, plots=not no_plot)
    _echo_summary(report.lines)


@cli.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A checkpoint file, a run directory (its latest), or a `pvtbuild export` folder.")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The dataset the model was trained on; its valid split gives the controls and the real audio.")
@click.option("--n", "n", type=int, default=16, show_default=True, help="Valid clips to sample and score.")
@click.option("--cfg-scale", "cfg_scale", default="1", show_default=True,
              help="Comma-separated guidance scales, one row each (e.g. 1,2,4).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None, callback=_writable,
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
    from .train.evaluate import evaluate
    from .train.loop import pick_device

    try:
        scales = tuple(float(x) for x in _csv(cfg_scale) or ())
    except ValueError:
        raise PvtbuildError(f"--cfg-scale {cfg_scale!r}: expected comma-separated numbers, e.g. 1,2,4") from None
    for scale in scales:
        _check_finite("--cfg-scale", scale)
    report = evaluate(checkpoint, data, n, scales, out, steps, seed, batch_size, pick_device(device), plot, vggish, split,
                      judge_model=judge_model)
    click.echo("\n".join(report.lines))


def _check_finite(option: str, value: float | None) -> None:
    """A float option (`--cfg-scale`) must be a number: nan or inf would sample NaN audio without a word."""
    if value is not None and not math.isfinite(value):
        raise PvtbuildError(f"{option} must be a finite number, got {value}")


def _sample_count(n: int | None, default: int, most: int) -> int:
    """`--n`, or `default` when not given; 0 once silently meant the default, and a huge count failed late
    in an allocator: both are refused."""
    if n is None:
        return default
    if not 1 <= n <= most:
        raise PvtbuildError(f"--n must be within 1..{most}, got {n}")
    return n


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def main() -> None:
    cli(prog_name="pvtbuild")


if __name__ == "__main__":
    sys.exit(main())
