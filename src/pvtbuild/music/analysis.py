"""What the audio says, frame by frame, and how well it agrees with a clip's controls.

A library, used by the `qa` stage on rendered clips and by `pvtbuild evaluate` on
generated audio: audio + a frame grid in, `FrameEstimates` out (`analyse`); the
estimates + the stored control arrays in, per-clip scores out (`adherence`).
Nothing here reads MIDI: the only "truth" it sees is the control arrays.

Public API (stable; other modules depend on these names)
--------------------------------------------------------
- `FrameEstimates(voiced, pitch, loudness, onsets, harmonicity, times, harmonics, expected_score)`: per frame of
  the controls' grid (frame k sampled at t_k = (k + offset)/rate, as in controls.py):
  `voiced` [T] bool, `pitch` [T] float MIDI (nan where unvoiced), `loudness` [T] dBFS,
  `harmonicity` [T] (template score at the chosen pitch, see below), `times` [T] t_k,
  `harmonics` [T, TIMBRE_HARMONICS] (log-compressed magnitude at harmonics 1..8 of the
  frame's pitch: its timbre profile; nan where unvoiced), `expected_score` [T] (template score
  at the expected pitch, when one was given); `onsets`: onset times in seconds.
- `timbre_distances(est, references, frames)`: the clip's harmonic profile (level removed)
  against each instrument's reference profile at the same pitch (the qa stage's
  `wrong instrument` check); `timbre_distances_batch(ests, references, frames)`: the same for a render
  shard's clips at once.
- `one_blas_thread()`: a context keeping BLAS on one thread (callers judging many clips).
- `AnalysisParams`: the estimator's thresholds (the qa stage reads them from `qa.analysis`).
- `analyse(audio, sample_rate, rate, frames, offset=0.5, expected_pitch=None, params=...)`.
- `analyse_batch(audio [B, N], ..., expected_pitch [B, frames] or None, ...)` -> one `FrameEstimates`
  per clip: `analyse` on the clips of a render shard at once (the qa stage; `analyse` calls it
  with one clip). A clip's estimates do not depend on the rest of its batch.
- `Tolerances`: frames around note changes and seconds after note-offs left out of scoring.
- `adherence(est, controls, tolerances=..., rate=None)` -> dict of floats, keys in `SCORE_KEYS`:
  `voiced_agreement`, `chroma_accuracy`, `octave_accuracy`, `pitch_accuracy`,
  `loudness_velocity_spearman`, `onset_offset_ms`, `onset_abs_ms`, `onset_match`,
  `missing_notes`, `notes`, `sound_beyond_label`, `label_beyond_sound`, `harmonicity`,
  `peak_db`, `frames_scored`, `label_lag_ms` (how late the labels are: the shift within
  +-`max_lag_s` that makes the most frames agree with the audio's pitch, 0 unless it gains
  `lag_min_gain` of the held frames; nan with fewer than 10 held frames), `change_lag_ms` and
  `switch_lag_ms` (how long after the label the audio switches to each label note: the median over
  note changes, and over changes and note starts; `_switch_lags`), and the frame counts
  the shares stand on (`pitch_frames`, `held_frames`, `quiet_frames`: the qa stage fails a clip
  on a share only when enough frames back it, `qa.share_bounds`). `controls` maps control names (velocity, chroma, pitch,
  voiced; as stored: pitch = MIDI/127, chroma = pc/11) to [T] arrays on the same grid.
  A control that is -1 (unconditional, from the trainer or a generator) makes the
  metrics needing it nan; metrics with no frame to score are nan too.
- `adherence_batch(ests, controls [B, T] each, tolerances per clip)` -> one dict per clip: `adherence`
  on the clips of a render shard at once (the qa stage; `adherence` calls it with one clip).
- `near_changes`, `after_offsets`, `note_segments`: the label frames scoring leaves out, and the
  label's notes (shared by the qa stage and `train.judge`, so every judge leaves out the same frames).

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

Estimators, and why
-------------------
The budget is ~2 ms per 8 s clip (25 % of rendering it), so pYIN (0.8-7.7 s) and
even `librosa.yin` (~20 ms at 16 kHz) are out. Every estimate comes from one
magnitude STFT taken only at the grid's frame times. Measured on the 2-core dev machine
(`bench/bench_qa.py`, 95 Lakh clips, 600 frames each), per 8 s clip, warm: the rffts ~0.2 ms,
windowing, magnitudes and log ~0.15, the decimation ~0.1 (from 64-byte aligned audio:
`npz.npz_bytes`), the template product ~0.1, pitch refinement, harmonics and flux ~0.2; the
scoring (`adherence_batch`, timbre) ~0.2: `qa.judge_clips` ~1.15 ms, the whole qa task
~1.25 ms in a streamed build, against ~6 ms to render the clip
(the YIN cross-check on `qa.yin_share` of the clips adds ~0.4 ms per clip on average, not
counted there). What made it cheaper: clip by clip, the heavy arrays (decimated audio,
[600, 206] log spectrum, [600, 61] scores) live in buffers reused from clip to clip, so they
stay in cache and no large array is allocated per clip (fresh pages cost ~0.5 ms per clip in
page faults on this VM); the per-frame decisions (voicing, onsets) and the scores run on the
whole batch (per clip, numpy's per-call overhead was most of the scoring's cost); and the
timbre references are prepared once per references mapping. What is left is per-frame
numpy work (rffts, window, magnitudes, log, template product): a much smaller budget needs
fewer or shorter frames, i.e. a different estimator:

- Audio is low-passed ([1,3,3,1]/8, -21 dB at 8.5 kHz) and decimated to 12 kHz
  (24 kHz input; other rates are resampled), then a 512-point Hann window
  (42.7 ms, >= 5 periods of C3) is centred on each t_k. One rfft per even frame only (two frames
  apart, 26.7 ms at 75 Hz: the window still overlaps its neighbours by 38 %); an odd frame takes the mean of
  its neighbours' log spectra (hence their template scores) and of their powers (its loudness). This halved
  the spectrum's cost, the largest part of the stage (`bench/bench_qa.py`: qa / render 0.30 -> 0.25), at
  the cost of a few verdicts on 2 s clips (README, QA); scoring leaves frames near label changes out anyway.
- Pitch: a harmonic-template score for every semitone candidate MIDI 36..96 on the
  log-compressed spectrum S = log1p(|X| / floor): the mean of S at the candidate's
  harmonics h*f0 minus its mean at the half-harmonics (h - 1/2)*f0 (h = 1..12, below
  4.8 kHz). The negative teeth make the score octave-safe both ways: one octave up
  loses on the true odd harmonics that fall on its half-harmonics, one octave down
  scores only half its teeth. It is one small matrix product (bins x 61), cheaper and
  more robust on these clean, monophonic, harmonic sources than autocorrelation; run on
  one BLAS thread (`one_blas_thread`): on shared, busy cores OpenBLAS's threads made this
  0.15 ms product take 2-20 ms.
  With `expected_pitch` given, the argmax is limited to +-13 semitones of it (rounded to a whole note; so an
  octave or semitone error is still found; a wildly wrong pitch shows as a wrong one
  within that range), and a parabola through the neighbours refines it.
  `harmonicity` is the winning score (in nats: log peak-to-valley ratio); a noisy
  frame scores ~0 whatever its level.
- Voiced: loudness above max(`floor_db`, clip's 99th percentile - `range_db`) and
  harmonicity above `min_harmonicity`.
- Loudness: RMS of the windowed frame in dBFS (a full-scale sine reads ~ -3 dB).
- Onsets: peaks of the positive log-spectral flux, above `onset_threshold` nats
  per bin on average, at least 50 ms apart, where the level rises >= 3 dB across +-30 ms; the flux is taken between
  the spectra of even frames (two frames apart), and the time is the frame's t_k minus one frame (the flux
  peaks while the two windows' centres straddle the onset).

The second, independent estimator that guards the first (`check_pitch_yin`) is a
range-limited YIN (`librosa.yin` at 12 kHz) run on a sample of clips by the qa
stage; it disagrees with the template only where the clip is in trouble.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

ANALYSIS_SR = 12000
WINDOW = 512  # samples at ANALYSIS_SR: 42.7 ms
MIDI_MIN, MIDI_MAX = 36, 96
MAX_HARMONIC = 12
MAX_FREQ = 4800.0
TIMBRE_HARMONICS = 8  # harmonics in FrameEstimates.harmonics (the timbre profile)
# YIN's first-dip threshold (librosa's default 0.1 took trumpet an octave down on 11 % of held frames of
# 136 Lakh renders; 0.2 took violin wrong on 15 %): 0.13 agrees with the template on 96-99 % per instrument
YIN_TROUGH = 0.13
SCORE_KEYS: tuple[str, ...] = (
    "voiced_agreement", "chroma_accuracy", "octave_accuracy", "pitch_accuracy", "loudness_velocity_spearman",
    "onset_offset_ms", "onset_abs_ms", "onset_match", "missing_notes", "notes", "sound_beyond_label",
    "label_beyond_sound", "harmonicity", "peak_db", "frames_scored", "label_lag_ms", "change_lag_ms", "switch_lag_ms",
    "pitch_frames", "held_frames", "quiet_frames")
# template score (nats) at a note's own pitch from which that note counts as sounding, even where another pitch (a
# louder release tail) wins the frame: half a voiced frame's least harmonicity (low piano notes under a semitone
# neighbour's tail score 0.1-0.5 there, a note not played ~0)
ASKED_SOUNDS = 0.25
# a label note change is judged (`_switch_lags`) when one switch point explains this share of the frames around it
SWITCH_FIT = 0.8
# a held note whose core starts with this long a silence is missing (`_score_notes`): on the Lakh clips CREPE finds
# right, a core's leading silence (a slow attack) stays under 0.16 s (12 frames), and 2 of 1177 clips reach 0.107 s
LEAD_SILENT_S = 0.2


@dataclass(frozen=True)
class AnalysisParams:
    """Thresholds of `analyse` (defaults measured on GeneralUser GS renders of Lakh lines)."""

    floor_db: float = -70.0  # below this a frame is silent, whatever the clip
    range_db: float = 50.0  # ...and below the clip's 99th-percentile loudness minus this
    min_harmonicity: float = 0.5  # template score (nats) a voiced frame needs
    onset_threshold: float = 0.25  # mean positive log-flux per bin (nats) of an onset peak


@dataclass(frozen=True)
class Tolerances:
    """What scoring leaves out around label changes (see the module docstring)."""

    onset_frames: int = 2  # frames each side of an onset, offset or pitch change
    release_s: float = 0.3  # seconds after a note-off during which sound is not held against the label
    onset_search_s: float = 0.08  # a label onset matches an audio onset this close
    max_lag_s: float = 0.3  # label shifts tried by `label_lag_ms`; how far from a label note `_switch_lags` looks
    lag_min_gain: float = 0.04  # share of held frames a shift must bring into agreement to count (`label_lag_ms`)


@dataclass(frozen=True)
class FrameEstimates:
    """Per frame of the controls' grid: what the audio says."""

    voiced: np.ndarray  # [T] bool, a note sounds
    pitch: np.ndarray  # [T] float MIDI pitch, nan where unvoiced
    loudness: np.ndarray  # [T] float dBFS
    onsets: np.ndarray  # onset times, seconds from the clip start
    harmonicity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] template score (nats)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] t_k, seconds
    # [T, TIMBRE_HARMONICS] log-compressed magnitude at harmonics 1..H of the frame's pitch (nan: unvoiced)
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros((0, TIMBRE_HARMONICS)))
    # [T] template score (nats) at the expected pitch (nan where none was given): does the asked note sound, even
    # where another (a louder release tail) wins the frame?
    expected_score: np.ndarray = field(default_factory=lambda: np.zeros(0))


