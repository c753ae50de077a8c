"""The training loop: one process, or one per GPU under torchrun, resuming exactly.

Per step: `train.accumulate` micro-batches from the data source, each with control
dropout, the formalism's loss and backward (under DDP only the last one all-reduces),
then gradient clipping, Adam, the LR schedule, the EMA (with EDM's warm-up when
`optim.ema_rampup_ratio` is set). `init_from` starts a new run from another run's
weights and EMA (fine-tuning: fresh optimizer, step 0, the config may differ). Every random draw
of a step comes from generators seeded by (seed, rank, step), and the data
source is addressed by position, so a run stopped at step k and resumed gives
the same losses, bit for bit, as one that never stopped (on CPU; CUDA kernels
may be non-deterministic). A step whose gradient norm is not finite is counted
and skipped, never applied. Rank 0 writes `RUN_DIR/log.csv`, checkpoints, every
`train.eval_every` steps a validation row in `eval.csv` (`validate.py`; it draws
nothing from the training's streams, so resume stays exact) and, when
`tensorboard` is importable, TensorBoard events; SIGTERM (a cluster's
preemption) saves a checkpoint before exiting. With `data.crop_seconds`, each
batch is cut to random crops drawn from (seed, rank, step) too.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pvtbuild.engine.manifest import atomic_write_bytes
from pvtbuild.errors import ConfigError, InputError, PvtbuildError
from pvtbuild.train.backbone import count_parameters
from pvtbuild.train.build import build_backbone, build_formalism
from pvtbuild.train.checkpoint import (
    RUN_JSON,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restoring,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pvtbuild.train.config import OptimConfig, TrainConfig, differences, first_difference, train_config_from_dict
from pvtbuild.train.data import (
    BatchSource,
    DatasetSource,
    Position,
    ToySource,
    dataset_layout,
    measure_stats,
    mix_seed,
    seeded_crop,
)
from pvtbuild.train.device import pick_device
from pvtbuild.train.export import fine_tune_source, is_export
from pvtbuild.train.guidance import drop_controls
from pvtbuild.train.spec import DataStats
from pvtbuild.train.validate import EVAL_CSV, Validation, build_validator

LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "examples_per_s", "data_wait", "skipped")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # of the steps this call trained (rank 0's mean over ranks)
    skipped: int = 0  # non-finite steps skipped, whole run
    checkpoint: Path | None = None
    stopped_by_signal: bool = False

    @property
    def exit_code(self) -> int:
        """The process's exit status: 143 (128 + SIGTERM, as a shell reports it) when a signal stopped the run,
        so a cluster scheduler sees a preempted job, not a finished one; else 0."""
        return 143 if self.stopped_by_signal else 0


class Resume(Enum):
    """What a run does with the checkpoints already in its run directory (`--resume`, `--auto-resume`)."""

    NO = "no"  # start a new run; a run directory holding checkpoints is refused, never overwritten
    YES = "yes"  # continue the latest checkpoint; a run directory without one is refused
    AUTO = "auto"  # continue the latest checkpoint when there is one, else start (a requeued cluster job)


@dataclass(frozen=True)
class TrainOptions:
    """Where and how one call of `train` runs a config: what `pvtbuild train` takes besides `--config`."""

    run_dir: Path
    dataset: Path | None = None  # toy configs need none
    steps: int | None = None  # the run's total steps (None: the config's train.steps)
    resume: Resume = Resume.NO
    device: str = "auto"  # auto, cpu, cuda or cuda:N (`device.pick_device`)
    dry_run: bool = False  # build the model, echo its size and a batch's shapes, train nothing
    init_from: Path | None = None  # fine-tune from the weights and EMA of a checkpoint, run directory or export
    allow_inexact_resume: bool = False  # resume with another number of processes than wrote the checkpoint


def train(cfg: TrainConfig, options: TrainOptions, echo: Callable[[str], None] = print) -> TrainResult:
    """Train `cfg` into `options.run_dir` up to `options.steps` total steps (default: `train.steps`).

    `options.resume` says what to do with the run directory's checkpoints (`Resume`). `init_from` (a
    checkpoint, run directory or export) starts a run that has no checkpoint yet from its weights and EMA
    (`fine_tune_state`). Under torchrun (WORLD_SIZE > 1) every process calls this; rank r reads its own files
    of the dataset, DDP averages gradients, rank 0 writes. `echo` prints a line for people (rank 0 only).
    A checkpoint holds every rank's data position, so a resume with another number of processes is
    refused unless `allow_inexact_resume` (`_resume_position`).
    """
    info = _init_distributed(options.device)
    try:
        return _train(cfg, options, options.steps or cfg.train.steps, info,
                      echo if info.main else (lambda *a, **k: None))
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, options: TrainOptions, total: int, info: DistInfo, echo: Any) -> TrainResult:
    run_dir, dataset, init_from = options.run_dir, options.dataset, options.init_from
    cfg.optim.check_steps(total, "--steps" if total != cfg.train.steps else "train.steps")
    device = pick_device(options.device, info.local_rank)
    state = _resume_state(cfg, run_dir, options.resume, options.dry_run)
    init = fine_tune_state(init_from, cfg, echo) if init_from is not None and state is None else None
    start = (_resume_position(state, run_dir, info, options.allow_inexact_resume, echo) if state is not None
             else Position())
    source, stats = _data_source(cfg, dataset, state, info)
    if state is not None:
        _check_same_data(state, source, run_dir, dataset)
    torch.manual_seed(mix_seed(cfg.seed, 0))  # same initial weights on every rank
    model = build_backbone(cfg, source.spec).to(device)
    formalism = build_formalism(cfg, source.spec, stats)
    echo(f"train: {cfg.name}: {cfg.formalism_name} on {cfg.data.toy or cfg.data.format} "
         f"{list(source.spec.shape)}, {count_parameters(model):,} learnable parameters, device {device}"
         + (f", {info.world_size} processes" if info.enabled else "")
         + (f", {cfg.train.accumulate} micro-batches of {cfg.data.batch_size} a step"
            if cfg.train.accumulate > 1 else ""))
    if options.dry_run:
        _, batch = next(source.batches(Position()))
        batch = seeded_crop(batch, source.crop_frames, cfg.seed, info.rank, 0)
        c = batch.controls
        echo(f"batch: x0 {list(batch.x0.shape)} {batch.x0.dtype}"
             + (f", local controls {list(c.local.shape)}" if c.local is not None else "")
             + (f", global controls {list(c.glob.shape)}" if c.glob is not None else ""))
        return TrainResult(run_dir, 0)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                 weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.optim))
    ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.optim), use_buffers=True)
    step, position, skipped = 0, Position(), 0
    if init is not None:
        load_fine_tune_weights(model, ema, init, Path(init_from or ""))
    if state is not None:
        with restoring(list_checkpoints(run_dir)[-1], "resume"):
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, skipped = int(state["step"]), int(state["skipped"])
            position = start
            set_rng_state(state["rng"])
        echo(f"train: resuming {run_dir} at step {step}")
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_json(run_dir, cfg, source.spec, stats, dataset, init_from if init is not None else None)
    if step >= total:
        echo(f"train: {run_dir} is already at step {step} >= --steps {total}; nothing to do")
        return TrainResult(run_dir, step, skipped=skipped)

    result = TrainResult(run_dir, step, skipped=skipped)
    amp = device.type == "cuda" and cfg.train.amp == "bf16"
    validator = (build_validator(cfg, source, formalism, stats, dataset, run_dir, device, amp)
                 if info.main and cfg.train.eval_every else None)
    log = _Log(run_dir, step, info.main, validator.columns if validator is not None else ())
    if validator is not None:
        echo(f"train: validating every {cfg.train.eval_every} steps into {run_dir / EVAL_CSV}: "
             f"{', '.join(validator.columns[1:])}")
    stop = _StopFlag()
    batches = source.batches(position)
    t_start, examples = time.perf_counter(), 0
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not info.main, dynamic_ncols=True)
    try:
        while step < total:
            t0 = time.perf_counter()
            micro = []
            for i in range(cfg.train.accumulate):
                position, batch = next(batches)
                micro.append(seeded_crop(batch, source.crop_frames, cfg.seed, info.rank, step, *_micro(i)))
            t_data = time.perf_counter() - t0
            torch.manual_seed(mix_seed(cfg.seed, info.rank, step, 1))  # anything drawing from the global RNG
            optimizer.zero_grad(set_to_none=True)
            loss = accumulated_backward(net, formalism, [_micro_input(b, cfg, info.rank, step, i, device)
                                                         for i, b in enumerate(micro)], amp)
            n_examples = sum(int(b.x0.shape[0]) for b in micro)
            grad_norm = _clip(model, cfg.optim.grad_clip)
            finite = math.isfinite(grad_norm)  # DDP has averaged the gradients: every rank agrees
            if finite:
                optimizer.step()
                ema.update_parameters(model)
            else:
                skipped += 1
            scheduler.step()
            step += 1
            mean_loss = _mean_over_ranks(loss.detach().float(), info)
            dt = time.perf_counter() - t0
            log.write(step, mean_loss, scheduler.get_last_lr()[0], grad_norm,
                      n_examples * info.world_size / dt, t_data / dt, skipped)
            result.losses.append(mean_loss)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0:  # before the checkpoint: see _Log
                if validator is not None:
                    log.write_eval(validator.run(step, model, ema.module, image=log.tb is not None))
                if info.enabled:
                    dist.barrier()  # the other ranks wait for rank 0's validation
            examples += n_examples * info.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", skipped=skipped)
            last = step == total
            stopping = _any_rank(stop.requested, info, device)
            if step % cfg.train.checkpoint_every == 0 or last or stopping:
                digests = _rank_digests(model, info)  # every rank takes part; rank 0 writes
                positions = _rank_positions(position, info)
                if len(set(digests)) > 1:
                    raise RuntimeError(f"step {step}: ranks hold different weights ({digests}); DDP went out of sync")
            if info.main and (step % cfg.train.checkpoint_every == 0 or last or stopping):
                result.checkpoint = save_checkpoint(run_dir, step, {
                    "rank_weights_sha256": digests,
                    "config": cfg.to_dict(), "step": step, "position": vars(position), "positions": positions,
                    "skipped": skipped,
                    "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "stats": stats.to_dict(),
                    "spec": _spec_dict(source),
                }, cfg.train.keep_checkpoints)
            if stopping:
                result.stopped_by_signal = True
                echo(f"train: stopped by signal at step {step}; checkpoint {result.checkpoint}; "
                     f"rerun with --resume to continue")
                break
    finally:
        bar.close()
        log.close()
        stop.restore()
    result.step, result.skipped = step, skipped
    if info.enabled:
        dist.barrier()
    n = len(result.losses)
    elapsed = time.perf_counter() - t_start
    echo(f"train: {n} steps to step {step} in {elapsed:.1f} s ({n / elapsed:.2f} steps/s, {examples / elapsed:.1f} "
         f"examples/s), last loss {result.losses[-1]:.4f}, {skipped} non-finite steps skipped in the run; "
         f"checkpoint {result.checkpoint}" if n else "train: no step trained")
    return result


def lr_factor(cfg: OptimConfig) -> Any:
    """The LR multiplier of step s: linear warm-up, then constant, inverse-sqrt or cosine decay.

    It depends on the step alone, never on the run's total, so `--steps` may grow between resumes.
    """
    def factor(s: int) -> float:
        warm = min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        past = max(0, s - cfg.warmup_steps)
        if cfg.schedule == "inv_sqrt":
            return warm / math.sqrt(max(past / cfg.decay_steps, 1.0))
        if cfg.schedule == "cosine":
            cos = 0.5 * (1 + math.cos(math.pi * min(past / cfg.decay_steps, 1.0)))
            return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)
        return warm

    return factor


def ema_beta(cfg: OptimConfig, updates: int) -> float:
    """The EMA's decay at its update after `updates` earlier ones: `ema_decay`, or with EDM's warm-up
    (`ema_rampup_ratio` r) at most 0.5 ** (1 / (r * updates)), i.e. a half-life of r x the examples seen so
    far (EDM's ema_halflife_nimg = min(halflife, cur_nimg * r), in units of a step's batch). It depends on
    the EMA's own update count, which its state stores: resume stays exact."""
    if cfg.ema_rampup_ratio is None:
        return cfg.ema_decay
    return min(cfg.ema_decay, 0.5 ** (1.0 / max(cfg.ema_rampup_ratio * updates, 1e-8)))


