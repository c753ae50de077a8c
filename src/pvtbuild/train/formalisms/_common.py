"""Small helpers the formalisms share (not part of their interface)."""

from __future__ import annotations

import torch
from torch import Tensor

from pvtbuild.errors import ConfigError


def per_example(v: Tensor, x: Tensor) -> Tensor:
    """A per-example value ``[B]`` shaped to broadcast against ``x`` ``[B, ...]`` (float32)."""
    return v.float().reshape(v.shape[0], *([1] * (x.dim() - 1)))


def batch_of(value: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """A scalar or ``[B]`` value as a ``[B]`` float32 tensor on `device`."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    return t.expand(batch).clone() if t.dim() == 0 else t.reshape(batch).clone()


def timestep_level(t: Tensor, timesteps: int) -> Tensor:
    """What the net sees for 1-indexed timesteps `t` of a `timesteps`-step chain: ``t * 1000 / T`` (float32)."""
    return t.float() * (1000.0 / timesteps)


def spaced_timesteps(timesteps: int, steps: int, who: str) -> Tensor:
    """The 1-indexed timesteps a `steps`-step sampler visits, evenly spaced, ascending, always 1 and T (int64)."""
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"steps: must be within 1..{timesteps} for this {who}, got {steps}")
    if steps == 1:
        return torch.tensor([timesteps])
    stride = (timesteps - 1) / (steps - 1)
    return torch.tensor([round(i * stride) + 1 for i in range(steps)], dtype=torch.long)
