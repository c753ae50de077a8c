"""The clean-clone promise: the tests' data is in the repository, listed with its sources, and no test reads shared/."""

from __future__ import annotations

import csv
import hashlib
import os
import sys

import pytest

from paths import EDGE, LAKH, MIDI_DATA, REPO, SHARED_ROOTS


def test_test_midi_lives_in_the_repository_and_each_file_has_its_source_row():
    assert MIDI_DATA.resolve().is_relative_to(REPO) and not MIDI_DATA.is_symlink()
    files = sorted(p for d in (LAKH, EDGE) for p in d.iterdir())
    assert len(list(LAKH.glob("*.mid"))) == 48 and len(list(EDGE.glob("*.mid"))) == 60
    with open(MIDI_DATA / "SOURCES.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(p.relative_to(MIDI_DATA).as_posix() for p in files)
    for p in files:
        assert not p.is_symlink()
        row = rows[p.relative_to(MIDI_DATA).as_posix()]
        assert hashlib.md5(p.read_bytes()).hexdigest() == row["md5"] and p.stat().st_size == int(row["size_bytes"])
    for p in LAKH.iterdir():
        assert p.stem == rows[f"lakh-sample/{p.name}"]["md5"]
    readme = (MIDI_DATA / "README.md").read_text()
    assert "CC-BY 4.0" in readme and "Colin Raffel" in readme and "colinraffel.com/projects/lmd" in readme


def test_a_test_that_reads_shared_fails_even_where_shared_exists_and_the_error_is_caught():
    guard = sys.modules["conftest"]
    before = len(guard._shared_reads)
    for root in SHARED_ROOTS:
        with pytest.raises(PermissionError, match="only inside the repository"):
            open(f"{root}/data/midi/README.md", "rb")
        try:  # a test that swallows the PermissionError (as pathlib's glob does) ...
            os.listdir(root)
        except PermissionError:
            pass
    assert len(guard._shared_reads) == before + 2 * len(SHARED_ROOTS)  # ... the autouse check still sees it
    del guard._shared_reads[before:]  # these reads were this test's point: let the autouse check pass