def ema_update(cfg: OptimConfig) -> Any:
    """The `multi_avg_fn` of the run's `AveragedModel`: torch's EMA update at `ema_beta` of the update count."""
    if cfg.ema_rampup_ratio is None:
        return get_ema_multi_avg_fn(cfg.ema_decay)  # a fixed decay: the same arithmetic as before the warm-up

    def update(ema_params: Any, params: Any, updates: torch.Tensor) -> None:
        get_ema_multi_avg_fn(ema_beta(cfg, int(updates)))(ema_params, params, updates)

    return update


def accumulated_backward(net: nn.Module, formalism: Any,
                         micro: list[tuple[torch.Tensor, Any, torch.Generator]], amp: bool) -> torch.Tensor:
    """Backward of the mean loss over every example of the micro-batches `(x0, controls, generator)`, one
    micro-batch's graph in memory at a time: each loss is weighted by its share of the examples, so the
    summed gradient is the one batch of them all would give (for the same draws). Under DDP, every
    micro-batch but the last runs under `no_sync`, so gradients are all-reduced once per step. Returns
    the weighted loss (float32, detached)."""
    total = sum(int(x0.shape[0]) for x0, _, _ in micro)
    out = torch.zeros((), device=micro[0][0].device)
    for i, (x0, controls, gen) in enumerate(micro):
        last = i == len(micro) - 1
        sync = contextlib.nullcontext() if last or not isinstance(net, nn.parallel.DistributedDataParallel) \
            else net.no_sync()
        with sync:
            with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = formalism.loss(net, x0, controls, gen)
            loss = loss * (x0.shape[0] / total) if len(micro) > 1 else loss
            loss.backward()
        out += loss.detach().float()
    return out


