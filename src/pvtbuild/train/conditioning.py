"""Controls a person can write, turned into what a trained model reads (`pvtbuild sample`).

A request names where the controls come from, at most one of:
- a MIDI file (`--midi`, with `--track`, `--start`): the file goes through the same
  selection (monophonic line, 8 s window, voiced share), octave folding, velocity
  modulation (variant 0) and `controls.clip_controls` as the render stage, with the
  pipeline config of the dataset the model was trained on, so its controls are those
  render would have stored for that clip;
- a clip of a dataset (`--like DATASET:ID`): its stored controls (reconstruction checks);
- a file of control arrays (`--controls FILE.npz|FILE.json`): keys are control names
  (`velocity`, `chroma`, `pitch`, `voiced`, `instrument`, `beat`, `bpm`), optionally with
  the grid (`velocity_75hz`); values [T] (or [I, T] for `instrument`) in the units of
  controls.py, on any number of frames T (resampled, piecewise constant, to the grid), or a
  single number for a constant;

and, on top, `--instrument NAME` (the one-hot) and `--bpm X` (a constant-tempo beat sawtooth
of period 60 / X s, and the bpm control). Every control not given is -1, the
"unconditional" value the model was trained with (control dropout), so `--bpm` alone
asks for a tempo and nothing else.

The result, `RequestedControls`, holds every control of `controls.CONTROL_NAMES` on the
model's grid (frames sampled at (k + offset) / rate, controls.py), -1 where not given;
`model_controls` assembles the ones a model reads, as training does (`data.assemble_controls`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvtbuild.clip import ClipNotes
from pvtbuild.config import GridConfig, PipelineConfig
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.music.controls import CONTROL_NAMES, clip_controls, compute_controls
from pvtbuild.music.midi import clip_notes, load_midi, md5_file, select_clips
from pvtbuild.tools.inspection import find_clip
from pvtbuild.train.data import DatasetLayout, assemble_controls
from pvtbuild.train.guidance import NULL_VALUE, Controls


@dataclass(frozen=True)
class ControlRequest:
    """What a person asked for on the command line (every field optional)."""

    midi: Path | None = None
    track: int | None = None  # pretty_midi instrument index; None: the first track with a window
    start: float | None = None  # seconds into the file; None: the track's first window
    like: str | None = None  # DATASET:ID
    controls_file: Path | None = None
    instrument: str | None = None
    bpm: float | None = None

    def describe(self) -> str:
        parts = []
        if self.midi is not None:
            parts.append(f"midi {self.midi}" + (f" track {self.track}" if self.track is not None else "")
                         + (f" from {self.start:g} s" if self.start is not None else ""))
        if self.like is not None:
            parts.append(f"like {self.like}")
        if self.controls_file is not None:
            parts.append(f"controls {self.controls_file}")
        if self.instrument is not None:
            parts.append(f"instrument {self.instrument}")
        if self.bpm is not None:
            parts.append(f"{self.bpm:g} BPM")
        return ", ".join(parts) or "no controls (unconditional)"


@dataclass(frozen=True)
class ControlSpace:
    """The controls a model reads, and the pipeline that defines their values and grid."""

    pipeline: PipelineConfig
    grid: GridConfig
    layout: DatasetLayout

    @property
    def features(self) -> tuple[str, ...]:
        """The control names the model reads, local then global (`velocity`, `instrument`, ...)."""
        suffix = f"_{self.grid.name}"
        return tuple(n[: -len(suffix)] for n in (*self.layout.local_names, *self.layout.global_names))

    @property
    def instruments(self) -> list[str]:
        return [i.name for i in self.pipeline.select.instruments]


@dataclass
class RequestedControls:
    """Every control on the model's grid: name -> [T] float32 ([I, T] for instrument); -1 where not given."""

    values: dict[str, np.ndarray]
    given: list[str] = field(default_factory=list)  # controls with a value (not -1 throughout)
    info: dict[str, Any] = field(default_factory=dict)  # where they came from (clip spec, file, ...)

    def named(self, grid: str) -> dict[str, np.ndarray]:
        """The arrays named as a dataset stores them (`velocity_75hz`)."""
        return {f"{k}_{grid}": v for k, v in self.values.items()}


