"""Render + controls throughput against bare pyfluidsynth synthesis of the same notes.

    python bench/bench_render.py              # the first 30 files of tests/data/midi/lakh-sample
    python bench/bench_render.py DIR [N]      # the first N MIDI files of DIR

What is compared, in one process and one run (so machine load hits both alike):

- bare: one reused `fluidsynth.Synth` with the SoundFont loaded once; per clip
  `program_select`, then `noteon` / `noteoff` at each note's sample position with
  `get_samples` in between, then `system_reset`. The notes were extracted
  beforehand, so this is FluidSynth's synthesis and nothing else.
- render: the real render stage (`pvtbuild.stages.render.render`, in-process executor)
  over the same clips, in the build folder of the select run (as `pvtbuild
  render --midi DIR` does): notes read from the select stage's shards, a fresh
  synth per clip (synth.py says why), controls on both grids, checksums, npz
  shards and records written atomically. Its render folder is removed between
  repeats.
- render from a manifest: the same into a new folder, as `pvtbuild render --midi
  MANIFEST` does: every source file is parsed again (capped child process).

Both are warmed up first (SoundFont loaded, parser process started) and each is
timed `REPEATS` times, interleaved; the best time of each counts. The ratio
render/bare in clips/s is the stage's efficiency (target >= 0.8: pipeline
overhead <= 25 %). Selection is timed too but is not part of the ratio. Wall
time is what counts; the ratio of this process's CPU time is printed beside it
because it hardly moves when other jobs share the machine (it leaves out the
parser process and time waiting for the disk).

Also measured: `midi.load_midi` (parse in a capped child process) against
`pretty_midi.PrettyMIDI` in this process, per file, on the same files.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from pvtbuild.clip import ClipNotes, ClipSpec, Selection
from pvtbuild.config import PipelineConfig, load_pipeline
from pvtbuild.engine.executor import Executor
from pvtbuild.music.midi import clip_notes, load_midi
from pvtbuild.music.synth import render_notes
from pvtbuild.stages.render import render
from pvtbuild.stages.render_settings import render_soundfont
from pvtbuild.stages.select import find_midi_files, notes_files, select

REPO = Path(__file__).resolve().parent.parent
LAKH = REPO / "tests" / "data" / "midi" / "lakh-sample"  # the repository's own Lakh sample
REPEATS = 5
TARGET = 0.8


def main(argv: list[str]) -> int:
    midi_dir = Path(argv[1]) if len(argv) > 1 else LAKH
    n_files = int(argv[2]) if len(argv) > 2 else 30
    cfg = load_pipeline(REPO / "pipelines" / "pvt.yaml", midi=str(midi_dir), limit=n_files,
                        **{"exec.scheduler": "sync"})
    ex = Executor(None, "in-process")
    # The stages' progress bars go to a buffer: only the results are printed.
    with tempfile.TemporaryDirectory(prefix="bench_render.") as tmp, contextlib.redirect_stderr(io.StringIO()):
        build = Path(tmp) / "build"
        t0 = time.perf_counter()
        clips, _ = select(midi_dir, build, cfg, ex)
        t_select = time.perf_counter() - t0
        if not clips:
            print(f"bench_render: no clips selected from {midi_dir}")
            return 1
        soundfont = render_soundfont(cfg)
        notes = _clip_notes(clips, cfg)
        _warm_up(notes[0], clips[0], soundfont, cfg)

        bare_times, render_times, manifest_times = [], [], []
        for rep in range(REPEATS):
            bare_times.append(_times(lambda: _bare_synthesis(notes, clips, soundfont, cfg)))
            render_times.append(_times(lambda: render(Selection(clips, notes_files(build, cfg)), build, cfg, ex)))
            shutil.rmtree(build / "render")
            out = Path(tmp) / f"from-manifest-{rep}"
            manifest_times.append(_times(lambda: render(Selection(clips, notes_files(out, cfg)), out, cfg, ex)))
            shutil.rmtree(out)
        parse_ours, parse_pm = _parse_costs(find_midi_files(midi_dir, n_files), cfg)

    n = len(clips)
    bare, ours, from_manifest = (n / min(wall for wall, _ in t) for t in (bare_times, render_times, manifest_times))
    cpu_ratio = min(cpu for _, cpu in bare_times) / min(cpu for _, cpu in render_times)
    print(f"bench_render: {n_files} MIDI files of {midi_dir} -> {n} clips "
          f"(selection {t_select:.1f} s, not in the ratio); best of {REPEATS}")
    print(f"  bare pyfluidsynth, reused Synth, same notes        : {bare:8.1f} clips/s")
    print(f"  render stage after select (synth, controls, shards) : {ours:8.1f} clips/s")
    print(f"  render stage from a manifest (+ parsing MIDI again): {from_manifest:8.1f} clips/s")
    verdict = "ok" if ours / bare >= TARGET else "BELOW TARGET"
    print(f"  ratio render / bare: {ours / bare:.2f}  (target >= {TARGET}: {verdict}); "
          f"in CPU time of this process {cpu_ratio:.2f}; from a manifest: {from_manifest / bare:.2f}")
    print(f"  MIDI parse per file: load_midi (capped child) {1e3 * parse_ours:.1f} ms, "
          f"pretty_midi in-process {1e3 * parse_pm:.1f} ms, ratio {parse_ours / parse_pm:.2f}")
    return 0


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    return _times(fn)[0]


def _times(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _clip_notes(clips: list[ClipSpec], cfg: PipelineConfig) -> list[ClipNotes]:
    """Every clip's notes, parsed once per source file (not timed)."""
    parsed = {}
    for c in clips:
        if c.source not in parsed:
            parsed[c.source] = load_midi(c.source, cfg.select)
    return [clip_notes(parsed[c.source], c, cfg.select) for c in clips]


