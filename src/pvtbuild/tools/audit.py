"""`pvtbuild soundfont-audit`: is a SoundFont fit to render a dataset? Every note, heard through FluidSynth.

Each program is played through the same path as the render stage (`synth.render_notes`:
fresh synth, fixed gain, no normalisation) one note at a time: every pitch of
`pitch_min..pitch_max` at a few velocities, the note held `hold_s` and followed by
`tail_s` of release. Per note it measures

- **pitch**: cents from the expected equal-tempered frequency (A4 = 440 Hz), by `note_f0`
  on the held part after the first 100 ms (YIN for the semitone, a harmonic sum on one long
  zero-padded spectrum for the cents);
- **onset latency**: note-on to the moment the 2 ms RMS envelope first reaches the
  note's peak level minus `onset_db`;
- **loudness**: RMS in dBFS of the first `hold_s` after the onset, per velocity;
- **peak**: the largest |sample| (FluidSynth's output before the render stage's clipping);
- **release**: note-off to the moment the envelope falls below the peak level minus
  `release_db` (`tail_s` when it never does within the rendered tail).

and fails a note, with a reason, on: `no preset` (bank 0 lacks the program), `silent`
(peak below `silence_peak`), `clipping` (a sample beyond the render's clip limit),
`detuned` (`max_cents` < |cents| < 100), `wrong octave` (within `max_cents` of a
whole number of octaves away), `wrong pitch` (any other |cents| > `max_cents`), `late onset`
(latency > `max_latency_s`), `long release` (release > `max_release_s`), and a program's pitch on
`loudness not rising` when a higher velocity is not at least `min_velocity_step_db`
louder than the next lower one.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pvtbuild.clip import ClipNotes
from pvtbuild.config import RenderConfig
from pvtbuild.errors import InputError
from pvtbuild.music.soundfonts import resolve_soundfont
from pvtbuild.music.synth import render_notes

DEFAULT_PROGRAMS = (0, 40, 56)
DEFAULT_VELOCITIES = (40, 80, 120)


@dataclass(frozen=True)
class AuditLimits:
    """What a note must meet (defaults: GeneralUser GS and FluidR3/TimGM6mb pass with margin on 0, 40, 56)."""

    max_cents: float = 30.0
    max_latency_s: float = 0.05
    onset_db: float = 30.0
    silence_peak: float = 1e-3
    max_release_s: float = 1.5
    release_db: float = 60.0
    min_velocity_step_db: float = 0.5
    hold_s: float = 0.5
    tail_s: float = 2.0


@dataclass
class NoteResult:
    program: int
    pitch: int
    velocity: int
    cents: float = math.nan  # from the expected frequency of `pitch`
    latency_s: float = math.nan
    loudness_db: float = math.nan
    peak: float = 0.0
    release_s: float = math.nan
    reasons: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    soundfont: str
    notes: list[NoteResult]
    velocities: tuple[int, ...]

    @property
    def failures(self) -> list[NoteResult]:
        return [n for n in self.notes if n.reasons]

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        """A table, one row per (program, pitch): the worst velocity's numbers, loudness per velocity."""
        vel = "/".join(str(v) for v in self.velocities)
        out = [f"soundfont-audit: {self.soundfont}",
               f"{'prog':>4s} {'pitch':>5s} {'cents':>6s} {'onset ms':>8s} {'dB @ v' + vel:>22s} {'peak':>6s} "
               f"{'release s':>9s}  result"]
        groups: dict[tuple[int, int], list[NoteResult]] = {}
        for n in self.notes:
            groups.setdefault((n.program, n.pitch), []).append(n)
        for (prog, pitch), ns in groups.items():
            worst_cents = max((n.cents for n in ns if math.isfinite(n.cents)), key=abs, default=math.nan)
            lat = max((n.latency_s for n in ns if math.isfinite(n.latency_s)), default=math.nan)
            rel = max((n.release_s for n in ns if math.isfinite(n.release_s)), default=math.nan)
            peak = max(n.peak for n in ns)
            db = "/".join("-" if not math.isfinite(n.loudness_db) else f"{n.loudness_db:.1f}" for n in ns)
            reasons = sorted({r for n in ns for r in n.reasons})
            out.append(f"{prog:4d} {pitch:5d} {_f(worst_cents, '+6.1f')} {_f(1000 * lat, '8.1f')} {db:>22s} "
                       f"{peak:6.3f} {_f(rel, '9.2f')}  {'ok' if not reasons else 'FAIL: ' + ', '.join(reasons)}")
        bad = self.failures
        notes = len(self.notes)
        out.append(f"soundfont-audit: {notes - len(bad)}/{notes} notes pass"
                   + ("" if not bad else f"; {len({(n.program, n.pitch) for n in bad})} (program, pitch) fail: "
                      + ", ".join(f"{r} {c}" for r, c in _count(bad).items())))
        return out


