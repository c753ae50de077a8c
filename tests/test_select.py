"""Tests of the select stage (select.py) and its selection manifests, on the demo MIDI of
examples/midi: the committed manifests/demo.jsonl is exactly what select makes, manifests
stay valid when moved with their MIDI files, and the stage resumes and refuses mixed settings."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pvtbuild.clip import ClipSpec, unpack_notes
from pvtbuild.config import load_pipeline
from pvtbuild.errors import PvtbuildError
from pvtbuild.executor import Executor
from pvtbuild.midi import clip_notes, load_midi
from pvtbuild.pipeline import selected_clips
from pvtbuild.select import SELECTION_NAME, notes_files, read_selection, select, write_selection

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "midi"
DEMO_MANIFEST = REPO / "manifests" / "demo.jsonl"
DEMO_PIPELINE = REPO / "pipelines" / "demo.yaml"
SYNC = Executor(None, "in-process")


def demo_cfg(**overrides):
    return load_pipeline(DEMO_PIPELINE, **{"exec.scheduler": "sync", **overrides})


@pytest.fixture(scope="module")
def demo_selection(tmp_path_factory) -> tuple[Path, list[ClipSpec]]:
    """select over examples/midi with pipelines/demo.yaml, as `make demo-manifest` runs it."""
    out = tmp_path_factory.mktemp("select")
    clips, _ = select(EXAMPLES, out, demo_cfg(midi=str(EXAMPLES)), SYNC)
    return out, clips


def test_committed_demo_manifest_is_what_select_makes_from_examples_midi(demo_selection):
    _, clips = demo_selection
    committed = read_selection(DEMO_MANIFEST)
    assert committed == clips  # same clips, same f and phi, same order; sources resolve to examples/midi
    assert all(Path(c.source).is_file() for c in committed)


def test_demo_manifest_has_clips_of_all_three_families_with_relative_sources():
    rows = [json.loads(line) for line in DEMO_MANIFEST.read_text().splitlines()]
    assert Counter(r["instrument"] for r in rows).keys() == {"piano", "violin", "trumpet"}
    assert {r["program"] for r in rows} == {0, 40, 56}
    assert all(r["source"].startswith("../examples/midi/") for r in rows)
    assert len({r["clip_id"] for r in rows}) == len(rows)


def test_a_selection_manifest_still_resolves_when_moved_with_its_midi_files(tmp_path, demo_selection):
    _, clips = demo_selection
    shutil.copytree(EXAMPLES, tmp_path / "a" / "examples" / "midi")
    copies = [replace(c, source=str(tmp_path / "a" / "examples" / "midi" / Path(c.source).name)) for c in clips]
    write_selection(tmp_path / "a" / "manifests" / "sel.jsonl", copies)
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = read_selection(tmp_path / "b" / "manifests" / "sel.jsonl")
    assert [c.source for c in moved] == [str(tmp_path / "b" / "examples" / "midi" / Path(c.source).name)
                                         for c in clips]
    assert [c.clip_id for c in moved] == [c.clip_id for c in clips]


def test_the_stage_folder_holds_the_selection_with_sources_relative_to_it(demo_selection):
    out, clips = demo_selection
    assert read_selection(out / "select" / SELECTION_NAME) == clips


def test_select_shards_store_every_clips_notes_exactly_as_render_would_derive_them(demo_selection):
    out, clips = demo_selection
    cfg = demo_cfg(midi=str(EXAMPLES))
    files = notes_files(out, cfg)
    assert set(files) == {c.clip_id for c in clips}
    stored = {}
    for path in set(files.values()):
        with np.load(path) as data:
            stored.update(unpack_notes(dict(data)))
    for clip in clips:
        expected = clip_notes(load_midi(clip.source, cfg.select), clip, cfg.select)
        got = stored[clip.clip_id]
        for name in ("onsets", "offsets", "pitches", "velocities", "beats"):
            a, b = getattr(got, name), getattr(expected, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), (clip.clip_id, name)
        assert got.duration == expected.duration
    assert notes_files(out, demo_cfg(midi=str(EXAMPLES), seed=1)) == {}  # other settings: not used


def test_limit_on_a_manifest_counts_source_files_as_it_does_for_a_folder(tmp_path):
    clips, _ = selected_clips(demo_cfg(limit=2), tmp_path, SYNC)
    assert len({c.source_md5 for c in clips}) == 2
    everything = read_selection(DEMO_MANIFEST)
    firsts = list(dict.fromkeys(c.source_md5 for c in everything))[:2]
    assert clips == [c for c in everything if c.source_md5 in firsts]


def test_a_rerun_reuses_every_file_and_other_settings_are_refused(demo_selection):
    out, clips = demo_selection
    again, summary = select(EXAMPLES, out, demo_cfg(midi=str(EXAMPLES)), SYNC)
    assert again == clips
    assert summary.ok == 0 and summary.reused + sum(summary.skipped.values()) == len(list(EXAMPLES.glob("*.mid")))
    with pytest.raises(PvtbuildError, match="was built with other settings"):
        select(EXAMPLES, out, demo_cfg(midi=str(EXAMPLES), **{"select.min_notes": 5}), SYNC)


@pytest.mark.parametrize("content, message", [
    (None, "selection manifest not found"),
    ("{not json\n", "not a JSON-lines selection manifest"),
    ('{"clip_id": "x"}\n', ":1: not a clip selection row"),
])
def test_unusable_selection_manifests_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "sel.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PvtbuildError, match=message) as err:
        read_selection(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
