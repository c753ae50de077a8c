"""analysis: the batched analysis is the per-clip one, clip by clip (synthetic harmonic tones, no SoundFont)."""

from __future__ import annotations

import numpy as np

from pvtbuild.music.analysis import (
    TIMBRE_HARMONICS,
    Tolerances,
    adherence,
    adherence_batch,
    analyse,
    analyse_batch,
    note_segments,
    timbre_distances,
    timbre_distances_batch,
)

SR, RATE, FRAMES = 24000, 75.0, 150  # 2 s clips on the 75 Hz grid


def tone(midi: float, seconds: float = 2.0, start: float = 0.5) -> np.ndarray:
    """A harmonic tone (8 harmonics, 1/h amplitudes) from `start` to the end, silence before."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 9)) * 0.2
    return np.where(t >= start, x, 0.0).astype(np.float32)


def test_analyse_batch_gives_each_clip_what_analyse_gives_it_alone():
    clips = np.stack([tone(48), tone(64.0), tone(71, start=1.0)])
    expected = np.full((3, FRAMES), np.nan)
    expected[1] = 64
    batch = analyse_batch(clips, SR, RATE, FRAMES, expected_pitch=expected)
    assert len(batch) == 3
    for k, est in enumerate(batch):
        alone = analyse(clips[k], SR, RATE, FRAMES, expected_pitch=expected[k])
        for name in ("voiced", "pitch", "loudness", "onsets", "harmonicity", "times", "harmonics"):
            np.testing.assert_array_equal(getattr(est, name), getattr(alone, name), err_msg=f"clip {k}: {name}")


def test_analyse_names_the_pitch_and_onset_of_a_harmonic_tone():
    est = analyse(tone(57), SR, RATE, FRAMES)
    held = est.times > 0.6
    assert est.voiced[held].all() and not est.voiced[est.times < 0.45].any()
    assert np.all(np.abs(est.pitch[held] - 57) < 0.5)
    assert len(est.onsets) == 1 and abs(est.onsets[0] - 0.5) < 0.03


def _labels(midi: float, start: float, stop: float = 2.0) -> dict[str, np.ndarray]:
    """Controls of one note held from `start` to `stop` on the test grid (as stored: pitch MIDI/127, chroma pc/11)."""
    t = (np.arange(FRAMES) + 0.5) / RATE
    held = (t >= start) & (t < stop)
    return {"voiced": held.astype(np.float32), "pitch": np.where(held, midi / 127, 0).astype(np.float32),
            "chroma": np.where(held, (midi % 12) / 11, 0).astype(np.float32),
            "velocity": np.where(held, 0.7, 0).astype(np.float32)}


def test_adherence_batch_gives_each_clip_what_adherence_gives_it_alone():
    # clips of different notes (one note missing from its audio) scored together: the per-note scores
    # (notes, missing notes, onsets) of each clip are its own
    clips = np.stack([tone(48), tone(64.0, start=1.0), np.zeros(2 * SR, np.float32)])
    labels = [_labels(48, 0.5), _labels(64, 1.0, 1.6), _labels(71, 0.5)]
    ests = analyse_batch(clips, SR, RATE, FRAMES)
    batch = adherence_batch(ests, {k: np.stack([c[k] for c in labels]) for k in labels[0]}, [Tolerances()] * 3)
    assert [b["notes"] for b in batch] == [1.0, 1.0, 1.0] and batch[2]["missing_notes"] == 1.0
    for k, est in enumerate(ests):
        alone = adherence(est, labels[k])
        assert batch[k].keys() == alone.keys()
        for name, v in alone.items():
            assert v == batch[k][name] or (np.isnan(v) and np.isnan(batch[k][name])), f"clip {k}: {name}"


def test_note_segments_are_the_held_runs_of_one_pitch():
    voiced = np.array([0, 1, 1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
    pitch = np.array([0, 60, 60, 62, 62, 0, 62, 62, 0, 50])
    assert note_segments(voiced, pitch).tolist() == [[1, 3], [3, 5], [6, 8], [9, 10]]
    assert note_segments(voiced, None).tolist() == [[1, 5], [6, 8], [9, 10]]
    assert note_segments(np.zeros(0, dtype=bool), None).shape == (0, 2)


def test_timbre_distances_batch_gives_each_clip_what_it_gives_it_alone():
    # the middle clip is silent (no frame): the clips after it must still get their own frames
    clips = np.stack([tone(48), np.zeros(2 * SR, np.float32), tone(60, start=1.0), tone(55)])
    ests = analyse_batch(clips, SR, RATE, FRAMES)
    rng = np.random.default_rng(0)
    refs = {name: (np.arange(40.0, 80.0), rng.normal(size=(40, TIMBRE_HARMONICS)).astype(np.float32))
            for name in ("a", "b", "c")}
    frames = [est.times > 0.3 for est in ests]
    batch = timbre_distances_batch(ests, refs, frames)
    assert all(np.isnan(v) for v in batch[1].values())
    assert all(np.isfinite(v) for k in (0, 2, 3) for v in batch[k].values())
    assert batch[0] != batch[2] != batch[3]
    for k, est in enumerate(ests):
        alone = timbre_distances(est, refs, frames[k])
        for name in refs:
            np.testing.assert_allclose(batch[k][name], alone[name], rtol=1e-6, err_msg=f"clip {k}: {name}")
