"""Parsing a MIDI file into a `ParsedMidi` (`load_midi`): cheap checks first, then pretty_midi in a
reused, memory- and time-capped child process (`engine.sandbox`), so that a malformed file costs one
one-line `InputError`, never the worker.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvtbuild.config import SelectConfig
from pvtbuild.engine.manifest import file_digest
from pvtbuild.engine.sandbox import Sandbox, SandboxDied, SandboxTimeout
from pvtbuild.errors import InputError
from pvtbuild.music.midi.beats import quarter_beats
from pvtbuild.music.midi.records import ParsedMidi, Track

_MAX_REASON = 160  # characters of an exception message kept in a skip reason


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
            _sandbox = Sandbox("pvtbuild.music.midi.parse:_parse_in_child", cfg.parse_memory_mb)
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
        import pretty_midi  # noqa: PLC0415  (~0.4 s to import; only the sandboxed child parses)

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
