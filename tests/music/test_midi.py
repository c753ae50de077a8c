"""Tests of pvtbuild.music.midi: parsing in a capped child, the monophonic and window rules, folding,
velocity modulation, determinism; over hand-built notes, small MIDI files written with
pretty_midi, and the real files of tests/data/midi."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from conftest import write_slow_midi
from paths import MIDI_DATA
from pvtbuild.clip import ClipSpec
from pvtbuild.config import InstrumentConfig, SelectConfig
from pvtbuild.engine.manifest import stable_hash
from pvtbuild.errors import InputError
from pvtbuild.music.midi import (
    ParsedMidi,
    Track,
    clip_beats,
    clip_notes,
    fold_pitches,
    instrument_for,
    load_midi,
    md5_file,
    modulation,
    monophonic_line,
    quarter_beats,
    select_clips,
    variant_modulation,
)

DATA = MIDI_DATA
EDGE = sorted((DATA / "edge-cases").glob("*.mid"))
LAKH = sorted((DATA / "lakh-sample").glob("*.mid"))
MD5 = "0123456789abcdef0123456789abcdef"
ALL = SelectConfig(clips_per_source=0)  # no cap: every valid window


# --- helpers --------------------------------------------------------------------------


def track(notes: list[tuple[float, float, int, int]], program: int = 0, is_drum: bool = False) -> Track:
    """A Track from (start, end, pitch, velocity) tuples."""
    a = np.array(notes, dtype=np.float64).reshape(-1, 4)
    return Track(program, is_drum, "", a[:, 0], a[:, 1], a[:, 2].astype(np.int16), a[:, 3].astype(np.int16))


def parsed(*tracks: Track, beat: float = 0.5) -> ParsedMidi:
    """A ParsedMidi with a constant tempo (one beat every `beat` s) up to its last note."""
    end = max((float(t.end.max()) for t in tracks if len(t)), default=0.0)
    return ParsedMidi(list(tracks), np.arange(0.0, end, beat), end, 60.0 / beat)


def melody(t0: float, t1: float, step: float = 0.5, overlap: float = 0.0, pitch: int = 60,
           program: int = 0) -> Track:
    """Notes every `step` s from t0 to t1, each lasting step + overlap (legato if overlap > 0)."""
    starts = np.arange(t0, t1 - 1e-9, step)
    return track([(s, s + step + overlap, pitch + (n % 5), 90) for n, s in enumerate(starts)], program)


def write_midi(path: Path, parts: list[tuple[int, bool, list[tuple[float, float, int, int]]]],
               tempo: float = 120.0, resolution: int = 480) -> Path:
    """Write a real MIDI file: parts are (program, is_drum, [(start, end, pitch, velocity)])."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo, resolution=resolution)
    for program, is_drum, notes in parts:
        inst = pretty_midi.Instrument(program, is_drum=is_drum)
        inst.notes = [pretty_midi.Note(v, p, s, e) for s, e, p, v in notes]
        pm.instruments.append(inst)
    pm.write(str(path))
    return path


def write_far_note(path: Path, resolution: int, tick: int) -> Path:
    """A file whose last note sits at `tick`: pretty_midi allocates one float per tick and loops per beat."""
    pm = pretty_midi.PrettyMIDI(resolution=resolution)
    inst = pretty_midi.Instrument(0)
    t = pm.tick_to_time(tick)
    inst.notes = [pretty_midi.Note(100, 60, 0.0, 1.0), pretty_midi.Note(100, 60, t, t + 1.0)]
    pm.instruments.append(inst)
    pm.write(str(path))
    return path


@pytest.fixture(scope="module")
def lakh20() -> list[tuple[Path, ParsedMidi]]:
    """The first 20 files of lakh-sample, parsed once for the tests that need real music."""
    return [(p, load_midi(p, SelectConfig())) for p in LAKH[:20]]


# --- the monophonic rule --------------------------------------------------------------


def test_legato_overlap_within_tolerance_is_cut_at_next_onset():
    line = monophonic_line(melody(0, 8, overlap=0.03), SelectConfig(overlap_tolerance=0.05))
    assert not line.poly.any()
    np.testing.assert_array_equal(line.end[:-1], line.start[1:])
    assert line.end[-1] == pytest.approx(8.03)


