"""`pvtbuild evaluate`: the adherence metrics on real audio before any model, then on a tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train_loop import config, quiet

from paths import LAKH
from pvtbuild.cli import cli
from pvtbuild.config import config_from_dict
from pvtbuild.dataset import read_dataset_json
from pvtbuild.tools.decode import AudioDecoder
from pvtbuild.train.conditioning import ControlRequest, ControlSpace, build_controls
from pvtbuild.train.data import dataset_layout
from pvtbuild.train.evaluate import read_clips, reported_keys, requested_beats, score_clip, tempo_scores, vggish_model
from pvtbuild.train.loop import TrainOptions, train
from pvtbuild.train.vggish import VGGish, load_vggish

SR = 24000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def space(dataset) -> ControlSpace:
    doc = read_dataset_json(dataset)
    pipeline = config_from_dict(doc["config"])
    layout = dataset_layout(config("edm-encodec-tiny").data, dataset)
    return ControlSpace(pipeline, next(g for g in pipeline.controls.grids if g.name == "75hz"), layout)


@pytest.fixture(scope="module")
def clips(dataset, space):
    """Every clip of the train split: its rendered audio and controls (the small build: 4 clips, 3 sources)."""
    found, real_from = read_clips(dataset, space, 16, AudioDecoder.for_dataset(dataset), split="train")
    assert real_from == "stored audio" and len(found) >= 3
    return found


def _mean(scores: list[dict], key: str) -> float:
    return float(np.nanmean([s[key] for s in scores]))


def _score(audio, controls, space) -> dict:
    return score_clip(audio, SR, controls, space.grid, space.pipeline.controls.bpm_max)


def test_the_datasets_own_audio_obeys_its_controls_and_shuffled_controls_collapse(clips, space):
    own = [_score(c.audio, c.controls, space) for c in clips]
    shuffled = [_score(c.audio, clips[(i + 1) % len(clips)].controls, space) for i, c in enumerate(clips)]
    assert _mean(own, "searched_chroma_accuracy") >= 0.95, [s["searched_chroma_accuracy"] for s in own]
    assert _mean(own, "searched_voiced_agreement") >= 0.9
    assert _mean(own, "loudness_velocity_spearman") >= 0.4, [s["loudness_velocity_spearman"] for s in own]
    assert _mean(shuffled, "searched_chroma_accuracy") <= 0.4, [s["searched_chroma_accuracy"] for s in shuffled]
    assert _mean(shuffled, "loudness_velocity_spearman") <= 0.2


def test_a_clip_transposed_by_a_semitone_scores_near_zero_chroma_accuracy(clips, space):
    import librosa  # noqa: PLC0415  (librosa takes seconds to import; this test alone needs it here)

    c = clips[0]
    up = librosa.effects.pitch_shift(c.audio, sr=SR, n_steps=1)
    assert _score(c.audio, c.controls, space)["searched_chroma_accuracy"] >= 0.95
    assert _score(up, c.controls, space)["searched_chroma_accuracy"] <= 0.1


def test_a_click_track_at_the_requested_tempo_scores_its_tempo_and_beats(space):
    controls = build_controls(ControlRequest(bpm=120), space).values
    times = (np.arange(space.grid.frames) + space.grid.offset) / space.grid.rate
    beats = requested_beats(controls["beat"], controls["bpm"], times, space.pipeline.controls.bpm_max, 8.0)
    np.testing.assert_allclose(beats, np.arange(0, 8.0, 0.5), atol=1e-3)
    clicks = np.zeros(8 * SR, dtype=np.float32)
    for t in beats:
        k = int(t * SR)
        clicks[k:k + 240] += np.sin(2 * np.pi * 1000 * np.arange(240) / SR) * np.hanning(240)
    on_time = tempo_scores(clicks, SR, controls["beat"], controls["bpm"], times, space.pipeline.controls.bpm_max)
    assert on_time["tempo_error"] < 0.05 and on_time["beat_f_measure"] >= 0.9, on_time
    slow = build_controls(ControlRequest(bpm=75), space).values  # the same clicks, asked at 75 BPM
    off = tempo_scores(clicks, SR, slow["beat"], slow["bpm"], times, space.pipeline.controls.bpm_max)
    assert off["tempo_error"] > 0.4 and off["beat_f_measure"] < 0.7, off


def test_vggish_weights_in_torchvggish_layout_embed_each_096s_example_of_each_clip(tmp_path, clips):
    torch.manual_seed(0)
    path = tmp_path / "vggish.pth"
    torch.save(VGGish().state_dict(), path)
    emb = load_vggish(path).embed_frames(np.stack([c.audio for c in clips[:2]]), SR)
    assert emb.shape == (2 * 8, 128) and np.isfinite(emb).all()  # 8 s: 8 examples of 0.96 s per clip, pooled
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="bad.pth: not torchvggish's VGGish weights"):
        load_vggish(tmp_path / "bad.pth")


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-run") / "run"
    train(config("edm-encodec-tiny", data={"batch_size": 2}), TrainOptions(out, dataset, steps=3), echo=quiet)
    return out


def test_a_model_is_graded_only_on_metrics_of_the_controls_it_was_trained_on():
    shipped, left_out = reported_keys(("velocity", "chroma", "instrument"))  # every shipped config's controls
    assert shipped == ["crepe_chroma_accuracy", "crepe_voicing_agreement", "crepe_coverage",
                       "searched_voiced_agreement", "searched_chroma_accuracy", "loudness_velocity_spearman",
                       "fd_encodec", "fd_encodec_inf", "fad_vggish", "fad_vggish_inf"]
    assert {"searched_octave_accuracy", "crepe_pitch_accuracy", "tempo_error", "beat_f_measure"} <= set(left_out)
    tempo, _ = reported_keys(("beat", "bpm"))
    assert "tempo_error" in tempo and "beat_f_measure" in tempo and not any(k.startswith("crepe") for k in tempo)
    pitch, _ = reported_keys(("pitch",))
    assert {"crepe_pitch_accuracy", "searched_octave_accuracy", "crepe_chroma_accuracy"} <= set(pitch)


def test_evaluate_prints_crepe_and_searched_rows_of_trained_controls_and_frame_pooled_frechet_distances(
        run, dataset, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "vggish.pth"  # random weights in torchvggish's layout: the FAD path runs
    torch.save(VGGish().state_dict(), weights)
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(run), "--data", str(dataset), "--n", "2",
                                   "--split", "train", "--cfg-scale", "1,2", "--steps", "2", "--out", str(out),
                                   "--plot", "--vggish", str(weights), "--judge-model", "tiny"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    shipped, left_out = reported_keys(("velocity", "chroma", "instrument"))
    assert metrics["trained_controls"] == ["velocity", "chroma", "instrument"] and metrics["metric_keys"] == shipped
    assert metrics["metrics_left_out"] == left_out and metrics["judges"]["crepe"].startswith("CREPE tiny")
    assert [r["row"] for r in metrics["rows"]] == ["ceiling", "floor", "cfg 1", "cfg 2"]
    for row in metrics["rows"]:
        assert set(row["metrics"]) == set(shipped) and len(row["per_clip"]) == 2
        assert set(row["per_clip"][0]) == {k for k in shipped if not k.startswith("f")}
    ceiling, floor = metrics["rows"][0]["metrics"], metrics["rows"][1]["metrics"]
    assert ceiling["crepe_chroma_accuracy"] >= 0.95
    assert ceiling["crepe_chroma_accuracy"] > floor["crepe_chroma_accuracy"]
    assert ceiling["searched_chroma_accuracy"] > floor["searched_chroma_accuracy"]
    assert metrics["frechet_sets"] == {"fd_encodec": {"real_clips": 2, "real_frames": 2 * 600},
                                       "fad_vggish": {"real_clips": 2, "real_frames": 2 * 8}}
    for row in metrics["rows"][2:]:
        gen = row["metrics"]
        assert gen["fd_encodec"] >= 0 and gen["fad_vggish"] >= 0 and gen["crepe_voicing_agreement"] is not None
        assert gen["fd_encodec_inf"] is not None and gen["fad_vggish_inf"] is None  # 1200 frames: enough; 16: not
        assert row["frechet"]["fd_encodec"]["frames"] == 1200 and row["frechet"]["fad_vggish"]["frames"] == 16
        assert "16 generated frames, needs >= 1024" in row["frechet"]["fad_vggish"]["inf"]
    assert "frames of all clips pooled" in metrics["embeddings"]["fd_encodec"]
    lines = res.output.splitlines()
    head = next(line for line in lines if line.startswith("row"))
    assert head.split() == ["row", "C:chroma", "C:voiced", "C:cover", "s:voiced", "s:chroma", "vel~loud",
                            "FD_encodec", "FD_enc_inf", "FAD_vggish"]
    assert any(line.startswith("ceiling") for line in lines) and any(line.startswith("floor") for line in lines)
    assert "evaluate: trained on velocity, chroma, instrument: metrics of those only" in res.output
    assert "never told the asked pitch" in res.output and "searched +-13 semitones around the asked pitch" in res.output
    assert "2 generated clips (1200 frames) against 2 real clips (1200 frames)" in res.output
    assert "NFE 3 per sample" in res.output
    assert (out / "adherence.png").stat().st_size > 10_000


def test_without_vggish_weights_fad_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing there
    model, note = vggish_model(None)
    assert model is None and note.startswith("no VGGish weights on this machine") and "\n" not in note


def test_evaluate_on_a_split_with_one_clip_says_so(run, dataset, tmp_path):
    res = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(run), "--data", str(dataset), "--n", "4",
                                   "--steps", "1", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "evaluate needs at least 2" in res.output and "--split train" in res.output


@pytest.fixture(scope="module")
def proof_dataset(tmp_path_factory) -> Path:
    """pipelines/proof.yaml's dataset (2 s clips, only the coarse CQT) from eight Lakh files (both splits)."""
    midi = tmp_path_factory.mktemp("proof-midi")
    for path in sorted(LAKH.glob("*.mid"))[:8]:
        shutil.copy(path, midi / path.name)
    out = tmp_path_factory.mktemp("proof-build")
    res = CliRunner().invoke(cli, ["run", str(Path(__file__).resolve().parents[2] / "pipelines" / "proof.yaml"),
                                   "--midi", str(midi), "--out", str(out), "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    return out / "dataset"


def test_the_proof_recipe_trains_samples_and_is_judged_without_any_encodec_weights(proof_dataset, tmp_path,
                                                                                    monkeypatch):
    """bench_controllability's path on a tiny model: one-hot chroma and the frequency embedding train, sample
    and evaluate; a dataset with no EnCodec format, on a machine without EnCodec's checkpoint, gets no fd_encodec
    and one line saying why (not an error after the sampling)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no EnCodec checkpoint there
    cfg = config("proof-cqt", data={"batch_size": 2}, model={"channels": 4, "control_channels": 4,
                                                             "freq_embed_channels": 2},
                 train={"eval_every": 0, "eval_clips": 0})
    run = tmp_path / "run"
    train(cfg, TrainOptions(run, proof_dataset, steps=2), echo=quiet)
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(run), "--data", str(proof_dataset), "--n", "3",
                                   "--split", "train", "--cfg-scale", "1,2", "--steps", "2", "--out", str(out),
                                   "--judge-model", "tiny"])
    assert res.exit_code == 0, res.output
    assert "FD_encodec not computed: the dataset stores no EnCodec format" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["row"] for r in metrics["rows"]] == ["ceiling", "floor", "cfg 1", "cfg 2"]
    assert metrics["rows"][0]["metrics"]["crepe_chroma_accuracy"] >= 0.9  # the coarse CQT's inverse keeps pitch
    assert metrics["embeddings"]["fd_encodec"].startswith("not computed")
    assert "fd_encodec" not in metrics["frechet_sets"]
    assert metrics["decoder"].startswith("the CQT inverse")
