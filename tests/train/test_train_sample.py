"""`pvtbuild sample` on real formats: controls a person writes (conditioning.py) in, exactly-8-s WAVs out.

Tiny checkpoints of each real format are trained for 3 steps on the session's small real dataset
(random EnCodec weights); their samples are noise, but every path from controls to WAV is real.
"""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train_loop import config, quiet

from paths import REPO
from pvtbuild.cli import cli
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.music.controls import CONTROL_NAMES, frame_times
from pvtbuild.stages.select import read_selection
from pvtbuild.tools.inspection import clip_ids
from pvtbuild.train.conditioning import (
    ControlRequest,
    build_controls,
    controls_from_clip,
    controls_from_midi,
    model_controls,
)
from pvtbuild.train.data import DatasetSource, Position
from pvtbuild.train.guidance import NULL_VALUE
from pvtbuild.train.loop import TrainOptions, train
from pvtbuild.train.sample import control_space, load_for_sampling, sample_to_wav
from pvtbuild.train.spec import DataStats

EXAMPLES = REPO / "examples" / "midi"
DEMO_FILE = EXAMPLES / "024bdf7815ae8b97ac8cac959cce3c5f.mid"  # shipped demo file, also one of the small build's
FORMATS = {"encodec": "edm-encodec-tiny", "disc": "discdpm-disc-tiny", "cqt": "edm-cqt-tiny"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory) -> dict[str, Path]:
    """A 3-step tiny run of each real format (controls: velocity, chroma, instrument)."""
    root = tmp_path_factory.mktemp("sample-runs")
    out = {}
    for fmt, name in FORMATS.items():
        train(config(name, data={"batch_size": 2}), TrainOptions(root / fmt, dataset, steps=3), echo=quiet)
        out[fmt] = root / fmt
    return out


def _space(run: Path, dataset: Path):
    sampler = load_for_sampling(run, torch.device("cpu"))
    return control_space(sampler, dataset)


def _wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def _a_clip(dataset: Path) -> str:
    return clip_ids(dataset)[0]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sample_writes_n_finite_8s_wavs_with_array_controls_and_png_for_each_real_format(fmt, runs, dataset, tmp_path):
    out = tmp_path / "s"
    args = {"encodec": ["--midi", str(DEMO_FILE), "--instrument", "violin"],  # the "done when" command
            "disc": ["--like", f"{dataset}:{_a_clip(dataset)}"],
            "cqt": ["--bpm", "100", "--instrument", "trumpet"]}[fmt]
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(runs[fmt]), "--out", str(out), "--n", "2",
                                   "--steps", "2", "--seed", "3", *args])
    assert res.exit_code == 0, res.output
    assert "samples/s" in res.output and "NFE" in res.output
    decoder = "the CQT inverse" if fmt == "cqt" else "EnCodec with RANDOM weights"  # not the dataset's EnCodec, for cqt
    assert f"sample: decoder: {decoder}" in res.output
    for i in range(2):
        pcm, rate = _wav(out / f"{i:04d}.wav")
        assert rate == 24000 and len(pcm) == 8 * 24000
        arr = np.load(out / f"{i:04d}.npy")
        assert arr.shape == {"encodec": (128, 600), "disc": (16, 600), "cqt": (2, 216, 1921)}[fmt]
        assert np.isfinite(arr).all()
        if fmt == "disc":
            assert arr.dtype == np.int64 and arr.min() >= 0 and arr.max() <= 1023
        assert (out / f"{i:04d}.png").stat().st_size > 10_000
        with np.load(out / f"{i:04d}.controls.npz") as c:
            grid = "240hz" if fmt == "cqt" else "75hz"
            assert sorted(c.files) == sorted(f"{n}_{grid}" for n in CONTROL_NAMES)
            assert (c[f"instrument_{grid}"] >= 0).all()  # given by every request above
    record = json.loads((out / "sample.json").read_text())
    expected_nfe = {"encodec": 3, "cqt": 3, "disc": 2}[fmt]  # EDM: 2 steps -> 2N - 1 Heun evaluations
    assert record["nfe_per_sample"] == expected_nfe and record["n"] == 2
    assert record["decoder"].startswith(decoder)


def test_midi_controls_equal_those_the_render_stage_stored_for_that_clip(runs, dataset, small_build):
    out, _ = small_build
    specs = [s for s in read_selection(out / "select" / "selection.jsonl") if DEMO_FILE.stem == s.source_md5]
    assert specs, "the small build has clips of the shipped demo file"
    stored = {}
    for shard in sorted((out / "render").glob("shard-*.npz")):
        with np.load(shard) as data:
            for k, cid in enumerate(data["id"]):
                stored[str(cid)] = {n: data[n][k] for n in data.files if n not in ("id", "audio")}
    checked = 0
    for spec in specs:
        if spec.clip_id not in stored:
            continue  # skipped by render (near-silent)
        for fmt in ("encodec", "cqt"):  # the 75 Hz and the 240 Hz grid
            space = _space(runs[fmt], dataset)
            got = controls_from_midi(DEMO_FILE, space, track=spec.track, start=spec.start)
            assert got.info["clip"]["clip_id"] == spec.clip_id
            for name in CONTROL_NAMES:
                np.testing.assert_array_equal(got.values[name], stored[spec.clip_id][f"{name}_{space.grid.name}"])
            checked += 1
    assert checked >= 2


