"""DiscDPM's math as it was before issue 19: what `tests/test_train_formalisms.py` checks the fast form in
`pvtbuild.train.formalisms.discdpm` against, and the baseline `bench/bench_sample.py` and
`bench/bench_train.py` time and measure it against in the same run (they put tests/ on their path).

Not part of pvtbuild: the reference
builds the posterior as a ``[..., K]`` log-distribution with the class axis last (log-space sums over
K), takes the KL against a one-hot's posterior by a sum over K, and draws by Gumbel-max over K. It
takes logits ``[B, C, K, T]`` and moves the class axis last, which is exactly the transposed view the
U-Net returned then.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pvtbuild.train.formalisms.discdpm import DiscDPM


class ReferenceDiscDPM:
    """Today's-before-issue-19 loss and sampling step, reading the schedule tables of the `DiscDPM` it wraps."""

    def __init__(self, d: DiscDPM):
        self.d, self.K, self.T = d, d.K, d.T
        self.log_abar, self.log_1m_abar = d.log_abar.float(), d.log_1m_abar.float()

    def q_posterior_log(self, x_t: Tensor, log_x0: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """``log q(x_s | x_t, x_0)`` ``[B, ..., K]``, normalised over the last axis."""
        s = t - 1 if s is None else s
        shape = (-1,) + (1,) * x_t.dim()
        log_k = math.log(self.K)
        log_a_ts = (self.log_abar[t] - self.log_abar[s]).clamp(max=0).reshape(shape)
        log_1m_a_ts = torch.log(-torch.expm1(log_a_ts))
        from_x0 = torch.logaddexp(self.log_abar[s].reshape(shape) + log_x0.float(),
                                  self.log_1m_abar[s].reshape(shape) - log_k)
        off = log_1m_a_ts - log_k
        on_minus_off = torch.logaddexp(log_a_ts, off) - off
        unnorm = (from_x0 + off).scatter_add(-1, x_t.unsqueeze(-1), on_minus_off.expand(*x_t.shape, 1))
        return unnorm - torch.logsumexp(unnorm, dim=-1, keepdim=True)

    def loss(self, net, x0: Tensor, controls, generator: torch.Generator) -> Tensor:
        """The loss of a batch, drawing t and x_t as `DiscDPM.loss` does (same generator, same draws)."""
        x0 = x0.long()
        t = torch.randint(1, self.T + 1, (x0.shape[0],), generator=generator, device=x0.device)
        x_t = self.d.q_sample(x0, t, generator)
        logits = net(x_t, self.d.noise_level(t), controls)  # [B, C, K, T]
        log_pred = F.log_softmax(logits.movedim(2, -1).float(), dim=-1)
        log_model = self.q_posterior_log(x_t, log_pred, t)
        log_true = self.q_posterior_log(x_t, torch.where(F.one_hot(x0, self.K).bool(), 0.0, -math.inf), t)
        p_true = log_true.exp()
        kl = torch.where(p_true > 0, p_true * (log_true - log_model), 0.0).sum(-1)
        nll = -log_model.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        first = (t == 1).reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.where(first, nll, kl).mean()

    def step(self, x: Tensor, logits: Tensor, t: Tensor, s: Tensor, generator: torch.Generator) -> Tensor:
        """One sampling draw of x_s given x_t = `x` and the net's logits ``[B, C, K, T]``, by Gumbel-max."""
        log_post = self.q_posterior_log(x, F.log_softmax(logits.movedim(2, -1).float(), dim=-1), t, s)
        tiny = torch.finfo(torch.float32).tiny
        u = torch.rand(log_post.shape, generator=generator, device=generator.device).clamp(min=tiny)
        return (log_post - torch.log((-torch.log(u)).clamp(min=tiny))).argmax(dim=-1)
