"""The beat grid of a MIDI file: quarter notes from its tempo map (`quarter_beats`), and the beats around
one clip, continued past the file's last one (`clip_beats`): the `beat` and `bpm` controls read them.
"""

from __future__ import annotations

import math

import numpy as np

from pvtbuild.music.midi.records import EPS, ParsedMidi


def quarter_beats(tempo_times: np.ndarray, qpm: np.ndarray, end_time: float) -> np.ndarray:
    """Times (s) of the quarter notes up to `end_time`: the beats of the `beat` and `bpm` controls.

    Quarter note n falls at tick n * ticks_per_beat, counted from the file's
    start; the tempo map gives quarter notes per minute from each tempo change
    on (`qpm[i]` from `tempo_times[i]`; 120 before the first). The count goes
    on through time-signature changes, so consecutive beats are always one
    quarter note apart and 60 / (their distance) is the tempo. Unlike
    pretty_midi's `get_beats`, the beat does not follow the time signature
    (6/8 would count dotted quarters, 2/2 halves) nor restart at its changes.
    """
    times = np.asarray(tempo_times, dtype=np.float64)
    rates = np.asarray(qpm, dtype=np.float64) / 60.0  # quarter notes per second
    if len(times) == 0 or times[0] > 0:
        times, rates = np.concatenate([[0.0], times]), np.concatenate([[2.0], rates])
    q_at = np.concatenate([[0.0], np.cumsum(np.diff(times) * rates[:-1])])  # quarter position at each change
    i = int(np.searchsorted(times, end_time, side="right")) - 1
    q = np.arange(int(math.floor(q_at[i] + (end_time - times[i]) * rates[i] + 1e-9)) + 1, dtype=np.float64)
    k = np.searchsorted(q_at, q, side="right") - 1  # the tempo segment of each quarter note
    return times[k] + (q - q_at[k]) / rates[k]


def clip_beats(midi: ParsedMidi, start: float, duration: float) -> np.ndarray:
    """Beat times relative to `start` covering [start, start + duration], one beat beyond each side.

    The beat before the clip is there when the file has one; after the file's
    last beat, beats continue with the last inter-beat interval (the tempo
    map holds after the last event), so the beat phase is defined to the end.
    """
    stop = start + duration
    beats = _extend_beats(midi, stop)
    lo = max(int(np.searchsorted(beats, start, side="left")) - 1, 0)  # last beat before the clip
    hi = int(np.searchsorted(beats, stop, side="right"))  # first beat after it
    return beats[lo: hi + 1] - start


def _extend_beats(midi: ParsedMidi, stop: float) -> np.ndarray:
    """The file's beats, continued past `stop` with the last positive inter-beat interval."""
    beats = np.asarray(midi.beats, dtype=np.float64)
    if len(beats) == 0:
        beats = np.zeros(1)
    if beats[-1] > stop:
        return beats
    steps = np.diff(beats)
    steps = steps[steps > EPS]
    step = float(steps[-1]) if len(steps) else 60.0 / (midi.final_tempo if midi.final_tempo > 0 else 120.0)
    n_more = int(math.floor((stop - beats[-1]) / step)) + 1
    return np.concatenate([beats, beats[-1] + step * np.arange(1, n_more + 1)])
