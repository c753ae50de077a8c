"""How late a clip's labels are against its audio: the frame-agreement shift (`label_lags`), the audio's
switch to each label note (`switch_lags`), the label's note starts against audio onsets (`onset_lag`,
`nearest_offset`). The scoring (`pvtbuild.music.analysis.scoring`) reports them per clip.
"""

from __future__ import annotations

import numpy as np

from pvtbuild.music.analysis.stats import median, row_medians

# template score (nats) at a note's own pitch from which that note counts as sounding, even where another pitch (a
# louder release tail) wins the frame: half a voiced frame's least harmonicity (low piano notes under a semitone
# neighbour's tail score 0.1-0.5 there, a note not played ~0)
ASKED_SOUNDS = 0.25
# a label note change is judged (`switch_lags`) when one switch point explains this share of the frames around it
SWITCH_FIT = 0.8


def label_lags(lv: np.ndarray, key: np.ndarray, est_key: np.ndarray, tails: np.ndarray, max_lag_s: float,
               min_gain: float, times: np.ndarray) -> np.ndarray:
    """[G] ms by which the labels are late (negative: early): the shift of the labels within +-max_lag_s that
    makes the most frames agree with the audio, the smallest such shift on a tie; 0 unless it makes more
    agree than no shift by `min_gain` of the held frames; nan with fewer than 10 held frames.

    A frame agrees when the label holds a note and the audio has its pitch (`est_key`, nan where unvoiced),
    or the label holds none and the audio is silent; frames in a release tail (`tails`, shifted with the
    labels) count neither way. Every frame votes, so it holds with few notes and with legato lines, where
    audio onsets are few (a median of nearest onsets took another note's onset for a missed one).
    """
    g, n = lv.shape
    step = float(times[1] - times[0]) if n > 1 else 1.0
    m = int(round(max_lag_s / step))
    lab = np.where(lv, key, np.where(tails, -2.0, -1.0))  # -2: matches nothing
    audio = np.where(np.isnan(est_key), -1.0, est_key)
    small_lab, small_audio = lab.astype(np.int16), audio.astype(np.int16)
    if np.array_equal(small_lab, lab) and np.array_equal(small_audio, audio):  # whole MIDI numbers (as always):
        lab, audio = small_lab, small_audio  # the same matches, a quarter of the memory read per shift
    shifts = sorted(range(-min(m, n - 1), min(m, n - 1) + 1), key=lambda s: (abs(s), s))  # 0 first
    agree = np.empty((g, len(shifts)), dtype=np.int64)
    for j, s in enumerate(shifts):  # labels s frames late: label frame k + s describes audio frame k
        a, b = (audio[:, :n - s], lab[:, s:]) if s >= 0 else (audio[:, -s:], lab[:, :n + s])
        agree[:, j] = np.count_nonzero(a == b, axis=1)
    best = agree.argmax(axis=1)  # the first maximum: the smallest shift
    held = lv.sum(axis=1)
    gain = (agree[np.arange(g), best] - agree[:, 0]) / np.maximum(held, 1)
    lag = np.where(gain >= min_gain, np.round(np.array(shifts)[best] * step * 1000.0, 3), 0.0)
    return np.where(held >= 10, lag, np.nan)


