"""Validation while training (`train.eval_every`): how the model does on clips it does not train on.

Every `train.eval_every` steps rank 0 validates (under torchrun the other ranks wait at a barrier):

- `valid_loss`: the formalism's loss under the weights being trained (in eval mode: no network
  dropout) on the first `train.eval_batches` batches of the valid split, read in file order
  (toys: fixed draws), with noise, control dropout and crops drawn from generators seeded by
  (seed, "valid", k). Every validation sees the same examples under the same draws, so its
  points compare across steps, and across runs of one seed; it is log.csv's `loss` measured on
  held-out clips.
- with `train.eval_clips` K > 0: the first K valid clips (file order, fewer if the split is
  smaller) sampled from the EMA weights (what `pvtbuild sample` uses) under their own controls,
  with `guidance.cfg_scale` and `train.sample_steps`, from noise seeded by the run's seed (the
  same at every validation); decoded as `evaluate` decodes (`decode.py`: the CQT's inverse,
  EnCodec's decoder) and scored by the CREPE judge (`train/judge.py`), which is never told the
  requested pitch. Each judge key is averaged over the clips that have a value.

Rows go to `RUN_DIR/eval.csv` (`step,valid_loss[,crepe_...]`, floats as Python writes them back
exactly) and, with `tensorboard` installed, to TensorBoard (the scalars, the first clip's audio
and a PNG of it). Exact resume: validation draws only from its own generators, reads the valid
split through its own reader and runs under `torch.random.fork_rng`, so it takes nothing from the
training's data or random streams; a run resumed across a validation matches the uninterrupted
run bit for bit, eval.csv included (a resume drops rows past its checkpoint, as log.csv's).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from pvtbuild.dataset.layout import SHAPES_FILE
from pvtbuild.dataset.shapes import read_shapes
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import InputError
from pvtbuild.music.controls import CONTROL_NAMES
from pvtbuild.tools.decode import AudioDecoder
from pvtbuild.tools.inspection import draw_clip
from pvtbuild.train.checkpoint import checkpoint_path
from pvtbuild.train.conditioning import ControlSpace, RequestedControls, model_controls, null_controls
from pvtbuild.train.config import TrainConfig
from pvtbuild.train.data import BatchSource, DatasetSource, DataStats, mix_seed, seeded_crop
from pvtbuild.train.guidance import drop_controls
from pvtbuild.train.judge import JUDGE_KEYS, CrepeJudge
from pvtbuild.train.sample import Sampler, dataset_control_space, decode_batches, generate

EVAL_CSV = "eval.csv"


@dataclass
class Validation:
    """One validation: the values of its eval.csv row, and the first judged clip for TensorBoard."""

    step: int
    values: dict[str, float]  # valid_loss, then JUDGE_KEYS when clips are judged (the row's order)
    audio: np.ndarray | None = None  # [S] float32: the first judged clip
    sample_rate: int = 0
    image: np.ndarray | None = None  # [H, W, 3] float: that clip's controls under its spectrogram


class JudgedClips:
    """K valid clips sampled from the EMA weights under their own controls, decoded and judged by CREPE."""

    def __init__(self, cfg: TrainConfig, source: DatasetSource, formalism: Any, stats: DataStats, dataset: Path,
                 run_dir: Path, device: torch.device) -> None:
        self.cfg, self.source, self.formalism, self.stats, self.run_dir = cfg, source, formalism, stats, run_dir
        self.space: ControlSpace = dataset_control_space(cfg, source.layout, dataset)
        self.requests = valid_controls(dataset, self.space, cfg.train.eval_clips)
        self.controls = model_controls(self.requests, self.space)
        self.decoder = AudioDecoder.for_dataset(dataset, str(device))
        self.judge = CrepeJudge("auto", device)

    def score(self, step: int, ema: nn.Module, image: bool) -> Validation:
        """The judge's keys averaged over the clips, and the first clip (drawn as a PNG when `image`)."""
        cfg = self.cfg
        sampler = Sampler(cfg, ema, self.formalism, self.source.spec, self.stats, step,
                          checkpoint_path(self.run_dir, step), self.space.layout)
        gen = generate(sampler, self.controls, len(self.requests), cfg.train.sample_steps, cfg.guidance.cfg_scale,
                       cfg.seed)
        audio = decode_batches(self.decoder, cfg.data.format, gen.arrays)
        sr = self.decoder.sample_rate
        per_clip = self.judge.score(audio, sr, [r.values for r in self.requests], self.space.grid)
        values = {k: _mean([c[k] for c in per_clip]) for k in JUDGE_KEYS}
        picture = self._image(audio[0], step) if image else None
        return Validation(step, values, audio[0], sr, picture)

    def _image(self, audio: np.ndarray, step: int) -> np.ndarray:
        """The first clip drawn as `pvtbuild sample` draws it, read back from its PNG as [H, W, 3]."""
        import matplotlib.image  # noqa: PLC0415  (matplotlib takes a second to import; only TensorBoard images need it)

        grid = self.space.grid
        with tempfile.TemporaryDirectory() as tmp:
            path = draw_clip(Path(tmp) / "clip.png", {"audio": audio, **self.requests[0].named(grid.name)},
                             self.decoder.doc, grid.name, float(grid.rate), float(grid.offset),
                             f"validation clip 0, step {step}, cfg {self.cfg.guidance.cfg_scale:g}")
            return np.asarray(matplotlib.image.imread(path))[..., :3]


