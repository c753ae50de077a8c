"""`train/data.py` on a real small dataset: controls as the network sees them (`data.encodings`: chroma
one-hot) and random crops (`data.crop_seconds`), cut on the format's frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pvtbuild.cli import cli
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import ConfigError, InputError
from pvtbuild.train.conditioning import model_controls
from pvtbuild.train.config import train_config_from_dict
from pvtbuild.train.data import (Collate, DatasetSource, DataStats, Position, crop_starts, dataset_layout,
                                 encode_control, random_crop)
from pvtbuild.train.guidance import NULL_VALUE
from pvtbuild.train.loop import train
from test_train_loop import config, quiet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**data: object) -> object:
    return train_config_from_dict({
        "name": "t", "data": {"format": "cqt", "controls": ["velocity", "chroma", "instrument"],
                              "encodings": {"chroma": "onehot"}, "batch_size": 2, **data},
        "model": {"channels": 4, "channel_mults": [1, 2], "control_channels": 4}, "formalism": {"name": "edm"}})


def test_chroma_onehot_marks_the_sounding_pitch_class_and_nothing_in_silence() -> None:
    chroma = np.array([0, 0, 5, 11, 2, -1], dtype=np.float32) / 11
    chroma[-1] = NULL_VALUE
    voiced = np.array([1, 0, 1, 1, 1, 1], dtype=np.float32)  # frame 1: silence, stored as chroma 0 like C
    out = encode_control("chroma", "onehot", chroma, voiced)
    assert out.shape == (12, 6)
    assert out[0, 0] == 1 and out[:, 0].sum() == 1  # C
    assert (out[:, 1] == 0).all()  # silence is no longer C
    assert out[5, 2] == 1 and out[11, 3] == 1 and out[2, 4] == 1
    assert (out[:, 5] == NULL_VALUE).all()  # unconditional: the value control dropout writes


def test_chroma_onehot_without_a_voiced_control_sounds_wherever_chroma_is_given() -> None:
    chroma = np.array([0, 7 / 11, NULL_VALUE], dtype=np.float32)
    out = encode_control("chroma", "onehot", chroma, np.full(3, NULL_VALUE, dtype=np.float32))
    assert out[0, 0] == 1 and out[7, 1] == 1 and (out[:, 2] == NULL_VALUE).all()


def test_an_encoding_of_an_unlisted_or_unencodable_control_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^data\.encodings\.pitch: encodes a control that is not in"):
        _config(encodings={"pitch": "onehot"})
    with pytest.raises(ConfigError, match=r"^data\.encodings\.velocity: must be one of \(none"):
        _config(encodings={"velocity": "onehot"})
    with pytest.raises(ConfigError, match=r"^data\.encodings\.chroma: must be one of onehot, got 'comb'"):
        _config(encodings={"chroma": "comb"})


def test_a_dataset_batch_feeds_chroma_as_twelve_channels_matching_the_stored_chroma(dataset) -> None:
    cfg = _config()
    layout = dataset_layout(cfg.data, dataset)
    assert layout.local_groups == (1, 12, 3) and layout.spec.local_channels == 16
    assert layout.aux_names == ("voiced_240hz",)
    _, batch = next(DatasetSource(cfg.data, dataset, layout, DataStats(), seed=0).batches(Position()))
    local = batch.controls.local.numpy()
    assert local.shape == (2, 16, 1921)
    stored = {r["id"]: r for r in TFRecordIterableDataset(dataset, "train", names=["id", "chroma_240hz", "voiced_240hz"])}
    for i, clip_id in enumerate(batch.ids):
        chroma, voiced = stored[clip_id]["chroma_240hz"].numpy(), stored[clip_id]["voiced_240hz"].numpy() > 0.5
        onehot = local[i, 1:13]
        assert voiced.any() and (onehot[:, ~voiced] == 0).all()
        assert (onehot[:, voiced].sum(axis=0) == 1).all()
        np.testing.assert_array_equal(onehot[:, voiced].argmax(axis=0), np.rint(chroma[voiced] * 11))


def test_sampling_assembles_the_same_encoding_from_written_controls(dataset) -> None:
    """`pvtbuild sample` builds controls through model_controls: a request's chroma gets the training encoding."""
    from pvtbuild.config import config_from_dict
    from pvtbuild.dataset import read_dataset_json
    from pvtbuild.train.conditioning import ControlSpace, null_controls

    cfg = _config()
    layout = dataset_layout(cfg.data, dataset)
    pipeline = config_from_dict(read_dataset_json(dataset)["config"])
    space = ControlSpace(pipeline, pipeline.controls.grid("240hz"), layout)
    request = null_controls(space)
    request.values["chroma"][:] = 9 / 11  # A throughout, voiced not given
    controls = model_controls([request, null_controls(space)], space)
    assert controls.local.shape == (2, 16, 1921)
    assert (controls.local[0, 1 + 9] == 1).all() and (controls.local[0, 1:13].sum(0) == 1).all()
    assert (controls.local[1] == NULL_VALUE).all()


