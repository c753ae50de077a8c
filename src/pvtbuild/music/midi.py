"""Reading MIDI files and choosing monophonic clips from them (the `select` stage's core).

Three steps, each a plain function:

1. `load_midi` parses a file with pretty_midi in a separate, memory- and
   time-capped process and returns a picklable `ParsedMidi` (notes as numpy
   arrays, beats from the tempo map). Any unusable file raises `InputError`
   with a one-line reason.
2. `select_clips` finds windows of `clip_seconds` on monophonic stretches of
   eligible tracks and returns one `ClipSpec` per (window, variant).
3. `clip_notes` re-derives a selected clip's notes (folded into the pitch
   range, velocities modulated) for render and controls.

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

Window rule: a window [s, s + T) starts at a note onset. It is valid only if
every note sounding within it belongs to one monophonic run and starts at or
after s (so no earlier note rings into it); a note crossing the window end is
cut at T. A valid window also needs at least `min_notes` notes and a voiced
share (time covered by notes / T) of at least `min_voiced`. Windows are taken
greedily in time order per track without overlap.

Pitch folding: the window is first transposed by the multiple of 12 that
brings the most notes into [pitch_min, pitch_max] (ties: smallest |shift|, then
the lower shift); notes still outside are moved one by one by whole octaves.
Pitch classes are preserved.

Velocity modulation: v' = clip(rint(v * m(t_on)), 1, 127) with
m(t) = d + (1 - d)(1/2 + 1/2 sin(2 pi f t + phi)), t relative to the clip start.
f and phi are drawn per variant from an RNG seeded by a content hash, so
reruns reproduce them exactly.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pvtbuild.clip import ClipNotes, ClipSpec
from pvtbuild.config import InstrumentConfig, SelectConfig
from pvtbuild.engine.manifest import file_digest, stable_hash
from pvtbuild.engine.sandbox import Sandbox, SandboxDied, SandboxTimeout
from pvtbuild.errors import InputError

# Times closer than this (seconds) are the same instant: pretty_midi's times come
# from tick arithmetic and ClipSpec rounds starts to 6 decimals.
_EPS = 1e-6
_TIME_DECIMALS = 6
_MAX_REASON = 160  # characters of an exception message kept in a skip reason


# --- records --------------------------------------------------------------------------


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
        k = int(np.searchsorted(self.time_signatures[:, 0], t + _EPS, side="right")) - 1
        return "4/4" if k < 0 else f"{int(self.time_signatures[k, 1])}/{int(self.time_signatures[k, 2])}"


# --- loading --------------------------------------------------------------------------


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file's bytes: the content id of a source MIDI (Lakh names files by it)."""
    return file_digest(path, "md5")


def load_midi(path: str | Path, cfg: SelectConfig) -> ParsedMidi:
    """Parse a MIDI file in a capped child process (`sandbox.py`).

    pretty_midi allocates an array of (largest tick) floats and loops in Python
    over beats, so a malformed file can take gigabytes or minutes; parsing
    therefore happens in a reused child process, started with `subprocess` (so
    it works in daemonic dask workers too), limited to
    `cfg.parse_memory_mb` of address space and `cfg.parse_timeout` seconds.
    One parse runs at a time per process (a lock), so the timeout measures the
    parse itself, not time spent queued behind other threads.

    Raises:
        InputError: the file is unusable; the message is a short one-line reason.
    """
    path = Path(path)
    _check_file(path, cfg)
    outcome = _run_in_parser(str(path), cfg)
    if isinstance(outcome, str):
        raise InputError(outcome)
    return outcome


