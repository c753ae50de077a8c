"""analysis: the batched analysis is the per-clip one, clip by clip (synthetic harmonic tones, no SoundFont)."""

from __future__ import annotations

import numpy as np

from pvtbuild.analysis import analyse, analyse_batch

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