# --- random crops ---------------------------------------------------------------------------------

CONTROLS = ["velocity", "chroma", "instrument", "beat", "bpm"]
FORMATS = {"encodec": "edm-encodec-tiny", "disc": "discdpm-disc-tiny", "cqt": "edm-cqt-tiny"}


def _records(dataset, layout, n: int = 2) -> list[dict]:
    names = [layout.data_name, *layout.local_names, "id"]
    return [r for _, r in zip(range(n), TFRecordIterableDataset(dataset, "train", names=names))]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_crop_of_a_clips_controls_equals_the_controls_of_the_crop(fmt, dataset):
    cfg = config(FORMATS[fmt], data={"controls": CONTROLS})
    layout = dataset_layout(cfg.data, dataset)  # controls on the format's own grid (75 Hz / 240 Hz)
    records, frames = _records(dataset, layout), 50
    whole = Collate(layout, 1.0)(records)
    cropped = random_crop(whole, frames, torch.Generator().manual_seed(7))
    starts = crop_starts(len(records), layout.spec.shape[-1], frames, torch.Generator().manual_seed(7)).tolist()
    assert len(set(starts)) == len(starts)  # each example its own offset (this seed)
    cut = [{k: (v if k == "id" else v[..., s:s + frames]) for k, v in r.items()} for r, s in zip(records, starts)]
    short = dataclasses.replace(layout, spec=dataclasses.replace(layout.spec, shape=(*layout.spec.shape[:-1], frames)))
    of_crops = Collate(short, 1.0)(cut)  # the controls of the cropped clips, assembled as training assembles them
    assert torch.equal(cropped.x0, of_crops.x0) and torch.equal(cropped.controls.local, of_crops.controls.local)
    assert cropped.controls.local_groups == whole.controls.local_groups and cropped.ids == whole.ids


@pytest.mark.parametrize("fmt, x0, local", [
    ("encodec", [2, 128, 75], [2, 5, 75]),  # 1 s = 75 EnCodec frames
    ("disc", [2, 16, 75], [2, 5, 75]),
    ("cqt", [2, 2, 216, 240], [2, 5, 240]),  # 1 s = 240 CQT frames (hop 100 at 24 kHz)
])
def test_crops_are_whole_frames_of_the_format_for_cqt_encodec_and_disc(fmt, x0, local, dataset, tmp_path):
    lines: list[str] = []
    cfg = config(FORMATS[fmt], data={"batch_size": 2, "crop_seconds": 1.0})
    train(cfg, tmp_path / "run", dataset, dry_run=True, echo=lines.append)
    assert f"batch: x0 {x0} " in lines[-1] and f"local controls {local}" in lines[-1], lines


def test_a_model_trained_on_crops_samples_whole_clips(dataset, tmp_path):
    run, out = tmp_path / "run", tmp_path / "s"
    train(config("edm-encodec-tiny", data={"batch_size": 2, "crop_seconds": 1.0}), run, dataset, steps=2, echo=quiet)
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--out", str(out), "--n", "1", "--steps", "2",
                                   "--instrument", "violin", "--no-plot", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    arr = np.load(out / "0000.npy")
    assert arr.shape == (128, 600) and np.isfinite(arr).all()


def test_a_crop_longer_than_a_clip_or_on_a_toy_is_one_error_naming_the_key(dataset, tmp_path):
    with pytest.raises(InputError, match=r"^data\.crop_seconds: 9 s is 675 frames of encodec, longer than the 600"):
        train(config("edm-encodec-tiny", data={"crop_seconds": 9.0}), tmp_path / "r", dataset, steps=1, echo=quiet)
    with pytest.raises(ConfigError, match=r"^data\.crop_seconds: toy points have no time axis"):
        config("swissroll-edm", data={"crop_seconds": 1.0})
    with pytest.raises(ConfigError, match=r"^data\.crop_seconds: must be >= 0"):
        config("edm-encodec-tiny", data={"crop_seconds": -1.0})
