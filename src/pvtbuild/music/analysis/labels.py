"""The label frames that scoring leaves out around label changes (`Tolerances`, `near_changes`,
`after_offsets`), and the label's notes (`note_segments`, `note_runs`).

Shared by the qa stage's scoring and `train.judge`, so every judge leaves out the same frames.

Voicing: what "voiced" means and the tolerances
-----------------------------------------------
The `voiced` control is "a note is held" (MIDI note-on to note-off). The audio keeps
sounding after a note-off (the release tail), and near every note change the
analysis window (42.7 ms) straddles two states. So scores leave out (`Tolerances`):
frames within `onset_frames` of any label change (onset, offset or pitch change)
and, for voicing only, the `release_s` seconds after each note-off (per instrument
in the qa config: a piano damper is quick, a violin or trumpet release is longer).
Outside those, the audio's voicing must match the label exactly: sound where the
label says 0 counts against `sound_beyond_label`, silence under a held note against
`label_beyond_sound`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerances:
    """What scoring leaves out around label changes (see the module docstring)."""

    onset_frames: int = 2  # frames each side of an onset, offset or pitch change
    release_s: float = 0.3  # seconds after a note-off during which sound is not held against the label
    onset_search_s: float = 0.08  # a label onset matches an audio onset this close
    max_lag_s: float = 0.3  # label shifts tried by `label_lag_ms`; how far from a label note `switch_lags` looks
    lag_min_gain: float = 0.04  # share of held frames a shift must bring into agreement to count (`label_lag_ms`)


def near_changes(voiced: np.ndarray, pitch: np.ndarray | None, k: int | np.ndarray) -> np.ndarray:
    """Frames within k of a change of voicing or pitch (a label's onset, offset or note change).

    [T] arrays, or [B, T] with k an int or one per row.
    """
    v = np.atleast_2d(voiced)
    b, n = v.shape
    change = np.zeros((b, n), dtype=bool)
    change[:, 1:] = v[:, 1:] != v[:, :-1]
    if pitch is not None:
        p = np.atleast_2d(pitch)
        change[:, 1:] |= v[:, 1:] & v[:, :-1] & (p[:, 1:] != p[:, :-1])
    # a change at frame i lies between frames i-1 and i: frames i-k-1 .. i+k are near it
    count = np.zeros((b, n + 1), dtype=np.int64)
    np.cumsum(change, axis=1, out=count[:, 1:])
    k = np.broadcast_to(np.asarray(k), (b,))[:, None]
    idx = np.arange(n)[None, :]
    near = (np.take_along_axis(count, np.minimum(idx + k + 2, n), axis=1)
            > np.take_along_axis(count, np.maximum(idx - k, 0), axis=1))
    return near if np.ndim(voiced) == 2 else near[0]


def after_offsets(voiced: np.ndarray, times: np.ndarray, release_s: float | np.ndarray) -> np.ndarray:
    """Unvoiced frames within release_s of the last note-off before them ([T], or [B, T] with one release_s
    or one per row)."""
    v = np.atleast_2d(voiced)
    b, n = v.shape
    ends = np.zeros((b, n), dtype=bool)
    ends[:, 1:] = ~v[:, 1:] & v[:, :-1]
    last = np.maximum.accumulate(np.where(ends, np.arange(n), -1), axis=1)  # the latest note-off so far
    release = np.broadcast_to(np.asarray(release_s, dtype=np.float64), (b,))[:, None]
    out = (last >= 0) & (times[None, :] <= times[np.maximum(last, 0)] + release) & ~v
    return out if np.ndim(voiced) == 2 else out[0]


def note_segments(voiced: np.ndarray, pitch: np.ndarray | None) -> np.ndarray:
    """[notes, 2] (start, stop) frame runs of one held label note (voiced, same pitch)."""
    _, start, stop = note_runs(np.asarray(voiced)[None], None if pitch is None else np.asarray(pitch)[None])
    return np.stack([start, stop], axis=1)


def note_runs(voiced: np.ndarray, pitch: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, stop) [notes] of every held label note of [G, T] labels (`note_segments` per row), by row
    and start."""
    g, n = voiced.shape
    key = np.where(voiced, pitch if pitch is not None else 0, -1)
    new = np.ones((g, n), dtype=bool)
    new[:, 1:] = key[:, 1:] != key[:, :-1]
    row, start = np.nonzero(new)  # every run of one key, row by row
    at = row * n + start
    stop = np.append(at[1:], g * n) - row * n  # the next run's start; a row's last run ends at n
    held = voiced[row, start]
    return row[held], start[held], stop[held]
