"""FluidSynth rendering of one clip's notes to a float32 mono array.

Determinism first. A clip's samples depend only on its notes, program and
render config, never on what the process rendered before:

- Samples are pulled with `fluid_synth_write_float` (pyfluidsynth's `get_samples`
  converts to s16 with dither, which is random). No audio driver is started.
- Every clip is rendered by a fresh FluidSynth synthesizer. Resetting a reused
  one is not enough in FluidSynth 2.3: `all_sounds_off` followed by
  `system_reset` even lets killed voices finish their release, and with the
  calls the other way round every voice stops, yet each voice slot keeps the
  output gain of the last note it played (`fluid_rvoice_buffers` `current_amp`,
  ramped over the first 64-sample block of its next note), so the start of
  every note depended on earlier clips (differences up to ~1e-3). A synth
  costs ~0.5 ms to create and delete; the expensive part, loading the SoundFont
  (~40-60 ms for GeneralUser GS, 1.4-4 s for the sf3 MuseScore_General, which
  is decoded), is done once per process: the font is loaded into a "holder"
  synth and lent to each clip's synth with `fluid_synth_add_sfont` /
  `fluid_synth_remove_sfont`.

Threads and processes. The holder is cached per process, keyed by the
SoundFont's path; a lock serialises its use, because dask workers run tasks
in threads and FluidSynth objects must not be used by two threads at once.
Nothing here is ever pickled: FluidSynth objects live in module state only,
and a forked child starts without them.

Timing. FluidSynth renders in blocks of 64 samples (`FLUID_BUFSIZE`) and applies
MIDI events only at block boundaries: an event sent after writing sample p
takes effect at the next multiple of 64. Rendering in chunks between exact event
positions would therefore delay events by 0..63 samples. Instead each event is
sent at the block boundary nearest to its sample position round(t * sr), so
every note-on and note-off lands within ±32 samples (±1.3 ms at 24 kHz, a third
of a 240 Hz control frame) of its time, without bias.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from ctypes import CFUNCTYPE, c_char_p, c_int, c_void_p, cast
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from pvtbuild.clip import ClipNotes
from pvtbuild.config import RenderConfig
from pvtbuild.errors import InputError

if TYPE_CHECKING:
    import fluidsynth

_log = logging.getLogger(__name__)

BLOCK = 64  # FLUID_BUFSIZE: FluidSynth's internal block; events apply at its boundaries
CHANNEL = 0
BANK = 0
_MIDI_CHANNELS = 16  # pyfluidsynth's default of 256 only makes resets slower

# FluidSynth log levels (fluid_log_level): PANIC, ERR, WARN, INFO, DBG.
_FLUID_ERR, _FLUID_WARN, _FLUID_INFO, _FLUID_DBG = 1, 2, 3, 4


def render_notes(notes: ClipNotes, program: int, soundfont: Path, cfg: RenderConfig,
                 n_samples: int, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Render a clip's notes with one GM program on channel 0, bank 0.

    Args:
        notes: the clip's notes, times in seconds from the clip start; velocities 1..127.
        program: GM program (0..127) the notes are played with.
        soundfont: a resolved .sf2/.sf3 path (see `soundfonts.resolve_soundfont`).
        cfg: sample rate, fixed gain (FluidSynth's synth.gain; no per-clip normalisation),
            reverb and chorus on/off, and the clipping limit.
        n_samples: length of the output; notes and note-offs at or beyond it are dropped.
        out: float32 [n_samples] to write the audio into (e.g. a row of a shard's array, which
            saves stacking the clips later); default: a new array.

    Returns:
        (audio, n_clipped): float32 mono audio of exactly n_samples at cfg.sample_rate (mean of
        FluidSynth's left and right), and how many of its samples exceeded ±cfg.clip_limit
        (they are clipped to it).

    Raises:
        InputError: the SoundFont cannot be loaded or has no preset for `program` in bank 0.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if not 0 <= program <= 127:
        raise ValueError(f"program must be 0..127, got {program}")
    if out is not None and (out.shape != (n_samples,) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be contiguous float32 [{n_samples}], got {out.dtype} {out.shape}")
    events = _events(notes, cfg.sample_rate, n_samples)
    stereo = np.zeros((n_samples, 2), dtype=np.float32)
    with _LOCK:
        font = _font(str(Path(soundfont).resolve()))
        with font.lend(cfg) as (synth, sfid):
            if synth.program_select(CHANNEL, sfid, BANK, program) != 0:
                raise InputError(f"{soundfont}: no preset for bank {BANK} program {program}; "
                                 "choose another SoundFont or program")
            _render(synth, stereo, events, cfg.voices)
    audio = np.add(stereo[:, 0], stereo[:, 1], out=out)  # mono = (L + R) / 2, exactly numpy's float32 mean, 30x faster
    audio *= np.float32(0.5)
    if not np.isfinite(audio).all():
        raise RuntimeError(f"FluidSynth produced non-finite samples ({soundfont}, program {program})")
    limit = np.float32(cfg.clip_limit)
    n_clipped = int(np.count_nonzero(np.abs(audio) > limit))
    if n_clipped:
        np.clip(audio, -limit, limit, out=audio)
    return audio, n_clipped


def release_synth() -> None:
    """Free this process's loaded SoundFont (it is loaded again on the next render)."""
    with _LOCK:
        _drop_font()


