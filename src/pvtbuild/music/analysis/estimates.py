"""The analysis's fixed grid of frequencies and what it produces per frame: `FrameEstimates`, under the
thresholds of `AnalysisParams`.

A leaf of `pvtbuild.music.analysis`: every other module there (the tracker that fills the estimates,
the scoring, timbre and YIN checks that read them) imports these names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ANALYSIS_SR = 12000
WINDOW = 512  # samples at ANALYSIS_SR: 42.7 ms
MIDI_MIN, MIDI_MAX = 36, 96
MAX_HARMONIC = 12
MAX_FREQ = 4800.0
TIMBRE_HARMONICS = 8  # harmonics in FrameEstimates.harmonics (the timbre profile)


@dataclass(frozen=True)
class AnalysisParams:
    """Thresholds of `analyse` (defaults measured on GeneralUser GS renders of Lakh lines)."""

    floor_db: float = -70.0  # below this a frame is silent, whatever the clip
    range_db: float = 50.0  # ...and below the clip's 99th-percentile loudness minus this
    min_harmonicity: float = 0.5  # template score (nats) a voiced frame needs
    onset_threshold: float = 0.25  # mean positive log-flux per bin (nats) of an onset peak


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
