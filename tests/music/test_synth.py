"""FluidSynth rendering with real SoundFonts (GeneralUser GS when fetched, else FluidR3_GM); no mocks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pvtbuild.clip import ClipNotes
from pvtbuild.config import RenderConfig
from pvtbuild.errors import InputError
from pvtbuild.music.synth import BLOCK, release_synth, render_notes

REPO = Path(__file__).resolve().parents[2]
GENERALUSER = REPO / "soundfonts" / "GeneralUser-GS-v1.471.sf2"
FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
MUSESCORE_SF3 = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")
SR = 24000
PIANO, VIOLIN, TRUMPET = 0, 40, 56


@pytest.fixture(scope="module")
def soundfont() -> Path:
    for path in (GENERALUSER, FLUIDR3):
        if path.is_file():
            return path
    pytest.skip("no SoundFont: run `make setup` or install fluid-soundfont-gm")


@pytest.fixture(scope="module")
def cfg() -> RenderConfig:
    return RenderConfig()


def notes(*spec: tuple[float, float, int, int], duration: float = 4.0) -> ClipNotes:
    """ClipNotes from (onset s, offset s, pitch, velocity) tuples."""
    on, off, pitch, vel = zip(*spec) if spec else ((), (), (), ())
    return ClipNotes(
        onsets=np.array(on, dtype=np.float64), offsets=np.array(off, dtype=np.float64),
        pitches=np.array(pitch, dtype=np.int16), velocities=np.array(vel, dtype=np.int16),
        beats=np.arange(0.0, duration + 0.5, 0.5), duration=duration,
    )


def melody(seed: int, duration: float = 8.0) -> ClipNotes:
    rng = np.random.default_rng(seed)
    onsets = np.arange(0.0, duration - 0.5, 0.25)
    return notes(*zip(onsets, onsets + 0.2, rng.integers(48, 73, len(onsets)), rng.integers(30, 128, len(onsets))),
                 duration=duration)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


@pytest.mark.parametrize("n_samples", [192000, 24001, 63, 0])
def test_output_is_float32_mono_of_exactly_n_samples(soundfont, cfg, n_samples):
    audio, n_clipped = render_notes(melody(0), PIANO, soundfont, cfg, n_samples)
    assert audio.dtype == np.float32 and audio.shape == (n_samples,)
    assert np.isfinite(audio).all()
    assert n_clipped == 0


def test_silent_before_first_note_on_and_after_release_sounding_during_notes(soundfont, cfg):
    audio, _ = render_notes(notes((1.0, 2.0, 60, 100), (2.0, 2.5, 64, 100)), VIOLIN, soundfont, cfg, 4 * SR)
    before, during, after = audio[: SR - BLOCK], audio[SR + 2400 : int(2.5 * SR)], audio[int(3.6 * SR) :]
    assert not before.any()  # exactly zero: nothing sounds before the first note-on
    assert rms(during) > 0.01
    assert rms(after) < 1e-4 * rms(during)


def test_note_on_lands_on_the_nearest_64_sample_block_boundary(soundfont, cfg):
    # FluidSynth applies events at block boundaries only: 0.5 s = sample 12000 -> boundary 12032 (|error| <= 32).
    for onset, boundary in ((0.5, 12032), (0.5 + 20 / SR, 12032), (0.5 - 20 / SR, 11968)):
        audio, _ = render_notes(notes((onset, onset + 0.5, 60, 100)), TRUMPET, soundfont, cfg, SR)
        first = int(np.flatnonzero(audio)[0])
        assert boundary <= first <= boundary + 2, (onset, first)


def test_higher_velocity_is_louder(soundfont, cfg):
    # measured RMS ratio vel 110 / vel 40: ~5.0-5.4 with GeneralUser GS, ~7.6-8.8 with FluidR3_GM
    for program in (PIANO, VIOLIN, TRUMPET):
        soft, _ = render_notes(notes((0.5, 1.5, 60, 40)), program, soundfont, cfg, 2 * SR)
        loud, _ = render_notes(notes((0.5, 1.5, 60, 110)), program, soundfont, cfg, 2 * SR)
        window = slice(SR // 2, int(1.5 * SR))
        assert rms(loud[window]) > 2.5 * rms(soft[window]), program


def test_same_clip_renders_byte_identical(soundfont, cfg):
    a, _ = render_notes(melody(1), VIOLIN, soundfont, cfg, 8 * SR)
    b, _ = render_notes(melody(1), VIOLIN, soundfont, cfg, 8 * SR)
    assert a.tobytes() == b.tobytes()


_FRESH_PROCESS = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_synth import melody
    from pvtbuild.config import RenderConfig
    from pvtbuild.music.synth import render_notes
    for fx in (False, True):
        audio, _ = render_notes(melody(2), {program}, Path({soundfont!r}), RenderConfig(reverb=fx, chorus=fx), {n})
        np.save({out!r} + f"-{{int(fx)}}.npy", audio)
""")


