"""Tests of pvtbuild.music.controls: exact frame values of every control on hand-built clips, the
tempo controls of MIDI files written here (one BPM whatever the time signature), and sanity over
clips selected from real Lakh files."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pytest

from paths import LAKH
from pvtbuild.clip import ClipNotes
from pvtbuild.config import GridConfig, PipelineConfig, SelectConfig
from pvtbuild.music.controls import CONTROL_NAMES, compute_controls, frame_times
from pvtbuild.music.midi import clip_notes, load_midi, md5_file, select_clips

G75 = GridConfig("75hz", 75.0, 600, "encodec", 0.5)  # as PipelineConfig derives them for 8 s at 24 kHz
G240 = GridConfig("240hz", 240.0, 1921, "cqt", 0.0)
BPM_MAX = 300.0


def clip(notes: list[tuple[float, float, int, int]], beats: np.ndarray | None = None,
         duration: float = 8.0) -> ClipNotes:
    """ClipNotes from (onset, offset, pitch, velocity); beats default to 120 BPM from -0.25 s."""
    a = np.array(notes, dtype=np.float64).reshape(-1, 4)
    if beats is None:
        beats = np.arange(-0.25, duration + 0.5, 0.5)
    return ClipNotes(a[:, 0], a[:, 1], a[:, 2].astype(np.int16), a[:, 3].astype(np.int16), beats, duration)


NOTES = clip([(0.0, 1.0, 60, 100), (1.0, 1.5, 67, 64), (2.0, 8.0, 71, 127)])


def test_controls_have_the_contract_names_shapes_and_dtype():
    assert CONTROL_NAMES == ("velocity", "chroma", "pitch", "voiced", "instrument", "beat", "bpm")
    for grid, frames in ((G75, 600), (G240, 1921)):
        c = compute_controls(NOTES, 1, 3, grid, BPM_MAX)
        assert tuple(c) == CONTROL_NAMES
        for name, value in c.items():
            assert value.dtype == np.float32
            assert value.shape == ((3, frames) if name == "instrument" else (frames,)), name
            assert np.isfinite(value).all() and value.min() >= 0 and value.max() <= 1


def test_note_controls_take_the_note_sounding_at_each_frame_centre():
    c = compute_controls(NOTES, 0, 3, G75, BPM_MAX)
    # frame k's centre is (k + 0.5)/75: frame 74 ends note 0, frame 75 starts note 1
    for k, (vel, pitch) in {0: (100, 60), 74: (100, 60), 75: (64, 67), 111: (64, 67),
                            150: (127, 71), 599: (127, 71)}.items():
        assert c["velocity"][k] == np.float32(vel / 127), k
        assert c["pitch"][k] == np.float32(pitch / 127), k
        assert c["chroma"][k] == np.float32((pitch % 12) / 11), k
        assert c["voiced"][k] == 1.0, k
    for k in (112, 149):  # the gap 1.5..2.0 s (frame 112's centre is exactly 1.5: the offset)
        assert c["velocity"][k] == c["pitch"][k] == c["chroma"][k] == c["voiced"][k] == 0.0, k
    assert c["chroma"][0] == 0.0 and c["voiced"][0] == 1.0  # C is chroma 0, told apart by voiced
    assert c["voiced"].sum() == 75 + 37 + 450


def test_a_note_sounds_from_its_onset_up_to_but_excluding_its_offset():
    t = frame_times(G240)
    c = compute_controls(clip([(t[5], t[10], 62, 90)]), 0, 3, G240, BPM_MAX)
    assert np.flatnonzero(c["voiced"]).tolist() == [5, 6, 7, 8, 9]


def test_a_note_shorter_than_a_frame_between_centres_is_not_seen():
    c = compute_controls(clip([(0.001, 0.005, 62, 90)]), 0, 3, G75, BPM_MAX)  # centres at 0.0067, 0.02
    assert c["voiced"].sum() == 0


def test_silence_gives_zero_note_controls():
    c = compute_controls(clip([]), 2, 3, G75, BPM_MAX)
    for name in ("velocity", "chroma", "pitch", "voiced"):
        assert not c[name].any(), name
    assert c["instrument"][2].all()


def test_instrument_is_a_one_hot_row_on_every_frame():
    c = compute_controls(NOTES, 1, 3, G240, BPM_MAX)
    np.testing.assert_array_equal(c["instrument"].sum(axis=0), 1.0)
    assert c["instrument"][1].all() and not c["instrument"][[0, 2]].any()
    with pytest.raises(ValueError):
        compute_controls(NOTES, 3, 3, G240, BPM_MAX)


def test_beat_is_a_sawtooth_rising_from_0_to_1_and_resetting_on_beats():
    c = compute_controls(NOTES, 0, 3, G240, BPM_MAX)  # beats at -0.25 + 0.5 n
    t = frame_times(G240)
    np.testing.assert_allclose(c["beat"], ((t + 0.25) % 0.5) / 0.5, atol=1e-5)
    assert c["beat"].min() >= 0 and c["beat"].max() < 1
    step = np.diff(c["beat"])
    resets = np.flatnonzero(step < 0) + 1  # first frame of each new beat
    np.testing.assert_array_equal(resets, np.ceil((0.25 + 0.5 * np.arange(len(resets))) * 240 - 0.5))
    assert np.all(step[step > 0] == pytest.approx(1 / 120, abs=1e-5))  # rises one frame's share of a beat
    assert len(resets) == 16


def test_bpm_is_the_local_tempo_over_bpm_max():
    c = compute_controls(NOTES, 0, 3, G75, BPM_MAX)
    np.testing.assert_allclose(c["bpm"], 120 / BPM_MAX, rtol=1e-6)
    # 120 BPM until 4 s, then 240 BPM
    beats = np.concatenate([np.arange(0.0, 4.0, 0.5), np.arange(4.0, 8.6, 0.25)])
    c = compute_controls(clip([], beats=beats), 0, 3, G75, BPM_MAX)
    t = frame_times(G75)
    np.testing.assert_allclose(c["bpm"][t < 4], 120 / BPM_MAX, rtol=1e-6)
    np.testing.assert_allclose(c["bpm"][t > 4], 240 / BPM_MAX, rtol=1e-6)
    fast = compute_controls(clip([], beats=np.arange(0, 9, 0.05)), 0, 3, G75, BPM_MAX)
    np.testing.assert_array_equal(fast["bpm"], 1.0)  # 1200 BPM is clipped


def test_frames_after_the_last_beat_keep_the_last_tempo():
    c = compute_controls(clip([], beats=np.array([0.0, 0.5, 1.0])), 0, 3, G75, BPM_MAX)
    np.testing.assert_allclose(c["bpm"], 120 / BPM_MAX, rtol=1e-6)
    assert c["beat"].max() < 1 and c["beat"][-1] == pytest.approx(((599.5 / 75) % 0.5) / 0.5, abs=1e-5)


def test_without_beats_beat_and_bpm_are_zero():
    c = compute_controls(clip([(0, 1, 60, 90)], beats=np.array([0.0])), 0, 3, G75, BPM_MAX)
    assert not c["beat"].any() and not c["bpm"].any()


def test_controls_of_real_clips_agree_with_their_selection():
    paths = sorted(LAKH.glob("*.mid"))[:6]
    cfg = SelectConfig()
    n = 0
    for path in paths:
        midi = load_midi(path, cfg)
        for spec in select_clips(midi, str(path), path.stem, cfg, 0):
            notes = clip_notes(midi, spec, cfg)
            c = compute_controls(notes, [i.name for i in cfg.instruments].index(spec.instrument), 3, G75, 300.0)
            assert abs(c["voiced"].mean() - spec.voiced) < 0.05
            assert np.all(c["beat"] >= 0) and np.all(c["beat"] < 1)
            assert 0 < c["bpm"].min() and c["bpm"].max() <= 1
            voiced = c["voiced"] == 1
            assert np.all((c["pitch"][voiced] * 127).round() >= 48) and np.all((c["pitch"][voiced] * 127).round() <= 72)
            n += 1
    assert n >= 5


# --- one BPM: quarter notes per minute, from real MIDI files ------------------------------------

PPQ = 480


def write_tempo_file(path: Path, signature: tuple[int, int], tempi: list[tuple[int, float]],
                     quarters: int, signatures: tuple[tuple[int, int, int], ...] = ()) -> Path:
    """A real MIDI file: a piano melody of one note per quarter note for `quarters` quarter notes.

    `tempi` are (quarter note index, quarter notes per minute) set_tempo events; `signature` is
    the time signature at tick 0, `signatures` further (quarter index, numerator, denominator).
    """
    meta = [(0, mido.MetaMessage("time_signature", numerator=signature[0], denominator=signature[1]))]
    meta += [(int(q * PPQ), mido.MetaMessage("time_signature", numerator=n, denominator=d)) for q, n, d in signatures]
    meta += [(q * PPQ, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(qpm))) for q, qpm in tempi]
    notes = [(0, mido.Message("program_change", program=0, channel=0))]
    for q in range(quarters):
        notes += [(q * PPQ, mido.Message("note_on", note=60 + q % 5, velocity=90, channel=0)),
                  (q * PPQ + PPQ - 20, mido.Message("note_off", note=60 + q % 5, velocity=0, channel=0))]
    midi = mido.MidiFile(ticks_per_beat=PPQ)
    for events in (meta, notes):
        track, now = mido.MidiTrack(), 0
        for tick, msg in sorted(events, key=lambda e: e[0]):  # stable: note_off before the next note_on
            track.append(msg.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    midi.save(str(path))
    return path


def tempo_controls(path: Path) -> tuple[str, dict[str, np.ndarray], np.ndarray]:
    """The first clip's time signature and controls on the 75 Hz grid, and the grid's times,
    through the code path the pipeline takes (load_midi, select_clips, clip_notes, compute_controls)."""
    cfg = PipelineConfig()
    midi = load_midi(path, cfg.select)
    spec = select_clips(midi, str(path), md5_file(path), cfg.select, 0)[0]
    assert spec.start == 0.0
    grid = cfg.controls.grid("75hz")
    controls = compute_controls(clip_notes(midi, spec, cfg.select), 0, 3, grid, BPM_MAX)
    return spec.time_signature, controls, frame_times(grid)


@pytest.mark.parametrize("signature", [(4, 4), (6, 8), (2, 2), (3, 4), (12, 8)])
def test_bpm_and_beat_count_quarter_notes_whatever_the_time_signature(tmp_path, signature):
    # 120 quarter notes per minute; the melody stops after 5 s, so the last 3 s of the clip
    # run on the beats continued past the file's end: they keep the same tempo
    path = write_tempo_file(tmp_path / "m.mid", signature, [(0, 120.0)], quarters=10)
    time_signature, c, t = tempo_controls(path)
    assert time_signature == f"{signature[0]}/{signature[1]}"
    np.testing.assert_allclose(c["bpm"] * BPM_MAX, 120.0, rtol=1e-5)
    np.testing.assert_allclose(c["beat"], (t % 0.5) / 0.5, atol=1e-5)  # one tooth per quarter note


def test_a_tempo_change_changes_bpm_and_the_beat_length_at_the_change(tmp_path):
    # 120 quarter notes per minute for 8 quarters (4 s), then 90: a quarter note lasts 2/3 s
    path = write_tempo_file(tmp_path / "m.mid", (6, 8), [(0, 120.0), (8, 90.0)], quarters=16)
    _, c, t = tempo_controls(path)
    before, after = t < 4.0, t > 4.0
    np.testing.assert_allclose(c["bpm"][before] * BPM_MAX, 120.0, rtol=1e-5)
    np.testing.assert_allclose(c["bpm"][after] * BPM_MAX, 90.0, rtol=1e-5)
    np.testing.assert_allclose(c["beat"][before], (t[before] % 0.5) / 0.5, atol=1e-5)
    np.testing.assert_allclose(c["beat"][after], ((t[after] - 4.0) % (2 / 3)) / (2 / 3), atol=1e-5)


def test_an_odd_bar_changes_neither_the_quarter_note_beat_nor_bpm(tmp_path):
    # one bar of 7/8 (3.5 quarter notes), then 4/4: quarter notes go on being counted from the start
    path = write_tempo_file(tmp_path / "m.mid", (7, 8), [(0, 120.0)], quarters=16, signatures=((3.5, 4, 4),))
    time_signature, c, t = tempo_controls(path)
    assert time_signature == "7/8"  # in force at the clip start
    np.testing.assert_allclose(c["bpm"] * BPM_MAX, 120.0, rtol=1e-5)
    np.testing.assert_allclose(c["beat"], (t % 0.5) / 0.5, atol=1e-5)


def test_a_grid_built_by_hand_without_a_config_has_no_sampling_times():
    with pytest.raises(ValueError, match="no derived rate"):
        frame_times(GridConfig("75hz", serves="encodec"))
