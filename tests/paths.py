"""Where the tests find their MIDI files: `tests/data/midi/` inside the repository, and nowhere else.

A clone with nothing beside it tests itself; conftest.py fails any test that reads the
project's `shared/` folder (see `SHARED_ROOTS`), and `.ci/run` runs the tests with it hidden.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIDI_DATA = REPO / "tests" / "data" / "midi"  # README.md there: sources and licences
LAKH = MIDI_DATA / "lakh-sample"  # 48 good files named by md5
EDGE = MIDI_DATA / "edge-cases"  # 60 odd or broken files

# Folders no test may read: `shared/` beside the repository (as CI lays it out) and the
# development machines' copy. Checked by conftest.py's audit hook.
SHARED_ROOTS = tuple(dict.fromkeys(str(p) for p in (REPO.parent / "shared", (REPO.parent / "shared").resolve(),
                                                    Path("/work/shared"))))