def audit_soundfont(soundfont: str | Path, programs: tuple[int, ...] = DEFAULT_PROGRAMS, pitch_min: int = 48,
                    pitch_max: int = 72, velocities: tuple[int, ...] = DEFAULT_VELOCITIES,
                    limits: AuditLimits = AuditLimits(), render=None) -> AuditReport:
    """Render and measure every (program, pitch, velocity); see the module docstring.

    Args:
        soundfont: a .sf2/.sf3 path or a registry name (`soundfonts.resolve_soundfont`).
        render: a `config.RenderConfig` (default: the render stage's defaults).

    Raises:
        InputError: one line, when the file is missing or not a SoundFont, or an argument is out of range.
    """
    render = render or RenderConfig()
    if not (0 <= pitch_min <= pitch_max <= 127):
        raise InputError(f"pitch range {pitch_min}..{pitch_max}: need 0 <= --pitch-min <= --pitch-max <= 127")
    if not programs or any(not 0 <= p <= 127 for p in programs):
        raise InputError(f"programs {list(programs)}: need GM programs 0..127")
    if not velocities or any(not 1 <= v <= 127 for v in velocities):
        raise InputError(f"velocities {list(velocities)}: need 1..127")
    path = resolve_soundfont(str(soundfont))
    velocities = tuple(sorted(velocities))
    notes: list[NoteResult] = []
    for prog in programs:
        for pitch in range(pitch_min, pitch_max + 1):
            row = [audit_note(path, prog, pitch, v, limits, render) for v in velocities]
            louder = [b.loudness_db - a.loudness_db for a, b in zip(row, row[1:])]
            if any(not (d >= limits.min_velocity_step_db) for d in louder) and not any(
                    r in n.reasons for n in row for r in ("no preset", "silent")):
                for n in row:
                    n.reasons.append("loudness not rising")
            notes.extend(row)
    return AuditReport(str(path), notes, velocities)


def audit_note(soundfont: Path, program: int, pitch: int, velocity: int, limits: AuditLimits, render) -> NoteResult:
    """One note through FluidSynth, measured (see the module docstring)."""
    res = NoteResult(program, pitch, velocity)
    sr = render.sample_rate
    on = 0.05
    off = on + limits.hold_s
    n = int(round((off + limits.tail_s) * sr))
    notes = ClipNotes(np.array([on]), np.array([off]), np.array([pitch], np.int16), np.array([velocity], np.int16),
                      np.zeros(0), n / sr)
    try:  # no clipping here: the peak is measured on FluidSynth's own output
        audio, _ = render_notes(notes, program, soundfont, replace(render, clip_limit=1e9), n)
    except InputError as e:
        if "no preset" in str(e):
            res.reasons.append("no preset")
            return res
        raise
    res.peak = float(np.max(np.abs(audio))) if n else 0.0
    if res.peak < limits.silence_peak:
        res.reasons.append("silent")
        return res
    if res.peak > render.clip_limit:
        res.reasons.append("clipping")
    env = _envelope_db(audio, sr)  # 2 ms blocks
    block = 0.002
    peak_db = float(env.max())
    i_on = int(on / block)
    above = np.flatnonzero(env[i_on:] >= peak_db - limits.onset_db)
    res.latency_s = float(above[0] * block) if len(above) else math.nan
    if not len(above) or res.latency_s > limits.max_latency_s:
        res.reasons.append("late onset")
    start = int(round((on + (res.latency_s if len(above) else 0.0)) * sr))
    held = audio[start:int(off * sr)]
    res.loudness_db = float(10 * np.log10(max(float(np.mean(held.astype(np.float64) ** 2)), 1e-20)))
    i_off = int(off / block)
    loud_after = np.flatnonzero(env[i_off:] >= peak_db - limits.release_db)
    res.release_s = float((loud_after[-1] + 1) * block) if len(loud_after) else 0.0
    if res.release_s > limits.max_release_s:
        res.reasons.append("long release")
    f0 = note_f0(audio[int((on + 0.1) * sr):int(off * sr)], sr, pitch)
    res.cents = 100.0 * (f0 - pitch)
    reason = _pitch_reason(res.cents, limits.max_cents)
    if reason:
        res.reasons.append(reason)
    return res


