"""Iterative alpha-(de)blending (Heitz, Belcour & Chambon 2023), as LADMG uses it.

Naming: in IADB's paper ``x0`` is the noise and ``x1`` the data. This interface's `x0`
argument (of `loss`) is, as for every formalism here, the *data* sample; below the noise
is called ``noise`` and the data ``data`` to avoid the clash:

    x_alpha = (1 - alpha) noise + alpha data,   alpha ~ U[0, 1],   noise ~ N(0, I)
    the net predicts  data - noise  (IADB's x1 - x0), trained with MSE;
    sampling: alpha_k = k / N,  x_{alpha_{k+1}} = x_{alpha_k} + (alpha_{k+1} - alpha_k) D(x_{alpha_k}, alpha_k),
    from x_{alpha_0} = noise to alpha_N = 1 exactly.

The net sees ``noise_level = alpha * 1000``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pvtbuild.config import require
from pvtbuild.errors import ConfigError
from pvtbuild.train.formalisms._common import per_example
from pvtbuild.train.guidance import Controls, Net, guided


@dataclass(frozen=True)
class IADBConfig:
    sample_steps: int = 128  # N deterministic blending steps

    def check(self, key: str = "formalism") -> None:
        require(self.sample_steps >= 1, f"{key}.sample_steps", f"must be >= 1, got {self.sample_steps}")


class IADB:
    def __init__(self, cfg: IADBConfig = IADBConfig()):
        cfg.check()
        self.cfg = cfg

    def alphas(self, steps: int | None = None) -> Tensor:
        """The sampler's grid ``alpha_k = k / N``, k = 0..N (float64, N + 1 values, last exactly 1.0)."""
        n = self.cfg.sample_steps if steps is None else steps
        if n < 1:
            raise ConfigError(f"steps: must be >= 1, got {n}")
        return torch.arange(n + 1, dtype=torch.float64) / n

    def loss(self, net: Net, x0: Tensor, controls: Controls, generator: torch.Generator) -> Tensor:
        data = x0.float()  # IADB's x1
        noise = torch.randn(data.shape, generator=generator, device=data.device)  # IADB's x0
        alpha = torch.rand((data.shape[0],), generator=generator, device=data.device)
        a = per_example(alpha, data)
        x_alpha = (1 - a) * noise + a * data
        pred = net(x_alpha, alpha * 1000.0, controls).float()
        return ((pred - (data - noise)) ** 2).mean()

    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...], controls: Controls, steps: int | None,
               cfg_scale: float, generator: torch.Generator) -> Tensor:
        device = generator.device
        grid = self.alphas(steps).tolist()
        x = torch.randn(shape, generator=generator, device=device)
        for a_cur, a_next in zip(grid[:-1], grid[1:]):
            level = torch.full((shape[0],), a_cur * 1000.0, device=device)
            x = x + (a_next - a_cur) * guided(net, x, level, controls, cfg_scale).float()
        return x
