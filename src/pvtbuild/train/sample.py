"""Generation from a checkpoint: the EMA weights and the formalism's own sampler (`pvtbuild sample`).

Toy checkpoints sample points (`OUT/samples.npy`). Checkpoints of a dataset's formats
sample from controls a person writes (`conditioning.py`: a MIDI file, a dataset clip, a
file of arrays, an instrument, a BPM) and decode to WAV with the encoder the training
dataset records (`decode.py`). The output folder holds, per sample i:

- `{i:04d}.wav`: 16-bit mono at the dataset's rate (24 kHz), exactly one clip long (8 s);
- `{i:04d}.npy`: the generated array in the data's units (encodec [128, T] float32 latents,
  disc [16, T] int64 codes, cqt [2, F, T] float32), i.e. the model's output times `stats.scale`;
- `{i:04d}.controls.npz`: every control on the model's grid as a dataset stores them
  (`velocity_75hz`, ...; -1 where not given), and `{i:04d}.png`: those controls under the
  generated audio's mel spectrogram, in the style of `pvtbuild inspect --plot`;

and `sample.json`: checkpoint, step, formalism, steps, NFE per sample, guidance scale, seed,
the request, the decoder's weights, timing.

`--checkpoint` takes a checkpoint file, a run directory, or a `pvtbuild export` directory
(`export.py`: safetensors weights, loaded without unpickling anything). On CUDA with
`train.amp: bf16`, only the network's forward runs under bf16 autocast (`sampling_autocast`);
its output is cast back to float32, so preconditioning and the sampler's arithmetic stay float32.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pvtbuild.config import config_from_dict
from pvtbuild.dataset import read_dataset_json
from pvtbuild.dataset.layout import DATASET_JSON
from pvtbuild.engine.manifest import atomic_write
from pvtbuild.errors import ConfigError, InputError, PvtbuildError
from pvtbuild.tools.decode import AudioDecoder, write_wav
from pvtbuild.tools.inspection import draw_clip
from pvtbuild.train.build import build_backbone, build_formalism
from pvtbuild.train.checkpoint import RUN_JSON, ema_weights, load_checkpoint, resolve_checkpoint, restoring
from pvtbuild.train.conditioning import ControlRequest, ControlSpace, build_controls, model_controls
from pvtbuild.train.config import TrainConfig, train_config_from_dict
from pvtbuild.train.data import DatasetLayout, mix_seed
from pvtbuild.train.device import pick_device
from pvtbuild.train.export import is_export, read_export
from pvtbuild.train.guidance import Controls
from pvtbuild.train.spec import DataSpec, DataStats


@dataclass
class Sampler:
    """A trained model ready to sample: EMA weights in eval mode, its formalism, config and data facts."""

    cfg: TrainConfig
    net: nn.Module
    formalism: Any
    spec: DataSpec
    stats: DataStats
    step: int
    checkpoint: Path
    layout: DatasetLayout | None = None  # which dataset arrays it reads (None for toys)
    exported: bool = False  # `checkpoint` is a `pvtbuild export` directory

    @property
    def run_dir(self) -> Path:
        """The run directory the checkpoint belongs to (RUN/checkpoints/ckpt-N.pt), or the export directory."""
        return self.checkpoint if self.exported else self.checkpoint.parent.parent


def load_for_sampling(checkpoint: str | Path, device: torch.device) -> Sampler:
    """Rebuild a run's network from its checkpoint (file or run directory) and load the EMA weights; or
    the same from a `pvtbuild export` directory (JSON, YAML and safetensors only, checked for fit)."""
    if is_export(Path(checkpoint)):
        record, config, weights = read_export(Path(checkpoint))
        return build_sampler(Path(checkpoint), config, record["spec"], record["stats"], weights, int(record["step"]),
                             device, exported=True)
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    return build_sampler(path, state["config"], state["spec"], state["stats"], ema_weights(state["ema"]),
                         int(state["step"]), device)


def build_sampler(source: Path, config: dict[str, Any], s: dict[str, Any], stats: dict[str, Any],
                  weights: dict[str, torch.Tensor], step: int, device: torch.device, exported: bool = False) -> Sampler:
    """A `Sampler` from what a checkpoint or an export stores: its config, data spec and statistics (plain
    dicts) and the EMA weights (the backbone's `state_dict`); a fault in them is one line naming `source`."""
    with restoring(source, "sample"):
        cfg = train_config_from_dict(config)
        spec = DataSpec(tuple(s["shape"]), s["num_classes"], s["local_channels"], s["global_channels"])
        data_stats = DataStats(**stats)
        net = build_backbone(cfg, spec)
        net.load_state_dict(weights)
        layout = None  # toys, and checkpoints from before layouts were recorded
        if "local_names" in s:
            layout = DatasetLayout(cfg.data.format, tuple(s["local_names"]), tuple(s["global_names"]), spec,
                                   tuple(s["local_groups"]), tuple(s["global_groups"]), dict(cfg.data.encodings))
    net.to(device).eval()
    return Sampler(cfg, net, build_formalism(cfg, spec, data_stats), spec, data_stats, step, source, layout, exported)


def sampling_autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the network's forward runs in while sampling: bf16 autocast on CUDA when the run trained
    with `train.amp: bf16` (as training did), a null context otherwise (CPU always samples in float32)."""
    if device.type == "cuda" and cfg.train.amp == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_toy(checkpoint: str | Path | Sampler, out_dir: Path, n: int, steps: int | None = None, seed: int = 0,
               device: torch.device | str = "cpu") -> Path:
    """`n` samples of a toy checkpoint as `out_dir/samples.npy`: [n, 2] float32 points or int64 classes."""
    sampler = _sampler(checkpoint, device)
    if not sampler.cfg.is_toy:
        raise PvtbuildError(f"{sampler.checkpoint}: trained on {sampler.cfg.data.format!r}, not a toy; "
                            f"use sample_to_wav")
    if n < 1:
        raise PvtbuildError(f"--n must be >= 1, got {n}")
    steps = steps or sampler.cfg.train.sample_steps
    device = next(sampler.net.parameters()).device
    gen = torch.Generator(device=device).manual_seed(mix_seed(seed, "sample"))
    with torch.no_grad():
        x = sampler.formalism.sample(_CountingNet(sampler.net, sampler.cfg), (n, *sampler.spec.shape), Controls(),
                                     steps, sampler.cfg.guidance.cfg_scale, gen)
    arr = x.cpu().numpy()
    arr = arr.astype(np.int64) if sampler.spec.discrete else arr.astype(np.float32)
    path = out_dir / "samples.npy"
    with atomic_write(path, "wb") as fh:
        np.save(fh, arr)
    return path


# --- real formats: controls in, WAVs out ------------------------------------------------------


@dataclass
class Generated:
    """Arrays a sampler made, in the data's units, and what it cost."""

    arrays: np.ndarray  # [n, *spec.shape]: float32 (times stats.scale) or int64 codes
    seconds: float  # wall time of the sampler alone (no decoding)
    nfe: float  # network function evaluations per sample (sequential net calls per batch)
    net_rows_per_sample: float  # rows through the net per sample: 2 x nfe when guidance doubles the batch

    @property
    def samples_per_s(self) -> float:
        return len(self.arrays) / self.seconds if self.seconds > 0 else float("inf")


class _CountingNet:
    """The backbone, counting its calls and the rows they carried (NFE); its forward alone runs under
    `sampling_autocast`, its output back in float32."""

    def __init__(self, net: nn.Module, cfg: TrainConfig) -> None:
        self.net, self.calls, self.rows = net, 0, 0
        self.device = next(net.parameters()).device
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, noise_level: torch.Tensor, controls: Controls) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        with sampling_autocast(self.cfg, self.device):
            out = self.net(x, noise_level, controls)
        return out.float()


