"""What makes a clip differ from its source window: its pitches folded into the instrument range
(`fold_pitches`) and its velocities modulated by a slow swell drawn per variant (`variant_modulation`,
`modulate_velocities`).


Pitch folding: the window is first transposed by the multiple of 12 that
brings the most notes into [pitch_min, pitch_max] (ties: smallest |shift|, then
the lower shift); notes still outside are moved one by one by whole octaves.
Pitch classes are preserved.

Velocity modulation: v' = clip(rint(v * m(t_on)), 1, 127) with
m(t) = d + (1 - d)(1/2 + 1/2 sin(2 pi f t + phi)), t relative to the clip start.
f and phi are drawn per variant from an RNG seeded by a content hash, so
reruns reproduce them exactly.
"""

from __future__ import annotations

import math

import numpy as np

from pvtbuild.config import SelectConfig
from pvtbuild.engine.manifest import stable_hash
from pvtbuild.music.midi.records import TIME_DECIMALS


def fold_pitches(pitches: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int, int]:
    """Fold pitches into [lo, hi]: one whole-window octave shift, then per-note octave moves.

    The whole-window shift keeps the melody's contour wherever possible; only
    the notes it cannot bring in are moved individually.

    Returns:
        (folded pitches int16, transpose in semitones (a multiple of 12), number of notes moved individually)
    """
    p = np.asarray(pitches, dtype=np.int64)
    if len(p) == 0:
        return p.astype(np.int16), 0, 0
    shifts = 12 * np.arange(-11, 12)
    shifted = p[None, :] + shifts[:, None]
    in_range = ((shifted >= lo) & (shifted <= hi)).sum(axis=1)
    # Most notes in range first, then the smallest |shift|, then the lower shift.
    transpose = int(shifts[np.lexsort((shifts, np.abs(shifts), -in_range))[0]])
    p = p + transpose
    below, above = p < lo, p > hi
    p[below] += 12 * np.ceil((lo - p[below]) / 12).astype(np.int64)
    p[above] -= 12 * np.ceil((p[above] - hi) / 12).astype(np.int64)
    return p.astype(np.int16), transpose, int(below.sum() + above.sum())


def modulation(t: np.ndarray | float, freq: float, phase: float, depth: float) -> np.ndarray:
    """m(t) = d + (1 - d)(1/2 + 1/2 sin(2 pi f t + phi)): a slow swell between d and 1."""
    t = np.asarray(t, dtype=np.float64)
    return depth + (1.0 - depth) * (0.5 + 0.5 * np.sin(2.0 * np.pi * freq * t + phase))


def modulate_velocities(velocities: np.ndarray, onsets: np.ndarray, freq: float, phase: float,
                        depth: float) -> np.ndarray:
    """v' = clip(rint(v * m(t_on)), 1, 127) as int16."""
    scaled = np.rint(np.asarray(velocities, dtype=np.float64) * modulation(onsets, freq, phase, depth))
    return np.clip(scaled, 1, 127).astype(np.int16)


def variant_modulation(seed: int, source_md5: str, track: int, start: float, variant: int,
                       cfg: SelectConfig) -> tuple[float, float]:
    """(f, phi) of one variant, from an RNG seeded by a content hash (never Python's hash())."""
    key = stable_hash(seed, source_md5, track, round(start, TIME_DECIMALS), variant)
    rng = np.random.default_rng(int(key, 16))
    duration = cfg.clip_seconds
    freq = float(rng.uniform(cfg.freq_min_cycles / duration, cfg.freq_max_cycles / duration))
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    return freq, phase
