"""`train/data.py` on a real small dataset: controls as the network sees them (`data.encodings`: chroma
one-hot) and random crops (`data.crop_seconds`), cut on the format's frames; batches drawn across a rank's
whole share whatever the number of DataLoader workers; every rank's data position resumed exactly (2 real
gloo processes under torchrun)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from test_train_loop import config, log_rows, quiet

from pvtbuild.cli import cli
from pvtbuild.config import config_from_dict
from pvtbuild.dataset import (
    array_shapes,
    meta_schema,
    read_dataset_json,
    serialize_example,
    shard_name,
    write_dataset_json,
    write_shapes,
    write_shard,
)
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import ConfigError, InputError, PvtbuildError
from pvtbuild.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from pvtbuild.train.conditioning import ControlSpace, model_controls, null_controls
from pvtbuild.train.config import load_train_config, train_config_from_dict
from pvtbuild.train.data import (
    Collate,
    DatasetSource,
    Position,
    crop_starts,
    dataset_layout,
    encode_control,
    random_crop,
)
from pvtbuild.train.guidance import NULL_VALUE
from pvtbuild.train.loop import Resume, TrainOptions, train
from pvtbuild.train.spec import DataStats

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
    names = ["id", "chroma_240hz", "voiced_240hz"]
    stored = {r["id"]: r for r in TFRecordIterableDataset(dataset, "train", names=names)}
    for i, clip_id in enumerate(batch.ids):
        chroma, voiced = stored[clip_id]["chroma_240hz"].numpy(), stored[clip_id]["voiced_240hz"].numpy() > 0.5
        onehot = local[i, 1:13]
        assert voiced.any() and (onehot[:, ~voiced] == 0).all()
        assert (onehot[:, voiced].sum(axis=0) == 1).all()
        np.testing.assert_array_equal(onehot[:, voiced].argmax(axis=0), np.rint(chroma[voiced] * 11))


def test_sampling_assembles_the_same_encoding_from_written_controls(dataset) -> None:
    """`pvtbuild sample` builds controls through model_controls: a request's chroma gets the training encoding."""
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
    train(cfg, TrainOptions(tmp_path / "run", dataset, dry_run=True), echo=lines.append)
    assert f"batch: x0 {x0} " in lines[-1] and f"local controls {local}" in lines[-1], lines


def test_a_model_trained_on_crops_samples_whole_clips(dataset, tmp_path):
    run, out = tmp_path / "run", tmp_path / "s"
    train(config("edm-encodec-tiny", data={"batch_size": 2, "crop_seconds": 1.0}), TrainOptions(run, dataset, steps=2),
          echo=quiet)
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--out", str(out), "--n", "1", "--steps", "2",
                                   "--instrument", "violin", "--no-plot", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    arr = np.load(out / "0000.npy")
    assert arr.shape == (128, 600) and np.isfinite(arr).all()


def test_a_crop_longer_than_a_clip_or_on_a_toy_is_one_error_naming_the_key(dataset, tmp_path):
    with pytest.raises(InputError, match=r"^data\.crop_seconds: 9 s is 675 frames of encodec, longer than the 600"):
        train(config("edm-encodec-tiny", data={"crop_seconds": 9.0}), TrainOptions(tmp_path / "r", dataset, steps=1),
              echo=quiet)
    with pytest.raises(ConfigError, match=r"^data\.crop_seconds: toy points have no time axis"):
        config("swissroll-edm", data={"crop_seconds": 1.0})
    with pytest.raises(ConfigError, match=r"^data\.crop_seconds: must be >= 0"):
        config("edm-encodec-tiny", data={"crop_seconds": -1.0})


# --- batches drawn across a rank's whole share ------------------------------------------------

FRAMES = 32  # short clips: these tests count records, they do not train on music
SHAPES_OF = {"encodec": (128, FRAMES), "velocity_75hz": (FRAMES,), "chroma_75hz": (FRAMES,),
             "instrument_75hz": (3, FRAMES)}


def write_train_set(root: Path, records_per_file: list[int]) -> list[str]:
    """A real dataset, written by the project's TFRecord writer: a train split of one file per entry of
    `records_per_file` (ids `f{file}-{k}`), a valid split of 2 records; returns the train ids."""
    def record(n: int, clip_id: str) -> tuple[dict, dict]:
        rng = np.random.default_rng(n)
        arrays = {k: rng.random(s, dtype=np.float32) for k, s in SHAPES_OF.items()}
        return arrays, {"id": clip_id}

    write_shapes(root / "shapes.txt", array_shapes(record(0, "")[0]))
    ids, infos, n = [], {"train": [], "valid": []}, 0
    for split, counts in (("train", records_per_file), ("valid", [2])):
        for f, count in enumerate(counts):
            items = [record(n + k, f"{split[0]}{f}-{k}") for k in range(count)]
            n += count
            ids += [m["id"] for _, m in items] if split == "train" else []
            path = root / split / shard_name(split, f, len(counts))
            infos[split].append(write_shard(path, (serialize_example(a, m) for a, m in items)))
    write_dataset_json(root / "dataset.json", infos, {"control_grids": {"encodec": "75hz"}}, meta_schema({"id": ""}))
    return ids


