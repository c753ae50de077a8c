"""The records a clip is made of: its selection (`ClipSpec`) and its notes (`ClipNotes`).

`ClipSpec` is one row of a selection manifest: everything needed to rebuild the
clip from its source MIDI file, and nothing derived (notes are re-read from the
file, whose md5 is checked). `ClipNotes` is what render and controls consume:
the notes of the window after octave folding and velocity modulation, in
seconds from the clip's start, plus the file's quarter-note times around the clip.
The select stage stores its clips' notes (`pack_notes`), so render need not
parse the MIDI files a second time; from a selection manifest alone, render
re-derives them from the files.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pvtbuild.dataclass_dict import shallow_dict
from pvtbuild.errors import InputError, brief

# What a clip id may be. Ids name files (`inspect --plot` and `qa --plot-failing` write ID.png,
# `inspect --wav` ID.wav), so an id read from a manifest, record or dataset must not be able to
# name a path: no separator, no leading dot, bounded. pvtbuild's own ids are 16 hex digits.
_CLIP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KINDS = {"str": (str,), "int": (int,), "float": (int, float)}  # ClipSpec field annotation -> JSON types


def check_clip_id(value: Any, where: str) -> str:
    """`value` if it is a valid clip id (`_CLIP_ID`), else an `InputError` naming `where` (a file, a row)."""
    if isinstance(value, str) and _CLIP_ID.fullmatch(value):
        return value
    raise InputError(f"{where}: clip id {brief(value)} is not 1-128 letters, digits, '_', '.' or '-' "
                     "starting with a letter or digit")


def clip_path(folder: Path, clip_id: str, suffix: str) -> Path:
    """`folder/ID.suffix` for a file named after a clip; an id that could leave `folder` is refused."""
    return Path(folder) / f"{check_clip_id(clip_id, str(folder))}{suffix}"


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
    # time signature in force at the clip start ("6/8"); the `beat` control counts quarter
    # notes whatever it is. "" in selections made before pvtbuild recorded it.
    time_signature: str = ""

    def to_dict(self) -> dict[str, Any]:
        return shallow_dict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ClipSpec":
        """A `ClipSpec` from a JSON row; `InputError` (the field and why) for a row that is not one.

        Rows come from files a user may hand in (selection manifests), so every field is type-checked
        and the id checked (`check_clip_id`) here, where they enter.
        """
        if not isinstance(d, dict):
            raise InputError(f"a row must be a JSON object, got {type(d).__name__}")
        values = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is not MISSING:
                    continue
                raise InputError(f"field {f.name!r} missing")
            value = d[f.name]
            if isinstance(value, bool) or not isinstance(value, _KINDS[str(f.type)]):
                raise InputError(f"field {f.name!r}: expected {f.type}, got {brief(value)}")
            values[f.name] = value
        check_clip_id(values["clip_id"], "field 'clip_id'")
        return cls(**values)


@dataclass
class ClipNotes:
    """Notes of one clip, sorted by onset, non-overlapping (monophonic), times relative to the clip start."""

    onsets: np.ndarray  # float64 [n], seconds, >= 0
    offsets: np.ndarray  # float64 [n], seconds, <= clip duration, > onsets
    pitches: np.ndarray  # int16 [n], MIDI pitch after folding
    velocities: np.ndarray  # int16 [n], 1..127 after modulation
    # float64 [m], quarter-note times relative to clip start; covers the clip, one beat beyond each side
    # where the file has it
    beats: np.ndarray
    duration: float

    def __len__(self) -> int:
        return len(self.onsets)


@dataclass(frozen=True)
class Selection:
    """What the select stage hands on to render: the clips to render, in order, and where their notes
    are stored (clip id -> select stage file, `pack_notes`); a clip not in `notes` is parsed from its source."""

    clips: list[ClipSpec]
    notes: dict[str, str] = field(default_factory=dict)


def pack_notes(items: list[tuple[str, ClipNotes]]) -> dict[str, np.ndarray]:
    """Many clips' notes as a few flat arrays (for one npz): `id`, per-clip counts, concatenated values.

    Arrays: `id` [n] str; `duration` [n] float64; `n_notes`, `n_beats` [n] int64;
    `onsets`, `offsets`, `beats` float64 and `pitches`, `velocities` int16, each the
    clips' arrays concatenated in `id` order. `unpack_notes` inverts it exactly.
    """
    def cat(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(n, name), dtype=dtype) for _, n in items] or [np.zeros(0, dtype)])

    return {
        "id": np.array([cid for cid, _ in items], dtype=str),
        "duration": np.array([n.duration for _, n in items], dtype=np.float64),
        "n_notes": np.array([len(n) for _, n in items], dtype=np.int64),
        "n_beats": np.array([len(n.beats) for _, n in items], dtype=np.int64),
        "onsets": cat("onsets", np.float64), "offsets": cat("offsets", np.float64),
        "pitches": cat("pitches", np.int16), "velocities": cat("velocities", np.int16),
        "beats": cat("beats", np.float64),
    }


def unpack_notes(arrays: dict[str, np.ndarray]) -> dict[str, ClipNotes]:
    """Clip id -> ClipNotes from the arrays of `pack_notes`."""
    notes_at = np.concatenate([[0], np.cumsum(arrays["n_notes"])])
    beats_at = np.concatenate([[0], np.cumsum(arrays["n_beats"])])
    out = {}
    for k, cid in enumerate(arrays["id"]):
        a, b = notes_at[k], notes_at[k + 1]
        out[str(cid)] = ClipNotes(arrays["onsets"][a:b], arrays["offsets"][a:b], arrays["pitches"][a:b],
                                  arrays["velocities"][a:b], arrays["beats"][beats_at[k]:beats_at[k + 1]],
                                  float(arrays["duration"][k]))
    return out
