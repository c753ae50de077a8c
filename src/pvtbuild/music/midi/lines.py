"""A track's notes as one monophonic line (`monophonic_line`): the rule that decides which notes are a
melody and which a chord.

Monophonic rule (a track's notes become a "line"):

- Notes are sorted by (start, pitch); notes of zero or negative length are
  dropped; identical duplicates (same start and pitch) count once (the longest
  is kept).
- For each note and the next onset: if the note ends at or before that onset,
  fine. If it overlaps it by at most `overlap_tolerance` seconds, it is cut to
  end at that onset -- real MIDI is full of such legato overlaps and they are
  not chords. A larger overlap, or two notes with the same onset, make the pair
  polyphonic. Maximal chains of non-polyphonic pairs are "monophonic runs".
- With `polyphony: top_line` the track is first reduced to its skyline: of
  simultaneous onsets only the highest note is kept; a note starting while a
  kept note still sounds (beyond the tolerance) is dropped if it is not
  higher, and cuts the sounding note short if it is. The result is one run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvtbuild.config import SelectConfig
from pvtbuild.music.midi.records import Track


@dataclass
class Line:
    """A track's notes after the monophonic rule: sorted, deduplicated, legato overlaps cut.

    `poly[m]` says notes m and m+1 overlap beyond the tolerance (or share an
    onset); `reach[i]` is the latest end of any note before i, so a window at
    note i is clean only if `reach[i] <= start[i]`.
    """

    start: np.ndarray  # float64 [n]
    end: np.ndarray  # float64 [n]
    pitch: np.ndarray  # int16 [n]
    velocity: np.ndarray  # int16 [n]
    poly: np.ndarray  # bool [max(n-1, 0)]

    def __len__(self) -> int:
        return len(self.start)

    @property
    def reach(self) -> np.ndarray:
        if len(self) == 0:
            return np.zeros(0)
        return np.concatenate([[-np.inf], np.maximum.accumulate(self.end)[:-1]])


def monophonic_line(track: Track, cfg: SelectConfig) -> Line:
    """Apply the module's monophonic rule (or the skyline with `polyphony: top_line`) to a track."""
    start, end, pitch, velocity = _sorted_unique_notes(track)
    if cfg.polyphony == "top_line":
        return _top_line(start, end, pitch, velocity, cfg.overlap_tolerance)
    return _cut_legato(start, end, pitch, velocity, cfg.overlap_tolerance)


def _sorted_unique_notes(track: Track) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Notes of positive length sorted by (start, pitch), one per (start, pitch): the longest."""
    keep = track.end > track.start
    start, end = track.start[keep], track.end[keep]
    pitch, velocity = track.pitch[keep], track.velocity[keep]
    order = np.lexsort((-(end - start), pitch, start))
    start, end, pitch, velocity = start[order], end[order], pitch[order], velocity[order]
    first = np.ones(len(start), dtype=bool)
    first[1:] = (start[1:] != start[:-1]) | (pitch[1:] != pitch[:-1])
    return start[first], end[first].copy(), pitch[first], velocity[first]


def _cut_legato(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, velocity: np.ndarray,
                tolerance: float) -> Line:
    """Cut overlaps of at most `tolerance` at the next onset; mark larger ones and chords polyphonic."""
    overlap = end[:-1] - start[1:]
    chord = start[1:] == start[:-1]
    poly = chord | (overlap > tolerance)
    cut = ~poly & (overlap > 0)
    end[:-1][cut] = start[1:][cut]
    return Line(start, end, pitch, velocity, poly)


def _top_line(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, velocity: np.ndarray,
              tolerance: float) -> Line:
    """Skyline: keep the highest sounding note; lower notes entering under it are dropped."""
    kept: list[int] = []
    end = end.copy()
    # Highest first among equal onsets, so a chord keeps its top note.
    for i in np.lexsort((-pitch, start)):
        if kept:
            cur = kept[-1]
            if start[i] == start[cur]:
                continue  # a lower note of a chord whose top note is kept
            overlap = end[cur] - start[i]
            if overlap > tolerance and pitch[i] <= pitch[cur]:
                continue  # enters under the sounding top note
            if overlap > 0:
                end[cur] = start[i]  # legato overlap, or a higher note taking over
        kept.append(int(i))
    idx = np.array(kept, dtype=np.int64)
    return Line(start[idx], end[idx], pitch[idx], velocity[idx], np.zeros(max(len(idx) - 1, 0), dtype=bool))
