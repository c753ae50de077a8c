"""Tests of pvtbuild.pipeline: a whole build at a clip length other than the default, from the
MIDI files to both readers, with real FluidSynth, random EnCodec weights and in-process execution."""

from __future__ import annotations

import numpy as np
import tensorflow as tf  # noqa: E402,F401  (a dependency: its absence must fail, not skip)

from conftest import SMALL_SOURCES
from paths import LAKH
from pvtbuild.config import config_from_dict
from pvtbuild.dataset import read_dataset_json, read_shapes, verify_dataset
from pvtbuild.dataset.tf_reader import make_dataset  # noqa: E402
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.pipeline import run_all


def test_four_second_clips_have_controls_on_the_frames_of_the_format_beside_them(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    for md5 in SMALL_SOURCES[:2]:
        (midi / f"{md5}.mid").symlink_to(LAKH / f"{md5}.mid")
    cfg = config_from_dict({
        "name": "four", "seed": 0, "midi": str(midi),
        "select": {"clip_seconds": 4, "clips_per_source": 2}, "render": {"clips_per_shard": 4},
        "encode": {"weights": "random"}, "shard": {"shard_mb": 2.0}, "exec": {"jobs": 1, "scheduler": "sync"},
    })
    out = tmp_path / "build"
    run_all(cfg, out)
    dataset = out / "dataset"
    assert verify_dataset(dataset).ok

    frames = {"audio": 96000, "cqt": 961, "encodec": 300, "disc": 300}
    shapes = {name: shape for name, (_, shape) in read_shapes(dataset).items()}
    assert shapes["audio"] == (1, 96000)
    assert shapes["cqt"] == (2, 216, 961) and shapes["encodec"] == (128, 300) and shapes["disc"] == (16, 300)
    for name, shape in shapes.items():
        if name.endswith("_75hz"):
            assert shape[-1] == 300, name
        elif name.endswith("_240hz"):
            assert shape[-1] == 961, name
    doc = read_dataset_json(dataset)
    beside = {f: frames[f] if f == "audio" else shapes[f][-1] for f in frames}
    for fmt, grid in doc["control_grids"].items():
        if fmt != "audio":
            assert shapes[f"velocity_{grid}"][-1] == beside[fmt], fmt
    stored = {g["name"]: g for g in doc["config"]["controls"]["grids"]}
    assert (stored["75hz"]["frames"], stored["75hz"]["offset"]) == (300, 0.5)
    assert (stored["240hz"]["frames"], stored["240hz"]["offset"]) == (961, 0.0)

    count = 0
    for split in ("train", "valid"):
        torch_recs = {r["id"]: r for r in TFRecordIterableDataset(dataset, split, names=list(shapes) + ["id"])}
        for rec in make_dataset(dataset, split, names=list(shapes) + ["id"], batch_size=None):
            clip_id = rec["id"].numpy().decode()
            other = torch_recs.pop(clip_id)
            for name, shape in shapes.items():
                ours, theirs = rec[name].numpy(), other[name].numpy()
                assert ours.shape == theirs.shape == shape, name
                np.testing.assert_array_equal(ours, theirs, err_msg=name)
                assert np.isfinite(ours).all(), name
            # the controls describe the same 4 s on both grids
            voiced75, voiced240 = rec["voiced_75hz"].numpy(), rec["voiced_240hz"].numpy()
            assert voiced75.any() and abs(voiced75.mean() - voiced240.mean()) < 0.02
            count += 1
        assert not torch_recs  # both readers saw the same clips
    assert count == sum(s["count"] for s in doc["splits"].values()) >= 2
