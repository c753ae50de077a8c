"""Choosing clips: windows of `clip_seconds` on a monophonic line (`select_clips`), and a chosen clip's
notes derived again the same way (`clip_notes`).

Window rule: a window [s, s + T) starts at a note onset. It is valid only if
every note sounding within it belongs to one monophonic run and starts at or
after s (so no earlier note rings into it); a note crossing the window end is
cut at T. A valid window also needs at least `min_notes` notes and a voiced
share (time covered by notes / T) of at least `min_voiced`. Windows are taken
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvtbuild.clip import ClipNotes, ClipSpec
from pvtbuild.config import InstrumentConfig, SelectConfig
from pvtbuild.engine.manifest import stable_hash
from pvtbuild.errors import InputError
from pvtbuild.music.midi.beats import clip_beats
from pvtbuild.music.midi.lines import Line, monophonic_line
from pvtbuild.music.midi.records import EPS, TIME_DECIMALS, ParsedMidi
from pvtbuild.music.midi.variants import fold_pitches, modulate_velocities, variant_modulation


@dataclass
class _WindowNotes:
    """Notes of a window relative to its start, cut at its end, before folding and modulation."""

    onsets: np.ndarray
    offsets: np.ndarray
    pitches: np.ndarray
    velocities: np.ndarray


@dataclass
class _Window:
    """A valid window of one track, before variants."""

    instrument: int  # index into cfg.instruments
    track: int
    start: float  # rounded to TIME_DECIMALS
    notes: _WindowNotes


def _window_slice(line: Line, start: float, duration: float) -> tuple[int, int]:
    """Index range [i, k) of the notes starting in [start, start + duration) (to within EPS)."""
    i = int(np.searchsorted(line.start, start - EPS, side="left"))
    k = int(np.searchsorted(line.start, start + duration - EPS, side="left"))
    return i, k


def _window_notes(line: Line, start: float, duration: float) -> _WindowNotes:
    """The window's notes relative to `start`; the last one cut at `duration`.

    Shared by selection and `clip_notes`, so both see exactly the same notes.
    """
    i, k = _window_slice(line, start, duration)
    onsets = np.maximum(line.start[i:k] - start, 0.0)
    offsets = np.minimum(line.end[i:k] - start, duration)
    return _WindowNotes(onsets, offsets, line.pitch[i:k].copy(), line.velocity[i:k].copy())


def _voiced_share(notes: _WindowNotes, duration: float) -> float:
    return float(np.sum(notes.offsets - notes.onsets)) / duration


def _candidate_ok(line: Line, cfg: SelectConfig, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Per note: rounded window start and whether a window there passes the structural checks.

    Structural: the first note of the window is that note, nothing earlier
    rings into it, no polyphonic pair inside, at least `min_notes` notes.
    (The voiced share is checked later, on the extracted notes.)
    """
    starts = np.round(line.start, TIME_DECIMALS)
    first = np.searchsorted(line.start, starts - EPS, side="left")
    stop = np.searchsorted(line.start, starts + duration - EPS, side="left")
    idx = np.arange(len(line))
    n_poly = np.concatenate([[0], np.cumsum(line.poly)])  # n_poly[m]: polyphonic pairs among pairs < m
    inner_poly = n_poly[np.maximum(stop - 1, idx)] - n_poly[idx]
    ok = (first == idx) & (line.reach <= starts + EPS) & (inner_poly == 0) & (stop - idx >= cfg.min_notes)
    return starts, ok


def _track_windows(line: Line, cfg: SelectConfig) -> list[tuple[float, _WindowNotes]]:
    """Greedy non-overlapping valid windows of one line, in time order."""
    duration = cfg.clip_seconds
    starts, ok = _candidate_ok(line, cfg, duration)
    windows: list[tuple[float, _WindowNotes]] = []
    free_from = -np.inf
    for i in np.flatnonzero(ok):
        start = float(starts[i])
        if start < free_from - EPS:
            continue
        notes = _window_notes(line, start, duration)
        if _voiced_share(notes, duration) >= cfg.min_voiced:
            windows.append((start, notes))
            free_from = start + duration
    return windows


def instrument_for(program: int, instruments: tuple[InstrumentConfig, ...]) -> int | None:
    """Index of the first instrument class whose source_programs [lo, hi] contain `program`."""
    for n, inst in enumerate(instruments):
        lo, hi = inst.source_programs
        if lo <= program <= hi:
            return n
    return None


