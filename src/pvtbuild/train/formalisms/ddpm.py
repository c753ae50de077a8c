"""DDPM (Ho, Jain & Abbeel 2020): epsilon-prediction, ancestral sampling.

Timesteps are 1-indexed, ``t = 1..T``; the net sees ``noise_level = t * 1000 / T``.
Sampling may use fewer steps than training: an evenly spaced subset of the timesteps
(always keeping 1 and T) with the betas recomputed from the kept alpha-bars, as in
improved DDPM's respacing (Nichol & Dhariwal 2021): the respaced chain has exactly
the original marginals ``q(x_t | x_0)`` at every kept step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pvtbuild.config import require
from pvtbuild.train.formalisms._common import per_example, spaced_timesteps, timestep_level
from pvtbuild.train.guidance import Controls, Net, guided


@dataclass(frozen=True)
class DDPMConfig:
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = 1000  # T, training steps
    sample_steps: int = 100  # default sampling steps (respaced), 1..T
    beta_start: float = 1e-4  # linear schedule, for T = 1000 (scaled by 1000 / T otherwise)
    beta_end: float = 0.02
    cosine_s: float = 0.008  # cosine schedule offset (Nichol & Dhariwal)

    def check(self, key: str = "formalism") -> None:
        require(self.schedule in ("linear", "cosine"), f"{key}.schedule",
                f"must be linear or cosine, got {self.schedule!r}")
        require(self.timesteps >= 2, f"{key}.timesteps", f"must be >= 2, got {self.timesteps}")
        require(1 <= self.sample_steps <= self.timesteps, f"{key}.sample_steps",
                 f"must be within 1..timesteps ({self.timesteps}), got {self.sample_steps}")
        require(0 < self.beta_start <= self.beta_end, f"{key}.beta_start",
                 f"need 0 < beta_start <= beta_end, got {self.beta_start}, {self.beta_end}")
        require(self.beta_end * 1000 / self.timesteps < 1, f"{key}.beta_end",
                 f"beta_end * 1000 / timesteps must be < 1, got {self.beta_end * 1000 / self.timesteps}")
        require(self.cosine_s > 0, f"{key}.cosine_s", f"must be > 0, got {self.cosine_s}")


def beta_schedule(schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                  cosine_s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """``beta_t`` for ``t = 1..T`` (float64, index ``t - 1``).

    linear: evenly spaced from beta_start to beta_end, both scaled by ``1000 / T`` so that any T
    ends near alpha-bar 0 (improved DDPM), at most max_beta. cosine: ``alpha-bar(t) = f(t) / f(0)``,
    ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)``, ``beta_t = min(1 - alpha-bar_t / alpha-bar_{t-1}, max_beta)``.
    """
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64).clamp(max=max_beta)
    if schedule == "cosine":
        t = torch.arange(timesteps + 1, dtype=torch.float64)
        f = torch.cos((t / timesteps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    raise ValueError(f"unknown beta schedule {schedule!r}")


class DDPM:
    """Epsilon-prediction DDPM: ``loss = E ||eps - net(x_t, t)||^2`` (eq. 2.5), sampler eq. 2.6."""

    def __init__(self, cfg: DDPMConfig = DDPMConfig()):
        cfg.check()
        self.cfg = cfg
        self.T = cfg.timesteps
        self.betas = beta_schedule(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end, cfg.cosine_s)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)  # float64 [T], index t - 1
        self._abar_on: dict[torch.device, Tensor] = {}  # float32 copies per device

    def noise_level(self, t: Tensor) -> Tensor:
        """What the net sees for 1-indexed timesteps `t`: ``t * 1000 / T`` (float32)."""
        return timestep_level(t, self.T)

    def timesteps_for(self, steps: int) -> Tensor:
        """The sampler's 1-indexed timesteps, evenly spaced, ascending, always 1 and T (int64)."""
        return spaced_timesteps(self.T, steps, "DDPM")

    def respaced(self, steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """(kept timesteps, their betas, their alpha-bars) for a `steps`-step chain (float64).

        The alpha-bars are the original ones at the kept steps; ``beta'_i = 1 - abar'_i / abar'_{i-1}``.
        """
        ts = self.timesteps_for(steps)
        abar = self.alphas_cumprod[ts - 1]
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return ts, 1 - abar / prev, abar

    def loss(self, net: Net, x0: Tensor, controls: Controls, generator: torch.Generator) -> Tensor:
        x0 = x0.float()
        b = x0.shape[0]
        t = torch.randint(1, self.T + 1, (b,), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        if x0.device not in self._abar_on:
            self._abar_on[x0.device] = self.alphas_cumprod.float().to(x0.device)
        abar = per_example(self._abar_on[x0.device][t - 1], x0)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        pred = net(x_t, self.noise_level(t), controls).float()
        return ((pred - eps) ** 2).mean()

    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...], controls: Controls, steps: int | None,
               cfg_scale: float, generator: torch.Generator) -> Tensor:
        device = generator.device
        ts, betas, abars = self.respaced(self.cfg.sample_steps if steps is None else steps)
        x = torch.randn(shape, generator=generator, device=device)
        b = shape[0]
        for i in reversed(range(len(ts))):
            beta, abar = float(betas[i]), float(abars[i])
            level = self.noise_level(torch.full((b,), int(ts[i]), device=device))
            eps = guided(net, x, level, controls, cfg_scale).float()
            x = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(1 - beta)
            if i > 0:  # posterior variance beta~ = beta (1 - abar_prev) / (1 - abar)
                var = beta * (1 - float(abars[i - 1])) / (1 - abar)
                x = x + math.sqrt(var) * torch.randn(shape, generator=generator, device=device)
        return x
