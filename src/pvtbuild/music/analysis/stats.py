"""Row-wise statistics of masked [G, T] arrays (medians, Spearman's rho) and a 1-D median, without
numpy's per-call overhead: the scoring runs them over a render shard's clips at once.
"""

from __future__ import annotations

import numpy as np


def row_medians(values: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each row's median of its `mask`ed values ([G, T]; `counts`: mask's per-row sums), as `median` of each
    (nan where a row has none)."""
    s = np.sort(np.where(mask, values, np.nan), axis=1)  # masked-out last
    rows = np.arange(len(s))
    med = (s[rows, np.maximum(counts - 1, 0) // 2] + s[rows, counts // 2]) / 2
    return np.where(counts > 0, med, np.nan)


def row_spearman(loudness: np.ndarray, velocity: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per row, `_spearman(loudness, velocity)` on `frames` where the loudness is finite and above -120 dB
    ([G, T] each); nan where fewer than 3 such frames, or where either is constant on them."""
    use = frames & np.isfinite(loudness) & (loudness > -120)
    m = use.sum(axis=1)
    ok = m >= 3
    for x in (loudness, velocity):
        ok &= np.where(use, x, -np.inf).max(axis=1, initial=-np.inf) > np.where(use, x, np.inf).min(axis=1,
                                                                                                   initial=np.inf)
    rho = np.full(len(use), np.nan)
    if not ok.any():
        return rho
    use = use & ok[:, None]
    m = np.where(ok, m, 0)
    mean = (m + 1) / 2.0  # of the ranks 1..m: exact, as every sum below (half-integers)
    ra = np.where(use, _row_ranks(loudness, use) - mean[:, None], 0.0)
    rb = np.where(use, _row_ranks(velocity, use) - mean[:, None], 0.0)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra * rb).sum(axis=1) / den
    return np.where(ok & (den > 0), r, np.nan)


def _row_ranks(x: np.ndarray, use: np.ndarray) -> np.ndarray:
    """[G, T] each row's ranks 1..m among its `use`d entries, ties given their average rank (0 elsewhere)."""
    r, c = np.nonzero(use)
    vals = x[r, c]
    order = np.lexsort((vals, r))  # by row, then value
    sv, sr = vals[order], r[order]
    new = np.ones(len(sv), dtype=bool)
    new[1:] = (sv[1:] != sv[:-1]) | (sr[1:] != sr[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(sv))
    row_start = np.searchsorted(sr, np.arange(len(x)))
    ranks = np.zeros(x.shape, dtype=np.float64)
    ranks[r[order], c[order]] = np.repeat((starts + ends + 1) / 2.0 - row_start[sr[starts]], ends - starts)
    return ranks


def median(a: np.ndarray) -> float:
    """np.median of a non-empty 1-D array without nan, without its overhead."""
    s = np.sort(a)
    return float((s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2)