def test_overlap_beyond_tolerance_makes_the_pair_polyphonic():
    line = monophonic_line(melody(0, 8, overlap=0.2), SelectConfig(overlap_tolerance=0.05))
    assert line.poly.all()
    np.testing.assert_allclose(line.end - line.start, 0.7)  # not cut
    assert select_clips(parsed(melody(0, 8, overlap=0.2)), "x.mid", MD5, ALL, 0) == []


def test_legato_melody_yields_one_clip_whose_notes_touch():
    midi = parsed(melody(0, 8, overlap=0.03))
    (spec,) = select_clips(midi, "x.mid", MD5, ALL, 0)
    notes = clip_notes(midi, spec, ALL)
    assert spec.start == 0.0 and spec.n_notes == 16 and spec.voiced == 1.0
    np.testing.assert_array_equal(notes.offsets[:-1], notes.onsets[1:])
    assert notes.offsets[-1] == 8.0  # the last note is cut at the clip end


def test_duplicates_count_once_and_zero_length_notes_are_dropped():
    t = track([(0, 1, 60, 80), (0, 0.5, 60, 100), (1, 1, 62, 80), (1, 0.9, 64, 80), (1, 2, 65, 70)])
    line = monophonic_line(t, SelectConfig())
    np.testing.assert_array_equal(line.pitch, [60, 65])
    assert line.end[0] == 1.0  # the longest duplicate is kept
    assert not line.poly.any()


def test_simultaneous_onsets_are_a_chord_hence_polyphonic():
    line = monophonic_line(track([(0, 1, 60, 80), (0, 1, 64, 80), (1, 2, 62, 80)]), SelectConfig())
    assert line.poly.tolist() == [True, False]


def test_top_line_keeps_the_highest_note_of_chords_and_drops_notes_entering_below():
    notes = [(0, 1, 60, 80), (0, 1, 67, 81),  # chord: keep 67
             (1, 3, 72, 82), (1.5, 2.0, 65, 83),  # 65 enters under the sounding 72: dropped
             (2.5, 4, 76, 84),  # higher note takes over: 72 is cut at 2.5
             (4, 5, 70, 85)]
    line = monophonic_line(track(notes), SelectConfig(polyphony="top_line"))
    np.testing.assert_array_equal(line.pitch, [67, 72, 76, 70])
    np.testing.assert_array_equal(line.start, [0, 1, 2.5, 4])
    np.testing.assert_array_equal(line.end, [1, 2.5, 4, 5])
    assert not line.poly.any()


def test_top_line_turns_a_polyphonic_track_into_clips():
    chords = track([(s, s + 0.5, p, 80) for s in np.arange(0, 8, 0.5) for p in (48, 55, 64)])
    midi = parsed(chords)
    assert select_clips(midi, "x.mid", MD5, ALL, 0) == []
    (spec,) = select_clips(midi, "x.mid", MD5, dataclasses.replace(ALL, polyphony="top_line"), 0)
    notes = clip_notes(midi, spec, dataclasses.replace(ALL, polyphony="top_line"))
    assert set(notes.pitches.tolist()) == {64}


# --- windows --------------------------------------------------------------------------


def test_windows_never_start_while_an_earlier_note_rings():
    # A long note (0-3 s) under the start of a melody: no window may start before it ends.
    midi = parsed(track([(0, 3, 50, 80)] + [(s, s + 0.5, 60, 80) for s in np.arange(1, 20, 0.5)]))
    starts = [c.start for c in select_clips(midi, "x.mid", MD5, ALL, 0)]
    assert starts == [3.0, 11.0]


def test_windows_are_greedy_and_do_not_overlap():
    starts = [c.start for c in select_clips(parsed(melody(0, 20)), "x.mid", MD5, ALL, 0)]
    assert starts == [0.0, 8.0, 16.0]  # the last one is half voiced (0.5 >= min_voiced)