# --- pieces -------------------------------------------------------------------------------


def _micro(i: int) -> tuple[str | int, ...]:
    """What micro-batch i adds to a step's seeds: nothing for the first, so `accumulate: 1` draws as before."""
    return () if i == 0 else ("micro", i)


def _micro_input(batch: Any, cfg: TrainConfig, rank: int, step: int, i: int,
                 device: torch.device) -> tuple[torch.Tensor, Any, torch.Generator]:
    """Micro-batch i of a step on `device`, its controls dropped, and its generator from (seed, rank, step, i)."""
    gen = torch.Generator(device=device).manual_seed(mix_seed(cfg.seed, rank, step, *_micro(i)))
    x0, controls = batch.x0.to(device, non_blocking=True), batch.controls.to(device)
    return x0, drop_controls(controls, cfg.guidance.p_feature, cfg.guidance.p_all, gen), gen


def fine_tune_state(path: Path, cfg: TrainConfig, echo: Any) -> dict[str, Any]:
    """The checkpoint `--init-from` names (file, run directory or `pvtbuild export` folder), after echoing
    which config keys the new run changes (one line, `(none)` when none)."""
    found = Path(path) if is_export(Path(path)) else resolve_checkpoint(path)
    state = fine_tune_source(found) if found.is_dir() else load_checkpoint(found)
    with restoring(found, "fine-tune"):
        old = train_config_from_dict(state["config"]).to_dict()
    changed = differences(_comparable(old), _comparable(cfg.to_dict()))
    echo(f"train: fine-tuning from {found} (step {int(state['step'])}): weights and EMA only, optimizer and "
         f"step start anew; config keys changed: {', '.join(changed) or '(none)'}")
    return state