def analyse(audio: np.ndarray, sample_rate: int, rate: float, frames: int, offset: float = 0.5,
            expected_pitch: np.ndarray | None = None, params: AnalysisParams = AnalysisParams()) -> FrameEstimates:
    """Per-frame voicing, pitch, loudness and the onsets of a mono clip, on the grid t_k = (k + offset)/rate.

    Args:
        audio: [N] float mono samples.
        sample_rate: of `audio`.
        rate, frames, offset: the grid (as `config.GridConfig`: rate Hz, frame count, sampling offset).
        expected_pitch: [frames] MIDI pitch the frame should have (nan or <= 0 where none): limits
            the pitch search to +-13 semitones of it. None: the whole range MIDI 36..96.
        params: thresholds.
    """
    expected = None if expected_pitch is None else np.asarray(expected_pitch)[None]
    return analyse_batch(np.asarray(audio)[None], sample_rate, rate, frames, offset, expected, params)[0]


def analyse_batch(audio: np.ndarray, sample_rate: int, rate: float, frames: int, offset: float = 0.5,
                  expected_pitch: np.ndarray | None = None,
                  params: AnalysisParams = AnalysisParams()) -> list[FrameEstimates]:
    """`analyse` on B clips of one length at once (the qa stage: a render shard): one estimate per clip.

    Args:
        audio: [B, N] float mono samples.
        expected_pitch: [B, frames] (nan or <= 0 where none), or None.
        Others as `analyse`. Each clip's estimates depend on that clip alone, not on the batch.

    Spectrum, pitch and harmonics go clip by clip through buffers reused from clip to clip (they
    stay in cache, and no large array is allocated per clip); voicing and onsets on the whole
    batch at once.
    """
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"analyse_batch takes audio [clips, samples], not shape {audio.shape}")
    expected = None if expected_pitch is None else np.asarray(expected_pitch, dtype=np.float64)
    b, t = len(audio), frames
    times = (np.arange(frames, dtype=np.float64) + offset) / rate
    s = np.empty(((t + 1) // 2, N_BINS), dtype=np.float32)  # one clip's log-compressed magnitudes, even frames
    scores = np.empty((t, MIDI_MAX - MIDI_MIN + 1), dtype=np.float32)
    half_scores = np.empty((len(s), scores.shape[1]), dtype=np.float32)
    power = np.empty(t)
    rows = np.arange(t)
    loudness, flux, pitch = np.empty((b, t)), np.zeros((b, t)), np.empty((b, t))
    harm = np.empty((b, t), dtype=np.float32)
    asked = np.full((b, t), np.nan, dtype=np.float32)  # score at the expected pitch
    harmonics = np.empty((b, t, TIMBRE_HARMONICS), dtype=np.float32)
    padded = framed = None
    if expected is not None:  # candidates more than 13 semitones from a frame's expected pitch are out
        expected = np.where(expected > 0, expected, np.nan)
        far = np.empty(scores.shape, dtype=bool)
    from pvtbuild.compute import encode_threads  # torch (the rffts) on one thread, as BLAS: see _log_spectrum

    with one_blas_thread(), encode_threads():
        for k in range(b):
            clip = _to_analysis_rate(audio[k], sample_rate, pad=WINDOW, out=padded)
            if clip is not padded:  # a new buffer (the first clip, another rate): frame it
                padded, framed = clip, _frames(clip, times)
            # the spectrum of every other frame; the frames between are their neighbours' mean (`_fill_between`)
            loudness[k, 0::2] = _log_spectrum(framed[0::2], s)
            power[0::2] = loudness[k, 0::2]  # odd frames: their neighbours' mean power
            np.power(10.0, power[0::2] / 10.0, out=power[0::2])
            _fill_between(power)
            loudness[k, 1::2] = 10.0 * np.log10(power[1::2])
            np.matmul(s, _template(), out=half_scores)
            scores[0::2] = half_scores
            _fill_between(scores)
            if expected is not None:  # (into buffers: no [T, candidates] temporaries per clip)
                have = np.isfinite(expected[k])
                whole = np.clip(np.rint(np.where(have, expected[k], 0)), 0, 127)
                # a row of _FAR per whole expected pitch; its last (none out) where none is given
                np.take(_FAR, np.where(have, whole, -1).astype(np.int64), axis=0, out=far)
                col = np.rint(np.where(have, expected[k], MIDI_MIN)) - MIDI_MIN
                col = np.minimum(np.maximum(col, 0), MIDI_MAX - MIDI_MIN).astype(np.int64)
                asked[k] = np.where(have, scores.reshape(-1).take(rows * scores.shape[1] + col), np.nan)
                np.copyto(scores, -np.inf, where=far)
            best = scores.argmax(axis=1)
            harm[k], refined = _parabola(scores, best)
            pitch[k] = MIDI_MIN + best + refined
            # only where the frame can be voiced (the rest are nan once voicing is known)
            harmonics[k] = _harmonics(s, np.where(harm[k] > params.min_harmonicity, pitch[k], np.nan))
            if t > 1:  # the flux, only where the onset test reads it (~1/4 of the frames)
                at = np.flatnonzero(_flux_read(loudness[k], rate))
                at = at[(at % 2 == 0) & (at > 0)]  # between spectra taken (two frames apart)
                rise = np.subtract(s[at // 2], s[at // 2 - 1])
                np.maximum(rise, 0, out=rise)
                flux[k, at] = rise.sum(axis=1) * 0.5  # per frame: the change over two frames, halved
    ref = np.percentile(loudness, 99, axis=1) if t else np.full(b, params.floor_db)
    level = np.maximum(params.floor_db, ref - params.range_db)
    voiced = (loudness > level[:, None]) & (harm > params.min_harmonicity)
    pitch[~voiced] = np.nan
    harmonics[~voiced] = np.nan
    onsets = _onsets(flux / N_BINS, loudness, times - 1.0 / rate, params.onset_threshold, rate)
    return [FrameEstimates(voiced[k], pitch[k], loudness[k], onsets[k], harm[k], times, harmonics[k], asked[k])
            for k in range(b)]


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
    given = np.zeros((b, len(_CONTROLS)), dtype=bool)  # per clip: the control is there and not -1
    for j, name in enumerate(_CONTROLS):
        if name in controls:
            a = np.asarray(controls[name], dtype=np.float64).reshape(b, -1)
            if a.shape[1] != n:
                raise ValueError(f"control {name!r} has {a.shape[1]} frames, the estimates {n}")
            labels[name] = a
            given[:, j] = ~(a < 0).any(axis=1)
    patterns, group = np.unique(given, axis=0, return_inverse=True)
    for g, pattern in enumerate(patterns):
        rows = np.flatnonzero(group.reshape(-1) == g)
        have = {name: labels[name][rows] for name, ok in zip(_CONTROLS, pattern) if ok}
        _score_group(out, rows, [ests[k] for k in rows], have, [tolerances[k] for k in rows])
    return out


_CONTROLS = ("voiced", "pitch", "chroma", "velocity")


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
    harmonicity = _row_medians(np.stack([e.harmonicity for e in ests]), inner, n_inner)
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
        harm = np.stack([e.harmonicity for e in ests])
        ringing = _ringing_previous(lv, key, est_key, times, np.array([t.release_s for t in tolerances]))
        with np.errstate(invalid="ignore"):
            also = asked > 0
        both &= ~(ringing & also)
        # a note sounds where the audio is voiced (not only by its predecessor's tail) or where its own pitch scores
        # half a voiced frame's least harmonicity: low notes under a semitone neighbour's tail score 0.1-0.5 there
        with np.errstate(invalid="ignore"):
            sounding = (voiced & ~(ringing & ~also)) | (asked >= ASKED_SOUNDS)
        lag = _label_lags(lv, key, est_key, after, tolerances[0].max_lag_s, tolerances[0].lag_min_gain, times)
        change_lag, switch_lag = _switch_lags(lv, key, est_key, asked, tolerances[0].max_lag_s, times)
        with np.errstate(invalid="ignore"):
            right_pc = both & (est_midi % 12 == pc)
        n_right = right_pc.sum(axis=1)
        n_exact = np.count_nonzero(both & (est_midi == midi), axis=1) if midi is not None else None
    n_both = both.sum(axis=1)
    rho = _row_spearman(np.stack([e.loudness for e in ests]), labels["velocity"], inner) \
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
    r, first, last = _note_runs(lv, key)
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
        offs = _nearest_offset(starts, ests[i].onsets)
        dist = np.abs(offs)
        found = offs[dist <= tol.onset_search_s]
        o["onset_match"] = float(len(found) / len(starts))
        if len(found):
            o["onset_offset_ms"] = _median(found) * 1000
            o["onset_abs_ms"] = _median(np.abs(found)) * 1000
        if o["label_lag_ms"] == 0.0:  # no shift found frame by frame (few frames move): do the onsets agree on one?
            by_onsets = _onset_lag(starts, ests[i].onsets, tol.max_lag_s)
            if not np.isnan(by_onsets):
                o["label_lag_ms"] = by_onsets


def timbre_distances(est: FrameEstimates, references: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     frames: np.ndarray | None = None, min_frames: int = 10) -> dict[str, float]:
    """How far the clip's harmonic profile lies from each instrument's reference (mean squared nats; nan: too few frames).

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


def pitch_yin(audio: np.ndarray, sample_rate: int, rate: float, frames: int, offset: float = 0.5,
              fmin: float = 65.0, fmax: float = 1100.0) -> np.ndarray:
    """A second, independent pitch estimate: librosa's YIN at 12 kHz on the same grid (MIDI float, [frames]).

    Range-limited (MIDI ~36..85 by default) and ~10x the template's cost: the qa stage runs it on a
    sample of clips to guard the template (see `check_pitch_yin`). Unvoiced frames give YIN's
    arbitrary answer: mask them with the template's `voiced`.
    """
    import librosa

    x = _to_analysis_rate(np.asarray(audio, dtype=np.float32), sample_rate)
    step, shift = ANALYSIS_SR / rate, offset * ANALYSIS_SR / rate
    if step == int(step) and shift == int(shift):  # frames exactly at the grid's times (75 Hz: 2.5x fewer than hop 64)
        hop = int(step)
        f0 = librosa.yin(x[int(shift):], fmin=fmin, fmax=fmax, sr=ANALYSIS_SR, frame_length=WINDOW, hop_length=hop,
                         center=True, trough_threshold=YIN_TROUGH)
        idx = np.minimum(np.arange(frames), len(f0) - 1)
    else:
        hop = 64
        f0 = librosa.yin(x, fmin=fmin, fmax=fmax, sr=ANALYSIS_SR, frame_length=WINDOW, hop_length=hop, center=True,
                         trough_threshold=YIN_TROUGH)
        t = (np.arange(frames) + offset) / rate
        idx = np.clip(np.rint(t * ANALYSIS_SR / hop).astype(int), 0, len(f0) - 1)
    return 69.0 + 12.0 * np.log2(f0[idx] / 440.0)


def check_pitch_yin(est: FrameEstimates, yin_pitch: np.ndarray, frames: np.ndarray | None = None) -> float:
    """Share of the template's voiced frames where YIN names the same pitch (within half a semitone); nan if none.

    `frames`: a [T] bool mask of the frames to compare (the qa stage: held by the label, away from
    label changes; in release tails YIN falls to its range's floor while the template still hears the note).
    """
    use = est.voiced & np.isfinite(yin_pitch)
    if frames is not None:
        use &= frames
    if not use.any():
        return float("nan")
    return float(np.mean(np.abs(est.pitch[use] - yin_pitch[use]) < 0.5))


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS (OpenBLAS/MKL) limited to one thread inside; re-entrant, a no-op without threadpoolctl.

    The template product (frames x 206 x 61) takes ~0.15 ms on one thread, but 2-20 ms when
    OpenBLAS wakes a thread per core on a machine whose cores are busy (rendering, other workers).
    Callers judging many clips (the qa stage) enter it once around the loop, so `analyse`'s own
    entry costs nothing there.
    """
    global _BLAS_DEPTH
    ctl = _blas_controller()
    if ctl is None or _BLAS_DEPTH:
        _BLAS_DEPTH += 1
        try:
            yield
        finally:
            _BLAS_DEPTH -= 1
        return
    with ctl.limit(limits=1, user_api="blas"):
        _BLAS_DEPTH += 1
        try:
            yield
        finally:
            _BLAS_DEPTH -= 1


# --- internals --------------------------------------------------------------------------

_BLAS_DEPTH = 0
_BLAS_CTL: object = None


def _blas_controller():
    """threadpoolctl's controller of this process's BLAS libraries (made once), or None without threadpoolctl."""
    global _BLAS_CTL
    if _BLAS_CTL is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CTL = ThreadpoolController()
        except Exception:  # not installed, or an unexpected library layout: leave BLAS as it is
            _BLAS_CTL = False
    return _BLAS_CTL or None


def _to_analysis_rate(x: np.ndarray, sr: int, pad: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """[N] samples at `sr` -> [pad + M + pad] float32 at ANALYSIS_SR, with `pad` zeros each side.

    `out`: a float32 buffer to write into (at 24 kHz), used when its length is pad + M + pad.
    """
    x = np.asarray(x, dtype=np.float32)
    if sr == 2 * ANALYSIS_SR:  # [1,3,3,1]/8 low-pass, taken at every other sample only
        n = len(x)
        m = (n + 1) // 2
        if out is None or out.shape != (pad + m + pad,):
            out = np.empty(pad + m + pad, dtype=np.float32)
        out[:pad] = 0
        out[pad + m:] = 0
        y = out[pad:pad + m]  # y[i] = (x[2i-2] + 3 x[2i-1] + 3 x[2i] + x[2i+1]) / 8, x = 0 outside
        even, odd = x[0::2], x[1::2]
        y[0] = 0
        np.add(even[1:], odd[:m - 1], out=y[1:])
        y[0] = even[0] if n else 0
        y *= np.float32(3)
        y[:len(odd)] += odd
        y[1:] += even[:m - 1]
        y *= np.float32(0.125)
        return out
    if sr == ANALYSIS_SR:
        y = x
    else:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sr), ANALYSIS_SR)
        y = resample_poly(x, ANALYSIS_SR // g, int(sr) // g).astype(np.float32)
    return np.concatenate([np.zeros(pad, np.float32), y, np.zeros(pad, np.float32)]) if pad else y


_HANN = np.hanning(WINDOW + 2)[1:-1].astype(np.float32)
N_BINS = int(MAX_FREQ / (ANALYSIS_SR / WINDOW)) + 2
_HANN_POWER = float(np.dot(_HANN.astype(np.float64), _HANN))
_BLOCK = 600  # frames per rfft block in _log_spectrum


def _frames(padded: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[T, WINDOW] the samples of the window centred on each time, from `padded` (the clip at ANALYSIS_SR
    with WINDOW zeros each side).

    A regular grid is a strided view (no gather), so it is made once per buffer and sees each
    clip written into that buffer; an irregular one is a gathered copy (then the buffer must not be reused).
    """
    half = WINDOW // 2
    centres = np.rint(times * ANALYSIS_SR).astype(np.int64) + WINDOW
    n = len(centres)
    step = np.diff(centres)
    if n > 1 and step[0] > 0 and np.all(step == step[0]) and centres[0] >= half and centres[-1] + half <= len(padded):
        # writeable only because torch.from_numpy (in _log_spectrum) wants it so; nothing writes through it
        return np.lib.stride_tricks.as_strided(padded[centres[0] - half:], (n, WINDOW),
                                               (int(step[0]) * padded.strides[0], padded.strides[0]))
    return padded[centres[:, None] - half + np.arange(WINDOW)[None, :]]


def _log_spectrum(frames: np.ndarray, out: np.ndarray) -> np.ndarray:
    """log(1 + |rfft| / floor) of each Hann-windowed frame of `frames` [T, WINDOW] (bins up to ~MAX_FREQ)
    into `out` [T, N_BINS]; returns each frame's loudness in dBFS [T].

    floor = max(1e-4 x the clip's peak magnitude, 1e-7). Taken in blocks of `_BLOCK` frames (an 8 s
    clip at 75 Hz in one): each call's overhead, not the cache, was what larger blocks saved.
    """
    import torch

    n = len(frames)
    energy = np.empty(n, dtype=np.float32)
    work = _work_buffer(min(n, _BLOCK))
    src, hann = torch.from_numpy(frames), torch.from_numpy(_HANN)
    for i in range(0, n, _BLOCK):
        # torch's multiply reads the strided frames ~3x faster than numpy's (same products)
        w = torch.mul(src[i:i + _BLOCK], hann, out=work[:min(_BLOCK, n - i)])
        np.einsum("ij,ij->i", w.numpy(), w.numpy(), out=energy[i:i + _BLOCK])
        # torch's rfft: ~3x scipy's on one thread (0.26 vs 0.8 ms for 600 frames here); numpy's
        # complex abs is faster than torch's (same results, to float32 rounding)
        np.abs(torch.fft.rfft(w, dim=1).numpy()[:, :N_BINS], out=out[i:i + _BLOCK])
    floor = max(float(out.max(initial=0.0)) * 1e-4, 1e-7)
    np.divide(out, np.float32(floor), out=out)
    # log(1 + x), not log1p(x): numpy's float32 log1p is not vectorised (0.78 ms for an 8 s clip's 600 x 206
    # bins); torch's log (0.17 ms) is faster than numpy's (0.25): they differ by float32 rounding (1 ulp)
    np.add(out, np.float32(1.0), out=out)
    t = torch.from_numpy(out)
    torch.log(t, out=t)
    return 10.0 * np.log10(np.maximum(energy.astype(np.float64) / _HANN_POWER, 1e-12))


def _fill_between(a: np.ndarray) -> None:
    """Odd rows of `a` [T, ...] := the mean of the even rows either side (the last, with none after it: the one
    before), in place: the frames `analyse_batch` takes no spectrum of."""
    even, odd = a[0::2], a[1::2]
    n = len(even) - 1
    if n > 0:
        np.add(even[:-1], even[1:], out=odd[:n])
        odd[:n] *= np.float32(0.5)
    if len(odd) > max(n, 0):
        odd[-1] = even[-1]


_WORK = threading.local()  # per thread: dask may run qa tasks in threads


def _work_buffer(rows: int):
    """A [rows, WINDOW] float32 torch buffer for `_log_spectrum`, the same one from call to call in this
    thread (a 1.2 MB block allocated per clip costs page faults)."""
    import torch

    buf = getattr(_WORK, "buf", None)
    if buf is None or buf.shape[0] < rows:
        buf = _WORK.buf = torch.empty((rows, WINDOW), dtype=torch.float32)
    return buf[:rows]


_TEMPLATE: np.ndarray | None = None


def _template() -> np.ndarray:
    """[bins, candidates] weights: +1/H at the harmonics of each candidate, -1/H at its half-harmonics."""
    global _TEMPLATE
    if _TEMPLATE is None:
        bin_hz = ANALYSIS_SR / WINDOW
        cands = np.arange(MIDI_MIN, MIDI_MAX + 1)
        t = np.zeros((N_BINS, len(cands)), dtype=np.float32)
        for j, m in enumerate(cands):
            f0 = 440.0 * 2 ** ((m - 69) / 12)
            h_max = max(1, int(MAX_FREQ // f0))  # the same span for every candidate
            for h in range(1, h_max + 1):
                for f, w in ((h * f0, 1.0 / h_max), ((h - 0.5) * f0, -1.0 / h_max)):
                    b = f / bin_hz
                    lo = int(np.floor(b))
                    if lo + 1 < N_BINS:
                        t[lo, j] += w * (1 - (b - lo))
                        t[lo + 1, j] += w * (b - lo)
        _TEMPLATE = t
    return _TEMPLATE


_CANDIDATES = np.arange(MIDI_MIN, MIDI_MAX + 1, dtype=np.float64)[None, :]  # pitch candidates, MIDI
# [128 + 1, candidates]: row m, the candidates more than 13 semitones from MIDI m; the last row (-1): none
_FAR = np.vstack([np.abs(_CANDIDATES - np.arange(128)[:, None]) > 13, np.zeros_like(_CANDIDATES, dtype=bool)])


def _harmonics(s: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """[T, TIMBRE_HARMONICS] the log spectrum at harmonics 1..H of each frame's pitch (linear between bins).

    `s`: the log spectra of the even frames ([ceil(T / 2), bins], as `analyse_batch` takes them); an odd
    frame reads the mean of its neighbours' (the last, with none after it: the one before).
    """
    bins = s.shape[1]
    out = np.full((len(pitch), TIMBRE_HARMONICS), np.nan, dtype=np.float32)
    rows = np.flatnonzero(np.isfinite(pitch))
    if not len(rows):
        return out
    b = np.exp2((pitch[rows] - 69) / 12)[:, None] * _HARMONIC_BINS  # [rows, H] fractional bins
    lo = b.astype(np.int64)  # floor (b > 0)
    np.minimum(lo, bins - 2, out=lo)
    frac = (b - lo).astype(np.float32)
    flat = s.reshape(-1)
    at = lo + (rows // 2 * bins)[:, None]  # flat indices into s
    at_next = lo + (np.minimum((rows + 1) // 2, len(s) - 1) * bins)[:, None]
    below = (flat.take(at) + flat.take(at_next)) * np.float32(0.5)
    above = (flat.take(at + 1) + flat.take(at_next + 1)) * np.float32(0.5)
    vals = below * (1 - frac) + above * frac
    vals[b >= bins - 1] = np.nan
    out[rows] = vals
    return out


_HARMONIC_BINS = 440.0 * np.arange(1, TIMBRE_HARMONICS + 1) / (ANALYSIS_SR / WINDOW)  # bins of harmonics of A4


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


def _parabola(scores: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's score at `best`, the offset from `best` of the peak of a parabola through it and its neighbours,
    within +-0.5; 0 at the row's ends or where the neighbours are not finite). `scores` [T, C] C-contiguous."""
    c = scores.shape[1]
    flat = scores.reshape(-1)
    at = np.arange(len(best)) * c + best
    inside = (best > 0) & (best < c - 1)
    b = flat.take(at)
    a, e = flat.take(at - (best > 0)), flat.take(at + (best < c - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 0.5 * (a - e) / (a - 2 * b + e)
    ok = np.isfinite(d) & inside
    return b, np.where(ok, np.minimum(np.maximum(d, -0.5), 0.5), 0.0)


def _onsets(flux: np.ndarray, loudness: np.ndarray, times: np.ndarray, threshold: float,
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


def _flux_read(loudness: np.ndarray, rate: float) -> np.ndarray:
    """[T] the frames whose flux `_onsets` reads: those within its peak window (+-`_onset_gap`) of a possible
    onset (`_level_rises`); elsewhere the flux decides nothing."""
    gap = _onset_gap(rate)
    count = np.concatenate([[0], np.cumsum(_level_rises(loudness, rate))])
    n = len(loudness)
    idx = np.arange(n)
    return count[np.minimum(idx + gap + 1, n)] > count[np.maximum(idx - gap, 0)]


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
    _, start, stop = _note_runs(np.asarray(voiced)[None], None if pitch is None else np.asarray(pitch)[None])
    return np.stack([start, stop], axis=1)


def _note_runs(voiced: np.ndarray, pitch: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _label_lags(lv: np.ndarray, key: np.ndarray, est_key: np.ndarray, tails: np.ndarray, max_lag_s: float,
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


def _switch_lags(lv: np.ndarray, key: np.ndarray, est_key: np.ndarray, asked: np.ndarray, window_s: float,
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
    before or after. One switch is evidence where the frame-agreement lag (`_label_lags`) is not: a two-note
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
    return (_row_medians(lags, changes, changes.sum(axis=1)), _row_medians(lags, counted, counted.sum(axis=1)))


def _nearest_index(targets: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Index of the nearest of `found` (ascending, non-empty) to each target, the earlier on a tie."""
    j = np.minimum(np.searchsorted(found, targets), len(found) - 1)
    before = np.maximum(j - 1, 0)
    return np.where(np.abs(found[before] - targets) <= np.abs(found[j] - targets), before, j)


def _onset_lag(starts: np.ndarray, onsets: np.ndarray, max_lag_s: float, agree_s: float = 0.03) -> float:
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
    med = _median(offs)
    close = np.count_nonzero(np.abs(offs - med) <= agree_s)
    return -med * 1000 if close >= max(2, int(np.ceil(2 * len(offs) / 3))) else float("nan")


def _nearest_offset(targets: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Signed offset (found - target) of the nearest found time (ascending) to each target, the earlier on a
    tie; inf when nothing was found."""
    if len(found) == 0:
        return np.full(len(targets), np.inf)
    j = np.minimum(np.searchsorted(found, targets), len(found) - 1)
    before, after = found[np.maximum(j - 1, 0)] - targets, found[j] - targets
    return np.where(np.abs(before) <= np.abs(after), before, after)


def _row_medians(values: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each row's median of its `mask`ed values ([G, T]; `counts`: mask's per-row sums), as `_median` of each
    (nan where a row has none)."""
    s = np.sort(np.where(mask, values, np.nan), axis=1)  # masked-out last
    rows = np.arange(len(s))
    med = (s[rows, np.maximum(counts - 1, 0) // 2] + s[rows, counts // 2]) / 2
    return np.where(counts > 0, med, np.nan)


def _row_spearman(loudness: np.ndarray, velocity: np.ndarray, frames: np.ndarray) -> np.ndarray:
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


def _median(a: np.ndarray) -> float:
    """np.median of a non-empty 1-D array without nan, without its overhead."""
    s = np.sort(a)
    return float((s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2)


__all__ = ["AnalysisParams", "Tolerances", "FrameEstimates", "SCORE_KEYS", "analyse", "analyse_batch", "adherence",
           "adherence_batch", "pitch_yin", "check_pitch_yin", "one_blas_thread", "timbre_distances",
           "timbre_distances_batch", "TIMBRE_HARMONICS", "near_changes", "after_offsets", "note_segments"]