def test_windows_need_min_notes_and_min_voiced():
    sparse = track([(s, s + 0.2, 60, 80) for s in np.arange(0, 16, 1.0)])  # voiced 0.2
    assert select_clips(parsed(sparse), "x.mid", MD5, ALL, 0) == []
    assert len(select_clips(parsed(sparse), "x.mid", MD5, dataclasses.replace(ALL, min_voiced=0.15), 0)) == 2
    few = track([(0, 2, 60, 80), (2, 4, 62, 80), (4, 6, 64, 80)])
    assert select_clips(parsed(few), "x.mid", MD5, ALL, 0) == []
    assert len(select_clips(parsed(few), "x.mid", MD5, dataclasses.replace(ALL, min_notes=3), 0)) == 1


def test_tracks_map_to_the_first_matching_instrument_and_drums_never_count():
    midi = parsed(melody(0, 8, program=5), melody(0, 8, program=41), melody(0, 8, program=57),
                  melody(0, 8, program=19), dataclasses.replace(melody(0, 8), is_drum=True))
    specs = select_clips(midi, "x.mid", MD5, ALL, 0)
    assert [(s.track, s.instrument, s.program, s.source_program) for s in specs] == [
        (0, "piano", 0, 5), (1, "violin", 40, 41), (2, "trumpet", 56, 57)]
    first = (InstrumentConfig("a", 0, (0, 10)), InstrumentConfig("b", 5, (5, 20)))
    assert instrument_for(7, first) == 0 and instrument_for(15, first) == 1 and instrument_for(30, first) is None


def test_clips_per_source_is_balanced_over_instruments_and_ordered():
    midi = parsed(melody(0, 40), melody(0, 40, program=40), melody(0, 8, program=56))  # 5, 5, 1 windows
    specs = select_clips(midi, "x.mid", MD5, SelectConfig(clips_per_source=4), 0)
    assert Counter(s.instrument for s in specs) == {"piano": 2, "violin": 1, "trumpet": 1}
    keys = [(s.track, s.start) for s in specs]
    assert keys == sorted(keys)
    assert len(select_clips(midi, "x.mid", MD5, SelectConfig(clips_per_source=0), 0)) == 11


def test_capped_choice_is_drawn_with_the_seed_not_taken_from_the_start():
    midi = parsed(melody(0, 400))  # 50 windows
    picks = {tuple(s.start for s in select_clips(midi, "x.mid", MD5, SelectConfig(clips_per_source=3), seed))
             for seed in range(5)}
    assert len(picks) > 1 and (0.0, 8.0, 16.0) not in picks


# --- folding --------------------------------------------------------------------------


def test_fold_prefers_one_whole_window_shift():
    pitches, transpose, folded = fold_pitches(np.array([84, 86, 88]), 48, 72)
    assert (transpose, folded) == (-24, 0)  # -24 and -36 both fit all: the smaller |shift| wins
    np.testing.assert_array_equal(pitches, [60, 62, 64])


def test_fold_moves_remaining_outliers_note_by_note():
    pitches, transpose, folded = fold_pitches(np.array([40, 60, 70, 90]), 48, 72)
    assert (transpose, folded) == (0, 2)
    np.testing.assert_array_equal(pitches, [52, 60, 70, 66])


def test_fold_ties_go_to_the_lower_shift():
    pitches, transpose, folded = fold_pitches(np.array([36, 84]), 48, 72)
    assert (transpose, folded) == (-12, 1)  # +12 and -12 both bring one note in
    np.testing.assert_array_equal(pitches, [48, 72])


def test_fold_keeps_pitch_classes_and_lands_every_note_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(0, 128, size=rng.integers(1, 30))
        out, transpose, folded = fold_pitches(p, 48, 72)
        assert transpose % 12 == 0
        assert out.min() >= 48 and out.max() <= 72
        np.testing.assert_array_equal(out % 12, p % 12)
        assert folded == int(np.sum(out != p + transpose))


def test_selected_clips_record_their_folding():
    high = track([(s, s + 0.5, 90 + (n % 3) * 7, 80) for n, s in enumerate(np.arange(0, 8, 0.5))])
    midi = parsed(high)
    (spec,) = select_clips(midi, "x.mid", MD5, ALL, 0)
    notes = clip_notes(midi, spec, ALL)
    assert spec.transpose == -36 and spec.folded == 0
    np.testing.assert_array_equal(notes.pitches, high.pitch - 36)


# --- velocity modulation --------------------------------------------------------------


