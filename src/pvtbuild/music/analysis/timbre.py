"""The `wrong instrument` check: a clip's harmonic profile (level removed) against each instrument's
reference profile at the nearest pitch (`timbre_distances`, `timbre_distances_batch`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pvtbuild.music.analysis.estimates import TIMBRE_HARMONICS, FrameEstimates


def timbre_distances(est: FrameEstimates, references: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     frames: np.ndarray | None = None, min_frames: int = 10) -> dict[str, float]:
    """How far the clip's harmonic profile lies from each instrument's reference (mean squared nats; nan: too few
    frames).

    The profile of a frame is `est.harmonics` minus its mean over the harmonics (its shape, not
    its level). `references` maps an instrument to (pitches [P] MIDI, profiles [P, H]) measured
    the same way on notes of that instrument (the qa stage renders them from the SoundFont);
    each frame is compared with the reference at the nearest pitch (pitches ascending). `frames`: a [T] bool mask
    of the frames to use (default: every voiced frame). `references` must not change once passed:
    its prepared form is kept for the next call with the same mapping (the qa stage's every clip).
    """
    return timbre_distances_batch([est], references, None if frames is None else [frames], min_frames)[0]


def timbre_distances_batch(ests: Sequence[FrameEstimates], references: Mapping[str, tuple[np.ndarray, np.ndarray]],
                           frames: Sequence[np.ndarray] | np.ndarray | None = None,
                           min_frames: int = 10) -> list[dict[str, float]]:
    """`timbre_distances` of B clips at once (the qa stage: a render shard), `frames` one [T] mask per clip (or
    None): one dict per clip. The frames of all clips go through one lookup and one product (per clip, numpy's
    per-call overhead was most of the cost); each clip's distances are those it gets alone, to float rounding.
    """
    names, midpoints, profiles = _timbre_tables(references)
    out = [{name: float("nan") for name in references} for _ in ests]
    if not names or not len(ests):
        return out
    hs, ps = [], []
    for k, est in enumerate(ests):
        use = est.voiced if frames is None else (frames[k] & est.voiced)
        hs.append(est.harmonics[use] if len(est.harmonics) else np.zeros((0, TIMBRE_HARMONICS), dtype=np.float32))
        ps.append(est.pitch[use] if len(est.harmonics) else np.zeros(0))
    h, pitch = np.concatenate(hs), np.concatenate(ps)
    clip = np.repeat(np.arange(len(ests)), [len(x) for x in hs])
    ok = np.isfinite(h).all(axis=1)
    shape, pitch, clip = _shape(h[ok]), pitch[ok], clip[ok]
    counts = np.bincount(clip, minlength=len(ests))
    judged = np.flatnonzero(counts >= min_frames)
    if not len(judged):
        return out
    # each instrument's nearest reference pitch (the lower one on a tie): how many midpoints lie below
    nearest = np.stack([np.searchsorted(m, pitch, side="left") + offset for m, offset in midpoints])
    diff = profiles[nearest] - shape  # [instruments, frames, H]
    per_frame = np.einsum("ifh,ifh->if", diff, diff).astype(np.float64)
    # each clip's frames are one run: sum each run (every run with a frame starts one, so none holds another's)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    runs = np.flatnonzero(counts)
    sums = np.zeros((len(names), len(ests)))
    sums[:, runs] = np.add.reduceat(per_frame, starts[runs], axis=1)
    for k in judged:
        for name, d in zip(names, sums[:, k] / (counts[k] * shape.shape[1])):
            out[k][name] = float(d)
    return out


_TIMBRE_TABLES: tuple[object, tuple] | None = None


def _timbre_tables(references: Mapping[str, tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[list[str], list[tuple[np.ndarray, int]], np.ndarray]:
    """(instruments with references, (pitch midpoints, first row) of each, their shaped profiles stacked [rows, H]).

    Remembered for the last `references` object seen (the qa stage passes the same one for every
    clip, and never changes it), so each clip only looks them up.
    """
    global _TIMBRE_TABLES
    if _TIMBRE_TABLES is None or _TIMBRE_TABLES[0] is not references:
        names, midpoints, profiles, row = [], [], [], 0
        for name, (ref_pitch, ref_profile) in references.items():
            if not len(ref_pitch):
                continue
            p = np.asarray(ref_pitch, dtype=np.float64)  # ascending
            names.append(name)
            midpoints.append((0.5 * (p[1:] + p[:-1]), row))
            profiles.append(_shape(np.asarray(ref_profile, dtype=np.float32).reshape(len(p), -1)))
            row += len(p)
        stacked = np.concatenate(profiles) if profiles else np.zeros((0, TIMBRE_HARMONICS), dtype=np.float32)
        _TIMBRE_TABLES = (references, (names, midpoints, stacked))
    return _TIMBRE_TABLES[1]


def _shape(h: np.ndarray) -> np.ndarray:
    """Each row minus its mean (as np.mean, without its overhead)."""
    return h - h.sum(axis=1, keepdims=True) / h.shape[1]
