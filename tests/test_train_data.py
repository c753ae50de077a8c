"""`train/data.py`: random crops of a real small dataset (data.crop_seconds), cut on the format's frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pvtbuild.cli import cli
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import ConfigError, InputError
from pvtbuild.train.data import Collate, crop_starts, dataset_layout, random_crop
from pvtbuild.train.loop import train
from test_train_loop import config, quiet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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