def generate(sampler: Sampler, controls: Controls, n: int, steps: int | None = None, cfg_scale: float | None = None,
             seed: int = 0, batch_size: int = 8) -> Generated:
    """`n` samples in batches of `batch_size`, sample i under row i of `controls` (or its only row).

    Batch b draws its noise from (seed, b), so the same arguments give the same samples. Continuous
    outputs are multiplied back by `stats.scale` (the model works on data / scale).
    """
    if n < 1:
        raise PvtbuildError(f"--n must be >= 1, got {n}")
    if batch_size < 1:
        raise PvtbuildError(f"--batch-size must be >= 1, got {batch_size}")
    rows = _rows(controls)
    if rows not in (0, 1, n):
        raise ValueError(f"controls have {rows} rows for {n} samples")
    device = next(sampler.net.parameters()).device
    steps = steps or sampler.cfg.train.sample_steps
    scale = sampler.cfg.guidance.cfg_scale if cfg_scale is None else float(cfg_scale)
    counting = _CountingNet(sampler.net, sampler.cfg)
    out, batches = [], 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            index = torch.arange(lo, hi) if rows == n else torch.zeros(hi - lo, dtype=torch.long)
            c = controls if controls.empty else controls.select(index).to(device)
            gen = torch.Generator(device=device).manual_seed(mix_seed(seed, "sample", lo // batch_size))
            x = sampler.formalism.sample(counting, (hi - lo, *sampler.spec.shape), c, steps, scale, gen)
            out.append(x.cpu())
            batches += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    x = torch.cat(out).numpy()
    arrays = x.astype(np.int64) if sampler.spec.discrete else (x * sampler.stats.scale).astype(np.float32)
    return Generated(arrays, seconds, counting.calls / batches, counting.rows / n)


def training_dataset(sampler: Sampler, data: Path | None = None) -> Path:
    """The dataset a checkpoint was trained on: `data` when given, else the one its run.json records; for an
    export, the export itself (its copy of dataset.json is all that decoding and controls read)."""
    if data is None and sampler.exported:
        data = sampler.run_dir
    if data is None:
        run_json = sampler.run_dir / RUN_JSON
        if not run_json.is_file():
            raise InputError(f"{run_json}: not found, so the training dataset is unknown; pass --data DATASET")
        recorded = json.loads(run_json.read_text()).get("dataset")
        if not recorded or not Path(recorded).is_dir():
            raise InputError(f"{run_json}: records the dataset {recorded}, which is not on this machine; "
                             f"pass --data DATASET (the same dataset, moved)")
        data = Path(recorded)
    data = Path(data)
    if not (data / DATASET_JSON).is_file():
        raise InputError(f"{data}: no {DATASET_JSON} (not a pvtbuild dataset folder)")
    return data


def control_space(sampler: Sampler, dataset: Path) -> Any:
    """The controls the model reads (`conditioning.ControlSpace`), defined by the dataset's pipeline config."""
    if sampler.layout is None:
        raise PvtbuildError(f"{sampler.checkpoint}: holds no dataset layout (a toy, or a checkpoint from before "
                            f"sampling to WAV); retrain to sample it")
    return dataset_control_space(sampler.cfg, sampler.layout, dataset)


def dataset_control_space(cfg: TrainConfig, layout: DatasetLayout, dataset: Path) -> Any:
    """`control_space` of a model that has no checkpoint yet (the loop's judged validation clips)."""
    doc = read_dataset_json(dataset)
    try:
        pipeline = config_from_dict(doc["config"])
    except ConfigError as e:
        raise InputError(f"{dataset}/dataset.json: its pipeline config does not load ({e})") from None
    grid_name = cfg.data.control_grid or doc.get("control_grids", {}).get(cfg.data.format)
    grids = {g.name: g for g in pipeline.controls.grids}
    if grid_name not in grids:
        raise InputError(f"{dataset}/dataset.json: no control grid {grid_name!r} for {cfg.data.format!r}")
    return ControlSpace(pipeline, grids[grid_name], layout)


@dataclass
class SampleReport:
    out: Path
    n: int
    generated: Generated | None = None
    decode_seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SampleOptions:
    """What one `pvtbuild sample` call asks for, parsed: the model, where the samples go, under which controls."""

    checkpoint: Path  # a checkpoint file, a run directory (its latest) or a `pvtbuild export` folder
    out: Path
    n: int | None = None  # samples (None: 1000 of a toy, 4 of a real format)
    request: ControlRequest = field(default_factory=ControlRequest)  # the controls (real formats only)
    cfg_scale: float | None = None  # guidance scale (None: the config's guidance.cfg_scale)
    steps: int | None = None  # sampler steps (None: the config's / formalism's)
    batch_size: int | None = None  # samples per sampler call (None: min(n, 8))
    data: Path | None = None  # the training dataset (None: the one run.json records)
    plots: bool = True  # a PNG per sample
    seed: int = 0  # of the initial noise
    device: str = "auto"  # auto, cpu, cuda or cuda:N (`device.pick_device`)


def sample(options: SampleOptions) -> SampleReport:
    """Sample a trained model as `options` say: a toy into OUT/samples.npy, a real format to WAVs from the
    requested controls (`sample_to_wav`); the report's lines say what was written."""
    check_finite("--cfg-scale", options.cfg_scale)
    device = pick_device(options.device)
    sampler = load_for_sampling(options.checkpoint, device)
    if sampler.cfg.is_toy:
        if options.request != ControlRequest() or options.cfg_scale is not None or options.data is not None:
            raise PvtbuildError(f"{options.checkpoint}: a toy model takes no controls, --cfg-scale or --data")
        count = sample_count(options.n, 1000, 1_000_000)
        path = sample_toy(sampler, options.out, count, options.steps, options.seed)
        return SampleReport(options.out, count, lines=[f"sample: {count} samples in {path}"])
    return sample_to_wav(sampler, options.out, sample_count(options.n, 4, 10_000), options.request, options.data,
                         options.steps, options.cfg_scale, options.seed, options.batch_size, device,
                         plots=options.plots)


def check_finite(option: str, value: float | None) -> None:
    """A float option (`--cfg-scale`) must be a number: nan or inf would sample NaN audio without a word."""
    if value is not None and not math.isfinite(value):
        raise PvtbuildError(f"{option} must be a finite number, got {value}")


def sample_count(n: int | None, default: int, most: int) -> int:
    """`--n`, or `default` when not given; 0 once silently meant the default, and a huge count failed late
    in an allocator: both are refused."""
    if n is None:
        return default
    if not 1 <= n <= most:
        raise PvtbuildError(f"--n must be within 1..{most}, got {n}")
    return n


def sample_to_wav(checkpoint: str | Path | Sampler, out: Path, n: int, request: ControlRequest,
                  data: Path | None = None, steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
                  batch_size: int | None = None, device: torch.device | str = "cpu",
                  plots: bool = True) -> SampleReport:
    """`n` samples of a real-format checkpoint under the controls of `request` (`conditioning.ControlRequest`),
    written to `out` as the module docstring says."""
    sampler = _sampler(checkpoint, device)
    if sampler.cfg.is_toy:
        raise PvtbuildError(f"{sampler.checkpoint}: a toy model; sample it without controls (samples.npy)")
    dataset = training_dataset(sampler, data)
    space = control_space(sampler, dataset)
    requested = build_controls(request, space)
    decoder = AudioDecoder.for_dataset(dataset, str(device))
    scale = sampler.cfg.guidance.cfg_scale if cfg_scale is None else float(cfg_scale)
    gen = generate(sampler, model_controls([requested], space), n, steps, scale, seed, batch_size or min(n, 8))
    t0 = time.perf_counter()
    audio = decode_batches(decoder, sampler.cfg.data.format, gen.arrays)
    decode_seconds = time.perf_counter() - t0
    report = SampleReport(out, n, gen, decode_seconds)
    title = f"{request.describe()}; {sampler.cfg.formalism_name} step {sampler.step}, cfg {scale:g}"
    write_samples(out, audio, gen.arrays, [requested] * n, space, decoder, title, plots)
    unused = [name for name in requested.given if name not in space.features]
    record = {
        "checkpoint": str(sampler.checkpoint), "step": sampler.step, "config": sampler.cfg.name,
        "formalism": sampler.cfg.formalism_name, "format": sampler.cfg.data.format, "dataset": str(dataset),
        "n": n, "steps": steps, "nfe_per_sample": gen.nfe, "net_rows_per_sample": gen.net_rows_per_sample,
        "cfg_scale": scale, "seed": seed, "request": request.describe(), "controls_given": requested.given,
        "controls_the_model_reads": list(space.features), "controls_info": requested.info,
        "decoder": decoder.label(sampler.cfg.data.format), "sample_rate": decoder.sample_rate,
        "clip_samples": decoder.clip_samples,
        "sampling_seconds": gen.seconds, "samples_per_s": gen.samples_per_s, "decode_seconds": decode_seconds,
    }
    with atomic_write(out / "sample.json", "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True, default=str)
    report.lines = [
        f"sample: {sampler.checkpoint} ({sampler.cfg.formalism_name} on {sampler.cfg.data.format}, "
        f"step {sampler.step}), "
        f"controls: {request.describe()}",
        f"sample: {n} samples in {gen.seconds:.2f} s: {gen.samples_per_s:.3g} samples/s, "
        f"NFE {gen.nfe:g} per sample"
        + (" (each a doubled batch for guidance)" if gen.net_rows_per_sample > gen.nfe + 1e-9 else "")
        + f", guidance scale {scale:g}; decoding {decode_seconds:.2f} s",
        f"sample: decoder: {decoder.label(sampler.cfg.data.format)}",
        f"sample: {n} WAVs ({decoder.clip_samples / decoder.sample_rate:g} s at {decoder.sample_rate} Hz)"
        + (", PNGs" if plots else "") + f", arrays and controls in {out}",
    ]
    if unused:
        report.lines.append(f"sample: note: the model reads only {', '.join(space.features) or 'no controls'}; "
                            f"{', '.join(unused)} given but not used")
    if requested.info.get("source") == "midi":
        clip = requested.info["clip"]
        report.lines.append(f"sample: melody from track {clip['track']} at {clip['start']:.2f} s "
                            f"({clip['n_notes']} notes, transposed {clip['transpose']:+d}); "
                            f"windows of that track start at "
                            f"{', '.join(f'{s:g}' for s in requested.info['windows'][:12])} s")
    return report


def decode_batches(decoder: Any, fmt: str, arrays: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[n, N] float32 audio of a format's arrays, decoded a few at a time."""
    return np.concatenate([decoder.decode(fmt, arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)])


def write_samples(out: Path, audio: np.ndarray, arrays: np.ndarray, requested: list[Any], space: Any, decoder: Any,
                  title: str, plots: bool = True, first: int = 0) -> None:
    """Per sample i: `{i:04d}.wav`, `.npy`, `.controls.npz` and (with `plots`) `.png` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    grid = space.grid
    for k, (wav, arr, req) in enumerate(zip(audio, arrays, requested)):
        stem = f"{first + k:04d}"
        write_wav(out / f"{stem}.wav", wav, decoder.sample_rate)
        with atomic_write(out / f"{stem}.npy", "wb") as fh:
            np.save(fh, arr)
        named = req.named(grid.name)
        with atomic_write(out / f"{stem}.controls.npz", "wb") as fh:
            np.savez(fh, **named)
        if plots:
            draw_clip(out / f"{stem}.png", {"audio": wav, **named}, decoder.doc, grid.name, float(grid.rate),
                      float(grid.offset), f"sample {stem}: {title}")


def _sampler(checkpoint: str | Path | Sampler, device: torch.device | str) -> Sampler:
    return checkpoint if isinstance(checkpoint, Sampler) else load_for_sampling(checkpoint, torch.device(device))


def _rows(controls: Controls) -> int:
    first = controls.local if controls.local is not None else controls.glob
    return 0 if first is None else int(first.shape[0])
