"""DiscDPM: multinomial diffusion (Hoogeboom et al. 2021; report §2.3.2), all in log space.

Data are class indices ``[B, *shape]`` (int64, K = `num_classes`); the net takes them as they
are (it embeds them) and returns logits of x0, class axis last: ``[B, *shape, K]``.
Timesteps are 1-indexed, ``t = 1..T``; the net sees ``noise_level = t * 1000 / T``.

    q(x_t | x_0)            = Cat(abar_t x_0 + (1 - abar_t) / K)                          (eq. 2.14)
    q(x_s | x_t, x_0), s<t  ∝ [a_{t|s} x_t + (1 - a_{t|s}) / K] ⊙ [abar_s x_0 + (1 - abar_s) / K]
                              with a_{t|s} = abar_t / abar_s  (s = t - 1: eqs. 2.15-2.17)
    p(x_s | x_t)            = q(x_s | x_t, softmax(net(x_t, t)))                          (eq. 2.18)
    loss                    = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t >= 2     (eq. 2.19)
                              and -log p(x_0 | x_1) for t = 1, t ~ U{1..T};
                              in nats per position, averaged over positions and the batch.

Sampling starts from uniform noise at t = T and draws each step by Gumbel-max. With fewer
sampling steps than T it jumps between evenly spaced timesteps (always T, ..., 1, then 0) with the
exact multi-step posterior above, as DDPM's respacing does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pvtbuild.config import _require
from pvtbuild.train.guidance import Controls, Net, guided
from pvtbuild.train.formalisms._common import spaced_timesteps, timestep_level
from pvtbuild.train.formalisms.ddpm import beta_schedule


@dataclass(frozen=True)
class DiscDPMConfig:
    num_classes: int = 1024  # K; the loop fills it from the data (1024 for codes, 40 for the toy)
    timesteps: int = 1000  # T
    schedule: Literal["cosine", "linear"] = "cosine"
    sample_steps: int | None = None  # default sampling steps; None: all T

    def check(self, key: str = "formalism") -> None:
        _require(self.num_classes >= 2, f"{key}.num_classes", f"must be >= 2, got {self.num_classes}")
        _require(self.timesteps >= 2, f"{key}.timesteps", f"must be >= 2, got {self.timesteps}")
        _require(self.schedule in ("cosine", "linear"), f"{key}.schedule", f"must be cosine or linear, got {self.schedule!r}")
        _require(self.schedule == "cosine" or self.timesteps > 20, f"{key}.timesteps",
                 f"the linear schedule (beta 1e-4..0.02 at T = 1000, scaled by 1000 / T) needs T > 20, got {self.timesteps}")
        _require(self.sample_steps is None or 1 <= self.sample_steps <= self.timesteps, f"{key}.sample_steps",
                 f"must be within 1..timesteps ({self.timesteps}), got {self.sample_steps}")


def _log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a <= 0`` (-inf at 0)."""
    return torch.log(-torch.expm1(a))


