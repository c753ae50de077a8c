"""Frame-aligned control signals of a clip (the `controls` stage's core).

Where frame k sits in time
--------------------------
Frame k of a grid is sampled at t_k = (k + offset) / rate seconds from the
clip start; rate, frame count and offset are derived at config load from the
clip and the format the grid serves (`config.GridConfig`), so controls always
have as many frames as the array stored beside them, and frame k of a control
describes the instant frame k of that array is centred on. With N the clip's
samples and sr the sample rate:

| grid serves   | rate     | frames          | offset | frame k of the format           | t_k             |
| ------------- | -------- | --------------- | ------ | ------------------------------- | --------------- |
| encodec, disc | sr / 320 | ceil(N / 320)   | 1/2    | covers samples [320k, 320(k+1)) | (k + 1/2)*320/sr |
| cqt           | sr / hop | N // hop + 1    | 0      | centred on sample k*hop         | k*hop/sr        |
| none (free)   | given    | t_k in [0, N/sr]| 1/2 or given | [k/rate, (k+1)/rate) when 1/2 | (k + offset)/rate |

The CQT is nnAudio's, centred (`center=True`: the signal is reflect-padded
by half a kernel, so frame k's kernels are centred on sample k*hop).
For 8 s at 24 kHz: EnCodec 600 frames at 75 Hz sampled at (k + 1/2)/75 s; CQT
(hop 100) 1921 frames at 240 Hz sampled at k/240 s, the first at 0 and the
last at T = 8 s. (Before grids were tied to their format, a 240 Hz control
frame k sampled (k + 1/2)/240 s, half a hop after the CQT frame it sat beside.)

Sampling rule: a control takes its value at t_k. A note sounds on
[onset, offset); since a clip is monophonic, at most one note sounds at t_k.
Sampling at one instant (rather than, say, "any note within the frame") keeps
every control a plain function of time, identical on every grid, and lets a
note shorter than a frame vanish instead of smearing. Notes end by T, so a
frame sampled at t = T (the CQT's last) is unvoiced.

Tempo: one BPM, quarter notes per minute
----------------------------------------
`bpm` is the MIDI tempo: quarter notes per minute, whatever the time
signature (120 in 4/4, 6/8 and 2/2 alike when the file says 120 quarter notes
per minute; pretty_midi's `get_beats` would count 120, 80 and 60). `beat` is
the phase within the current quarter note, so one sawtooth tooth lasts
60/bpm seconds and both change together at a tempo change. Quarter notes are
counted from the file's first tick through the tempo map (`midi.quarter_beats`),
never restarted by a time-signature change. The time signature in force at
the clip start is kept as metadata (`ClipSpec.time_signature`, e.g. "6/8"),
from which the metrical beat follows.

Controls, all float32 of T = grid.frames frames:

| name       | shape  | value at t_k                                               |
| ---------- | ------ | ---------------------------------------------------------- |
| velocity   | [T]    | velocity/127 of the sounding note, 0 when none             |
| chroma     | [T]    | (pitch % 12)/11 of the sounding note, 0 when none          |
| pitch      | [T]    | pitch/127 of the sounding note, 0 when none                |
| voiced     | [T]    | 1 when a note sounds, else 0                               |
| instrument | [I, T] | one-hot of the clip's instrument class, on every frame     |
| beat       | [T]    | phase in [0, 1) within the current quarter note (sawtooth) |
| bpm        | [T]    | 60 / (current quarter-note length in s) / bpm_max, in [0, 1] |

The "unconditional" value (-1) is applied by the trainer, never stored here.
"""

from __future__ import annotations

import numpy as np

from pvtbuild.clip import ClipNotes
from pvtbuild.config import GridConfig, PipelineConfig

CONTROL_NAMES: tuple[str, ...] = ("velocity", "chroma", "pitch", "voiced", "instrument", "beat", "bpm")


def frame_times(grid: GridConfig) -> np.ndarray:
    """Sampling times t_k = (k + offset)/rate of the grid's frames, seconds from the clip start."""
    if grid.rate is None or grid.frames is None or grid.offset is None:
        raise ValueError(f"grid {grid.name!r} has no derived rate, frames and offset (build it from a PipelineConfig)")
    return (np.arange(grid.frames, dtype=np.float64) + grid.offset) / grid.rate


