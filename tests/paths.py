"""Where the tests find the shared Lakh MIDI samples: `shared/` beside the repository (as CI lays it out).

PVTBUILD_SHARED overrides it; /work/shared is the fallback of the development machines.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    if "PVTBUILD_SHARED" in os.environ:
        return Path(os.environ["PVTBUILD_SHARED"])
    beside = REPO.parent / "shared"
    return beside if (beside / "data" / "midi").is_dir() else Path("/work/shared")


SHARED = _shared()
MIDI_DATA = SHARED / "data" / "midi"
LAKH = MIDI_DATA / "lakh-sample"
EDGE = MIDI_DATA / "edge-cases"