def _source(root: Path, rank: int = 0, world_size: int = 1, **data: object) -> DatasetSource:
    cfg = train_config_from_dict({"name": "t", "data": {"format": "encodec", "controls": ["velocity", "instrument"],
                                                       **data}, "formalism": {"name": "edm"}})
    return DatasetSource(cfg.data, root, dataset_layout(cfg.data, root), DataStats(), seed=0, rank=rank,
                         world_size=world_size)


def epoch_batches(source: DatasetSource, epoch: int = 0) -> list[tuple[str, ...]]:
    """The ids of every batch `source` gives in `epoch`."""
    out = []
    for pos, batch in source.batches(Position(epoch, 0)):
        if pos.epoch > epoch:
            break
        out.append(batch.ids)
    return out


def test_an_epoch_of_18_clips_in_5_files_with_4_workers_and_batch_16_is_one_batch_from_every_file(tmp_path):
    """The demo dataset's shape: DataLoader workers that each form batches from their own files gave none."""
    ids = write_train_set(tmp_path, [4, 4, 4, 4, 2])
    with_workers = epoch_batches(_source(tmp_path, batch_size=16, num_workers=4))
    assert len(with_workers) == 1 and len(set(with_workers[0])) == 16 and set(with_workers[0]) <= set(ids)
    assert len({i.split("-")[0] for i in with_workers[0]}) == 5  # drawn across every file
    assert epoch_batches(_source(tmp_path, batch_size=16, num_workers=0)) == with_workers


def test_every_record_is_read_once_per_epoch_across_ranks_in_an_order_of_seed_epoch_and_rank(tmp_path):
    ids = write_train_set(tmp_path, [3, 5, 7, 2, 6, 4, 5, 8])
    for world in (2, 3):
        for epoch in (0, 1):
            seen = [i for r in range(world) for b in epoch_batches(_source(tmp_path, r, world, batch_size=1), epoch)
                    for i in b]
            assert sorted(seen) == sorted(ids), (world, epoch)
    # batch 3, 2 workers: each rank's epoch is its share less its last partial batch, batches mix its files,
    # and the batches are the same with no workers, and on a fresh source (a pure function of seed, epoch, rank)
    for rank in (0, 1):
        source = _source(tmp_path, rank, 2, batch_size=3, num_workers=2)
        batches = epoch_batches(source)
        source.reader.set_epoch(0)
        share = len(source.reader.epoch_keys())
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)) == share - share % 3 and all(len(b) == 3 for b in batches)
        assert sum(len({i.split("-")[0] for i in b}) > 1 for b in batches) > len(batches) // 2
        assert epoch_batches(_source(tmp_path, rank, 2, batch_size=3)) == batches
        assert epoch_batches(source, 1) != batches


def test_a_rank_whose_share_is_smaller_than_a_batch_is_one_line_naming_the_split(tmp_path):
    write_train_set(tmp_path, [4, 4, 4, 4, 2])
    with pytest.raises(InputError,
                       match=r"/train: rank 0 got 18 examples in epoch 0, fewer than data\.batch_size = 32"):
        next(_source(tmp_path, batch_size=32).batches(Position()))


# --- exact resume on every rank ----------------------------------------------------------------

TINY_2RANK = {"name": "tiny-2rank", "seed": 0,
              "data": {"format": "encodec", "controls": ["velocity", "instrument"], "batch_size": 1},
              "model": {"channels": 4, "channel_mults": [1, 2], "control_channels": 4, "noise_embed_dim": 8},
              "formalism": {"name": "edm"}, "optim": {"lr": 1e-3, "warmup_steps": 2},
              "train": {"checkpoint_every": 10}}


