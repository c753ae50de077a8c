"""Note onsets from the log-spectral flux: a peak above a threshold, the largest within 50 ms, where the
level rises by >= 3 dB across +-30 ms (`onset_times`), and the frames whose flux that test reads
(`flux_read`: the tracker computes the flux only there).
"""

from __future__ import annotations

import numpy as np


def onset_times(flux: np.ndarray, loudness: np.ndarray, times: np.ndarray, threshold: float,
                rate: float) -> list[np.ndarray]:
    """Onset times of each clip, from its positive log-spectral flux per bin and loudness ([B, T] each); `times`:
    the onset time each frame's flux peak stands for."""
    b, n = loudness.shape
    if n < 3:
        return [np.zeros(0) for _ in range(b)]
    gap = _onset_gap(rate)
    padded = np.pad(flux, ((0, 0), (gap, gap)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * gap + 1, axis=1)
    peaks = (flux >= windows.max(axis=2)) & (flux > threshold)
    peaks &= _level_rises(loudness, rate)
    return [times[p] for p in peaks]


def _onset_gap(rate: float) -> int:
    """Frames an onset peak must top on each side (50 ms)."""
    return max(1, int(round(0.05 * rate)))


def _level_rises(loudness: np.ndarray, rate: float) -> np.ndarray:
    """Frames where the level ([..., T] dB) rises by >= 3 dB across +-30 ms: the only possible onsets."""
    n = loudness.shape[-1]
    span = max(1, int(round(0.03 * rate)))
    idx = np.arange(n)
    return loudness[..., np.minimum(idx + span, n - 1)] - loudness[..., np.maximum(idx - span, 0)] >= 3.0


def flux_read(loudness: np.ndarray, rate: float) -> np.ndarray:
    """[T] the frames whose flux `onset_times` reads: those within its peak window (+-`_onset_gap`) of a possible
    onset (`_level_rises`); elsewhere the flux decides nothing."""
    gap = _onset_gap(rate)
    count = np.concatenate([[0], np.cumsum(_level_rises(loudness, rate))])
    n = len(loudness)
    idx = np.arange(n)
    return count[np.minimum(idx + gap + 1, n)] > count[np.maximum(idx - gap, 0)]