def load_fine_tune_weights(model: nn.Module, ema: AveragedModel, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights and EMA into a new run's model, refusing in one line (naming the first
    parameter that differs) an architecture they do not fit."""
    mine = model.state_dict()
    theirs = state["model"]
    for name in [*mine, *(k for k in theirs if k not in mine)]:  # the model's own order: its first layer first
        if name not in theirs or name not in mine:
            where = "this config's model" if name in mine else f"the model of {path}"
            raise InputError(f"{path}: --init-from: parameter {name} exists only in {where}; the architectures "
                             f"differ (keep the model section of the run you fine-tune)")
        if tuple(mine[name].shape) != tuple(theirs[name].shape):
            raise InputError(f"{path}: --init-from: parameter {name} has shape {list(theirs[name].shape)} there, "
                             f"{list(mine[name].shape)} in this config's model; the architectures differ")
    model.load_state_dict(theirs)
    with restoring(path, "fine-tune"):
        ema.load_state_dict(state["ema"])


def _init_distributed(device: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info


def _resume_state(cfg: TrainConfig, run_dir: Path, resume: Resume, dry_run: bool) -> dict[str, Any] | None:
    found = list_checkpoints(run_dir)
    if dry_run or (resume is Resume.AUTO and not found):
        return None
    if resume is Resume.NO:
        if found:
            raise PvtbuildError(f"{run_dir}: already holds checkpoints (latest {found[-1].name}); "
                                f"pass --resume to continue that run, or choose another --out")
        return None
    if not found:
        raise PvtbuildError(f"{run_dir}: no checkpoint to resume from; drop --resume to start a new run")
    state = load_checkpoint(found[-1])
    # the stored config re-read with today's defaults, so a key added since (data.crop_seconds) is not a change
    old, new = _comparable(train_config_from_dict(state["config"]).to_dict()), _comparable(cfg.to_dict())
    key = first_difference(old, new)
    if key is not None:
        raise ConfigError(f"{key}: differs from the config of the run in {run_dir} "
                          f"({_lookup(old, key)!r} there, {_lookup(new, key)!r} now); "
                          f"resume with the same config, or train into another --out")
    return state


def _resume_position(state: dict[str, Any], run_dir: Path, info: DistInfo, allow_inexact: bool, echo: Any) -> Position:
    """This rank's data position in the checkpoint: its own, written by the rank of its number.

    Ranks read different files and cross epochs at different steps, so the positions are exact only
    with the world size that wrote them; another one is refused in one line unless `allow_inexact`:
    then every rank starts at the furthest position any rank had reached (for a dataset: some
    examples of that epoch are skipped or read twice; toys, whose ranks all stand at the step, lose
    nothing). A checkpoint from before positions were gathered holds rank 0's alone: exact for one process.
    """
    path = list_checkpoints(run_dir)[-1]
    with restoring(path, "resume"):
        positions = _stored_positions(state)
        furthest = max(positions or [Position(**state["position"])], key=lambda p: (p.epoch, p.batch))
    if positions is not None and len(positions) == info.world_size:
        return positions[info.rank]
    if positions is not None:
        what = f"was written by {len(positions)} process(es) and this run has {info.world_size}"
        fix = f"resume with {len(positions)} process(es), or pass --allow-inexact-resume"
    else:
        what = (f"holds rank 0's data position alone (written by {len(state['rank_weights_sha256'])} processes, "
                f"before every rank's was kept)")
        fix = "pass --allow-inexact-resume to continue from an approximate position"
    if not allow_inexact:
        raise PvtbuildError(f"{path}: {what}; every rank resumes its own data position exactly only with the "
                            f"world size that wrote them: {fix}")
    echo(f"train: warning: {path.name} {what}; --allow-inexact-resume: every rank continues from epoch "
         f"{furthest.epoch}, batch {furthest.batch} (the furthest any rank had reached), so the data order is not "
         f"the uninterrupted run's")
    return furthest


def _stored_positions(state: dict[str, Any]) -> list[Position] | None:
    """Every rank's data position in a checkpoint, in rank order; None for one written by several processes
    before the positions were gathered (it kept rank 0's alone, which a single process's run still resumes)."""
    if "positions" in state:
        return [Position(**p) for p in state["positions"]]
    writers = len(state.get("rank_weights_sha256") or [None])
    return [Position(**state["position"])] if writers == 1 else None


def _check_same_data(state: dict[str, Any], source: BatchSource, run_dir: Path, dataset: Path | None) -> None:
    """Resume only on data of the shape the run was trained on: other data would fail deep in torch."""
    facts = ("shape", "num_classes", "local_channels", "global_channels")
    was = {k: state["spec"].get(k) for k in facts}
    now = {k: v for k, v in _spec_dict(source).items() if k in facts}
    was["shape"] = list(was["shape"])
    if was != now:
        key = next(k for k in facts if was[k] != now[k])
        raise InputError(f"{run_dir}: its run was trained on data with {key} {was[key]}, but --data {dataset} has "
                         f"{now[key]}; resume on the dataset it was trained on, or train into another --out")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without what may change between resumes: the run's total steps."""
    out = json.loads(json.dumps(config))
    out.get("train", {}).pop("steps", None)
    return out


