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
  `harmonicity` [T] (template score at the chosen pitch, see `tracker`), `times` [T] t_k,
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
  note changes, and over changes and note starts; `lags.switch_lags`), and the frame counts
  the shares stand on (`pitch_frames`, `held_frames`, `quiet_frames`: the qa stage fails a clip
  on a share only when enough frames back it, `qa.share_bounds`). `controls` maps control names (velocity, chroma,
  pitch, voiced: `SCORED_CONTROLS`; as stored: pitch = MIDI/127, chroma = pc/11) to [T] arrays on the same grid.
  A control that is -1 (unconditional, from the trainer or a generator) makes the
  metrics needing it nan; metrics with no frame to score are nan too.
- `adherence_batch(ests, controls [B, T] each, tolerances per clip)` -> one dict per clip: `adherence`
  on the clips of a render shard at once (the qa stage; `adherence` calls it with one clip).
- `near_changes`, `after_offsets`, `note_segments`: the label frames scoring leaves out, and the
  label's notes (shared by the qa stage and `train.judge`, so every judge leaves out the same frames).

Modules (each imports only those above it; callers import from this package)
---------------------------------------------------------------------------
- `estimates`: the analysis grid's constants, `AnalysisParams`, `FrameEstimates`.
- `blas`: `one_blas_thread`.
- `spectrum`: resampling to 12 kHz, framing, log spectra.
- `onsets`: onsets from the spectral flux.
- `tracker`: `analyse`, `analyse_batch` (the estimators, and why they are these).
- `labels`: `Tolerances` and the label frames scoring leaves out (what "voiced" means).
- `stats`: row-wise medians and Spearman's rho.
- `lags`: how late the labels are against the audio.
- `scoring`: `adherence`, `adherence_batch`, `SCORE_KEYS`.
- `timbre`: `timbre_distances`, `timbre_distances_batch`.
- `yin`: the YIN cross-check, `pitch_yin`, `check_pitch_yin`.
"""

from __future__ import annotations

from pvtbuild.music.analysis.blas import one_blas_thread
from pvtbuild.music.analysis.estimates import TIMBRE_HARMONICS, AnalysisParams, FrameEstimates
from pvtbuild.music.analysis.labels import Tolerances, after_offsets, near_changes, note_segments
from pvtbuild.music.analysis.scoring import SCORE_KEYS, SCORED_CONTROLS, adherence, adherence_batch
from pvtbuild.music.analysis.timbre import timbre_distances, timbre_distances_batch
from pvtbuild.music.analysis.tracker import analyse, analyse_batch
from pvtbuild.music.analysis.yin import check_pitch_yin, pitch_yin

__all__ = ["AnalysisParams", "Tolerances", "FrameEstimates", "SCORE_KEYS", "SCORED_CONTROLS", "analyse",
           "analyse_batch", "adherence", "adherence_batch", "pitch_yin", "check_pitch_yin", "one_blas_thread",
           "timbre_distances", "timbre_distances_batch", "TIMBRE_HARMONICS", "near_changes", "after_offsets",
           "note_segments"]
