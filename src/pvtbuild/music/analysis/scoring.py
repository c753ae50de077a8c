"""How well a clip's audio agrees with its controls: the estimates + the stored control arrays in, per-clip
scores out (`adherence`, `adherence_batch`; keys `SCORE_KEYS`).

What the scores leave out around label changes is in `pvtbuild.music.analysis.labels`; the label lags
they report, in `pvtbuild.music.analysis.lags`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pvtbuild.music.analysis.estimates import FrameEstimates
from pvtbuild.music.analysis.labels import Tolerances, after_offsets, near_changes, note_runs
from pvtbuild.music.analysis.lags import ASKED_SOUNDS, label_lags, nearest_offset, onset_lag, switch_lags
from pvtbuild.music.analysis.stats import median, row_medians, row_spearman

SCORE_KEYS: tuple[str, ...] = (
    "voiced_agreement", "chroma_accuracy", "octave_accuracy", "pitch_accuracy", "loudness_velocity_spearman",
    "onset_offset_ms", "onset_abs_ms", "onset_match", "missing_notes", "notes", "sound_beyond_label",
    "label_beyond_sound", "harmonicity", "peak_db", "frames_scored", "label_lag_ms", "change_lag_ms", "switch_lag_ms",
    "pitch_frames", "held_frames", "quiet_frames")
# the control arrays the scores read (as stored; any may be missing or -1), in the order callers read them
SCORED_CONTROLS: tuple[str, ...] = ("voiced", "pitch", "chroma", "velocity")
# a held note whose core starts with this long a silence is missing (`_score_notes`): on the Lakh clips CREPE finds
# right, a core's leading silence (a slow attack) stays under 0.16 s (12 frames), and 2 of 1177 clips reach 0.107 s
LEAD_SILENT_S = 0.2


def adherence(est: FrameEstimates, controls: Mapping[str, np.ndarray], tolerances: Tolerances = Tolerances(),
              rate: float | None = None) -> dict[str, float]:
    """Per-clip agreement of the audio's estimates with the control arrays on the same grid (keys: SCORE_KEYS).

    Args:
        est: from `analyse` on this grid.
        controls: stored control arrays ([T] each): `voiced`, `pitch`, `chroma`, `velocity`
            (any may be missing or -1: the metrics needing it are nan).
        tolerances: frames and seconds left out around label changes.
        rate: the grid's rate (Hz); unused (the grid is `est.times`), kept for callers that pass it.
    """
    return adherence_batch([est], {k: np.asarray(v).reshape(1, -1) for k, v in controls.items()}, [tolerances])[0]


def adherence_batch(ests: Sequence[FrameEstimates], controls: Mapping[str, np.ndarray],
                    tolerances: Sequence[Tolerances]) -> list[dict[str, float]]:
    """`adherence` of B clips on one grid at once (the qa stage: a render shard): one dict per clip.

    Args:
        ests: B estimates of T frames each.
        controls: control arrays [B, T] each (as `adherence`; a clip whose row holds a -1 is
            unconditional for that control).
        tolerances: one per clip.

    Clips whose controls are present alike are scored together, frame masks and counts as array
    operations over the batch (the per-clip cost was mostly numpy's per-call overhead); each clip's
    scores are those `adherence` gives it alone.
    """
    b = len(ests)
    if not b:
        return []
    n = len(ests[0].voiced)
    if any(len(e.voiced) != n for e in ests) or len(tolerances) != b:
        raise ValueError("adherence_batch takes estimates of one length and one Tolerances per clip")
    out = [{k: float("nan") for k in SCORE_KEYS} for _ in range(b)]
    loudness = np.stack([e.loudness for e in ests])
    finite = np.isfinite(loudness)
    peak = np.where(finite, loudness, -np.inf).max(axis=1) if n else np.zeros(b)
    for k in np.flatnonzero(finite.any(axis=1)):
        out[k]["peak_db"] = float(peak[k])
    labels: dict[str, np.ndarray] = {}
    given = np.zeros((b, len(SCORED_CONTROLS)), dtype=bool)  # per clip: the control is there and not -1
    for j, name in enumerate(SCORED_CONTROLS):
        if name in controls:
            a = np.asarray(controls[name], dtype=np.float64).reshape(b, -1)
            if a.shape[1] != n:
                raise ValueError(f"control {name!r} has {a.shape[1]} frames, the estimates {n}")
            labels[name] = a
            given[:, j] = ~(a < 0).any(axis=1)
    patterns, group = np.unique(given, axis=0, return_inverse=True)
    for g, pattern in enumerate(patterns):
        rows = np.flatnonzero(group.reshape(-1) == g)
        have = {name: labels[name][rows] for name, ok in zip(SCORED_CONTROLS, pattern) if ok}
        _score_group(out, rows, [ests[k] for k in rows], have, [tolerances[k] for k in rows])
    return out


def _score_group(out: list[dict[str, float]], rows: np.ndarray, ests: list[FrameEstimates],
                 labels: dict[str, np.ndarray], tolerances: list[Tolerances]) -> None:
    """`adherence_batch` on clips with the same controls given (`labels`: name -> [G, T]); fills out[rows[i]]."""
    if "voiced" in labels:
        lv = labels["voiced"] > 0.5
    elif "pitch" in labels:  # without a voicing label, take the pitch label's (0 = none)
        lv = labels["pitch"] > 0
    else:
        return
    times = ests[0].times
    voiced = np.stack([e.voiced for e in ests])
    midi = np.rint(labels["pitch"] * 127) if "pitch" in labels else None
    pc = (midi % 12) if midi is not None else (np.rint(labels["chroma"] * 11) if "chroma" in labels else None)
    key = midi if midi is not None else pc
    near = near_changes(lv, key, np.array([t.onset_frames for t in tolerances]))
    after = after_offsets(lv, times, np.array([t.release_s for t in tolerances]))
    scored = ~near & ~after
    n_scored = scored.sum(axis=1)
    quiet, held = scored & ~lv, scored & lv
    n_quiet, n_held = quiet.sum(axis=1), held.sum(axis=1)
    agree = np.count_nonzero(scored & (voiced == lv), axis=1)
    beyond_label = np.count_nonzero(quiet & voiced, axis=1)
    beyond_sound = np.count_nonzero(held & ~voiced, axis=1)
    inner = lv & ~near
    n_inner = inner.sum(axis=1)
    harmonicity = row_medians(np.stack([e.harmonicity for e in ests]), inner, n_inner)
    both = inner & voiced
    sounding = voiced
    lag = np.full(len(rows), np.nan)
    if pc is not None:
        with np.errstate(invalid="ignore"):
            est_midi = np.rint(np.stack([e.pitch for e in ests]))
        est_key = est_midi if midi is not None else est_midi % 12
        # frames where the audio names the previous note, still ringing (release) under this one, are no evidence
        # either way: the pitch trackers (this one and CREPE alike) can hear the louder old partials there
        # ... when the asked note sounds too (its pitch scores at least half the winner's); where it does not, the
        # tail is all there is (a dropped note): the frame is no sound of this note
        asked = np.stack([e.expected_score if len(e.expected_score) == lv.shape[1] else np.full(lv.shape[1], np.nan)
                          for e in ests])
        ringing = _ringing_previous(lv, key, est_key, times, np.array([t.release_s for t in tolerances]))
        with np.errstate(invalid="ignore"):
            also = asked > 0
        both &= ~(ringing & also)
        # a note sounds where the audio is voiced (not only by its predecessor's tail) or where its own pitch scores
        # half a voiced frame's least harmonicity: low notes under a semitone neighbour's tail score 0.1-0.5 there
        with np.errstate(invalid="ignore"):
            sounding = (voiced & ~(ringing & ~also)) | (asked >= ASKED_SOUNDS)
        lag = label_lags(lv, key, est_key, after, tolerances[0].max_lag_s, tolerances[0].lag_min_gain, times)
        change_lag, switch_lag = switch_lags(lv, key, est_key, asked, tolerances[0].max_lag_s, times)
        with np.errstate(invalid="ignore"):
            right_pc = both & (est_midi % 12 == pc)
        n_right = right_pc.sum(axis=1)
        n_exact = np.count_nonzero(both & (est_midi == midi), axis=1) if midi is not None else None
    n_both = both.sum(axis=1)
    rho = row_spearman(np.stack([e.loudness for e in ests]), labels["velocity"], inner) \
        if "velocity" in labels else None
    for i, k in enumerate(rows):
        o = out[k]
        o["frames_scored"] = float(n_scored[i])
        o["pitch_frames"], o["held_frames"], o["quiet_frames"] = float(n_both[i]), float(n_held[i]), float(n_quiet[i])
        if n_scored[i]:
            o["voiced_agreement"] = int(agree[i]) / int(n_scored[i])
            o["sound_beyond_label"] = int(beyond_label[i]) / int(n_quiet[i]) if n_quiet[i] else 0.0
            o["label_beyond_sound"] = int(beyond_sound[i]) / int(n_held[i]) if n_held[i] else 0.0
        if n_inner[i]:
            o["harmonicity"] = float(harmonicity[i])
        if n_both[i] and pc is not None:
            o["chroma_accuracy"] = int(n_right[i]) / int(n_both[i])
            if n_exact is not None:
                o["pitch_accuracy"] = int(n_exact[i]) / int(n_both[i])
                o["octave_accuracy"] = int(n_exact[i]) / int(n_right[i]) if n_right[i] else float("nan")
        if rho is not None:
            o["loudness_velocity_spearman"] = float(rho[i])
        o["label_lag_ms"] = float(lag[i])
        if pc is not None:
            o["change_lag_ms"], o["switch_lag_ms"] = float(change_lag[i]), float(switch_lag[i])
    _score_notes(out, rows, ests, lv, sounding, key, tolerances)


def _score_notes(out: list[dict[str, float]], rows: np.ndarray, ests: list[FrameEstimates], lv: np.ndarray,
                 voiced: np.ndarray, key: np.ndarray | None, tolerances: list[Tolerances]) -> None:
    """The per-note scores (notes, missing notes, onsets, label lag) of a group of clips."""
    g, n = lv.shape
    times = ests[0].times
    # the shortest core judged: 0.1 s (at least 4 frames); a shorter one is mostly its neighbours' attack and tail
    min_core = max(4, int(np.ceil(0.1 / float(times[1] - times[0])))) if n > 1 else 4
    sounding = np.zeros((g, n + 1), dtype=np.int64)
    np.cumsum(voiced, axis=1, out=sounding[:, 1:])
    # the first sounding frame at or after each frame (n: none)
    next_sound = np.minimum.accumulate(np.where(voiced, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]
    lead_max = max(min_core, int(np.ceil(LEAD_SILENT_S / float(times[1] - times[0])))) if n > 1 else n + 1
    # every note of the group at once (per clip, numpy's per-call overhead was most of the cost)
    r, first, last = note_runs(lv, key)
    edge = np.array([t.onset_frames for t in tolerances], dtype=np.int64)[r]
    # a note is missing when under half its core (onset_frames in from each end, >= min_core frames) sounds
    lo, hi = first + edge, last - edge
    core = hi - lo
    lo = np.minimum(lo, n)
    hi = np.minimum(np.maximum(hi, lo), n)
    # ... or the first LEAD_SILENT_S of its core is silent (a note dropped before its twin of the same pitch:
    # the labels hold one note, half of which sounds)
    lead = np.minimum(np.append(next_sound, np.full((g, 1), n), axis=1)[r, lo], hi) - lo
    missing = (core >= min_core) & ((2 * (sounding[r, hi] - sounding[r, lo]) < core) | (lead >= lead_max))
    n_notes, n_missing = np.bincount(r, minlength=g), np.bincount(r[missing], minlength=g)
    # the notes that start from silence, and where each clip's run of them begins
    from_silence = (first > 0) & ~lv[r, np.maximum(first - 1, 0)]
    start_times, bounds = times[first[from_silence]], np.searchsorted(r[from_silence], np.arange(g + 1))
    for i, k in enumerate(rows):
        o, tol = out[k], tolerances[i]
        o["notes"], o["missing_notes"] = float(n_notes[i]), float(n_missing[i])
        starts = start_times[bounds[i]:bounds[i + 1]]
        if not len(starts):
            continue
        offs = nearest_offset(starts, ests[i].onsets)
        dist = np.abs(offs)
        found = offs[dist <= tol.onset_search_s]
        o["onset_match"] = float(len(found) / len(starts))
        if len(found):
            o["onset_offset_ms"] = median(found) * 1000
            o["onset_abs_ms"] = median(np.abs(found)) * 1000
        if o["label_lag_ms"] == 0.0:  # no shift found frame by frame (few frames move): do the onsets agree on one?
            by_onsets = onset_lag(starts, ests[i].onsets, tol.max_lag_s)
            if not np.isnan(by_onsets):
                o["label_lag_ms"] = by_onsets


def _ringing_previous(lv: np.ndarray, key: np.ndarray, est_key: np.ndarray, times: np.ndarray,
                      release_s: np.ndarray) -> np.ndarray:
    """[G, T] held frames whose estimate (`est_key`) is the pitch of the label note before the current one (another
    pitch), when that note ended at most `release_s` (per clip) earlier: its release tail may still sound there."""
    g, n = lv.shape
    k = np.where(lv, key, -1.0)
    ended = np.zeros((g, n), dtype=bool)
    ended[:, 1:] = lv[:, :-1] & (k[:, 1:] != k[:, :-1])  # a held note's last frame was i - 1
    last = np.maximum.accumulate(np.where(ended, np.arange(n), 0), axis=1)
    prev = np.take_along_axis(k, np.maximum(last - 1, 0), axis=1)
    since = times[None, :] - times[last]
    with np.errstate(invalid="ignore"):
        return lv & (last > 0) & (since <= release_s[:, None]) & (prev != k) & (est_key == prev)
