"""The second, independent pitch estimator that guards the template tracker: a range-limited YIN
(`librosa.yin` at 12 kHz) on the same grid (`pitch_yin`), and how often the two agree (`check_pitch_yin`).

The qa stage runs it on a sample of clips (`qa.yin_share`); it disagrees with the template only where
the clip is in trouble.
"""

from __future__ import annotations

import numpy as np

from pvtbuild.music.analysis.estimates import ANALYSIS_SR, WINDOW, FrameEstimates
from pvtbuild.music.analysis.spectrum import to_analysis_rate

# YIN's first-dip threshold (librosa's default 0.1 took trumpet an octave down on 11 % of held frames of
# 136 Lakh renders; 0.2 took violin wrong on 15 %): 0.13 agrees with the template on 96-99 % per instrument
YIN_TROUGH = 0.13


def pitch_yin(audio: np.ndarray, sample_rate: int, rate: float, frames: int, offset: float = 0.5,
              fmin: float = 65.0, fmax: float = 1100.0) -> np.ndarray:
    """A second, independent pitch estimate: librosa's YIN at 12 kHz on the same grid (MIDI float, [frames]).

    Range-limited (MIDI ~36..85 by default) and ~10x the template's cost: the qa stage runs it on a
    sample of clips to guard the template (see `check_pitch_yin`). Unvoiced frames give YIN's
    arbitrary answer: mask them with the template's `voiced`.
    """
    import librosa  # noqa: PLC0415  (librosa.yin loads numba and scipy: ~3 s)

    x = to_analysis_rate(np.asarray(audio, dtype=np.float32), sample_rate)
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