# --- internals --------------------------------------------------------------------------


# One event: (sample position on the block grid, order, kind, pitch, velocity). At one
# position: note-offs of earlier notes (order 0), then note-ons (1), then the offs of
# notes that start there too (2: shorter than a block; FluidSynth then holds them for
# synth.min-note-length, 10 ms).
_Event = tuple[int, int, str, int, int]


def _events(notes: ClipNotes, sr: int, n_samples: int) -> list[_Event]:
    """Note-on/off events at the block boundary nearest to round(t * sr), within [0, n_samples)."""
    pitches = np.asarray(notes.pitches)
    velocities = np.asarray(notes.velocities)
    if len(pitches) and (pitches.min() < 0 or pitches.max() > 127):
        raise ValueError(f"pitches must be 0..127, got {pitches.min()}..{pitches.max()}")
    if len(velocities) and (velocities.min() < 1 or velocities.max() > 127):
        raise ValueError(f"velocities must be 1..127, got {velocities.min()}..{velocities.max()}")
    events: list[_Event] = []
    for on, off, pitch, vel in zip(notes.onsets, notes.offsets, pitches, velocities):
        t_on, t_off = _on_grid(on, sr), _on_grid(off, sr)
        if t_on >= n_samples:
            continue
        events.append((t_on, 1, "on", int(pitch), int(vel)))
        if t_off < n_samples:
            events.append((max(t_off, t_on), 2 if t_off <= t_on else 0, "off", int(pitch), 0))
    events.sort(key=lambda e: (e[0], e[1]))  # stable: notes keep their order within a group
    return events


def _on_grid(t: float, sr: int) -> int:
    sample = int(round(float(t) * sr))
    return BLOCK * int(round(sample / BLOCK))


def _render(synth: "fluidsynth.Synth", out: np.ndarray, events: list[_Event], voices: int) -> None:
    """Fill `out` ([n, 2] float32, C-contiguous), sending each event when rendering reaches its position.

    A clip that fills all `voices` would have voices stolen (cut notes), so it is refused instead.
    """
    pos = 0
    for at, _, kind, pitch, vel in events:
        _write(synth, out, pos, at)
        pos = at
        if kind == "on":
            synth.noteon(CHANNEL, pitch, vel)
            if _C.get_active_voice_count(synth.synth) >= voices:
                raise InputError(f"{voices} FluidSynth voices sounding at once, all of render.voices "
                                 "(more would be cut)")
        else:
            synth.noteoff(CHANNEL, pitch)
    _write(synth, out, pos, out.shape[0])


def _write(synth: "fluidsynth.Synth", out: np.ndarray, start: int, stop: int) -> None:
    if stop <= start:
        return
    base = out.ctypes.data
    rc = _C.write_float(synth.synth, stop - start, base, 2 * start, 2, base, 2 * start + 1, 2)
    if rc != 0:
        raise RuntimeError(f"fluid_synth_write_float failed ({rc})")


def _new_synth(sample_rate: int, gain: float, reverb: bool, chorus: bool, voices: int) -> "fluidsynth.Synth":
    fluidsynth = _fluidsynth()
    synth = fluidsynth.Synth(
        gain=float(gain),
        samplerate=int(sample_rate),
        channels=_MIDI_CHANNELS,
        **{
            "synth.reverb.active": int(reverb),
            "synth.chorus.active": int(chorus),
            "synth.lock-memory": 0,  # no mlock of sample data: it fails (with warnings) under ulimits
            "synth.cpu-cores": 1,  # no FluidSynth worker threads
            "synth.dynamic-sample-loading": 0,
            "synth.polyphony": voices,
        },
    )
    if not synth.synth:
        raise RuntimeError(f"FluidSynth could not create a synthesizer at {sample_rate} Hz")
    return synth