def _all_windows(midi: ParsedMidi, cfg: SelectConfig) -> list[_Window]:
    """Valid windows of every eligible track, ordered by (instrument, track, start)."""
    windows: list[_Window] = []
    for track_index, track in enumerate(midi.tracks):
        inst = None if track.is_drum else instrument_for(track.program, cfg.instruments)
        if inst is None:
            continue
        line = monophonic_line(track, cfg)
        windows += [_Window(inst, track_index, start, notes) for start, notes in _track_windows(line, cfg)]
    windows.sort(key=lambda w: (w.instrument, w.track, w.start))
    return windows


def _choose(windows: list[_Window], cap: int, rng: np.random.Generator) -> list[_Window]:
    """At most `cap` windows, round-robin over instruments (shuffled within each), in input order."""
    if cap == 0 or len(windows) <= cap:
        return windows
    by_instrument: dict[int, list[int]] = {}
    for n, w in enumerate(windows):
        by_instrument.setdefault(w.instrument, []).append(n)
    queues = [list(rng.permutation(idx)) for _, idx in sorted(by_instrument.items())]
    chosen: list[int] = []
    while len(chosen) < cap:
        for queue in queues:
            if queue and len(chosen) < cap:
                chosen.append(int(queue.pop(0)))
    return [windows[n] for n in sorted(chosen)]


def select_clips(midi: ParsedMidi, source: str, source_md5: str, cfg: SelectConfig, seed: int) -> list[ClipSpec]:
    """Choose clips of a parsed file: valid windows (module docstring), capped, times `variants`.

    The cap (`clips_per_source`, 0 = none) picks windows with an RNG seeded by
    (seed, source_md5), round-robin over instruments so a file rich in piano
    does not crowd out its few brass windows. The result is ordered by
    (instrument order, track, start, variant), so it is reproducible.
    """
    windows = _all_windows(midi, cfg)
    rng = np.random.default_rng(int(stable_hash("clips_per_source", seed, source_md5), 16))
    specs: list[ClipSpec] = []
    for w in _choose(windows, cfg.clips_per_source, rng):
        specs += _window_specs(w, source, source_md5, cfg, seed, midi.tracks[w.track].program,
                               midi.time_signature_at(w.start))
    return specs


def _window_specs(w: _Window, source: str, source_md5: str, cfg: SelectConfig, seed: int,
                  source_program: int, time_signature: str) -> list[ClipSpec]:
    inst = cfg.instruments[w.instrument]
    _, transpose, folded = fold_pitches(w.notes.pitches, cfg.pitch_min, cfg.pitch_max)
    voiced = round(_voiced_share(w.notes, cfg.clip_seconds), TIME_DECIMALS)
    specs = []
    for v in range(cfg.variants):
        freq, phase = variant_modulation(seed, source_md5, w.track, w.start, v, cfg)
        specs.append(ClipSpec(
            clip_id=stable_hash(source_md5, w.track, round(w.start, TIME_DECIMALS), v, seed),
            source=str(source), source_md5=source_md5, track=w.track,
            instrument=inst.name, program=inst.program, source_program=source_program,
            start=round(w.start, TIME_DECIMALS), duration=round(cfg.clip_seconds, TIME_DECIMALS),
            transpose=transpose, folded=folded, variant=v,
            mod_freq=freq, mod_phase=phase, mod_depth=cfg.modulation_depth,
            seed=seed, n_notes=len(w.notes.onsets), voiced=voiced, time_signature=time_signature,
        ))
    return specs


def clip_notes(midi: ParsedMidi, spec: ClipSpec, cfg: SelectConfig) -> ClipNotes:
    """Re-derive a selected clip's notes: same line, window, folding as selection; velocities modulated.

    Raises:
        InputError: the notes no longer match the spec (another file, or a changed select config).
    """
    if not 0 <= spec.track < len(midi.tracks):
        raise InputError(f"clip {spec.clip_id}: track {spec.track} not in file ({len(midi.tracks)} tracks)")
    line = monophonic_line(midi.tracks[spec.track], cfg)
    notes = _window_notes(line, spec.start, spec.duration)
    pitches, transpose, _ = fold_pitches(notes.pitches, cfg.pitch_min, cfg.pitch_max)
    if len(notes.onsets) != spec.n_notes or transpose != spec.transpose:
        raise InputError(f"clip {spec.clip_id}: source notes no longer match the selection "
                         f"({len(notes.onsets)} notes, transpose {transpose}; expected {spec.n_notes}, "
                         f"{spec.transpose}); was the select config changed?")
    return ClipNotes(
        onsets=notes.onsets,
        offsets=notes.offsets,
        pitches=pitches,
        velocities=modulate_velocities(notes.velocities, notes.onsets, spec.mod_freq, spec.mod_phase, spec.mod_depth),
        beats=clip_beats(midi, spec.start, spec.duration),
        duration=spec.duration,
    )