def _lookup(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return "(absent)"
        d = d[part]
    return d


def _data_source(cfg: TrainConfig, dataset: Path | None, state: dict[str, Any] | None,
                 info: DistInfo) -> tuple[BatchSource, DataStats]:
    if cfg.is_toy:
        return ToySource(cfg.data, cfg.seed, info.rank), DataStats()
    if dataset is None:
        raise PvtbuildError(f"config {cfg.name} trains on a dataset's {cfg.data.format!r}: pass --data DATASET")
    if not dataset.is_dir():
        raise InputError(f"{dataset}: no such dataset directory")
    layout = dataset_layout(cfg.data, dataset, cfg.name)
    stats = DataStats(**state["stats"]) if state is not None else measure_stats(cfg.data, dataset, layout)
    return DatasetSource(cfg.data, dataset, layout, stats, cfg.seed, info.rank, info.world_size), stats


def _spec_dict(source: BatchSource) -> dict[str, Any]:
    spec = source.spec
    out: dict[str, Any] = {"shape": list(spec.shape), "num_classes": spec.num_classes,
                           "local_channels": spec.local_channels, "global_channels": spec.global_channels}
    layout = getattr(source, "layout", None)
    if layout is not None:
        out.update(local_names=list(layout.local_names), global_names=list(layout.global_names),
                   local_groups=list(layout.local_groups), global_groups=list(layout.global_groups))
    return out


def _write_run_json(run_dir: Path, cfg: TrainConfig, spec: Any, stats: DataStats, dataset: Path | None,
                    init_from: Path | None = None) -> None:
    record = {"config": cfg.to_dict(), "dataset": None if dataset is None else str(dataset.resolve()),
              "data_shape": list(spec.shape), "stats": stats.to_dict(), "torch": torch.__version__}
    if init_from is not None:
        record["init_from"] = str(Path(init_from).resolve())
    atomic_write_bytes(run_dir / RUN_JSON, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def _clip(model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def _rank_digests(model: nn.Module, info: DistInfo) -> list[str]:
    """The sha256 of every rank's weights (one entry without torch.distributed): DDP keeps them bit-identical."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    if not info.enabled:
        return [h.hexdigest()]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, h.hexdigest())
    return [str(d) for d in out]


def _rank_positions(position: Position, info: DistInfo) -> list[dict[str, int]]:
    """Every rank's data position, in rank order (each reads its own files, so they differ): the checkpoint's."""
    mine = {"epoch": position.epoch, "batch": position.batch}
    if not info.enabled:
        return [mine]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return [{"epoch": int(p["epoch"]), "batch": int(p["batch"])} for p in out]


def _mean_over_ranks(value: torch.Tensor, info: DistInfo) -> float:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world_size
    return float(value)


def _any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank was asked to stop, so all stop after the same step."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)  # nccl reduces only CUDA tensors
    dist.all_reduce(t)
    return bool(t.item() > 0)


class _StopFlag:
    """Set by SIGTERM / SIGINT; the loop checkpoints and stops at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._set)

    def _set(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _CsvRows:
    """A CSV of one row per step; reopened at `start_step` > 0 (a resume), it keeps only the rows up to it."""

    def __init__(self, path: Path, columns: tuple[str, ...], start_step: int) -> None:
        rows = []
        if path.is_file() and start_step > 0:
            with path.open(newline="") as fh:
                rows = [r for r in csv.reader(fh)][1:]
            rows = [r for r in rows if r and int(r[0]) <= start_step]
        self.fh = path.open("w", newline="")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(columns)
        self.writer.writerows(rows)
        self.fh.flush()

    def write(self, row: list[Any]) -> None:
        self.writer.writerow(row)
        self.fh.flush()


class _Log:
    """Rank 0's records: `RUN_DIR/log.csv` (a row per step), `eval.csv` (a row per validation, with
    `eval_columns`) and TensorBoard events. A validation is written before its step's checkpoint, so a run
    killed between the two redoes it on resume, which first drops every row past its checkpoint."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool, eval_columns: tuple[str, ...] = ()) -> None:
        self.enabled = enabled
        self.tb: Any = None
        if not enabled:
            return
        self.log = _CsvRows(run_dir / "log.csv", LOG_COLUMNS, start_step)
        self.eval = _CsvRows(run_dir / EVAL_CSV, eval_columns, start_step) if eval_columns else None
        self.tb = _tensorboard(run_dir)

    def write(self, step: int, loss: float, lr: float, grad_norm: float, eps: float, wait: float, skipped: int) -> None:
        if not self.enabled:
            return
        self.log.write([step, repr(loss), f"{lr:.6g}", f"{grad_norm:.6g}", f"{eps:.2f}", f"{wait:.4f}", skipped])
        if self.tb is not None:
            for name, value in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("examples_per_s", eps)):
                self.tb.add_scalar(name, value, step)

    def write_eval(self, v: Validation) -> None:
        """One validation's eval.csv row (floats as repr: read back exactly) and its TensorBoard scalars and clip."""
        assert self.eval is not None
        self.eval.write([v.step, *(repr(x) for x in v.values.values())])
        if self.tb is None:
            return
        for name, value in v.values.items():
            self.tb.add_scalar(f"eval/{name}", value, v.step)
        if v.audio is not None:
            self.tb.add_audio("eval/clip0", torch.from_numpy(v.audio).reshape(1, -1), v.step, sample_rate=v.sample_rate)
        if v.image is not None:
            self.tb.add_image("eval/clip0", v.image, v.step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            for f in (self.log, self.eval):
                if f is not None:
                    f.fh.close()
            if self.tb is not None:
                self.tb.close()


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer when the `tensorboard` package is importable, else None (the CSV log remains)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (optional: tensorboard may be absent)
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
