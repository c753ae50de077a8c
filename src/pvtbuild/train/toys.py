"""Toy data, the toy backbone and the sample metrics (report §3.1).

`swissroll` is the 2-D swiss roll of the report: the points (x, z) of
``sklearn.datasets.make_swiss_roll(n, noise=0.5)`` divided by 10, drawn here with torch's
generator (the same formula: ``t = 1.5 pi (1 + 2u)``, ``x = t cos t``, ``z = t sin t``, plus
N(0, 0.5^2) noise on each coordinate) so that a run's data follow its seed and torch RNG
state, without scikit-learn. `swissroll_disc` quantises each coordinate to 40 classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pvtbuild.config import require
from pvtbuild.train.data import DataSpec
from pvtbuild.train.guidance import Controls

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


TOYS = {"swissroll": (swissroll, DataSpec(shape=(2,))),
        "swissroll-disc": (swissroll_disc, DataSpec(shape=(2,), num_classes=DISC_CLASSES))}


# --- the toy backbone -------------------------------------------------------------------


@dataclass(frozen=True)
class ToyMLPConfig:
    hidden: int = 128
    layers: int = 4  # hidden layers (residual SiLU blocks)
    embed: int = 64  # noise-level embedding width (sinusoidal), and class embedding width (discrete)

    def check(self, key: str = "model") -> None:
        require(self.hidden >= 1, f"{key}.hidden", f"must be >= 1, got {self.hidden}")
        require(self.layers >= 1, f"{key}.layers", f"must be >= 1, got {self.layers}")
        require(self.embed >= 2 and self.embed % 2 == 0, f"{key}.embed", f"must be an even number >= 2, got {self.embed}")


def sinusoidal(level: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[B, dim]`` sin/cos features of a ``[B]`` noise level (frequencies 1 .. 1 / max_period)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=level.device) / max(half - 1, 1))
    arg = level.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class ToyMLP(nn.Module):
    """``F(x, noise_level, controls)`` for data of shape ``(D,)``: an MLP with residual SiLU blocks.

    Continuous data: x ``[B, D]`` float -> ``[B, D]``. Discrete data (``num_classes = K > 0``):
    x ``[B, D]`` int64, each position's class embedded -> logits ``[B, D, K]``. Global controls,
    if the spec has any, are concatenated to the input; toys have none.
    """

    def __init__(self, cfg: ToyMLPConfig, spec: DataSpec):
        super().__init__()
        cfg.check()
        require(len(spec.shape) == 1, "data.shape", f"the toy MLP takes 1-D examples, got {spec.shape}")
        require(spec.local_channels == 0, "controls", "the toy MLP takes no local controls")
        self.cfg, self.spec = cfg, spec
        d, k = spec.shape[0], spec.num_classes
        if k > 0:
            self.embed_x: nn.Module = nn.Embedding(d * k, cfg.embed)
            self.register_buffer("offsets", torch.arange(d) * k, persistent=False)
            width_in = d * cfg.embed
        else:
            self.embed_x = nn.Identity()
            width_in = d
        self.inp = nn.Linear(width_in + spec.global_channels, cfg.hidden)
        self.level = nn.Sequential(nn.Linear(cfg.embed, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden)) for _ in range(cfg.layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, d * max(k, 1)))

    def forward(self, x: Tensor, noise_level: Tensor, controls: Controls) -> Tensor:
        b = x.shape[0]
        if self.spec.discrete:
            h = self.embed_x(x.long() + self.offsets).reshape(b, -1)
        else:
            h = x.float()
        if self.spec.global_channels:
            assert controls.glob is not None, "this model needs global controls"
            h = torch.cat([h, controls.glob.to(h.dtype)], dim=1)
        h = self.inp(h) + self.level(sinusoidal(noise_level, self.cfg.embed))
        for block in self.blocks:
            h = h + block(h)
        out = self.out(h)
        return out.reshape(b, self.spec.shape[0], self.spec.num_classes) if self.spec.discrete else out


def build_toy_mlp(cfg: ToyMLPConfig, spec: DataSpec) -> ToyMLP:
    return ToyMLP(cfg, spec)


# --- metrics (also for `pvtbuild evaluate`) ---------------------------------------------


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """The sliced 1-Wasserstein distance between point sets ``a [n, d]`` and ``b [m, d]``.

    Mean over `projections` random unit directions of the W1 distance between the projected
    1-D distributions (quantile functions compared on a common grid when n != m).
    """
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dirs = torch.randn((a.shape[1], projections), generator=g, device=g.device).double().to(a.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b.to(a.device) @ dirs, dim=0)
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        q = (torch.arange(n, dtype=torch.float64, device=a.device) + 0.5) / n
        pa, pb = _quantiles(pa, q), _quantiles(pb, q)
    return float((pa - pb).abs().mean())


def _quantiles(sorted_vals: Tensor, q: Tensor) -> Tensor:
    """Empirical quantile function (step, midpoint convention) of columns of sorted values at levels q."""
    n = sorted_vals.shape[0]
    idx = (q * n).floor().long().clamp(0, n - 1)
    return sorted_vals[idx]


def nearest_neighbour_distance(a: Tensor, b: Tensor, chunk: int = 4096) -> float:
    """Mean Euclidean distance from each point of ``a [n, d]`` to its nearest point of ``b [m, d]``.

    Small when every sample lies on the data; blind to missing modes (pair it with
    `sliced_wasserstein`, or call it both ways).
    """
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1).to(a.device)
    total = 0.0
    for start in range(0, a.shape[0], chunk):
        total += float(torch.cdist(a[start:start + chunk], b).min(dim=1).values.sum())
    return total / a.shape[0]
