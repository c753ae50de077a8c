"""How close a toy model's samples lie to the toy data: the sliced Wasserstein and nearest-neighbour
distances of point sets, which need no embedding (the formalism tests judge toy runs with them).
"""

from __future__ import annotations

import torch
from torch import Tensor


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
