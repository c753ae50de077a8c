"""DiscDPM: multinomial diffusion (Hoogeboom et al. 2021).

Data are class indices ``[B, C, *rest]`` (int64, K = `num_classes`); the net takes them as they
are (it embeds them) and returns logits of x0 with the class axis at dim 2, ``[B, C, K, *rest]``
(the U-Net's output convolution emits ``[B, C * K, T]``, so that layout is a free view and every
reduction over K below runs over a contiguous axis, with no transposed copies).
Timesteps are 1-indexed, ``t = 1..T``; the net sees ``noise_level = t * 1000 / T``.

    q(x_t | x_0)            = Cat(abar_t x_0 + (1 - abar_t) / K)                          (eq. 2.14)
    q(x_s | x_t, x_0), s<t  ∝ [a x_t + u_t] ⊙ [b x_0 + u_s],  a = abar_t / abar_s, b = abar_s,
                              u_t = (1 - a) / K, u_s = (1 - b) / K   (s = t - 1: eqs. 2.15-2.17)
    p(x_s | x_t)            = q(x_s | x_t, pi),  pi = softmax(net(x_t, t))                (eq. 2.18)
    loss                    = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t >= 2     (eq. 2.19)
                              and -log p(x_0 | x_1) for t = 1, t ~ U{1..T};
                              in nats per position, averaged over positions and the batch.

Both are computed from per-position scalars, never from ``[..., K]`` distributions. Write
``m_k = b pi_k + u_s`` (it sums to 1 over k). The posterior's unnormalised mass is
``u_t m_k + a m_{x_t} [k = x_t]``, whose sum is ``Z = u_t + a m_{x_t}``: so p(x_s | x_t) is the
mixture "keep x_t with probability ``a m_{x_t} / Z``, else draw from m", and a draw from m is
"from pi with probability b, else uniform". A sampling step is one logsumexp (for pi_{x_t}), one
gather and, only at the positions that draw from pi, one categorical draw.
The true posterior has the same form with pi the one-hot of x_0, so (the x_t factor cancels)
``KL = sum_k q_k log(m~_k / m_k) + log(Z_p / Z_q)``; with ``D_k = log(m_k / u_s) = log1p(r pi_k)``,
``r = b / u_s``, it needs one reduction over K, ``R = sum_k D_k``, plus pi at x_0 and x_t
(`_class_terms`, computed in chunks so the loss makes no ``[B, C, K, T]`` temporaries).

Sampling starts from uniform noise at t = T. With fewer sampling steps than T it jumps between
evenly spaced timesteps (always T, ..., 1, then 0) with the exact multi-step posterior above (it
is exact for any s < t, not an approximation), as DDPM's respacing does; the default is 100 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from pvtbuild.config import require
from pvtbuild.train.formalisms._common import spaced_timesteps, timestep_level
from pvtbuild.train.formalisms.ddpm import beta_schedule
from pvtbuild.train.guidance import Controls, Net, guided

CLASS_AXIS = 2  # logits [B, C, K, *rest]
_CHUNK_ELEMENTS = 1 << 22  # elements of logits per chunk of the loss's class reductions (16 MB of float32)


@dataclass(frozen=True)
class DiscDPMConfig:
    num_classes: int = 1024  # K; the loop fills it from the data (1024 for codes, 40 for the toy)
    timesteps: int = 1000  # T
    schedule: Literal["cosine", "linear"] = "cosine"
    # default sampling steps, 1..T: the skip posterior is exact, so 100 jumps lose no exactness, only the
    # per-step refinement of the net's prediction; None: all T (the default before it was 100: old checkpoints say so)
    sample_steps: int | None = 100

    def check(self, key: str = "formalism") -> None:
        require(self.num_classes >= 2, f"{key}.num_classes", f"must be >= 2, got {self.num_classes}")
        require(self.timesteps >= 2, f"{key}.timesteps", f"must be >= 2, got {self.timesteps}")
        require(self.schedule in ("cosine", "linear"), f"{key}.schedule",
                f"must be cosine or linear, got {self.schedule!r}")
        require(self.schedule == "cosine" or self.timesteps > 20, f"{key}.timesteps",
                f"the linear schedule (beta 1e-4..0.02 at T = 1000, scaled by 1000 / T) needs T > 20, "
                f"got {self.timesteps}")
        require(self.sample_steps is None or 1 <= self.sample_steps <= self.timesteps, f"{key}.sample_steps",
                 f"must be within 1..timesteps ({self.timesteps}), got {self.sample_steps}")


def _log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a <= 0`` (-inf at 0)."""
    return torch.log(-torch.expm1(a))