def switch_lags(lv: np.ndarray, key: np.ndarray, est_key: np.ndarray, asked: np.ndarray, window_s: float,
                times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([G] change_lag_ms, [G] switch_lag_ms): how long after the label the audio switches to a label's note.

    Each label note (`lv`, `key` [G, T]) that follows another (a change) or silence (a start) is an event at its
    first frame c. Within `window_s` of c (a change: not before the previous note's start; not past the next
    note's start) the audio's switch point is the frame k that best splits the frames into "not yet the new note"
    before and "the new note" after it: the new note is the audio's pitch (`est_key`) or, from c on, its own
    pitch's template score (`asked`) >= `ASKED_SOUNDS` (a piano note under its louder predecessor's tail still
    sounds; not an octave from the previous note, whose harmonics are the new one's); before k, a change needs
    the previous note's pitch, a start anything else. The event counts when that split explains >= `SWITCH_FIT`
    of the window's frames with >= 2 frames each side (a note never tracked, or a repeated pitch, has no switch).
    change_lag_ms: the median of k - c over a clip's changes; switch_lag_ms: over its changes and starts (ms;
    negative: the audio switches before the label says); nan without an event. A clean render switches 0-55 ms
    after its label (an attack, a window straddling two notes); labels 120 ms late or early put it ~120 ms
    before or after. One switch is evidence where the frame-agreement lag (`label_lags`) is not: a two-note
    2 s clip moves ~9 frames of 150. All events of the batch go through one set of array operations.
    """
    g, n = lv.shape
    nan = np.full(g, np.nan)
    if n < 2:
        return nan, nan
    step = float(times[1] - times[0])
    w = max(1, int(round(window_s / step)))
    k = np.where(lv, key, -1.0)
    start = lv.copy()
    start[:, 1:] &= k[:, 1:] != k[:, :-1]  # a label note's first frame
    frame = np.arange(n)
    # the next note's start after each frame (n: none), the latest note start at or before it
    nxt = np.minimum.accumulate(np.where(start, frame, n)[:, ::-1], axis=1)[:, ::-1]
    following = np.append(nxt[:, 1:], np.full((g, 1), n), axis=1)
    latest = np.maximum.accumulate(np.where(start, frame, 0), axis=1)
    gi, c = np.nonzero(start[:, 1:])
    c = c + 1
    if not len(c):
        return nan, nan
    change = lv[gi, c - 1]  # a note right before: a change (else a start from silence)
    lo = np.maximum(c - w, np.where(change, latest[gi, c - 1], 0))
    hi = np.minimum(following[gi, c], c + w)  # past the note's end into the silence after it: its tail is the note
    idx = lo[:, None] + np.arange(2 * w)[None, :]
    valid = idx < hi[:, None]
    idx = np.minimum(idx, n - 1)
    x, a = est_key[gi[:, None], idx], asked[gi[:, None], idx]
    new_key, old_key = key[gi, c], key[gi, c - 1]
    related = change & (np.abs(new_key - old_key) % 12 == 0)
    with np.errstate(invalid="ignore"):
        new = valid & ((x == new_key[:, None]) | ((idx >= c[:, None]) & ~related[:, None] & (a >= ASKED_SOUNDS)))
        before = valid & ~new & np.where(change[:, None], x == old_key[:, None], True)
    m = 2 * w
    cb = np.zeros((len(c), m + 1), dtype=np.int64)
    np.cumsum(before, axis=1, out=cb[:, 1:])
    ca = np.zeros((len(c), m + 1), dtype=np.int64)
    ca[:, :m] = np.cumsum(new[:, ::-1], axis=1)[:, ::-1]
    fit = cb + ca
    best = fit.argmax(axis=1)  # the first best split
    r = np.arange(len(c))
    ok = (fit[r, best] >= SWITCH_FIT * (hi - lo)) & (cb[r, best] >= 2) & (ca[r, best] >= 2)
    lags = np.zeros((g, n))
    lags[gi, c] = (lo + best - c) * step * 1000.0
    counted = np.zeros((g, n), dtype=bool)
    counted[gi, c] = ok
    changes = np.zeros((g, n), dtype=bool)
    changes[gi, c] = ok & change
    return (row_medians(lags, changes, changes.sum(axis=1)), row_medians(lags, counted, counted.sum(axis=1)))


def _nearest_index(targets: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Index of the nearest of `found` (ascending, non-empty) to each target, the earlier on a tie."""
    j = np.minimum(np.searchsorted(found, targets), len(found) - 1)
    before = np.maximum(j - 1, 0)
    return np.where(np.abs(found[before] - targets) <= np.abs(found[j] - targets), before, j)


def onset_lag(starts: np.ndarray, onsets: np.ndarray, max_lag_s: float, agree_s: float = 0.03) -> float:
    """ms by which the label's note starts (from silence) are late, from audio onsets paired one to one (each
    the other's nearest, within max_lag_s): the median offset when at least 2 pairs, and 2/3 of them, lie within
    `agree_s` of it; else nan (a missed onset pairs with nothing rather than with another note's)."""
    if len(starts) < 2 or len(onsets) < 2:
        return float("nan")
    j = _nearest_index(starts, onsets)
    back = _nearest_index(onsets, starts)
    offs = onsets[j] - starts
    paired = (back[j] == np.arange(len(starts))) & (np.abs(offs) <= max_lag_s)
    if np.count_nonzero(paired) < 2:
        return float("nan")
    offs = offs[paired]
    med = median(offs)
    close = np.count_nonzero(np.abs(offs - med) <= agree_s)
    return -med * 1000 if close >= max(2, int(np.ceil(2 * len(offs) / 3))) else float("nan")


def nearest_offset(targets: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Signed offset (found - target) of the nearest found time (ascending) to each target, the earlier on a
    tie; inf when nothing was found."""
    if len(found) == 0:
        return np.full(len(targets), np.inf)
    return found[_nearest_index(targets, found)] - targets
