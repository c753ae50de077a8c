"""The records a clip is made of: its selection (`ClipSpec`) and its notes (`ClipNotes`).

`ClipSpec` is one row of a selection manifest: everything needed to rebuild the
clip from its source MIDI file, and nothing derived (notes are re-read from the
file, whose md5 is checked). `ClipNotes` is what render and controls consume:
the notes of the window after octave folding and velocity modulation, in
seconds from the clip's start, plus the file's beat times around the clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    source: str  # MIDI path; in a manifest file, relative to the manifest's folder
    source_md5: str
    track: int  # index into pretty_midi's instruments list
    instrument: str  # instrument class name from the config (piano, violin, ...)
    program: int  # GM program the clip is rendered with
    source_program: int  # GM program of the source track
    start: float  # window start in the source file, seconds
    duration: float  # clip length, seconds
    transpose: int  # semitones applied to the whole window (a multiple of 12)
    folded: int  # notes still outside the pitch range after `transpose`, moved by octaves
    variant: int  # index of the velocity-modulation variant
    mod_freq: float  # f of m(t), Hz
    mod_phase: float  # phi of m(t), radians
    mod_depth: float  # d of m(t)
    seed: int
    n_notes: int
    voiced: float  # share of the clip during which a note sounds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ClipNotes:
    """Notes of one clip, sorted by onset, non-overlapping (monophonic), times relative to the clip start."""

    onsets: np.ndarray  # float64 [n], seconds, >= 0
    offsets: np.ndarray  # float64 [n], seconds, <= clip duration, > onsets
    pitches: np.ndarray  # int16 [n], MIDI pitch after folding
    velocities: np.ndarray  # int16 [n], 1..127 after modulation
    beats: np.ndarray  # float64 [m], beat times relative to clip start; covers the clip, one beat beyond each side where the file has it
    duration: float

    def __len__(self) -> int:
        return len(self.onsets)