@dataclass(frozen=True)
class _Step:
    """The log-coefficients of a jump from t to s < t, per example, shaped ``[B, 1, ...]`` against x."""

    log_a: Tensor  # log(abar_t / abar_s)
    log_ut: Tensor  # log((1 - a) / K)
    log_b: Tensor  # log(abar_s)
    log_us: Tensor  # log((1 - b) / K); -inf at s = 0


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
            self._tables[device] = (self.log_abar.to(device), self.log_1m_abar.to(device))
        return self._tables[device]

    def noise_level(self, t: Tensor) -> Tensor:
        """What the net sees for 1-indexed timesteps `t`: ``t * 1000 / T`` (float32)."""
        return timestep_level(t, self.T)

    def timesteps_for(self, steps: int) -> Tensor:
        """The sampler's 1-indexed timesteps, evenly spaced, ascending, always 1 and T (int64)."""
        return spaced_timesteps(self.T, steps, "DiscDPM")

    def _step(self, t: Tensor, s: Tensor, x: Tensor, dtype: torch.dtype = torch.float32) -> _Step:
        """The jump t -> s's coefficients from the float64 tables, per example, as `dtype`."""
        log_abar, log_1m_abar = self._on(t.device)
        shape = (-1,) + (1,) * (x.dim() - 1)
        log_a = (log_abar[t] - log_abar[s]).clamp(max=0)
        log_k = math.log(self.K)
        parts = (log_a, _log1mexp(log_a) - log_k, log_abar[s], log_1m_abar[s] - log_k)
        return _Step(*(p.to(dtype).reshape(shape) for p in parts))

    # --- the process --------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)``: keep x0 with probability abar_t, else a uniform class (eq. 2.14)."""
        log_abar, _ = self._on(x0.device)
        keep_p = log_abar[t].float().exp().reshape(-1, *([1] * (x0.dim() - 1)))
        keep = torch.rand(x0.shape, generator=generator, device=x0.device) < keep_p
        uniform = torch.randint(self.K, x0.shape, generator=generator, device=x0.device)
        return torch.where(keep, x0, uniform)

    def posterior(self, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``p(x_s | x_t)`` (eq. 2.18, any ``0 <= s < t``) as its exact mixture: keep x_t with probability
        ``keep`` ``[B, C, *rest]``, else draw from pi with probability ``b`` ``[B, 1, ...]``, else uniformly.

        ``keep = a m_{x_t} / (u_t + a m_{x_t})`` with ``m_{x_t} = b pi_{x_t} + u_s`` (module docstring);
        logits ``[B, C, K, *rest]``, x_t int64 ``[B, C, *rest]``, t and s int64 ``[B]``. float32.
        """
        c = self._step(t, s, x_t)
        logits = logits.float()
        log_pi_xt = (logits.gather(CLASS_AXIS, x_t.unsqueeze(CLASS_AXIS)).squeeze(CLASS_AXIS)
                     - torch.logsumexp(logits, dim=CLASS_AXIS))
        log_kept = c.log_a + torch.logaddexp(c.log_b + log_pi_xt, c.log_us)  # log(a m_{x_t})
        return (log_kept - torch.logaddexp(c.log_ut, log_kept)).exp(), c.log_b.exp()

    # --- training -----------------------------------------------------------------------

    def loss(self, net: Net, x0: Tensor, controls: Controls, generator: torch.Generator) -> Tensor:
        x0 = x0.long()
        t = torch.randint(1, self.T + 1, (x0.shape[0],), generator=generator, device=x0.device)
        x_t = self.q_sample(x0, t, generator)
        logits = net(x_t, self.noise_level(t), controls)  # [B, C, K, *rest]
        first = (t == 1).reshape(-1, *([1] * (x0.dim() - 1)))
        # float64 for the per-position algebra (no [.., K] tensor): the KL is a sum of terms up to
        # log1p(r) ~ 20 that nearly cancel when the model is good, which float32 leaves ~1e-6 off
        c = self._step(t, t - 1, x0, torch.float64)
        # r = b / u_s is infinite at t = 1 (u_s = 0), whose positions take the NLL: 0 there keeps the
        # KL branch finite, so that torch.where passes no NaN gradient from it
        log_us = torch.where(first, 0.0, c.log_us)
        r = torch.where(first, 0.0, (c.log_b - log_us).exp())
        log_pi0, log_pit, big_r = (v.double() for v in _class_terms(logits, x0, x_t, r.float()))
        same = x0 == x_t
        nll = -(log_pi0 + torch.where(same, torch.logaddexp(c.log_ut, c.log_a), c.log_ut)
                - torch.logaddexp(c.log_ut, c.log_a + log_pit))  # t = 1: -log p(x_0 | x_1), b = 1, m = pi
        kl = _kl(c.log_a, c.log_ut, log_us, r, log_pi0, log_pit, big_r, same)  # eq. 2.19
        return torch.where(first, nll, kl).mean().float()

    # --- sampling -----------------------------------------------------------------------

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
            logits = guided(net, x, self.noise_level(t), controls, cfg_scale)
            keep, from_pi = self.posterior(x, logits, t, torch.full_like(t, t_prev))
            x = self.draw(x, logits, keep, from_pi, generator)
        return x

    def draw(self, x: Tensor, logits: Tensor, keep: Tensor, from_pi: Tensor, generator: torch.Generator) -> Tensor:
        """One draw of the mixture `posterior` returns. Three uniforms and one uniform class per position,
        whatever is drawn, so the random stream (and a seeded result) never depends on the branches."""
        u = torch.rand((3, *x.shape), generator=generator, device=x.device)
        uniform = torch.randint(self.K, x.shape, generator=generator, device=x.device)
        kept = u[0] < keep
        out = torch.where(kept, x, uniform)
        need = ~kept & (u[1] < from_pi)
        out[need] = _categorical(logits.movedim(CLASS_AXIS, -1)[need], u[2][need])
        return out


def _categorical(logits: Tensor, u: Tensor) -> Tensor:
    """Class draws from rows of logits ``[N, K]`` by inverting each row's CDF at its uniform `u` ``[N]``."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
    k = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return k.clamp_(max=logits.shape[-1] - 1)


def _kl(log_a: Tensor, log_ut: Tensor, log_us: Tensor, r: Tensor, log_pi0: Tensor, log_pit: Tensor,
        big_r: Tensor, same: Tensor) -> Tensor:
    """``KL(q(x_s | x_t, x_0) || p(x_s | x_t))`` per position from per-position terms (module docstring):
    ``q_{x0} log1p(r) - sum_k q_k D_k + log Z_p - log Z_q``, where q is c0 everywhere except at x_0 and x_t.
    Every tensor is float64 and broadcasts against ``[B, C, *rest]``; `big_r` is ``sum_k D_k``."""
    d0, dt = torch.log1p(r * log_pi0.exp()), torch.log1p(r * log_pit.exp())  # D at x_0 and x_t
    log1p_r = torch.log1p(r)
    log_zp = torch.logaddexp(log_ut, log_a + log_us + dt)  # log(u_t + a m_{x_t})
    log_zq = torch.logaddexp(log_ut, log_a + log_us + torch.where(same, log1p_r, 0.0))  # with m~_{x_t}
    c0 = (log_ut + log_us - log_zq).exp()  # q at any class other than x_0 and x_t: u_t u_s / Z_q
    q0 = (log_us + log1p_r + torch.where(same, torch.logaddexp(log_ut, log_a), log_ut) - log_zq).exp()
    qt = torch.where(same, c0, (log_us + torch.logaddexp(log_ut, log_a) - log_zq).exp())  # (x_t != x_0 only)
    q_dot_d = c0 * big_r + (q0 - c0) * d0 + (qt - c0) * dt
    return q0 * log1p_r - q_dot_d + log_zp - log_zq


def _class_terms(logits: Tensor, x0: Tensor, x_t: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``log pi_{x0}``, ``log pi_{x_t}`` and ``R = sum_k log1p(r pi_k)`` per position ``[B, C, *rest]`` (float32),
    for logits ``[B, C, K, *rest]`` and per-example `r` ``[B, 1, ...]``: the loss's only passes over K."""
    b, c, k = logits.shape[:3]
    rows = logits.reshape(b * c, k, -1)  # a view for the U-Net's output
    flat = (x0.reshape(b * c, -1), x_t.reshape(b * c, -1))
    per_row = r.reshape(b, 1).expand(b, c).reshape(b * c, 1, 1)
    outs = _ClassTerms.apply(rows, *flat, per_row)
    return tuple(o.reshape(x0.shape) for o in outs)  # type: ignore[return-value]


def _chunks(rows: Tensor) -> list[slice]:
    """Row slices of ``[N, K, P]`` holding about `_CHUNK_ELEMENTS` elements each (at least one row)."""
    n, per_row = rows.shape[0], rows[0].numel()
    step = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    return [slice(i, i + step) for i in range(0, n, step)]


class _ClassTerms(torch.autograd.Function):
    """`_class_terms` on rows ``[N, K, P]``, chunk by chunk in both passes: autograd through plain ops would
    keep several ``[N, K, P]`` float32 tensors alive for the backward pass (log-softmax, its shifted copy,
    log1p's input), each as large as the logits (629 MB at batch 16 of [16, 600] codes). This keeps the
    logits and ``[N, P]`` log-sum-exps, and builds the one gradient the logits need:
    ``dR (w - pi sum_k w_k) + g0 (onehot_{x0} - pi) + gt (onehot_{x_t} - pi)``, ``w = r pi / (1 + r pi)``."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, i0: Tensor, it: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, _, p = rows.shape
        lse = rows.new_empty((n, p), dtype=torch.float32)
        big_r = torch.empty_like(lse)
        for sl in _chunks(rows):
            chunk = rows[sl].float()
            lse[sl] = torch.logsumexp(chunk, dim=1)
            pi = chunk.sub(lse[sl].unsqueeze(1)).exp_()
            big_r[sl] = pi.mul_(r[sl]).log1p_().sum(1)
        ctx.save_for_backward(rows, i0, it, r, lse)
        gathered = [rows.gather(1, i.unsqueeze(1)).squeeze(1).float() - lse for i in (i0, it)]
        return gathered[0], gathered[1], big_r

    @staticmethod
    def backward(ctx: Any, g0: Tensor, gt: Tensor, g_r: Tensor) -> tuple[Tensor | None, ...]:
        rows, i0, it, r, lse = ctx.saved_tensors
        grad = torch.empty_like(rows)
        for sl in _chunks(rows):
            pi = (rows[sl].float() - lse[sl].unsqueeze(1)).exp_()  # out of place: .float() may be rows itself
            rp = pi * r[sl]
            w = rp.div_(rp + 1)  # r pi / (1 + r pi)
            total = (g_r[sl] * w.sum(1) + g0[sl] + gt[sl]).unsqueeze(1)  # what every class's pi is scaled by
            g = w.mul_(g_r[sl].unsqueeze(1)).sub_(pi.mul_(total))
            g.scatter_add_(1, i0[sl].unsqueeze(1), g0[sl].unsqueeze(1))
            g.scatter_add_(1, it[sl].unsqueeze(1), gt[sl].unsqueeze(1))
            grad[sl] = g
        return grad, None, None, None
