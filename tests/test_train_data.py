"""Training batches' controls as the network sees them: `data.encodings` (chroma one-hot) on a real dataset."""

from __future__ import annotations

import numpy as np
import pytest

from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import ConfigError
from pvtbuild.train.config import train_config_from_dict
from pvtbuild.train.conditioning import RequestedControls, model_controls
from pvtbuild.train.data import DatasetSource, DataStats, Position, dataset_layout, encode_control
from pvtbuild.train.guidance import NULL_VALUE


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
