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

Modules (each imports only those above it; callers import from this package):

- `records`: `Track`, `ParsedMidi` and the time resolution shared by the rules.
- `beats`: the quarter-note grid from the tempo map, and a clip's beats.
- `parse`: `load_midi` in the capped child process, `md5_file`.
- `lines`: the monophonic rule (`monophonic_line`, `Line`).
- `variants`: pitch folding and velocity modulation per variant.
- `windows`: the window rule, `select_clips` and `clip_notes`.
"""

from __future__ import annotations

from pvtbuild.music.midi.beats import clip_beats, quarter_beats
from pvtbuild.music.midi.lines import Line, monophonic_line
from pvtbuild.music.midi.parse import load_midi, md5_file
from pvtbuild.music.midi.records import ParsedMidi, Track
from pvtbuild.music.midi.variants import fold_pitches, modulate_velocities, modulation, variant_modulation
from pvtbuild.music.midi.windows import clip_notes, instrument_for, select_clips

__all__ = [
    "ParsedMidi", "Track", "Line", "md5_file", "load_midi", "select_clips", "clip_notes", "clip_beats", "quarter_beats",
    "monophonic_line", "fold_pitches", "modulation", "modulate_velocities", "variant_modulation", "instrument_for",
]