def null_controls(space: ControlSpace) -> RequestedControls:
    frames = int(space.grid.frames)
    values = {name: np.full((len(space.instruments), frames) if name == "instrument" else (frames,), NULL_VALUE,
                            dtype=np.float32) for name in CONTROL_NAMES}
    return RequestedControls(values)


def build_controls(request: ControlRequest, space: ControlSpace) -> RequestedControls:
    """The controls of `request` on the model's grid (module docstring); one-line errors for bad input."""
    sources = [s for s in (request.midi, request.like, request.controls_file) if s is not None]
    if len(sources) > 1:
        raise PvtbuildError("--midi, --like and --controls exclude each other; pass one")
    if (request.track is not None or request.start is not None) and request.midi is None:
        raise PvtbuildError("--track and --start choose a window of --midi; pass --midi FILE.mid")
    if request.midi is not None:
        out = controls_from_midi(request.midi, space, request.track, request.start)
    elif request.like is not None:
        out = controls_from_clip(request.like, space)
    elif request.controls_file is not None:
        out = controls_from_file(request.controls_file, space)
    else:
        out = null_controls(space)
    if request.instrument is not None:
        set_instrument(out, request.instrument, space)
    if request.bpm is not None:
        set_tempo(out, request.bpm, space)
    out.given = [n for n in CONTROL_NAMES if not (out.values[n] == NULL_VALUE).all()]
    return out


