"""The template tracker: audio + a frame grid in, `FrameEstimates` out (`analyse`, `analyse_batch`).

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


The second, independent estimator that guards this one is in `pvtbuild.music.analysis.yin`.
"""

from __future__ import annotations

import numpy as np

from pvtbuild.music.analysis.blas import one_blas_thread
from pvtbuild.music.analysis.estimates import (
    ANALYSIS_SR,
    MAX_FREQ,
    MIDI_MAX,
    MIDI_MIN,
    TIMBRE_HARMONICS,
    WINDOW,
    AnalysisParams,
    FrameEstimates,
)
from pvtbuild.music.analysis.onsets import flux_read, onset_times
from pvtbuild.music.analysis.spectrum import N_BINS, fill_between, frame_windows, log_spectrum, to_analysis_rate


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
    # torch (the rffts) on one thread, as BLAS: see log_spectrum
    from pvtbuild.compute import encode_threads  # noqa: PLC0415  (imports torch: ~1.3 s, see spectrum.log_spectrum)

    with one_blas_thread(), encode_threads():
        for k in range(b):
            clip = to_analysis_rate(audio[k], sample_rate, pad=WINDOW, out=padded)
            if clip is not padded:  # a new buffer (the first clip, another rate): frame it
                padded, framed = clip, frame_windows(clip, times)
            # the spectrum of every other frame; the frames between are their neighbours' mean (`fill_between`)
            loudness[k, 0::2] = log_spectrum(framed[0::2], s)
            power[0::2] = loudness[k, 0::2]  # odd frames: their neighbours' mean power
            np.power(10.0, power[0::2] / 10.0, out=power[0::2])
            fill_between(power)
            loudness[k, 1::2] = 10.0 * np.log10(power[1::2])
            np.matmul(s, _template(), out=half_scores)
            scores[0::2] = half_scores
            fill_between(scores)
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
                at = np.flatnonzero(flux_read(loudness[k], rate))
                at = at[(at % 2 == 0) & (at > 0)]  # between spectra taken (two frames apart)
                rise = np.subtract(s[at // 2], s[at // 2 - 1])
                np.maximum(rise, 0, out=rise)
                flux[k, at] = rise.sum(axis=1) * 0.5  # per frame: the change over two frames, halved
    ref = np.percentile(loudness, 99, axis=1) if t else np.full(b, params.floor_db)
    level = np.maximum(params.floor_db, ref - params.range_db)
    voiced = (loudness > level[:, None]) & (harm > params.min_harmonicity)
    pitch[~voiced] = np.nan
    harmonics[~voiced] = np.nan
    onsets = onset_times(flux / N_BINS, loudness, times - 1.0 / rate, params.onset_threshold, rate)
    return [FrameEstimates(voiced[k], pitch[k], loudness[k], onsets[k], harm[k], times, harmonics[k], asked[k])
            for k in range(b)]


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