def note_f0(audio: np.ndarray, sample_rate: int, near_midi: float) -> float:
    """A precise f0 (MIDI float) of one steady harmonic note played near `near_midi` (+-13 semitones); nan if none.

    Two steps. The semitone: the median of YIN (`librosa.yin`, 2048-sample frames, the search
    limited to +-13 semitones of near_midi), octave-safe on a single clean note through its
    first-dip rule. The cents: a harmonic sum sum_h log1p(|X(h f)| / floor) / h over h <= 10,
    h f < 5 kHz, on the Hann-windowed, zero-padded (>= 2^16 points) spectrum of the whole
    segment, maximised on a 1-cent grid within +-60 cents of YIN's answer, refined by a parabola.
    (`analysis.analyse` names the semitone per 42.7 ms frame; on GeneralUser's piano C3 at
    velocity 120 most of its frames read D3, so this single-note check does not rely on it.)
    """
    import librosa  # noqa: PLC0415  (librosa takes seconds to import; only the pitch measure needs it)

    x = np.asarray(audio, dtype=np.float64)
    frame = 2048
    if len(x) < frame or not np.any(x):
        return math.nan
    f_near = 440.0 * 2 ** ((near_midi - 69) / 12)
    fmin = max(f_near * 2 ** (-13 / 12), 1.2 * sample_rate / (frame // 2))
    fmax = min(f_near * 2 ** (13 / 12), sample_rate / 4)
    f_yin = librosa.yin(x.astype(np.float32), fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=frame,
                        hop_length=512, center=False)
    coarse = 69 + 12 * np.log2(float(np.median(f_yin)) / 440.0)
    nfft = max(1 << 16, 1 << int(math.ceil(math.log2(len(x)))))
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), nfft))
    s = np.log1p(mag / (mag.max() * 1e-4))
    cents = np.arange(-60, 61)
    f = 440.0 * 2 ** ((coarse + cents / 100 - 69) / 12)
    top = min(5000.0, sample_rate / 2 - 100)
    score = np.zeros(len(f))
    for h in range(1, 11):
        ok = h * f < top
        if not ok.any():
            break
        bins = np.minimum(h * f, top) * nfft / sample_rate
        lo = np.minimum(np.floor(bins).astype(int), len(s) - 2)
        frac = bins - lo
        score += np.where(ok, (s[lo] * (1 - frac) + s[lo + 1] * frac) / h, 0.0)
    k = int(np.argmax(score))
    d = 0.0
    if 0 < k < len(score) - 1:
        a, b_, c = score[k - 1], score[k], score[k + 1]
        den = a - 2 * b_ + c
        d = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0
    return coarse + (cents[k] + d) / 100.0


def _pitch_reason(cents: float, max_cents: float) -> str | None:
    if not math.isfinite(cents):
        return "wrong pitch"
    if abs(cents) <= max_cents:
        return None
    octaves = round(cents / 1200)
    if octaves and abs(cents - 1200 * octaves) <= max_cents:
        return "wrong octave"
    return "detuned" if abs(cents) < 100 else "wrong pitch"


def _envelope_db(audio: np.ndarray, sr: int) -> np.ndarray:
    hop = max(1, int(round(0.002 * sr)))
    n = len(audio) // hop
    blocks = audio[:n * hop].astype(np.float64).reshape(n, hop)
    return 10 * np.log10(np.maximum(np.mean(blocks ** 2, axis=1), 1e-20))


def _f(x: float, fmt: str) -> str:
    width = int(fmt.lstrip("+").split(".")[0])
    return f"{'-':>{width}s}" if not math.isfinite(x) else format(x, fmt)


def _count(notes: list[NoteResult]) -> dict[str, int]:
    return dict(Counter(r for n in notes for r in n.reasons).most_common())


def parse_programs(text: str, option: str = "--programs") -> tuple[int, ...]:
    """`0,40,56` -> (0, 40, 56); InputError (one line) on anything else."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = ()
    if not values:
        raise InputError(f"{option} {text!r}: expected comma-separated integers, e.g. 0,40,56")
    return values