def controls_from_midi(path: Path, space: ControlSpace, track: int | None = None,
                       start: float | None = None) -> RequestedControls:
    """A window of a MIDI file, chosen and controlled exactly as select + render would (variant 0)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: MIDI file not found")
    cfg = space.pipeline
    select = dataclasses.replace(cfg.select, clips_per_source=0)  # every window, not a capped sample
    midi = load_midi(path, select)
    specs = [s for s in select_clips(midi, str(path), md5_file(path), select, cfg.seed) if s.variant == 0]
    if not specs:
        raise InputError(f"{path}: no clip the pipeline would select (a monophonic {select.clip_seconds:g} s window "
                         f"voiced >= {select.min_voiced:g} on a track of {', '.join(space.instruments)})")
    if track is not None:
        tracks = sorted({s.track for s in specs})
        specs = [s for s in specs if s.track == track]
        if not specs:
            raise InputError(f"{path}: track {track} has no selectable window (tracks that have: "
                             f"{', '.join(map(str, tracks))})")
    else:
        specs = [s for s in specs if s.track == specs[0].track]
    if start is not None:
        spec = min(specs, key=lambda s: (abs(s.start - start), s.start))
    else:
        spec = specs[0]
    notes = clip_notes(midi, spec, select)
    return RequestedControls(_grid_values(clip_controls(notes, spec.instrument, cfg), space),
                             info={"source": "midi", "clip": spec.to_dict(),
                                   "windows": [round(s.start, 3) for s in specs]})


def controls_from_clip(like: str, space: ControlSpace) -> RequestedControls:
    """The stored controls of clip ID of DATASET (`DATASET:ID`)."""
    dataset, sep, clip_id = like.rpartition(":")
    if not sep or not dataset or not clip_id:
        raise PvtbuildError(f"--like {like!r}: expected DATASET:ID (a dataset folder and a clip id)")
    if not Path(dataset).is_dir():
        raise InputError(f"{dataset}: no such dataset directory (--like)")
    clip = find_clip(Path(dataset), clip_id)
    grid = space.grid.name
    values = null_controls(space).values
    missing = [n for n in space.features if f"{n}_{grid}" not in clip]
    if missing:
        raise InputError(f"{dataset}: clip {clip_id} has no {', '.join(f'{n}_{grid}' for n in missing)}, "
                         f"which the model reads")
    for name in values:
        if f"{name}_{grid}" in clip:
            values[name] = _fit(np.asarray(clip[f"{name}_{grid}"], dtype=np.float32), values[name].shape,
                                f"{dataset}:{clip_id}", name)
    info = {k: clip[k] for k in ("id", "split", "instrument", "program", "bpm", "source", "start") if k in clip}
    return RequestedControls(values, info={"source": "dataset", "dataset": str(dataset), "clip": _plain(info)})


def controls_from_file(path: Path, space: ControlSpace) -> RequestedControls:
    """Control arrays from a .npz or .json file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: controls file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw = {k: np.asarray(data[k]) for k in data.files}
        elif path.suffix == ".json":
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("the top level must be an object of control name -> values")
            raw = {k: np.asarray(v, dtype=np.float64) for k, v in doc.items()}
        else:
            raise InputError(f"{path}: controls must be a .npz or .json file")
    except InputError:
        raise
    except Exception as e:  # a damaged npz, bad JSON, ragged lists
        raise InputError(f"{path}: not a readable controls file "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    out = null_controls(space)
    grid_suffix = f"_{space.grid.name}"
    for key, arr in raw.items():
        name = key[: -len(grid_suffix)] if key.endswith(grid_suffix) else key
        if name not in CONTROL_NAMES:
            raise InputError(f"{path}: unknown control {key!r} (controls: {', '.join(CONTROL_NAMES)}, "
                             f"optionally suffixed {grid_suffix})")
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise InputError(f"{path}: control {key!r} must hold finite numbers")
        out.values[name] = _fit(arr.astype(np.float32), out.values[name].shape, str(path), key)
    return dataclasses.replace(out, info={"source": "file", "file": str(path)})


def set_instrument(controls: RequestedControls, name: str, space: ControlSpace) -> None:
    if name not in space.instruments:
        raise PvtbuildError(f"--instrument {name!r}: not an instrument of this model "
                            f"(trained on {', '.join(space.instruments)})")
    onehot = np.zeros_like(controls.values["instrument"])
    onehot[space.instruments.index(name)] = 1.0
    controls.values["instrument"] = onehot


def set_tempo(controls: RequestedControls, bpm: float, space: ControlSpace) -> None:
    """A constant tempo: beat phase with period 60 / bpm s (starting on a beat at 0 s) and the bpm control.

    Made by `controls.compute_controls` from a clip with no notes and quarter notes every 60 / bpm s,
    so the sawtooth is the one render computes for a MIDI file at that constant tempo.
    """
    if not (math.isfinite(bpm) and bpm > 0):
        raise PvtbuildError(f"--bpm must be a positive number, got {bpm}")
    period = 60.0 / bpm
    duration = space.pipeline.select.clip_seconds
    beats = np.arange(-1, math.ceil(duration / period) + 2) * period
    empty = np.zeros(0)
    notes = ClipNotes(empty, empty, empty.astype(np.int16), empty.astype(np.int16), beats, duration)
    c = compute_controls(notes, 0, len(space.instruments), space.grid, space.pipeline.controls.bpm_max)
    controls.values["beat"], controls.values["bpm"] = c["beat"], c["bpm"]


def model_controls(requests: list[RequestedControls], space: ControlSpace) -> Controls:
    """The batch of controls the model reads, assembled as in training (`data.assemble_controls`)."""
    grid = space.grid.name
    records = [{f"{k}_{grid}": torch.from_numpy(v) for k, v in r.values.items()} for r in requests]
    return assemble_controls(records, space.layout)


# --- internals ------------------------------------------------------------------------------


def _grid_values(named: dict[str, np.ndarray], space: ControlSpace) -> dict[str, np.ndarray]:
    suffix = f"_{space.grid.name}"
    return {k[: -len(suffix)]: v for k, v in named.items() if k.endswith(suffix)}


def _fit(arr: np.ndarray, shape: tuple[int, ...], where: str, key: str) -> np.ndarray:
    """`arr` as `shape` ([T] or [I, T]): a number is a constant; other frame counts are resampled."""
    frames = shape[-1]
    if arr.ndim == 0:
        return np.full(shape, float(arr), dtype=np.float32)
    lead = shape[:-1]
    if arr.shape[:-1] != lead or arr.shape[-1] < 1:
        want = "[T]" if not lead else f"[{lead[0]}, T]"
        raise InputError(f"{where}: control {key!r} has shape {list(arr.shape)}, expected {want}")
    if arr.shape[-1] != frames:  # piecewise constant, like the trainer's resampling to the data's frames
        idx = np.minimum(((np.arange(frames) + 0.5) * arr.shape[-1] / frames).astype(np.int64), arr.shape[-1] - 1)
        arr = arr[..., idx]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


__all__ = ["ControlRequest", "ControlSpace", "RequestedControls", "build_controls", "controls_from_midi",
           "controls_from_clip", "controls_from_file", "set_instrument", "set_tempo", "model_controls",
           "null_controls"]