class Validator:
    """What rank 0 runs every `train.eval_every` steps (module docstring); built once per run."""

    def __init__(self, cfg: TrainConfig, source: BatchSource, formalism: Any, device: torch.device, amp: bool,
                 clips: JudgedClips | None = None) -> None:
        self.cfg, self.source, self.formalism, self.device, self.amp, self.clips = \
            cfg, source, formalism, device, amp, clips
        self.columns = ("step", "valid_loss", *(JUDGE_KEYS if clips is not None else ()))

    def run(self, step: int, model: nn.Module, ema: nn.Module, image: bool = False) -> Validation:
        """Validate the weights of `step`: `model` for the loss, its EMA for the judged clips."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), _eval_mode(model, ema):
            values = {"valid_loss": self.valid_loss(model)}
            if self.clips is None:
                return Validation(step, values)
            judged = self.clips.score(step, ema, image)
        return Validation(step, {**values, **judged.values}, judged.audio, judged.sample_rate, judged.image)

    def valid_loss(self, model: nn.Module) -> float:
        """The mean loss per example over the valid batches, every draw from (seed, "valid", k)."""
        cfg, total, count = self.cfg, 0.0, 0
        for k, batch in enumerate(self.source.valid_batches(cfg.train.eval_batches)):
            batch = seeded_crop(batch, self.source.crop_frames, cfg.seed, "valid", k)
            gen = torch.Generator(device=self.device).manual_seed(mix_seed(cfg.seed, "valid", k))
            x0, controls = batch.x0.to(self.device), batch.controls.to(self.device)
            controls = drop_controls(controls, cfg.guidance.p_feature, cfg.guidance.p_all, gen)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.formalism.loss(model, x0, controls, gen)
            total, count = total + float(loss) * len(x0), count + len(x0)
        return total / count if count else float("nan")


def build_validator(cfg: TrainConfig, source: BatchSource, formalism: Any, stats: DataStats, dataset: Path | None,
                    run_dir: Path, device: torch.device, amp: bool) -> Validator:
    """A run's validator, checked before the first step: a missing valid split stops the run now, and so does
    a judge that cannot load (CREPE's weights are loaded here, not at the first validation)."""
    try:
        empty = next(iter(source.valid_batches(1)), None) is None
    except InputError as e:
        raise InputError(f"train.eval_every: validation reads the valid split, which failed: {e}") from None
    if empty:
        raise InputError(f"train.eval_every: {dataset}/valid holds no example to validate on; set it to 0")
    clips = None
    if cfg.train.eval_clips:
        assert isinstance(source, DatasetSource) and dataset is not None  # the config refuses eval_clips on toys
        clips = JudgedClips(cfg, source, formalism, stats, dataset, run_dir, device)
    return Validator(cfg, source, formalism, device, amp, clips)


def valid_controls(dataset: Path, space: ControlSpace, count: int) -> list[RequestedControls]:
    """Every control of the first `count` valid clips (file order) on the model's grid; -1 for any not stored."""
    grid = space.grid.name
    shapes = read_shapes(dataset / SHAPES_FILE)
    stored = [c for c in CONTROL_NAMES if f"{c}_{grid}" in shapes]
    reader = TFRecordIterableDataset(dataset, "valid", names=[f"{c}_{grid}" for c in stored])
    out = []
    for _, record in zip(range(count), reader):
        request = null_controls(space)
        request.values.update({c: np.asarray(record[f"{c}_{grid}"], dtype=np.float32) for c in stored})
        out.append(request)
    return out


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Modules in eval mode (no network dropout) for the block, then back in the mode each was in."""
    before = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, before):
            m.train(mode)


def _mean(values: list[float]) -> float:
    """The mean of the finite values (nan when none is): a clip without voiced frames has no chroma score."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


__all__ = ["EVAL_CSV", "JUDGE_KEYS", "JudgedClips", "Validation", "Validator", "build_validator", "valid_controls"]
