"""Controls as a batch carries them, control dropout, and classifier-free guidance.

The backbone sees the controls of a batch as one `Controls`: local controls on the
data's time grid, ``[B, C_local, T]``, and optional global ones, ``[B, C_global]``.
Each is the concatenation of named features (velocity: 1 channel, instrument: 3,
...); `local_groups` / `global_groups` give each feature's channel count so that
dropout can null a whole feature. The "unconditional" value is -1, outside every stored
control's range (docs/data-contract.md, "controls"), so a nulled feature never reads as a value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

NULL_VALUE = -1.0

Net = Callable[[Tensor, Tensor, "Controls"], Tensor]


@dataclass(frozen=True)
class Controls:
    """The controls of one batch. Either part may be None (an unconditional model has neither)."""

    local: Tensor | None = None  # [B, C_local, T], T = the data's time frames
    glob: Tensor | None = None  # [B, C_global]
    local_groups: tuple[int, ...] = ()  # channels per local feature, summing to C_local
    global_groups: tuple[int, ...] = ()  # channels per global feature, summing to C_global

    @property
    def empty(self) -> bool:
        return self.local is None and self.glob is None

    def to(self, device: torch.device | str) -> "Controls":
        return replace(self, local=_to(self.local, device), glob=_to(self.glob, device))

    def null(self) -> "Controls":
        """The same controls with every feature set to the unconditional value."""
        return replace(self, local=_fill(self.local), glob=_fill(self.glob))

    def cat(self, other: "Controls") -> "Controls":
        """This batch followed by `other` (same features): the doubled batch of guidance."""
        return replace(self, local=_cat(self.local, other.local), glob=_cat(self.glob, other.glob))

    def select(self, index: Tensor | slice) -> "Controls":
        """The controls of some examples of the batch."""
        return replace(self, local=None if self.local is None else self.local[index],
                       glob=None if self.glob is None else self.glob[index])


def drop_controls(controls: Controls, p_feature: float, p_all: float, generator: torch.Generator) -> Controls:
    """Training-time dropout: each feature of each example is nulled with probability `p_feature`,
    and every feature of an example at once with probability `p_all` (independent draws).

    This is what teaches the model the unconditional prediction that guidance needs; unlike
    LADMG's dropout (at most one example per batch), every example is a candidate.
    """
    if controls.empty or (p_feature <= 0 and p_all <= 0):
        return controls
    first = controls.local if controls.local is not None else controls.glob
    assert first is not None
    batch, device = first.shape[0], first.device
    n_local, n_global = len(controls.local_groups), len(controls.global_groups)
    u = torch.rand((batch, n_local + n_global + 1), generator=generator, device=device)
    drop = (u[:, :-1] < p_feature) | (u[:, -1:] < p_all)  # [B, features]
    return replace(
        controls,
        local=_drop(controls.local, controls.local_groups, drop[:, :n_local]),
        glob=_drop(controls.glob, controls.global_groups, drop[:, n_local:]),
    )


def guided(net: Net, x: Tensor, noise_level: Tensor, controls: Controls, cfg_scale: float) -> Tensor:
    """The network's output under classifier-free guidance, ``F_u + w (F_c - F_u)``, in one doubled batch.

    ``w = 1`` is the plain conditional output (one forward pass); ``w = 0`` the unconditional one.
    Every formalism's prediction (EDM's D, DDPM's epsilon, IADB's x1 - x0, DiscDPM's logits, up to a
    per-position constant that log-softmax removes) is affine in F, so guiding F guides it.
    """
    if controls.empty or cfg_scale == 1.0:
        return net(x, noise_level, controls)
    if cfg_scale == 0.0:
        return net(x, noise_level, controls.null())
    both = net(torch.cat([x, x]), torch.cat([noise_level, noise_level]), controls.cat(controls.null()))
    cond, uncond = both.float().chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def _to(t: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


def _fill(t: Tensor | None) -> Tensor | None:
    return None if t is None else torch.full_like(t, NULL_VALUE)


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None or b is None else torch.cat([a, b])


def _drop(t: Tensor | None, groups: tuple[int, ...], drop: Tensor) -> Tensor | None:
    if t is None:
        return None
    per_channel = torch.repeat_interleave(drop, torch.tensor(groups, device=drop.device), dim=1)  # [B, C]
    mask = per_channel.view(*per_channel.shape, *([1] * (t.dim() - 2)))
    return torch.where(mask, torch.full_like(t, NULL_VALUE), t)
