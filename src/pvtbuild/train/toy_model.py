"""The toy backbone: a small residual MLP ``F(x, noise_level, controls)`` for the toy data's 1-D points.

Kept apart from the U-Net (`backbone.py`) because toys have no time axis and no local controls; a
formalism drives either one the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pvtbuild.config import require
from pvtbuild.train.guidance import Controls
from pvtbuild.train.spec import DataSpec


@dataclass(frozen=True)
class ToyMLPConfig:
    hidden: int = 128
    layers: int = 4  # hidden layers (residual SiLU blocks)
    embed: int = 64  # noise-level embedding width (sinusoidal), and class embedding width (discrete)

    def check(self, key: str = "model") -> None:
        require(self.hidden >= 1, f"{key}.hidden", f"must be >= 1, got {self.hidden}")
        require(self.layers >= 1, f"{key}.layers", f"must be >= 1, got {self.layers}")
        require(self.embed >= 2 and self.embed % 2 == 0, f"{key}.embed",
                f"must be an even number >= 2, got {self.embed}")


def sinusoidal(level: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[B, dim]`` sin/cos features of a ``[B]`` noise level (frequencies 1 .. 1 / max_period)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=level.device) / max(half - 1, 1))
    arg = level.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class ToyMLP(nn.Module):
    """``F(x, noise_level, controls)`` for data of shape ``(D,)``: an MLP with residual SiLU blocks.

    Continuous data: x ``[B, D]`` float -> ``[B, D]``. Discrete data (``num_classes = K > 0``):
    x ``[B, D]`` int64, each position's class embedded -> logits ``[B, D, K]``. Global controls,
    if the spec has any, are concatenated to the input; toys have none.
    """

    def __init__(self, cfg: ToyMLPConfig, spec: DataSpec):
        super().__init__()
        cfg.check()
        require(len(spec.shape) == 1, "data.shape", f"the toy MLP takes 1-D examples, got {spec.shape}")
        require(spec.local_channels == 0, "controls", "the toy MLP takes no local controls")
        self.cfg, self.spec = cfg, spec
        d, k = spec.shape[0], spec.num_classes
        if k > 0:
            self.embed_x: nn.Module = nn.Embedding(d * k, cfg.embed)
            self.register_buffer("offsets", torch.arange(d) * k, persistent=False)
            width_in = d * cfg.embed
        else:
            self.embed_x = nn.Identity()
            width_in = d
        self.inp = nn.Linear(width_in + spec.global_channels, cfg.hidden)
        self.level = nn.Sequential(nn.Linear(cfg.embed, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
                                    for _ in range(cfg.layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, d * max(k, 1)))

    def forward(self, x: Tensor, noise_level: Tensor, controls: Controls) -> Tensor:
        b = x.shape[0]
        if self.spec.discrete:
            h = self.embed_x(x.long() + self.offsets).reshape(b, -1)
        else:
            h = x.float()
        if self.spec.global_channels:
            assert controls.glob is not None, "this model needs global controls"
            h = torch.cat([h, controls.glob.to(h.dtype)], dim=1)
        h = self.inp(h) + self.level(sinusoidal(noise_level, self.cfg.embed))
        for block in self.blocks:
            h = h + block(h)
        out = self.out(h)
        return out.reshape(b, self.spec.shape[0], self.spec.num_classes) if self.spec.discrete else out


def build_toy_mlp(cfg: ToyMLPConfig, spec: DataSpec) -> ToyMLP:
    return ToyMLP(cfg, spec)