def test_clip_does_not_depend_on_clips_rendered_before_it(soundfont, cfg, tmp_path):
    # B after A (a long loud note cut mid-release, another program, an odd length) vs B in a fresh process,
    # with reverb and chorus off and on: FluidSynth state must not leak from one clip into the next.
    n = 8 * SR
    out = str(tmp_path / "b")
    code = _FRESH_PROCESS.format(tests=str(Path(__file__).parent), program=VIOLIN, soundfont=str(soundfont), n=n,
                                 out=out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    for fx in (False, True):
        c = replace(cfg, reverb=fx, chorus=fx)
        render_notes(notes((0.0, 7.99, 60, 127), (7.9, 8.0, 72, 127), duration=8.0), PIANO, soundfont, c, n - 17)
        render_notes(melody(3), TRUMPET, soundfont, c, n)
        b, _ = render_notes(melody(2), VIOLIN, soundfont, c, n)
        assert b.tobytes() == np.load(f"{out}-{int(fx)}.npy").tobytes(), f"reverb/chorus {fx}"


def test_program_changes_the_spectrum(soundfont, cfg):
    spectra, centroids = {}, {}
    for program in (PIANO, TRUMPET):
        audio, _ = render_notes(notes((0.5, 1.5, 60, 100)), program, soundfont, cfg, 2 * SR)
        window = audio[int(0.6 * SR) : int(1.5 * SR)]
        mag = np.abs(np.fft.rfft(window * np.hanning(len(window))))
        freqs = np.fft.rfftfreq(len(window), 1 / SR)
        spectra[program] = mag / np.linalg.norm(mag)
        centroids[program] = float((freqs * mag).sum() / mag.sum())
    # measured: cosine similarity 0.28 (GeneralUser GS) / 0.38 (FluidR3); centroid 830 vs 2290 Hz
    assert float(spectra[PIANO] @ spectra[TRUMPET]) < 0.7
    assert centroids[TRUMPET] > 1.5 * centroids[PIANO]


def test_samples_beyond_clip_limit_are_counted_and_clipped(soundfont, cfg):
    loose, n_loose = render_notes(melody(4), TRUMPET, soundfont, cfg, 4 * SR)
    limit = float(np.abs(loose).max()) / 2
    tight, n_tight = render_notes(melody(4), TRUMPET, soundfont, replace(cfg, clip_limit=limit), 4 * SR)
    assert n_loose == 0
    assert n_tight == int(np.count_nonzero(np.abs(loose) > np.float32(limit))) > 0
    assert float(np.abs(tight).max()) == pytest.approx(limit)
    inside = np.abs(loose) <= np.float32(limit)
    assert np.array_equal(tight[inside], loose[inside])


def test_gain_is_fixed_not_normalised(soundfont, cfg):
    quiet, _ = render_notes(melody(5, 2.0), PIANO, soundfont, replace(cfg, gain=0.25), 2 * SR)
    loud, _ = render_notes(melody(5, 2.0), PIANO, soundfont, replace(cfg, gain=0.5), 2 * SR)
    assert rms(loud) == pytest.approx(2 * rms(quiet), rel=1e-3)


def test_sf3_soundfont_renders():
    if not MUSESCORE_SF3.is_file():
        pytest.skip("musescore-general-soundfont-small not installed")
    audio, _ = render_notes(notes((0.25, 0.75, 67, 100)), TRUMPET, MUSESCORE_SF3, RenderConfig(), SR)
    assert rms(audio[int(0.3 * SR) : int(0.75 * SR)]) > 0.01
    release_synth()  # free the 40 MB of decoded samples


def test_threads_share_the_synth_without_changing_results(soundfont, cfg):
    expected = [render_notes(melody(10 + i), VIOLIN, soundfont, cfg, 2 * SR)[0] for i in range(4)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = render_notes(melody(10 + i), VIOLIN, soundfont, cfg, 2 * SR)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i].tobytes() == expected[i].tobytes() for i in range(4))


@pytest.mark.parametrize("content", [b"RIFF\x00\x00\x00\x00junk" * 10, b"RIFF\x00\x00\x00\x00sfbkLIST" + bytes(64)])
def test_unloadable_soundfont_is_an_input_error_naming_the_file(tmp_path, cfg, content):
    bad = tmp_path / "broken.sf2"
    bad.write_bytes(content)
    with pytest.raises(InputError) as err:
        render_notes(notes((0.0, 0.5, 60, 100)), PIANO, bad, cfg, SR)
    assert "broken.sf2" in str(err.value) and "\n" not in str(err.value)


def test_invalid_notes_are_rejected(soundfont, cfg):
    with pytest.raises(ValueError):
        render_notes(notes((0.0, 0.5, 60, 0)), PIANO, soundfont, cfg, SR)
    with pytest.raises(ValueError):
        render_notes(notes((0.0, 0.5, 60, 100)), 128, soundfont, cfg, SR)


def test_a_clip_that_would_need_voices_stolen_is_refused_not_silently_cut(soundfont, cfg):
    cluster = notes(*[(0.0, 1.0, p, 100) for p in range(30, 100)])  # 70 notes at once: > 64 voices
    with pytest.raises(InputError, match="voices sounding at once"):
        render_notes(cluster, PIANO, soundfont, cfg, SR)
    render_notes(notes(*[(0.0, 1.0, p, 100) for p in range(60, 64)]), PIANO, soundfont, cfg, SR)  # a chord is fine


def test_the_voice_limit_is_render_voices_from_the_config(soundfont, cfg):
    chord = notes(*[(0.0, 1.0, p, 100) for p in range(60, 66)])  # 6 notes at once
    with pytest.raises(InputError, match="4 FluidSynth voices sounding at once, all of render.voices"):
        render_notes(chord, PIANO, soundfont, replace(cfg, voices=4), SR)
    render_notes(chord, PIANO, soundfont, replace(cfg, voices=16), SR)


def test_rendering_into_a_given_row_equals_rendering_into_a_new_array(soundfont, cfg):
    rows = np.full((2, 2 * SR), np.nan, dtype=np.float32)
    audio, _ = render_notes(melody(6, 2.0), VIOLIN, soundfont, cfg, 2 * SR, out=rows[1])
    assert audio is rows[1] or np.shares_memory(audio, rows[1])
    assert np.array_equal(rows[1], render_notes(melody(6, 2.0), VIOLIN, soundfont, cfg, 2 * SR)[0])
    assert np.isnan(rows[0]).all()