def test_modulation_stays_within_depth_and_one_with_period_one_over_f():
    f, phi, d = 0.37, 1.1, 0.3
    t = np.linspace(0, 20, 20001)
    m = modulation(t, f, phi, d)
    assert m.min() >= d - 1e-12 and m.max() <= 1 + 1e-12
    assert m.min() == pytest.approx(d, abs=1e-5) and m.max() == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(modulation(t + 1 / f, f, phi, d), m, atol=1e-9)
    assert modulation(0.0, f, phi, d) == pytest.approx(d + (1 - d) * (0.5 + 0.5 * math.sin(phi)))
    np.testing.assert_array_equal(modulation(t, f, phi, 1.0), 1.0)  # depth 1: no modulation


def test_clip_velocities_follow_the_modulation_at_each_onset():
    base = track([(s, s + 0.5, 60, 127 if n % 2 else 3) for n, s in enumerate(np.arange(0, 8, 0.5))])
    midi = parsed(base)
    (spec,) = select_clips(midi, "x.mid", MD5, dataclasses.replace(ALL, modulation_depth=0.2), 0)
    notes = clip_notes(midi, spec, ALL)
    m = modulation(notes.onsets, spec.mod_freq, spec.mod_phase, spec.mod_depth)
    np.testing.assert_array_equal(notes.velocities, np.clip(np.rint(base.velocity * m), 1, 127))
    assert notes.velocities.min() >= 1 and notes.velocities.max() <= 127


def test_variants_share_the_window_and_draw_f_in_range():
    cfg = dataclasses.replace(ALL, variants=3)
    specs = select_clips(parsed(melody(0, 8)), "x.mid", MD5, cfg, 0)
    assert [s.variant for s in specs] == [0, 1, 2]
    assert len({s.start for s in specs}) == 1 and len({s.clip_id for s in specs}) == 3
    assert len({s.mod_freq for s in specs}) == 3
    for s in specs:
        assert cfg.freq_min_cycles / 8 <= s.mod_freq <= cfg.freq_max_cycles / 8
        assert 0 <= s.mod_phase < 2 * math.pi and s.mod_depth == cfg.modulation_depth


# --- determinism and ids --------------------------------------------------------------


def test_same_seed_same_clips_other_seed_other_modulation(lakh20):
    path, midi = next((p, m) for p, m in lakh20 if len(select_clips(m, str(p), "m", ALL, 0)) >= 3)
    a = select_clips(midi, str(path), md5_file(path), ALL, 7)
    b = select_clips(midi, str(path), md5_file(path), ALL, 7)
    c = select_clips(midi, str(path), md5_file(path), ALL, 8)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [(s.track, s.start) for s in a] == [(s.track, s.start) for s in c]  # windows do not depend on the seed
    assert all(x.mod_freq != y.mod_freq and x.mod_phase != y.mod_phase for x, y in zip(a, c))
    assert not {s.clip_id for s in a} & {s.clip_id for s in c}


def test_capped_choice_is_reproducible(lakh20):
    cfg = SelectConfig(clips_per_source=2)
    for path, midi in lakh20:
        first = select_clips(midi, str(path), path.stem, cfg, 3)
        assert first == select_clips(midi, str(path), path.stem, cfg, 3)
        assert len(first) <= 2


def test_clip_id_is_a_stable_content_hash():
    assert stable_hash(MD5, 2, 1.5, 0, 7) == "67e29d3380dce029"  # changing this breaks resume of old builds
    (spec,) = select_clips(parsed(track([]), melody(1.5, 9.5)), "x.mid", MD5, ALL, 7)
    assert (spec.track, spec.start) == (1, 1.5)
    assert spec.clip_id == stable_hash(MD5, 1, 1.5, 0, 7)
    assert variant_modulation(7, MD5, 1, 1.5, 0, ALL) == (spec.mod_freq, spec.mod_phase)


def test_clip_spec_round_trips_through_json_exactly(lakh20):
    for path, midi in lakh20[:5]:
        for spec in select_clips(midi, str(path), path.stem, SelectConfig(), 0):
            again = ClipSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
            assert again == spec
            assert round(spec.start, 6) == spec.start


