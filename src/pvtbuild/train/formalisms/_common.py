"""Small helpers the formalisms share (not part of their interface)."""

from __future__ import annotations

import torch
from torch import Tensor


def per_example(v: Tensor, x: Tensor) -> Tensor:
    """A per-example value ``[B]`` shaped to broadcast against ``x`` ``[B, ...]`` (float32)."""
    return v.float().reshape(v.shape[0], *([1] * (x.dim() - 1)))


def batch_of(value: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """A scalar or ``[B]`` value as a ``[B]`` float32 tensor on `device`."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    return t.expand(batch).clone() if t.dim() == 0 else t.reshape(batch).clone()
