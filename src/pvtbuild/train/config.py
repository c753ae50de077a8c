"""Training configs: YAML files in `pipelines/train/` turned into typed, validated objects.

Checked once at load like the pipeline configs (`pvtbuild.config`): an unknown
key, a wrong type or an out-of-range value stops with one line naming the key
(`optim.lr: must be > 0, got -1`). The `model` and `formalism` sections are
checked against the dataclass of the backbone / formalism they name, so each
of those modules owns its own knobs and defaults.

    name: edm-encodec-tiny
    seed: 0
    data: {format: encodec, controls: [velocity, chroma, instrument], batch_size: 4}
    model: {channels: 32, channel_mults: [1, 2, 2], control_channels: 16}
    formalism: {name: edm, sigma_data: auto}
    guidance: {p_feature: 0.3, p_all: 0.1, cfg_scale: 1.0}
    optim: {lr: 1.0e-4, warmup_steps: 100, grad_clip: 1.0, ema_decay: 0.999, ema_rampup_ratio: 0.05}
    train: {steps: 500000, checkpoint_every: 10000, eval_every: 0, eval_batches: 4, eval_clips: 0, accumulate: 1}

`data.crop_seconds` (None or 0: whole clips) trains on random crops of that length, cut on the
format's frames (`train/data.py`); `train.eval_every`, `eval_batches` and `eval_clips` validate
while training (`LoopConfig`, `train/validate.py`). `train.accumulate` N sums the gradients of N
micro-batches of `data.batch_size` (per process) before each optimizer step. The EMA warm-up is EDM's
`ema_rampup_ratio` (not EDM2's power EMA): the EMA of step k averages with at most `ema_decay`, and less
while the half-life `ema_rampup_ratio` x (examples seen) is shorter than `ema_decay`'s. A cosine schedule
decays to `optim.min_lr_ratio` x lr; with no floor, training past its end (lr 0) is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pvtbuild.config import FORMATS, build_section, naming_file, read_config_file, require, to_plain
from pvtbuild.errors import ConfigError, brief
from pvtbuild.music.controls import CONTROL_NAMES
from pvtbuild.train.backbone import UNetConfig
from pvtbuild.train.formalisms import FORMALISMS
from pvtbuild.train.toy_data import TOYS
from pvtbuild.train.toy_model import ToyMLPConfig

# control -> encoding -> channels it gives the network (`data.encodings`; data.encode_control computes them)
CONTROL_ENCODINGS: dict[str, dict[str, int]] = {"chroma": {"onehot": 12}}
TRAINABLE_FORMATS = tuple(f for f in FORMATS if f != "audio")


@dataclass(frozen=True)
class TrainDataConfig:
    """What the model learns from: a toy distribution, or one format of a dataset with some of its controls."""

    toy: str | None = None  # swissroll | swissroll-disc: no --data needed
    toy_size: int = 10000  # points drawn once (from `seed`) for a toy dataset
    format: str = "encodec"  # cqt | encodec | disc
    controls: tuple[str, ...] = ("velocity", "chroma", "instrument")  # local controls, in this channel order
    global_controls: tuple[str, ...] = ()  # averaged over time and fed to the global FiLM branch
    control_grid: str | None = None  # grid the controls are read from (default: the dataset's for this format)
    # How the trainer presents a local control to the network (the stored control never changes):
    # `chroma: onehot` gives 12 channels, 1 on the sounding pitch class, 0 when unvoiced (data.encode_control).
    encodings: dict[str, str] = field(default_factory=dict)
    normalize: bool = True  # continuous data divided by its std, measured on the train split and stored
    stats_examples: int = 64  # examples read to measure the data's std
    batch_size: int = 16  # per process (per GPU)
    num_workers: int = 0  # DataLoader worker processes reading shards
    shuffle_buffer: int = 256  # unused: the trainer draws each epoch whole (DatasetSource); kept so configs load
    # train on random crops this long, on the format's frames (None or 0: whole clips)
    crop_seconds: float | None = None

    def check(self, key: str) -> None:
        require(self.toy is None or self.toy in TOYS, f"{key}.toy",
                f"must be one of {', '.join(TOYS)}, got {self.toy!r}")
        require(self.toy_size >= 16, f"{key}.toy_size", f"must be >= 16, got {self.toy_size}")
        require(self.format in TRAINABLE_FORMATS, f"{key}.format",
                 f"must be one of {', '.join(TRAINABLE_FORMATS)}, got {self.format!r}")
        for k, names in (("controls", self.controls), ("global_controls", self.global_controls)):
            for n in names:
                require(n in CONTROL_NAMES, f"{key}.{k}", f"unknown control {n!r} (known: {', '.join(CONTROL_NAMES)})")
            require(len(set(names)) == len(names), f"{key}.{k}", f"lists a control twice: {list(names)}")
        for name, enc in self.encodings.items():
            require(name in self.controls, f"{key}.encodings.{name}",
                     f"encodes a control that is not in {key}.controls ({', '.join(self.controls)})")
            known = CONTROL_ENCODINGS.get(name, {})
            require(enc in known, f"{key}.encodings.{name}",
                     f"must be one of {', '.join(known) or '(none: this control has no other encoding)'}, got {enc!r}")
        require(self.stats_examples >= 1, f"{key}.stats_examples", f"must be >= 1, got {self.stats_examples}")
        # bounded: a typo (batch_size: 160000) is one line here, not an allocator traceback at the first batch
        require(1 <= self.batch_size <= 65536, f"{key}.batch_size", f"must be within 1..65536, got {self.batch_size}")
        require(self.num_workers >= 0, f"{key}.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.shuffle_buffer >= 1, f"{key}.shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")
        require(self.crop_seconds is None or self.crop_seconds >= 0, f"{key}.crop_seconds",
                 f"must be >= 0 (0: whole clips), got {self.crop_seconds}")


@dataclass(frozen=True)
class GuidanceConfig:
    """Control dropout while training (30 % per feature, as Manté 2024 §4.1 trains) and the default guidance scale."""

    p_feature: float = 0.3  # each feature of each example nulled (-1) independently
    p_all: float = 0.0  # every feature of an example nulled at once
    cfg_scale: float = 1.0  # w in D_u + w (D_c - D_u) when sampling; 1 = plain conditional

    def check(self, key: str) -> None:
        require(0 <= self.p_feature <= 1, f"{key}.p_feature", f"must be within [0, 1], got {self.p_feature}")
        require(0 <= self.p_all <= 1, f"{key}.p_all", f"must be within [0, 1], got {self.p_all}")
        require(self.cfg_scale >= 0, f"{key}.cfg_scale", f"must be >= 0, got {self.cfg_scale}")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with a warm-up then a decay that does not depend on the run's length (so --steps may grow)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 1000  # linear warm-up from 0
    schedule: Literal["constant", "inv_sqrt", "cosine"] = "inv_sqrt"
    # inv_sqrt: lr / sqrt(step / decay_steps) past it; cosine: down to min_lr_ratio x lr at warmup + decay_steps
    decay_steps: int = 10000
    min_lr_ratio: float = 0.0  # cosine: the floor, as a fraction of lr, held after warmup + decay_steps
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    ema_decay: float = 0.999  # of the weights' exponential moving average, used for sampling (the cap with a ramp-up)
    # EDM's EMA warm-up (Karras et al. 2022): the EMA's half-life, counted in examples, is at most this fraction of
    # the examples seen so far, so early EMAs forget the random initial weights; None: ema_decay from the first step
    ema_rampup_ratio: float | None = None

    def check(self, key: str) -> None:
        require(self.lr > 0, f"{key}.lr", f"must be > 0, got {self.lr}")
        require(all(0 <= b < 1 for b in self.betas), f"{key}.betas", f"must be within [0, 1), got {list(self.betas)}")
        require(self.weight_decay >= 0, f"{key}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, f"{key}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.decay_steps >= 1, f"{key}.decay_steps", f"must be >= 1, got {self.decay_steps}")
        require(self.grad_clip >= 0, f"{key}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(0 <= self.ema_decay < 1, f"{key}.ema_decay", f"must be within [0, 1), got {self.ema_decay}")
        require(0 <= self.min_lr_ratio <= 1, f"{key}.min_lr_ratio", f"must be within [0, 1], got {self.min_lr_ratio}")
        require(self.ema_rampup_ratio is None or self.ema_rampup_ratio > 0, f"{key}.ema_rampup_ratio",
                 f"must be > 0 (or null: no warm-up), got {self.ema_rampup_ratio}")

    def check_steps(self, steps: int, key: str = "train.steps") -> None:
        """Refuse a cosine schedule that would train at lr 0: past warmup + decay_steps without a floor.
        The loop checks it before any work (not at load: a stored config must still load to sample)."""
        end = self.warmup_steps + self.decay_steps
        require(self.schedule != "cosine" or self.min_lr_ratio > 0 or steps <= end, key,
                 f"{steps} steps train past step {end}, where the cosine schedule reaches lr 0 and stays; "
                 f"set optim.min_lr_ratio > 0 or raise optim.decay_steps")


@dataclass(frozen=True)
class LoopConfig:
    """How long to train, how often to checkpoint, and how often to validate.

    Validation (`eval_every` > 0, rank 0, `train/validate.py`): the loss of the first `eval_batches`
    valid batches under noise, control dropout and crops drawn from fixed seeds (comparable across
    steps and runs), and with `eval_clips` K > 0, K valid clips sampled from the EMA weights under their
    own controls (`sample_steps`, `guidance.cfg_scale`), decoded and scored by the CREPE judge.
    """

    steps: int = 500000  # the run's total; `--steps` overrides it (and is not part of the resume check)
    checkpoint_every: int = 10000
    keep_checkpoints: int = 3  # the newest N are kept
    amp: Literal["bf16", "none"] = "bf16"  # autocast on CUDA; CPU always trains in float32
    sample_steps: int | None = None  # default sampler steps of `pvtbuild sample` (None: the formalism's)
    eval_every: int = 0  # steps between validations written to RUN_DIR/eval.csv (0: none)
    eval_batches: int = 4  # valid-split batches (file order) whose loss, from fixed draws, each validation averages
    eval_clips: int = 0  # valid clips sampled from the EMA model under their own controls and judged by CREPE (0: none)
    # micro-batches of data.batch_size per optimizer step: each process's step sees batch_size x accumulate
    # examples, the run's step batch_size x accumulate x processes (the gradient is their mean)
    accumulate: int = 1

    def check(self, key: str) -> None:
        require(self.steps >= 1, f"{key}.steps", f"must be >= 1, got {self.steps}")
        require(self.checkpoint_every >= 1, f"{key}.checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        require(self.keep_checkpoints >= 1, f"{key}.keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        require(self.sample_steps is None or self.sample_steps >= 1, f"{key}.sample_steps",
                 f"must be >= 1, got {self.sample_steps}")
        require(self.eval_every >= 0, f"{key}.eval_every", f"must be >= 0 (0: no validation), got {self.eval_every}")
        require(self.eval_batches >= 1, f"{key}.eval_batches", f"must be >= 1, got {self.eval_batches}")
        require(self.eval_clips >= 0, f"{key}.eval_clips", f"must be >= 0 (0: no judged clips), got {self.eval_clips}")
        require(not self.eval_clips or self.eval_every > 0, f"{key}.eval_clips",
                 "clips are judged at each validation; set train.eval_every too")
        require(1 <= self.accumulate <= 4096, f"{key}.accumulate", f"must be within 1..4096, got {self.accumulate}")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "train"
    seed: int = 0
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: Any = None  # UNetConfig for datasets, ToyMLPConfig for toys
    formalism_name: str = "edm"
    formalism: Any = None  # the formalism's own config dataclass
    sigma_data_auto: bool = False  # `formalism.sigma_data: auto`: the loop measures it on the data
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    @property
    def is_toy(self) -> bool:
        return self.data.toy is not None

    def to_dict(self) -> dict[str, Any]:
        """The config as YAML would spell it (what checkpoints store and `--resume` compares)."""
        out = to_plain(self)
        out["formalism"] = {"name": out.pop("formalism_name"), **out["formalism"]}
        if out.pop("sigma_data_auto"):
            out["formalism"]["sigma_data"] = "auto"
        return out


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read and validate a training config; `overrides` are dotted keys (`train.steps`) set on top."""
    data = read_config_file(Path(path), "training config")
    with naming_file(Path(path)):
        for key in ("formalism_name", "sigma_data_auto"):
            require(key not in data, key, "unknown key (spell the formalism as formalism: {name: ...})")
        return train_config_from_dict(data, **overrides)


