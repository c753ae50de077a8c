"""EDM (Karras, Aittala, Aila & Laine 2022): preconditioned denoiser, Heun sampler.

The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (eq. 2.13) with

    c_skip = sd^2 / (sigma^2 + sd^2)      c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)     c_noise = ln(sigma) / 4

(sd = `sigma_data`, the data's standard deviation). Training draws ``ln sigma ~ N(P_mean, P_std^2)``
and weighs the squared error by ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2``, so
the network's effective target ``(x0 - c_skip x) / c_out`` has unit variance at every sigma.
Sampling is EDM's Algorithm 2 (Heun, 2nd order, optional churn), in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pvtbuild.config import require
from pvtbuild.errors import ConfigError
from pvtbuild.train.formalisms._common import batch_of, per_example
from pvtbuild.train.guidance import Controls, Net, guided


@dataclass(frozen=True)
class EDMConfig:
    sigma_data: float = 0.5  # the data's std; the loop measures it on the dataset
    P_mean: float = -1.2  # training: ln(sigma) ~ N(P_mean, P_std^2)
    P_std: float = 1.2
    sample_steps: int = 18  # N: noise levels of the sampler (2N - 1 net evaluations)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 0.0  # stochasticity of the sampler (0: deterministic ODE)
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0

    def check(self, key: str = "formalism") -> None:
        require(self.sigma_data > 0, f"{key}.sigma_data", f"must be > 0, got {self.sigma_data}")
        require(self.P_std > 0, f"{key}.P_std", f"must be > 0, got {self.P_std}")
        require(self.sample_steps >= 1, f"{key}.sample_steps", f"must be >= 1, got {self.sample_steps}")
        require(0 < self.sigma_min < self.sigma_max, f"{key}.sigma_min",
                 f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        require(self.rho > 0, f"{key}.rho", f"must be > 0, got {self.rho}")
        require(self.S_churn >= 0, f"{key}.S_churn", f"must be >= 0, got {self.S_churn}")
        require(0 <= self.S_min <= self.S_max, f"{key}.S_min",
                f"need 0 <= S_min <= S_max, got {self.S_min}, {self.S_max}")
        require(self.S_noise > 0, f"{key}.S_noise", f"must be > 0, got {self.S_noise}")


class EDM:
    def __init__(self, cfg: EDMConfig = EDMConfig()):
        cfg.check()
        self.cfg = cfg

    # --- preconditioning (sigma: a tensor of any shape) ---------------------------------

    def c_skip(self, sigma: Tensor) -> Tensor:
        sd2 = self.cfg.sigma_data ** 2
        return sd2 / (sigma ** 2 + sd2)

    def c_out(self, sigma: Tensor) -> Tensor:
        sd = self.cfg.sigma_data
        return sigma * sd / (sigma ** 2 + sd ** 2).sqrt()

    def c_in(self, sigma: Tensor) -> Tensor:
        return 1 / (sigma ** 2 + self.cfg.sigma_data ** 2).sqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        return sigma.log() / 4

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``."""
        sd = self.cfg.sigma_data
        return (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2

    def denoise(self, net: Net, x: Tensor, sigma: float | Tensor, controls: Controls, cfg_scale: float = 1.0) -> Tensor:
        """``D(x; sigma)`` in float32, with classifier-free guidance on F (D is affine in F)."""
        x = x.float()
        s = batch_of(sigma, x.shape[0], x.device)  # [B]
        sb = per_example(s, x)
        f = guided(net, self.c_in(sb) * x, self.c_noise(s), controls, cfg_scale).float()
        return self.c_skip(sb) * x + self.c_out(sb) * f

    # --- training -----------------------------------------------------------------------

    def loss(self, net: Net, x0: Tensor, controls: Controls, generator: torch.Generator) -> Tensor:
        x0 = x0.float()
        b = x0.shape[0]
        z = torch.randn((b,), generator=generator, device=x0.device)
        sigma = (z * self.cfg.P_std + self.cfg.P_mean).exp()
        n = torch.randn(x0.shape, generator=generator, device=x0.device) * per_example(sigma, x0)
        d = self.denoise(net, x0 + n, sigma, controls, 1.0)
        return (per_example(self.loss_weight(sigma), x0) * (d - x0) ** 2).mean()

    # --- sampling -----------------------------------------------------------------------

    def sigmas(self, steps: int | None = None) -> Tensor:
        """Karras et al.'s noise levels ``sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min``, then 0
        (float32, N + 1)."""
        n = self.cfg.sample_steps if steps is None else steps
        if n < 1:
            raise ConfigError(f"steps: must be >= 1, got {n}")
        c = self.cfg
        if n == 1:
            s = torch.tensor([c.sigma_max], dtype=torch.float64)
        else:
            i = torch.arange(n, dtype=torch.float64)
            lo, hi = c.sigma_min ** (1 / c.rho), c.sigma_max ** (1 / c.rho)
            s = (hi + i / (n - 1) * (lo - hi)) ** c.rho
        return torch.cat([s, s.new_zeros(1)]).float()

    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...], controls: Controls, steps: int | None,
               cfg_scale: float, generator: torch.Generator) -> Tensor:
        c = self.cfg
        device = generator.device
        t = self.sigmas(steps).tolist()
        n = len(t) - 1
        gamma_max = min(c.S_churn / n, math.sqrt(2) - 1)
        x = torch.randn(shape, generator=generator, device=device) * t[0]
        for i in range(n):
            t_cur, t_next = t[i], t[i + 1]
            gamma = gamma_max if c.S_min <= t_cur <= c.S_max else 0.0
            t_hat = t_cur + gamma * t_cur
            if gamma > 0:
                eps = torch.randn(shape, generator=generator, device=device)
                x = x + math.sqrt(t_hat ** 2 - t_cur ** 2) * c.S_noise * eps
            d = (x - self.denoise(net, x, t_hat, controls, cfg_scale)) / t_hat
            x_next = x + (t_next - t_hat) * d
            if t_next > 0:  # Heun's correction
                d2 = (x_next - self.denoise(net, x_next, t_next, controls, cfg_scale)) / t_next
                x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d2)
            x = x_next
        return x