def test_clip_notes_refuses_a_spec_that_no_longer_matches():
    midi = parsed(melody(0, 8, overlap=0.03))
    (spec,) = select_clips(midi, "x.mid", MD5, ALL, 0)
    with pytest.raises(InputError, match="no longer match"):
        clip_notes(midi, spec, dataclasses.replace(ALL, pitch_min=0, pitch_max=12))


# --- beats ----------------------------------------------------------------------------


def test_clip_beats_cover_the_clip_with_one_beat_each_side_and_extrapolate():
    midi = parsed(melody(0, 4))  # beats every 0.5 s until 4 s
    beats = clip_beats(midi, 2.2, 8.0)
    assert beats[0] == pytest.approx(-0.2) and beats[1] == pytest.approx(0.3)
    assert beats[-1] > 8.0 and beats[-2] <= 8.0
    np.testing.assert_allclose(np.diff(beats), 0.5)
    on_beat = clip_beats(midi, 2.0, 8.0)
    assert on_beat[0] == pytest.approx(-0.5) and on_beat[1] == 0.0


# --- load_midi over files -------------------------------------------------------------


def test_load_midi_reads_programs_notes_and_exact_beats(tmp_path):
    notes = [(0.0, 0.5, 60, 100), (0.5, 1.25, 64, 90)]
    path = write_midi(tmp_path / "a.mid", [(41, False, notes), (0, True, [(0.0, 0.1, 36, 100)])], tempo=100.0)
    midi = load_midi(path, SelectConfig())
    assert [(t.program, t.is_drum) for t in midi.tracks] == [(41, False), (0, True)]
    np.testing.assert_allclose(midi.tracks[0].start, [0.0, 0.5], atol=1e-3)
    np.testing.assert_array_equal(midi.tracks[0].pitch, [60, 64])
    np.testing.assert_allclose(midi.beats, [0.0, 0.6, 1.2], atol=1e-9)  # 100 BPM, notes end at 1.25 s
    assert midi.end_time == pytest.approx(1.25, abs=1e-3)
    assert pickle.loads(pickle.dumps(midi)).tracks[0].velocity.tolist() == [100, 90]


def test_beats_are_quarter_notes_of_the_tempo_map_whatever_the_time_signature(tmp_path):
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes = [pretty_midi.TimeSignature(6, 8, 0.0), pretty_midi.TimeSignature(2, 2, 3.0)]
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(90, 60, 0.0, 4.0)]
    pm.instruments.append(inst)
    pm.write(str(tmp_path / "m.mid"))
    midi = load_midi(tmp_path / "m.mid", SelectConfig())
    np.testing.assert_allclose(midi.beats, np.arange(0.0, 4.01, 0.5), atol=1e-9)  # get_beats: 0.75 s, then 1 s apart
    assert midi.final_tempo == pytest.approx(120.0)
    assert [midi.time_signature_at(t) for t in (0.0, 2.9, 3.0, 10.0)] == ["6/8", "6/8", "2/2", "2/2"]
    assert parsed(melody(0, 4)).time_signature_at(1.0) == "4/4"  # MIDI's default when the file has none


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pretty_midi on tempo events outside track 0
def test_quarter_beats_are_the_quarter_note_ticks_of_real_files_with_tempo_changes():
    checked = 0
    for path in LAKH:
        try:
            pm = pretty_midi.PrettyMIDI(str(path))
        except Exception:
            continue  # the files pretty_midi rejects (see below)
        times, qpm = pm.get_tempo_changes()
        if len(times) < 2:
            continue
        beats = quarter_beats(times, qpm, pm.get_end_time())
        ticks = [pm.tick_to_time(n * pm.resolution) for n in range(len(beats))]
        np.testing.assert_allclose(beats, ticks, atol=1e-6, err_msg=path.name)
        assert beats[-1] <= pm.get_end_time() + 1e-9 < beats[-1] + 60.0 / qpm[-1]  # up to the end, no further
        checked += 1
    assert checked >= 5


def test_a_written_legato_file_goes_through_selection(tmp_path):
    notes = [(s, s + 0.53, 60 + n % 7, 80) for n, s in enumerate(np.arange(0, 16, 0.5))]
    path = write_midi(tmp_path / "legato.mid", [(56, False, notes)])
    midi = load_midi(path, SelectConfig())
    specs = select_clips(midi, str(path), md5_file(path), ALL, 0)
    assert [(s.instrument, s.start, s.n_notes) for s in specs] == [("trumpet", 0.0, 16), ("trumpet", 8.0, 16)]