def _check_file(path: Path, cfg: SelectConfig) -> None:
    """Reject what is obviously unusable without starting a parse: size and the MThd header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(14)
    except FileNotFoundError:
        raise InputError("file not found") from None
    except OSError as e:
        raise InputError(f"unreadable: {e.strerror or e}") from None
    if size > cfg.max_file_mb * 2**20:
        raise InputError(f"file too large ({size / 2**20:.1f} MB > max_file_mb {cfg.max_file_mb:g})")
    if size == 0:
        raise InputError("empty file")
    if head[:4] != b"MThd":
        raise InputError("not a MIDI file (bad header)")
    if len(head) < 14:
        raise InputError("corrupt: truncated header")
    n_tracks = int.from_bytes(head[10:12], "big")
    division = int.from_bytes(head[12:14], "big")
    if division == 0:
        raise InputError("zero ticks per beat")
    if division & 0x8000:
        raise InputError("SMPTE time division (negative ticks per beat) not supported")
    if n_tracks == 0:
        raise InputError("no tracks")


# The parser sandbox: one per process, started lazily, replaced after a timeout or crash.
_sandbox: Sandbox | None = None
_sandbox_lock = threading.Lock()


def _run_in_parser(path: str, cfg: SelectConfig) -> ParsedMidi | str:
    """Run `_parse_in_child` in the sandbox; returns the result or a failure reason."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is not None and _sandbox.memory_mb != cfg.parse_memory_mb:
            _sandbox.close()
            _sandbox = None
        if _sandbox is None:
            _sandbox = Sandbox("pvtbuild.music.midi:_parse_in_child", cfg.parse_memory_mb)
        try:
            outcome = _sandbox.call(path, cfg.parse_memory_mb, timeout=cfg.parse_timeout)
        except SandboxTimeout:
            return f"parse timed out after {cfg.parse_timeout:g} s"
        except SandboxDied:
            return f"parse process died (memory cap {cfg.parse_memory_mb} MB or crash)"
        if isinstance(outcome, _Failure):
            if outcome.recycle:
                _sandbox.close()
            return outcome.reason
        return outcome


@dataclass
class _Failure:
    """A parse failure sent back from the child: a reason instead of a pickled traceback."""

    reason: str
    recycle: bool = False  # the child may be in a bad state: replace it


def _parse_in_child(path: str, memory_mb: int) -> ParsedMidi | _Failure:
    """Body of the sandboxed child: parse and summarise; failures become a reason, never a raise."""
    try:
        import pretty_midi

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tempo events on non-zero tracks etc.: not our concern
            pm = pretty_midi.PrettyMIDI(path)
            return _summarise(pm)
    except MemoryError:
        return _Failure(f"parse exceeded memory cap ({memory_mb} MB)", recycle=True)
    except EOFError:
        return _Failure("corrupt: unexpected end of file")
    except Exception as e:  # any parser error means "this file is unusable"
        return _Failure(_reason(e))


def _summarise(pm) -> ParsedMidi | _Failure:  # pm: pretty_midi.PrettyMIDI
    tracks = [_track(inst) for inst in pm.instruments]
    if sum(len(t) for t in tracks) == 0:
        return _Failure("no notes")
    tempo_times, tempi = pm.get_tempo_changes()
    if not np.all(np.isfinite(tempi) & (tempi > 0)):
        return _Failure("invalid tempo in the tempo map")
    signatures = np.array(sorted((float(ts.time), int(ts.numerator), int(ts.denominator))
                                 for ts in pm.time_signature_changes), dtype=np.float64).reshape(-1, 3)
    end_time = float(pm.get_end_time())
    return ParsedMidi(
        tracks=tracks,
        beats=quarter_beats(tempo_times, tempi, end_time),
        end_time=end_time,
        final_tempo=float(tempi[-1]) if len(tempi) else 120.0,
        time_signatures=signatures,
    )


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


def _track(inst) -> Track:  # inst: pretty_midi.Instrument
    notes = inst.notes
    return Track(
        program=int(inst.program),
        is_drum=bool(inst.is_drum),
        name=str(inst.name or ""),
        start=np.array([n.start for n in notes], dtype=np.float64),
        end=np.array([n.end for n in notes], dtype=np.float64),
        pitch=np.array([n.pitch for n in notes], dtype=np.int16),
        velocity=np.array([n.velocity for n in notes], dtype=np.int16),
    )