def torchrun_train(cfg_file: Path, data: Path, out: Path, steps: int, *extra: str) -> None:
    """`pvtbuild train` as 2 real gloo processes under torchrun."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pvtbuild.cli", "train", "--config",
           str(cfg_file), "--data", str(data), "--out", str(out), "--steps", str(steps), "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash prints every thread's stack
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in res.stderr.splitlines() if "%|" not in line]
    assert res.returncode == 0, "\n".join(lines[:60] + ["..."] + lines[-20:])


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(dataset, config, 20 steps uninterrupted, 10 steps + resume + 10) by 2 gloo processes. Files of 2, 3, 5
    and 1 records: the ranks' shares differ in size every epoch, so they cross epochs at different steps.

    The first 10 steps of the resumed run are the uninterrupted run's own, stopped at its step-10 checkpoint
    (the file a run of 10 steps writes: nothing in it depends on the run's total), which saves a third
    launch of torchrun (~15 s here); the resumed process sees only that run directory."""
    base = tmp_path_factory.mktemp("two-rank")
    data = base / "dataset"
    write_train_set(data, [2, 3, 5, 1])
    cfg_file = base / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY_2RANK))
    once, twice = base / "once", base / "twice"
    torchrun_train(cfg_file, data, once, 20)
    shutil.copytree(once, twice)
    checkpoint_path(twice, 20).unlink()
    log = twice / "log.csv"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:11]))  # the header and steps 1-10
    torchrun_train(cfg_file, data, twice, 20, "--resume")
    return data, cfg_file, once, twice


def test_two_gloo_ranks_10_steps_resumed_then_10_more_equal_20_bit_for_bit(two_rank_runs):
    _, _, once, twice = two_rank_runs
    at10 = load_checkpoint(checkpoint_path(twice, 10))
    positions = at10["positions"]
    assert len(positions) == 2 and positions[0] != positions[1]
    assert positions[0]["epoch"] != positions[1]["epoch"]  # one rank crossed an epoch boundary the other had not
    losses = [[r["loss"] for r in log_rows(run)] for run in (once, twice)]
    assert losses[1] == losses[0] and len(losses[0]) == 20  # rank 0's mean over ranks, as repr: exact
    a, b = load_checkpoint(once), load_checkpoint(twice)
    assert a["step"] == b["step"] == 20 and a["positions"] == b["positions"]
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_resuming_with_another_world_size_is_refused_in_one_line_unless_allowed(two_rank_runs, tmp_path):
    data, cfg_file, once, _ = two_rank_runs
    run = tmp_path / "run"
    shutil.copytree(once, run)
    args = ["train", "--config", str(cfg_file), "--data", str(data), "--out", str(run), "--steps", "22", "--resume",
            "--device", "cpu"]
    refused = CliRunner().invoke(cli, args)  # one process, here
    assert refused.exit_code != 0 and list_checkpoints(run)[-1].name == "ckpt-00000020.pt"
    assert re.fullmatch(r"pvtbuild: error: \S+ckpt-00000020\.pt: was written by 2 process\(es\) and this run has 1; "
                        r"every rank resumes its own data position exactly only with the world size that wrote them: "
                        r"resume with 2 process\(es\), or pass --allow-inexact-resume\n",
                        refused.output), refused.output
    furthest = max((p["epoch"], p["batch"]) for p in load_checkpoint(run)["positions"])
    lines: list[str] = []
    options = TrainOptions(run, data, steps=22, resume=Resume.YES, allow_inexact_resume=True)
    result = train(load_train_config(cfg_file), options, echo=lines.append)
    assert result.step == 22
    warning = [line for line in lines if "warning" in line]
    assert len(warning) == 1 and f"continues from epoch {furthest[0]}, batch {furthest[1]}" in warning[0]
    assert load_checkpoint(run)["positions"][0]["epoch"] >= furthest[0]


def test_a_checkpoint_holding_one_position_still_resumes_one_process_exactly(tmp_path):
    """Checkpoints from before every rank's position was kept hold `position` alone."""
    cfg = config("swissroll-edm", data={"batch_size": 16})
    once, twice = tmp_path / "once", tmp_path / "twice"
    full = train(cfg, TrainOptions(once, steps=6), echo=quiet)
    train(cfg, TrainOptions(twice, steps=3), echo=quiet)
    path = list_checkpoints(twice)[-1]
    state = torch.load(path, weights_only=True)
    del state["positions"]
    torch.save(state, path)
    assert train(cfg, TrainOptions(twice, steps=6, resume=Resume.YES), echo=quiet).losses == full.losses[3:]
    path = list_checkpoints(twice)[-1]
    state = torch.load(path, weights_only=True)
    del state["positions"]
    state["rank_weights_sha256"] *= 2  # as a 2-process run wrote it: rank 1's position was never kept
    torch.save(state, path)
    with pytest.raises(PvtbuildError, match=r"holds rank 0's data position alone \(written by 2 processes, before "
                                            r"every rank's was kept\); .*: pass --allow-inexact-resume"):
        train(cfg, TrainOptions(twice, steps=7, resume=Resume.YES), echo=quiet)