def test_md5_file_is_the_content_md5():
    path = LAKH[0]
    assert md5_file(path) == hashlib.md5(path.read_bytes()).hexdigest() == path.stem


def test_every_edge_case_file_gives_clips_or_a_one_line_input_error():
    assert len(EDGE) == 60
    reasons = {}
    for path in EDGE:
        try:
            midi = load_midi(path, SelectConfig())
            for spec in select_clips(midi, str(path), md5_file(path), SelectConfig(), 0):
                clip_notes(midi, spec, SelectConfig())
        except InputError as e:
            reasons[path.name] = str(e)
    assert reasons, "some edge cases must be rejected"
    for name, reason in reasons.items():
        assert "\n" not in reason and 0 < len(reason) <= 200, (name, reason)
        assert "Traceback" not in reason
    assert reasons["jazzsoft__test-not-a-midi-file.mid"] == "not a MIDI file (bad header)"
    assert reasons["jazzsoft__test-empty-file.mid"] == "empty file"
    assert reasons["muspy__zero-ticks-per-beat.mid"] == "zero ticks per beat"
    assert reasons["muspy__empty.mid"] == "no notes"
    assert reasons["jazzsoft__test-corrupt-file-missing-byte.mid"].startswith("corrupt:")


def test_the_nine_lakh_files_pretty_midi_rejects_are_input_errors():
    lakh = [p for p in EDGE if re.fullmatch(r"[0-9a-f]{32}", p.stem)]
    assert len(lakh) == 9
    for path in lakh:
        with pytest.raises(InputError, match=r"^corrupt: "):
            load_midi(path, SelectConfig())


def test_files_over_max_file_mb_are_rejected_unread():
    with pytest.raises(InputError, match="file too large"):
        load_midi(LAKH[0], SelectConfig(max_file_mb=0.001))


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_midi(tmp_path / "nope.mid", SelectConfig())


def test_a_parse_that_runs_too_long_is_killed_and_the_next_file_still_parses(tmp_path):
    slow = write_slow_midi(tmp_path / "slow.mid")
    with pytest.raises(InputError, match=r"^parse timed out after 1 s$"):
        load_midi(slow, SelectConfig(parse_timeout=1.0))
    assert load_midi(LAKH[0], SelectConfig()).tracks


def test_a_parse_over_the_memory_cap_is_an_input_error(tmp_path):
    big = write_far_note(tmp_path / "big.mid", resolution=480, tick=9_000_000)  # ~3 arrays of 9e6 floats
    with pytest.raises(InputError, match="memory cap"):
        load_midi(big, SelectConfig(parse_memory_mb=256))
    assert load_midi(big, SelectConfig()).end_time > 9000  # fine under the default cap
    assert load_midi(LAKH[0], SelectConfig()).tracks


def test_load_midi_is_safe_from_several_threads():
    files = LAKH[:8]
    alone = [load_midi(p, SelectConfig()) for p in files]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: load_midi(p, SelectConfig()), files))
    for a, b in zip(alone, together):
        assert len(a.tracks) == len(b.tracks)
        np.testing.assert_array_equal(a.beats, b.beats)


def test_lakh_sample_yields_clips_of_every_family(lakh20):
    counts: Counter[str] = Counter()
    for path, midi in lakh20:
        for spec in select_clips(midi, str(path), path.stem, SelectConfig(), 0):
            counts[spec.instrument] += 1
            notes = clip_notes(midi, spec, SelectConfig())
            assert len(notes) == spec.n_notes >= 4 and spec.voiced >= 0.4
            assert notes.pitches.min() >= 48 and notes.pitches.max() <= 72
            assert np.all(notes.onsets[1:] >= notes.offsets[:-1]) and notes.offsets[-1] <= 8.0
            assert notes.beats[0] <= 0 and notes.beats[-1] >= 8.0
    # Measured at defaults on these 20 files: piano 49, violin 24, trumpet 23.
    assert counts["piano"] >= 30 and counts["violin"] >= 12 and counts["trumpet"] >= 12, counts