def _reason(e: BaseException) -> str:
    """`corrupt: <message>` on one line, short enough for a manifest status."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if len(msg) > _MAX_REASON:
        msg = msg[: _MAX_REASON - 3] + "..."
    return f"corrupt: {msg}"


# --- monophonic lines -----------------------------------------------------------------


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


# --- windows --------------------------------------------------------------------------


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
    start: float  # rounded to _TIME_DECIMALS
    notes: _WindowNotes


def _window_slice(line: Line, start: float, duration: float) -> tuple[int, int]:
    """Index range [i, k) of the notes starting in [start, start + duration) (to within _EPS)."""
    i = int(np.searchsorted(line.start, start - _EPS, side="left"))
    k = int(np.searchsorted(line.start, start + duration - _EPS, side="left"))
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
    starts = np.round(line.start, _TIME_DECIMALS)
    first = np.searchsorted(line.start, starts - _EPS, side="left")
    stop = np.searchsorted(line.start, starts + duration - _EPS, side="left")
    idx = np.arange(len(line))
    n_poly = np.concatenate([[0], np.cumsum(line.poly)])  # n_poly[m]: polyphonic pairs among pairs < m
    inner_poly = n_poly[np.maximum(stop - 1, idx)] - n_poly[idx]
    ok = (first == idx) & (line.reach <= starts + _EPS) & (inner_poly == 0) & (stop - idx >= cfg.min_notes)
    return starts, ok


def _track_windows(line: Line, cfg: SelectConfig) -> list[tuple[float, _WindowNotes]]:
    """Greedy non-overlapping valid windows of one line, in time order."""
    duration = cfg.clip_seconds
    starts, ok = _candidate_ok(line, cfg, duration)
    windows: list[tuple[float, _WindowNotes]] = []
    free_from = -np.inf
    for i in np.flatnonzero(ok):
        start = float(starts[i])
        if start < free_from - _EPS:
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


# --- folding and modulation -----------------------------------------------------------


def fold_pitches(pitches: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int, int]:
    """Fold pitches into [lo, hi]: one whole-window octave shift, then per-note octave moves.

    The whole-window shift keeps the melody's contour wherever possible; only
    the notes it cannot bring in are moved individually.

    Returns:
        (folded pitches int16, transpose in semitones (a multiple of 12), number of notes moved individually)
    """
    p = np.asarray(pitches, dtype=np.int64)
    if len(p) == 0:
        return p.astype(np.int16), 0, 0
    shifts = 12 * np.arange(-11, 12)
    shifted = p[None, :] + shifts[:, None]
    in_range = ((shifted >= lo) & (shifted <= hi)).sum(axis=1)
    # Most notes in range first, then the smallest |shift|, then the lower shift.
    transpose = int(shifts[np.lexsort((shifts, np.abs(shifts), -in_range))[0]])
    p = p + transpose
    below, above = p < lo, p > hi
    p[below] += 12 * np.ceil((lo - p[below]) / 12).astype(np.int64)
    p[above] -= 12 * np.ceil((p[above] - hi) / 12).astype(np.int64)
    return p.astype(np.int16), transpose, int(below.sum() + above.sum())


def modulation(t: np.ndarray | float, freq: float, phase: float, depth: float) -> np.ndarray:
    """m(t) = d + (1 - d)(1/2 + 1/2 sin(2 pi f t + phi)): a slow swell between d and 1."""
    t = np.asarray(t, dtype=np.float64)
    return depth + (1.0 - depth) * (0.5 + 0.5 * np.sin(2.0 * np.pi * freq * t + phase))


def modulate_velocities(velocities: np.ndarray, onsets: np.ndarray, freq: float, phase: float,
                        depth: float) -> np.ndarray:
    """v' = clip(rint(v * m(t_on)), 1, 127) as int16."""
    scaled = np.rint(np.asarray(velocities, dtype=np.float64) * modulation(onsets, freq, phase, depth))
    return np.clip(scaled, 1, 127).astype(np.int16)


def variant_modulation(seed: int, source_md5: str, track: int, start: float, variant: int,
                       cfg: SelectConfig) -> tuple[float, float]:
    """(f, phi) of one variant, from an RNG seeded by a content hash (never Python's hash())."""
    key = stable_hash(seed, source_md5, track, round(start, _TIME_DECIMALS), variant)
    rng = np.random.default_rng(int(key, 16))
    duration = cfg.clip_seconds
    freq = float(rng.uniform(cfg.freq_min_cycles / duration, cfg.freq_max_cycles / duration))
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    return freq, phase


# --- public selection API -------------------------------------------------------------


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
    voiced = round(_voiced_share(w.notes, cfg.clip_seconds), _TIME_DECIMALS)
    specs = []
    for v in range(cfg.variants):
        freq, phase = variant_modulation(seed, source_md5, w.track, w.start, v, cfg)
        specs.append(ClipSpec(
            clip_id=stable_hash(source_md5, w.track, round(w.start, _TIME_DECIMALS), v, seed),
            source=str(source), source_md5=source_md5, track=w.track,
            instrument=inst.name, program=inst.program, source_program=source_program,
            start=round(w.start, _TIME_DECIMALS), duration=round(cfg.clip_seconds, _TIME_DECIMALS),
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
    steps = steps[steps > _EPS]
    step = float(steps[-1]) if len(steps) else 60.0 / (midi.final_tempo if midi.final_tempo > 0 else 120.0)
    n_more = int(math.floor((stop - beats[-1]) / step)) + 1
    return np.concatenate([beats, beats[-1] + step * np.arange(1, n_more + 1)])


__all__ = [
    "ParsedMidi", "Track", "Line", "md5_file", "load_midi", "select_clips", "clip_notes", "clip_beats", "quarter_beats",
    "monophonic_line", "fold_pitches", "modulation", "modulate_velocities", "variant_modulation", "instrument_for",
]
