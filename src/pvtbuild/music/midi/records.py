"""What the pipeline keeps of a MIDI file (`ParsedMidi`, one `Track` per pretty_midi instrument: numpy
arrays, cheap to pickle out of the parser's child process), and the time resolution the rules share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Times closer than this (seconds) are the same instant: pretty_midi's times come
# from tick arithmetic and ClipSpec rounds starts to 6 decimals.
EPS = 1e-6
TIME_DECIMALS = 6


@dataclass
class Track:
    """One entry of pretty_midi's `instruments` list, reduced to numpy arrays (cheap to pickle)."""

    program: int
    is_drum: bool
    name: str
    start: np.ndarray  # float64 [n], seconds
    end: np.ndarray  # float64 [n], seconds
    pitch: np.ndarray  # int16 [n]
    velocity: np.ndarray  # int16 [n]

    def __len__(self) -> int:
        return len(self.start)


@dataclass
class ParsedMidi:
    """What the pipeline needs of a MIDI file; `tracks[i]` is pretty_midi's `instruments[i]`."""

    tracks: list[Track]
    beats: np.ndarray  # float64, seconds: quarter notes from the tempo map (`quarter_beats`), up to end_time
    end_time: float  # seconds
    final_tempo: float  # quarter notes per minute at the end: beat period when beats run out
    # float64 [m, 3]: (time s, numerator, denominator) of each time-signature change, sorted by time
    time_signatures: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def time_signature_at(self, t: float) -> str:
        """The time signature in force at `t`, e.g. "6/8"; "4/4" (MIDI's default) before the first one."""
        k = int(np.searchsorted(self.time_signatures[:, 0], t + EPS, side="right")) - 1
        return "4/4" if k < 0 else f"{int(self.time_signatures[k, 1])}/{int(self.time_signatures[k, 2])}"
