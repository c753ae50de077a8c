"""Generation from a checkpoint: the EMA weights and the formalism's own sampler.

Toy checkpoints sample points (`samples.npy`); sampling real formats to WAV from
a musician's controls builds on `load_for_sampling` (issue 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PvtbuildError
from ..manifest import atomic_write
from .build import build_backbone, build_formalism
from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import TrainConfig, train_config_from_dict
from .data import DataSpec, DataStats, mix_seed
from .guidance import Controls


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


def load_for_sampling(checkpoint: str | Path, device: torch.device) -> Sampler:
    """Rebuild a run's network from its checkpoint (file or run directory) and load the EMA weights."""
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    cfg = train_config_from_dict(state["config"])
    s = state["spec"]
    spec = DataSpec(tuple(s["shape"]), s["num_classes"], s["local_channels"], s["global_channels"])
    stats = DataStats(**state["stats"])
    net = build_backbone(cfg, spec)
    prefix = "module."
    net.load_state_dict({k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)})
    net.to(device).eval()
    return Sampler(cfg, net, build_formalism(cfg, spec, stats), spec, stats, int(state["step"]), path)


def sample_toy(checkpoint: str | Path, out_dir: Path, n: int, steps: int | None = None, seed: int = 0,
               device: torch.device | str = "cpu") -> Path:
    """`n` samples of a toy checkpoint as `out_dir/samples.npy`: [n, 2] float32 points or int64 classes."""
    sampler = load_for_sampling(checkpoint, torch.device(device))
    if not sampler.cfg.is_toy:
        raise PvtbuildError(f"{sampler.checkpoint}: trained on {sampler.cfg.data.format!r}, not a toy; "
                            f"sampling real formats to WAV needs controls (not built yet)")
    if n < 1:
        raise PvtbuildError(f"--n must be >= 1, got {n}")
    steps = steps or sampler.cfg.train.sample_steps
    gen = torch.Generator(device=device).manual_seed(mix_seed(seed, "sample"))
    with torch.no_grad():
        x = sampler.formalism.sample(sampler.net, (n, *sampler.spec.shape), Controls(), steps,
                                     sampler.cfg.guidance.cfg_scale, gen)
    arr = x.cpu().numpy()
    arr = arr.astype(np.int64) if sampler.spec.discrete else arr.astype(np.float32)
    path = out_dir / "samples.npy"
    with atomic_write(path, "wb") as fh:
        np.save(fh, arr)
    return path
