"""Toy data: the 2-D swiss roll and its quantised twin, for training runs that need no dataset.

`swissroll` is the 2-D swiss roll Manté 2024 (§3.1) trains toys on: the points (x, z) of
``sklearn.datasets.make_swiss_roll(n, noise=0.5)`` divided by 10, drawn here with torch's
generator (the same formula: ``t = 1.5 pi (1 + 2u)``, ``x = t cos t``, ``z = t sin t``, plus
N(0, 0.5^2) noise on each coordinate) so that a run's data follow its seed and torch RNG
state, without scikit-learn. `swissroll_disc` quantises each coordinate to 40 classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pvtbuild.train.spec import DataSpec

DISC_CLASSES = 40
DISC_LOW, DISC_HIGH = -1.5, 1.5  # the quantised range of each coordinate


def _generator(generator_or_seed: torch.Generator | int) -> torch.Generator:
    if isinstance(generator_or_seed, torch.Generator):
        return generator_or_seed
    return torch.Generator().manual_seed(int(generator_or_seed))


def swissroll(n: int, generator_or_seed: torch.Generator | int = 0, noise: float = 0.5) -> Tensor:
    """``[n, 2]`` float32 points of the swiss roll (x, z) / 10, on the generator's device."""
    g = _generator(generator_or_seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, device=g.device))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    pts = pts + noise * torch.randn((n, 2), generator=g, device=g.device)
    return (pts / 10).float()


def points_to_disc(points: Tensor, num_classes: int = DISC_CLASSES) -> Tensor:
    """Each coordinate's class, ``clip(floor((v + 1.5) / 3 * K), 0, K - 1)`` (int64)."""
    cls = torch.floor((points - DISC_LOW) / (DISC_HIGH - DISC_LOW) * num_classes)
    return cls.clamp(0, num_classes - 1).long()


def disc_to_points(classes: Tensor, num_classes: int = DISC_CLASSES) -> Tensor:
    """The centres of the classes' cells (float32): the inverse of `points_to_disc` up to the cell."""
    return ((classes.float() + 0.5) * (DISC_HIGH - DISC_LOW) / num_classes + DISC_LOW).float()


def swissroll_disc(n: int, generator_or_seed: torch.Generator | int = 0, num_classes: int = DISC_CLASSES) -> Tensor:
    """``[n, 2]`` int64 classes: `swissroll` quantised per coordinate."""
    return points_to_disc(swissroll(n, generator_or_seed), num_classes)


# name -> (draw(n, seed), spec): the toys `data.toy` may name, in the order its error lists them
TOYS = {"swissroll": (swissroll, DataSpec(shape=(2,))),
        "swissroll-disc": (swissroll_disc, DataSpec(shape=(2,), num_classes=DISC_CLASSES))}