class DiscDPM:
    def __init__(self, cfg: DiscDPMConfig = DiscDPMConfig()):
        cfg.check()
        self.cfg = cfg
        self.K = cfg.num_classes
        self.T = cfg.timesteps
        betas = beta_schedule(cfg.schedule, cfg.timesteps)  # float64 [T]
        log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self.log_abar = log_abar  # float64 [T + 1], index t (abar_0 = 1)
        self.log_1m_abar = _log1mexp(log_abar)  # index 0: -inf
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._tables:
            self._tables[device] = (self.log_abar.float().to(device), self.log_1m_abar.float().to(device))
        return self._tables[device]

    def noise_level(self, t: Tensor) -> Tensor:
        """What the net sees for 1-indexed timesteps `t`: ``t * 1000 / T`` (float32)."""
        return timestep_level(t, self.T)

    def timesteps_for(self, steps: int) -> Tensor:
        """The sampler's 1-indexed timesteps, evenly spaced, ascending, always 1 and T (int64)."""
        return spaced_timesteps(self.T, steps, "DiscDPM")

    # --- the process --------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)``: keep x0 with probability abar_t, else a uniform class (eq. 2.14)."""
        log_abar, _ = self._on(x0.device)
        keep_p = log_abar[t].exp().reshape(-1, *([1] * (x0.dim() - 1)))
        keep = torch.rand(x0.shape, generator=generator, device=x0.device) < keep_p
        uniform = torch.randint(self.K, x0.shape, generator=generator, device=x0.device)
        return torch.where(keep, x0, uniform)

    def q_posterior_log(self, x_t: Tensor, log_x0: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """``log q(x_s | x_t, x_0)``, normalised over the class axis (last), for ``0 <= s < t``.

        x_t: int64 ``[B, ...]``; log_x0: log-probabilities of x0 ``[B, ..., K]`` (a one-hot's log may hold
        -inf; a net's log-softmax); t, s: int64 ``[B]``, s defaults to t - 1 (eq. 2.15). float32.
        """
        log_abar, log_1m_abar = self._on(x_t.device)
        s = t - 1 if s is None else s
        shape = (-1,) + (1,) * x_t.dim()  # [B, 1, ..., 1] against [B, ..., K]
        log_k = math.log(self.K)
        log_a_ts = (log_abar[t] - log_abar[s]).clamp(max=0).reshape(shape)  # log(abar_t / abar_s)
        log_1m_a_ts = _log1mexp(log_a_ts)
        from_x0 = torch.logaddexp(log_abar[s].reshape(shape) + log_x0.float(), log_1m_abar[s].reshape(shape) - log_k)
        # x_t's factor is (1 - a_{t|s}) / K off x_t's class and a_{t|s} + (1 - a_{t|s}) / K on it:
        # add the first everywhere, then the difference at x_t's class (no [..., K] one-hot needed)
        off = log_1m_a_ts - log_k
        on_minus_off = torch.logaddexp(log_a_ts, off) - off
        unnorm = (from_x0 + off).scatter_add(-1, x_t.unsqueeze(-1), on_minus_off.expand(*x_t.shape, 1))
        return unnorm - torch.logsumexp(unnorm, dim=-1, keepdim=True)

    def log_onehot(self, x: Tensor) -> Tensor:
        """The log of x's one-hot vectors, ``[..., K]`` float32 (0 and -inf)."""
        return torch.where(F.one_hot(x, self.K).bool(), 0.0, -math.inf)

    # --- training -----------------------------------------------------------------------

    def loss(self, net: Net, x0: Tensor, controls: Controls, generator: torch.Generator) -> Tensor:
        x0 = x0.long()
        b = x0.shape[0]
        t = torch.randint(1, self.T + 1, (b,), generator=generator, device=x0.device)
        x_t = self.q_sample(x0, t, generator)
        log_pred = F.log_softmax(net(x_t, self.noise_level(t), controls).float(), dim=-1)
        log_model = self.q_posterior_log(x_t, log_pred, t)  # p(x_{t-1} | x_t), eq. 2.18
        log_true = self.q_posterior_log(x_t, self.log_onehot(x0), t)  # q(x_{t-1} | x_t, x_0), eq. 2.15
        p_true = log_true.exp()
        kl = torch.where(p_true > 0, p_true * (log_true - log_model), 0.0).sum(-1)  # eq. 2.19
        nll = -log_model.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # t = 1: -log p(x_0 | x_1)
        first = (t == 1).reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.where(first, nll, kl).mean()

    # --- sampling -----------------------------------------------------------------------

    @staticmethod
    def _gumbel(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> Tensor:
        tiny = torch.finfo(torch.float32).tiny
        u = torch.rand(shape, generator=generator, device=generator.device).clamp(min=tiny)
        return -torch.log((-torch.log(u)).clamp(min=tiny))

    @torch.no_grad()
    def sample(self, net: Net, shape: tuple[int, ...], controls: Controls, steps: int | None,
               cfg_scale: float, generator: torch.Generator) -> Tensor:
        device = generator.device
        n = (self.cfg.sample_steps or self.T) if steps is None else steps
        ts = self.timesteps_for(n).tolist()
        b = shape[0]
        x = torch.randint(self.K, shape, generator=generator, device=device)  # x_T: uniform
        for t_cur, t_prev in zip(reversed(ts), list(reversed(ts))[1:] + [0]):
            t = torch.full((b,), t_cur, dtype=torch.long, device=device)
            logits = guided(net, x, self.noise_level(t), controls, cfg_scale).float()
            log_post = self.q_posterior_log(x, F.log_softmax(logits, dim=-1), t, torch.full_like(t, t_prev))
            x = (log_post + self._gumbel(log_post.shape, generator)).argmax(dim=-1)  # Gumbel-max draw
        return x