class _Font:
    """A SoundFont loaded once per process into a holder synth, lent to a fresh synth per clip."""

    def __init__(self, path: str):
        self.path = path
        self.pid = os.getpid()
        _check_header(path)
        self.holder = _new_synth(24000, 0.2, False, False, RenderConfig().voices)  # never renders
        _ERRORS.clear()
        sfid = self.holder.sfload(path)
        if sfid < 0:
            self.holder.delete()
            said = f" ({'; '.join(_ERRORS)})" if _ERRORS else ""
            raise InputError(f"{path}: FluidSynth cannot load this SoundFont{said}; give a valid .sf2/.sf3")
        self.sfont = _C.get_sfont_by_id(self.holder.synth, sfid)

    @contextlib.contextmanager
    def lend(self, cfg: RenderConfig) -> Iterator[tuple["fluidsynth.Synth", int]]:
        """A fresh synth for `cfg` with this font added, and the font's id in it.

        The font is taken back before the synth is deleted (deleting a synth frees its fonts).
        """
        synth = _new_synth(cfg.sample_rate, cfg.gain, cfg.reverb, cfg.chorus, cfg.voices)
        sfid = _C.add_sfont(synth.synth, self.sfont)
        if sfid < 0:
            synth.delete()
            raise RuntimeError(f"fluid_synth_add_sfont failed for {self.path}")
        try:
            yield synth, sfid
        finally:
            if _C.remove_sfont(synth.synth, self.sfont) == 0:
                synth.delete()
            else:  # deleting the synth would free the shared font: leak the synth rather than crash
                _forget_font()
                raise RuntimeError(f"fluid_synth_remove_sfont failed for {self.path}")

    def delete(self) -> None:
        if self.pid == os.getpid():
            self.holder.delete()  # also frees the font


def _check_header(path: str) -> None:
    """Refuse non-SoundFonts before FluidSynth sees them (its DLS fallback prints glib noise for junk)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as e:
        raise InputError(f"{path}: cannot read SoundFont ({e.strerror})") from None
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise InputError(f"{path}: not a SoundFont (no RIFF sfbk header); give a valid .sf2/.sf3")


_LOCK = threading.Lock()
_FONT: _Font | None = None


def _font(path: str) -> _Font:
    global _FONT
    if _FONT is not None and (_FONT.path != path or _FONT.pid != os.getpid()):
        _drop_font()
    if _FONT is None:
        _FONT = _Font(path)
    return _FONT


def _drop_font() -> None:
    font = _forget_font()
    if font is not None:
        font.delete()


def _forget_font() -> "_Font | None":
    global _FONT
    font, _FONT = _FONT, None
    return font


def _after_fork_in_child() -> None:
    # The parent's FluidSynth objects (and a lock possibly held by another thread) are copies here: start over.
    global _LOCK, _FONT
    _LOCK = threading.Lock()
    _FONT = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class _CFunctions:
    """libfluidsynth functions pyfluidsynth does not wrap, bound through its own library handle."""

    write_float = None
    add_sfont = None
    remove_sfont = None
    get_sfont_by_id = None
    get_active_voice_count = None


_C = _CFunctions()

_ERRORS: collections.deque[str] = collections.deque(maxlen=4)  # FluidSynth's latest error messages


@CFUNCTYPE(None, c_int, c_char_p, c_void_p)
def _ON_ERROR(level: int, message: bytes, data: object) -> None:
    text = message.decode("utf-8", "replace").strip() if message else ""
    _ERRORS.append(text)
    _log.debug("fluidsynth: %s", text)


_FLUIDSYNTH = None


def _fluidsynth():
    """Import pyfluidsynth once, declare the C functions it lacks, and quiet FluidSynth's console log."""
    global _FLUIDSYNTH
    if _FLUIDSYNTH is None:
        import fluidsynth  # noqa: PLC0415  (loads libfluidsynth through ctypes: only render workers need it)

        cfunc = fluidsynth.cfunc
        _C.write_float = cfunc("fluid_synth_write_float", c_int, ("synth", c_void_p, 1), ("len", c_int, 1),
                               ("lout", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
                               ("rout", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1))
        _C.add_sfont = cfunc("fluid_synth_add_sfont", c_int, ("synth", c_void_p, 1), ("sfont", c_void_p, 1))
        _C.remove_sfont = cfunc("fluid_synth_remove_sfont", c_int, ("synth", c_void_p, 1), ("sfont", c_void_p, 1))
        _C.get_sfont_by_id = cfunc("fluid_synth_get_sfont_by_id", c_void_p, ("synth", c_void_p, 1), ("id", c_int, 1))
        _C.get_active_voice_count = cfunc("fluid_synth_get_active_voice_count", c_int, ("synth", c_void_p, 1))
        names = ("write_float", "add_sfont", "remove_sfont", "get_sfont_by_id", "get_active_voice_count")
        missing = [n for n in names if getattr(_C, n) is None]
        if missing:
            raise RuntimeError(f"libfluidsynth lacks fluid_synth_{', fluid_synth_'.join(missing)} "
                               "(need FluidSynth >= 2)")
        set_log = cfunc("fluid_set_log_function", c_void_p, ("level", c_int, 1), ("fun", c_void_p, 1),
                        ("data", c_void_p, 1))
        if set_log is not None:
            # Warnings are noise (removing a lent font warns "No preset found" on every channel);
            # errors are kept for the message of the InputError they lead to, not printed.
            for level in (_FLUID_WARN, _FLUID_INFO, _FLUID_DBG):
                set_log(level, None, None)
            set_log(_FLUID_ERR, cast(_ON_ERROR, c_void_p), None)
        _FLUIDSYNTH = fluidsynth
    return _FLUIDSYNTH