def _warm_up(notes: ClipNotes, clip: ClipSpec, soundfont: Path, cfg: PipelineConfig) -> None:
    """Load the SoundFont into this process's cache and start the parser process, as a running worker has."""
    render_notes(notes, clip.program, soundfont, cfg.render, cfg.clip_samples)
    load_midi(clip.source, cfg.select)


_BARE: dict[str, object] = {}


def _bare_synth(soundfont: Path, cfg: PipelineConfig) -> tuple[object, int]:
    """One pyfluidsynth Synth with the font loaded, created on first use and reused (not timed after)."""
    import fluidsynth  # noqa: PLC0415  (pyfluidsynth loads libfluidsynth: only this bare-synth baseline needs it)

    if "synth" not in _BARE:
        synth = fluidsynth.Synth(gain=cfg.render.gain, samplerate=cfg.render.sample_rate, channels=16,
                                 **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1})
        _BARE["synth"], _BARE["sfid"] = synth, synth.sfload(str(soundfont))
    return _BARE["synth"], int(_BARE["sfid"])  # type: ignore[return-value]


def _bare_synthesis(notes: list[ClipNotes], clips: list[ClipSpec], soundfont: Path, cfg: PipelineConfig) -> None:
    synth, sfid = _bare_synth(soundfont, cfg)
    sr, n_samples = cfg.render.sample_rate, cfg.clip_samples
    for clip, clip_notes_ in zip(clips, notes):
        synth.program_select(0, sfid, 0, clip.program)
        events = sorted([(int(round(on * sr)), 1, int(p), int(v)) for on, p, v in
                         zip(clip_notes_.onsets, clip_notes_.pitches, clip_notes_.velocities)]
                        + [(int(round(off * sr)), 0, int(p), 0) for off, p in
                           zip(clip_notes_.offsets, clip_notes_.pitches)])
        pos = 0
        for at, is_on, pitch, vel in events:
            at = min(at, n_samples)
            if at > pos:
                synth.get_samples(at - pos)
                pos = at
            if is_on:
                synth.noteon(0, pitch, vel)
            else:
                synth.noteoff(0, pitch)
        if n_samples > pos:
            synth.get_samples(n_samples - pos)
        synth.system_reset()


def _parse_costs(files: list[Path], cfg: PipelineConfig) -> tuple[float, float]:
    """Seconds per file: load_midi (child process, capped) and pretty_midi here, on the same files."""
    import pretty_midi  # noqa: PLC0415  (only the parse-cost baseline needs it)

    ours = _time(lambda: [_try(load_midi, str(p), cfg.select) for p in files])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _time(lambda: [_try(pretty_midi.PrettyMIDI, str(p)) for p in files])
    return ours / len(files), theirs / len(files)


def _try(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except Exception:  # a corrupt file costs what it costs in both
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