def test_bpm_alone_is_a_sawtooth_of_period_60_over_bpm_and_everything_else_unconditional(runs, dataset):
    space = _space(runs["encodec"], dataset)
    got = build_controls(ControlRequest(bpm=120), space)
    t = frame_times(space.grid)
    np.testing.assert_allclose(got.values["beat"], np.mod(t / 0.5, 1.0), atol=1e-5)
    wraps = t[1:][np.diff(got.values["beat"]) < 0]  # where the sawtooth falls back to 0
    np.testing.assert_allclose(np.diff(wraps), 0.5, atol=1.5 / space.grid.rate)
    np.testing.assert_allclose(got.values["bpm"], 120 / space.pipeline.controls.bpm_max)
    assert got.given == ["beat", "bpm"]
    for name in ("velocity", "chroma", "pitch", "voiced", "instrument"):
        assert (got.values[name] == NULL_VALUE).all()
    c = model_controls([got], space)  # the model reads velocity, chroma, instrument: all -1
    assert c.local.shape == (1, 5, 600) and (c.local == NULL_VALUE).all()


def test_like_gives_the_model_the_controls_training_gave_it_for_that_clip(runs, dataset):
    space = _space(runs["encodec"], dataset)
    cfg = config("edm-encodec-tiny", data={"batch_size": 1})
    _, batch = next(DatasetSource(cfg.data, dataset, space.layout, DataStats(), seed=0).batches(Position()))
    got = model_controls([controls_from_clip(f"{dataset}:{batch.ids[0]}", space)], space)
    assert torch.equal(got.local, batch.controls.local)


def test_controls_files_npz_and_json_are_resampled_and_missing_features_are_unconditional(runs, dataset, tmp_path):
    space = _space(runs["encodec"], dataset)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"velocity": [0.2, 0.8], "instrument_75hz": [[0], [1], [0]], "chroma": 0.5}))
    got = build_controls(ControlRequest(controls_file=js), space)
    v = got.values["velocity"]
    assert v.shape == (600,) and (v[:300] == np.float32(0.2)).all() and (v[300:] == np.float32(0.8)).all()
    assert got.values["instrument"].shape == (3, 600) and (got.values["instrument"][1] == 1).all()
    assert (got.values["chroma"] == 0.5).all() and (got.values["pitch"] == NULL_VALUE).all()
    npz = tmp_path / "c.npz"
    np.savez(npz, velocity=np.linspace(0, 1, 600, dtype=np.float32))
    got = build_controls(ControlRequest(controls_file=npz, instrument="piano"), space)
    np.testing.assert_array_equal(got.values["velocity"], np.linspace(0, 1, 600, dtype=np.float32))
    assert got.given == ["velocity", "instrument"]


@pytest.mark.parametrize("write, expected", [
    (lambda p: p.write_text('{"loudness": [1, 2]}'), "unknown control 'loudness'"),
    (lambda p: p.write_text('{"instrument": [1, 0, 0]}'), "expected [3, T]"),
    (lambda p: p.write_text('{"velocity": [1, '), "not a readable controls file"),
])
def test_a_bad_controls_file_is_one_error_naming_the_file_and_the_reason(write, expected, runs, dataset, tmp_path):
    space = _space(runs["encodec"], dataset)
    bad = tmp_path / "bad.json"
    write(bad)
    with pytest.raises(InputError) as e:
        build_controls(ControlRequest(controls_file=bad), space)
    assert str(bad) in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("args, expected", [
    (["--midi", "nowhere.mid"], "nowhere.mid: MIDI file not found"),
    (["--midi", str(DEMO_FILE), "--track", "99"], "track 99 has no selectable window"),
    (["--instrument", "kazoo"], "--instrument 'kazoo': not an instrument of this model"),
    (["--like", "nowhere"], "expected DATASET:ID"),
    (["--bpm", "0"], "--bpm must be a positive number"),
    (["--start", "3"], "pass --midi"),
])
def test_bad_sampling_requests_are_one_line_errors(args, expected, runs, tmp_path):
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(runs["encodec"]), "--out", str(tmp_path / "s"),
                                   "--n", "1", "--steps", "1", *args])
    assert res.exit_code == 2, res.output
    assert expected in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_run_whose_dataset_moved_asks_for_data(runs, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(runs["encodec"], moved)
    rec = json.loads((moved / "run.json").read_text())
    rec["dataset"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(rec))
    with pytest.raises(PvtbuildError, match="pass --data"):
        sample_to_wav(moved, tmp_path / "s", 1, ControlRequest(), steps=1)


def test_iadb_encodec_bpm_tiny_trains_and_samples_a_tempo_through_the_cli(dataset, tmp_path):
    """LADMG's setup (issue 18, item 6): IADB on EnCodec latents with beat and bpm controls, as a user runs it."""
    run, out = tmp_path / "run", tmp_path / "s"
    bpm_config = REPO / "pipelines" / "train" / "iadb-encodec-bpm-tiny.yaml"
    res = CliRunner().invoke(cli, ["train", "--config", str(bpm_config),
                                   "--data", str(dataset), "--out", str(run), "--steps", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--out", str(out), "--n", "1", "--steps", "2",
                                   "--bpm", "120", "--no-plot", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "sample.json").read_text())
    assert record["formalism"] == "iadb" and record["controls_the_model_reads"] == ["beat", "bpm"]
    assert record["controls_given"] == ["beat", "bpm"] and record["nfe_per_sample"] == 2
    pcm, rate = _wav(out / "0000.wav")
    assert rate == 24000 and len(pcm) == 8 * 24000
    with np.load(out / "0000.controls.npz") as c:
        assert np.unique(c["bpm_75hz"]).size == 1  # one tempo throughout
        assert (c["beat_75hz"] >= 0).all() and (c["velocity_75hz"] == NULL_VALUE).all()