def compute_controls(notes: ClipNotes, instrument_index: int, n_instruments: int, grid: GridConfig,
                     bpm_max: float) -> dict[str, np.ndarray]:
    """All controls of one clip on one grid, keyed by `CONTROL_NAMES` (see the module docstring).

    Args:
        notes: the clip's monophonic notes and quarter-note beats, relative to its start.
        instrument_index: row of the clip's instrument in the one-hot (its index in the config).
        n_instruments: number of instrument classes (rows of `instrument`).
        grid: the frame grid (rate, frames, offset).
        bpm_max: the tempo (quarter notes per minute) mapped to 1.0 by `bpm`.
    """
    if not 0 <= instrument_index < n_instruments:
        raise ValueError(f"instrument_index {instrument_index} not in 0..{n_instruments - 1}")
    t = frame_times(grid)
    note = sounding_note(notes, t)
    voiced = note >= 0
    safe = np.where(voiced, note, 0)
    pitches = np.asarray(notes.pitches, dtype=np.float64)
    velocities = np.asarray(notes.velocities, dtype=np.float64)

    def per_note(values: np.ndarray) -> np.ndarray:
        if len(values) == 0:
            return np.zeros(len(t), dtype=np.float32)
        return np.where(voiced, values[safe], 0.0).astype(np.float32)

    phase, period = beat_phase(notes.beats, t)
    bpm = np.where(period > 0, 60.0 / np.where(period > 0, period, 1.0) / bpm_max, 0.0)
    instrument = np.zeros((n_instruments, len(t)), dtype=np.float32)
    instrument[instrument_index] = 1.0
    return {
        "velocity": per_note(velocities / 127.0),
        "chroma": per_note((pitches % 12) / 11.0),
        "pitch": per_note(pitches / 127.0),
        "voiced": voiced.astype(np.float32),
        "instrument": instrument,
        "beat": phase.astype(np.float32),
        "bpm": np.clip(bpm, 0.0, 1.0).astype(np.float32),
    }


def clip_controls(notes: ClipNotes, instrument: str, cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """Every control of a clip on every grid of `cfg`, keyed `{control}_{grid}`, as render stores them.

    `instrument` is a class name of `cfg.select.instruments` (the one-hot's row). The render stage
    and `pvtbuild sample --midi` both call this, so a melody a user gives is controlled exactly as
    the training clips were.
    """
    names = [i.name for i in cfg.select.instruments]
    out: dict[str, np.ndarray] = {}
    for grid in cfg.controls.grids:
        for name, values in compute_controls(notes, names.index(instrument), len(names), grid,
                                             cfg.controls.bpm_max).items():
            out[f"{name}_{grid.name}"] = values
    return out


def sounding_note(notes: ClipNotes, t: np.ndarray) -> np.ndarray:
    """Index of the note sounding at each time (onset <= t < offset), -1 where none.

    Relies on the notes being sorted and non-overlapping: the candidate is the
    last note with onset <= t, and it sounds if t is before its offset.
    """
    onsets = np.asarray(notes.onsets, dtype=np.float64)
    offsets = np.asarray(notes.offsets, dtype=np.float64)
    idx = np.searchsorted(onsets, t, side="right") - 1
    safe = np.maximum(idx, 0)
    sounding = (idx >= 0) & (t < offsets[safe]) if len(onsets) else np.zeros(len(t), dtype=bool)
    return np.where(sounding, idx, -1)


def beat_phase(beats: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phase in [0, 1) within the current beat, and that beat's length (s), at each time.

    `beats` are the clip's quarter notes (`ClipNotes.beats`), so the length is
    a quarter note's and 60 / length the tempo in quarter notes per minute.

    The current beat is [b_j, b_{j+1}) with b_j the last beat <= t. Times
    before the first beat or after the last use the nearest interval
    (extrapolated), so a clip whose beat list is short still gets a sawtooth.
    With fewer than two beats there is no tempo: phase and period are 0.
    """
    beats = np.asarray(beats, dtype=np.float64)
    if len(beats) < 2:
        return np.zeros(len(t)), np.zeros(len(t))
    j = np.clip(np.searchsorted(beats, t, side="right") - 1, 0, len(beats) - 2)
    period = beats[j + 1] - beats[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        phase = np.where(period > 0, (t - beats[j]) / period, 0.0)
    phase = np.mod(phase, 1.0)  # extrapolated frames wrap like further beats
    phase[phase >= 1.0] = 0.0  # mod of a tiny negative number rounds to 1.0
    return phase, period


__all__ = ["CONTROL_NAMES", "compute_controls", "clip_controls", "frame_times", "sounding_note", "beat_phase"]
