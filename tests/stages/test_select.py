"""Tests of the select stage (select.py) and its selection manifests, on the demo MIDI of
examples/midi: the committed manifests/demo.jsonl is exactly what select makes, manifests
stay valid when moved with their MIDI files, and the stage resumes and refuses mixed settings."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from paths import REPO
from pvtbuild.clip import ClipSpec, unpack_notes
from pvtbuild.config import load_pipeline
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.planning import run_stages
from pvtbuild.errors import PvtbuildError
from pvtbuild.music.midi import clip_notes, load_midi
from pvtbuild.pipeline import selected_clips
from pvtbuild.stages.select import SELECTION_NAME, notes_files, plan_select, read_selection, select, write_selection

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


def test_the_selection_select_hands_on_names_the_notes_files_its_folder_holds_fresh_and_resumed(tmp_path):
    cfg = demo_cfg(midi=str(EXAMPLES), **{"exec.select_files_per_task": 3})  # several shards
    for _ in range(2):  # a run that selects every file, then one that reuses every shard
        run = plan_select(EXAMPLES, tmp_path, cfg)
        run_stages(SYNC, [run])
        handed = run.upstream()
        assert len(set(handed.notes.values())) > 1
        assert handed.notes == notes_files(tmp_path, cfg)  # what render would read back from the folder
        assert set(handed.notes) == {c.clip_id for c in handed.clips}


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


def _write_line(path: Path, pitch_shift: int) -> None:
    """A 24 s violin line; another `pitch_shift` gives a file of the same size with other notes."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    violin = pretty_midi.Instrument(program=40)
    for k in range(48):
        violin.notes.append(pretty_midi.Note(90, 60 + pitch_shift + (k % 5), 0.5 * k, 0.5 * k + 0.4))
    pm.instruments.append(violin)
    pm.write(str(path))


def _select(midi: Path, out: Path):
    return select(midi, out, demo_cfg(midi=str(midi), **{"exec.select_files_per_task": 3}), SYNC)


def test_resume_keys_files_by_md5_a_moved_or_renamed_file_is_reused_and_its_clips_follow_it(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    for p in sorted(EXAMPLES.glob("*.mid")):
        shutil.copy(p, first / p.name)
    out = tmp_path / "out"
    clips, summary = _select(first, out)
    assert summary.ok > 0 and summary.reused == 0
    moved = tmp_path / "moved" / "deeper"  # other folder, other names, other order by name
    moved.mkdir(parents=True)
    for k, p in enumerate(sorted(first.glob("*.mid"))):
        p.rename(moved / f"{9 - k}-renamed.mid")
    again, summary2 = _select(moved.parent, out)
    assert summary2.ok == 0 and summary2.reused == summary.ok
    assert [replace(c, source="") for c in again] == [replace(c, source="") for c in clips]
    assert all(Path(c.source).parent == moved and Path(c.source).is_file() for c in again)
    stage_rows = [json.loads(line) for line in (out / "select" / "manifest.jsonl").read_text().splitlines()]
    assert all(Path(r["inputs"]["source"]).parent == moved for r in stage_rows)
    for c in read_selection(out / "select" / SELECTION_NAME):
        assert Path(c.source).parent == moved


def test_resume_keys_files_by_md5_a_file_changed_in_place_with_the_same_size_is_redone(tmp_path):
    midi, out = tmp_path / "midi", tmp_path / "out"
    midi.mkdir()
    for k in range(4):
        _write_line(midi / f"line{k}.mid", 2 * k)
    before, summary = _select(midi, out)
    assert summary.ok == 4
    size = (midi / "line0.mid").stat().st_size
    _write_line(midi / "line0.mid", 1)  # other notes, same size, same path
    assert (midi / "line0.mid").stat().st_size == size
    after, summary2 = _select(midi, out)
    assert summary2.ok >= 1 and summary2.ok + summary2.reused == 4  # at least its group redone
    old_md5 = {c.source_md5 for c in before} - {c.source_md5 for c in after}
    assert len(old_md5) == 1 and not [c for c in after if c.source_md5 in old_md5]
    assert len({c.source_md5 for c in after}) == 4


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


@pytest.mark.parametrize("row, message", [
    ({"clip_id": "../../../../../SOMEWHERE/PWNED"}, "clip id '../../../../../SOMEWHERE/PWNED'"),
    ({"clip_id": "/etc/passwd"}, "clip id '/etc/passwd'"),
    ({"source": 5}, "field 'source': expected str, got 5"),
    ({"track": "3"}, "field 'track': expected int"),
    ([1, 2], "a row must be a JSON object, got list"),
])
def test_a_selection_row_with_a_path_for_an_id_or_a_wrong_type_is_refused_naming_the_line(tmp_path, row, message):
    good = json.loads(DEMO_MANIFEST.read_text().splitlines()[0])
    path = tmp_path / "sel.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **row} if isinstance(row, dict) else row) + "\n")
    with pytest.raises(PvtbuildError, match=re.escape(message)) as err:
        read_selection(path)
    assert f"{path}:2: not a clip selection row" in str(err.value) and "\n" not in str(err.value)