def train_config_from_dict(data: dict[str, Any], **overrides: Any) -> TrainConfig:
    """Validate a plain dict (a parsed YAML file, or what a checkpoint stored) into a `TrainConfig`."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        if value is not None:
            section, leaf = dotted.split(".")
            data.setdefault(section, {})[leaf] = value
    model = data.pop("model", None) or {}
    formalism = data.pop("formalism", None)
    if not isinstance(formalism, dict) or "name" not in formalism:
        raise ConfigError(f"formalism: must be a mapping with a name (one of {', '.join(FORMALISMS)})")
    formalism = dict(formalism)
    name = formalism.pop("name")
    if not isinstance(name, str) or name not in FORMALISMS:
        raise ConfigError(f"formalism.name: must be one of {', '.join(FORMALISMS)}, got {brief(name)}")
    cfg = build_section(TrainConfig, data, "")
    model_cls = ToyMLPConfig if cfg.is_toy else UNetConfig
    formalism_cls = FORMALISMS[name][0]
    sigma_auto = formalism.get("sigma_data") == "auto"
    if sigma_auto:
        formalism.pop("sigma_data")  # resolved from the data by the loop (`resolve_sigma_data`)
    cfg = dataclasses.replace(cfg, model=build_section(model_cls, model, "model"), formalism_name=name,
                              formalism=build_section(formalism_cls, formalism, "formalism"),
                              sigma_data_auto=sigma_auto)
    _check(cfg)
    return cfg


def first_difference(a: Any, b: Any, key: str = "") -> str | None:
    """The dotted key of the first value that differs between two plain configs, or None."""
    found = differences(a, b, key)
    return found[0] if found else None


def differences(a: Any, b: Any, key: str = "") -> list[str]:
    """The dotted keys of every value that differs between two plain configs, in sorted key order."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            sub = f"{key}.{k}" if key else str(k)
            out += [sub] if k not in a or k not in b else differences(a[k], b[k], sub)
        return out
    return [] if a == b else [key or "config"]


def _check(cfg: TrainConfig) -> None:
    require(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "check"):
            value.check(f.name)
    discrete = cfg.formalism_name == "discdpm"
    if cfg.is_toy:
        wants = "swissroll-disc" if discrete else "swissroll"
        require(cfg.data.toy == wants, "data.toy",
                f"formalism {cfg.formalism_name} trains on {wants}, got {cfg.data.toy}")
        require(not cfg.data.crop_seconds, "data.crop_seconds", "toy points have no time axis to crop; drop the key")
        require(not cfg.train.eval_clips, "train.eval_clips", "toy points have no audio to judge; drop the key")
    else:
        require((cfg.data.format == "disc") == discrete, "data.format",
                 f"formalism {cfg.formalism_name} cannot model format {cfg.data.format!r} "
                 f"({'discdpm models disc codes only' if discrete else 'disc codes need discdpm'})")
