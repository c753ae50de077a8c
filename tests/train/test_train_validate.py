"""`train/validate.py`: validation while training (train.eval_every), on a toy and on the small real dataset."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_loop import config, log_rows, quiet

from pvtbuild.errors import ConfigError, InputError
from pvtbuild.train import loop as loop_module
from pvtbuild.train import validate as validate_module
from pvtbuild.train.checkpoint import list_checkpoints, load_checkpoint
from pvtbuild.train.data import DatasetSource, dataset_layout
from pvtbuild.train.loop import Resume, TrainOptions, train
from pvtbuild.train.sample import load_for_sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXACT = ("step", "loss", "lr", "grad_norm", "skipped")  # log.csv's columns that do not time anything


def eval_rows(run: Path) -> list[dict[str, str]]:
    with (run / "eval.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def exact_log(run: Path) -> list[tuple[str, ...]]:
    return [tuple(r[k] for k in EXACT) for r in log_rows(run)]


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    return all(torch.equal(sa[key][k], sb[key][k]) for key in ("model", "ema") for k in sa[key])


def test_eval_every_writes_a_row_at_each_multiple_and_changes_no_training_draw(dataset, tmp_path):
    cfg = config("edm-encodec-tiny", data={"batch_size": 1}, train={"eval_every": 2, "eval_batches": 2})
    plain, validated = tmp_path / "plain", tmp_path / "validated"
    train(config("edm-encodec-tiny", data={"batch_size": 1}), TrainOptions(plain, dataset, steps=5), echo=quiet)
    train(cfg, TrainOptions(validated, dataset, steps=5), echo=quiet)
    rows = eval_rows(validated)
    assert [int(r["step"]) for r in rows] == [2, 4] and list(rows[0]) == ["step", "valid_loss"]
    assert all(np.isfinite(float(r["valid_loss"])) for r in rows)
    assert exact_log(validated) == exact_log(plain) and same_weights(validated, plain)
    assert load_checkpoint(validated)["rng"]["cpu"].equal(load_checkpoint(plain)["rng"]["cpu"])
    assert not (plain / "eval.csv").exists()


def test_the_valid_loss_is_the_same_for_the_same_weights_at_every_call(dataset, tmp_path):
    """Fixed batches and draws: two validations of one set of weights agree exactly (so points compare)."""
    cfg = config("edm-encodec-tiny", data={"batch_size": 1, "crop_seconds": 2.0}, guidance={"p_feature": 0.5},
                 train={"eval_every": 1, "eval_batches": 2})
    run = tmp_path / "run"
    train(cfg, TrainOptions(run, dataset, steps=1), echo=quiet)
    sampler = load_for_sampling(run, torch.device("cpu"))  # the EMA weights, eval mode
    source = DatasetSource(cfg.data, dataset, dataset_layout(cfg.data, dataset), sampler.stats, cfg.seed)
    validator = validate_module.Validator(cfg, source, sampler.formalism, torch.device("cpu"), amp=False)
    first = validator.run(1, sampler.net, sampler.net).values["valid_loss"]
    torch.manual_seed(123)  # the global RNG's state does not matter either
    assert validator.run(1, sampler.net, sampler.net).values["valid_loss"] == first


def test_a_run_resumed_across_a_validation_matches_the_uninterrupted_one_bit_for_bit(dataset, tmp_path):
    cfg = config("edm-encodec-tiny", data={"batch_size": 1, "crop_seconds": 2.0},
                 train={"eval_every": 3, "eval_batches": 1, "checkpoint_every": 4})
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(cfg, TrainOptions(once, dataset, steps=8), echo=quiet)
    train(cfg, TrainOptions(twice, dataset, steps=4), echo=quiet)  # validates at 3, stops at 4
    train(cfg, TrainOptions(twice, dataset, steps=8, resume=Resume.YES), echo=quiet)  # validates at 6
    assert (once / "eval.csv").read_text() == (twice / "eval.csv").read_text()
    assert [int(r["step"]) for r in eval_rows(once)] == [3, 6]
    assert exact_log(once) == exact_log(twice) and same_weights(once, twice)


def test_a_resume_keeps_only_eval_rows_up_to_its_checkpoint(tmp_path):
    cfg = config("swissroll-iadb", train={"checkpoint_every": 3, "eval_every": 2})
    run = tmp_path / "run"
    train(cfg, TrainOptions(run, steps=5), echo=quiet)  # checkpoints at 3 and 5, validations at 2 and 4
    before = eval_rows(run)
    list_checkpoints(run)[-1].unlink()  # as if killed after step 4's validation and before step 5's checkpoint
    train(cfg, TrainOptions(run, steps=6, resume=Resume.YES), echo=quiet)
    after = eval_rows(run)
    assert [int(r["step"]) for r in after] == [2, 4, 6] and after[:2] == before


def test_validation_settings_are_one_line_errors_naming_the_key(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.eval_clips: clips are judged at each validation"):
        config("edm-encodec-tiny", train={"eval_clips": 2})
    with pytest.raises(ConfigError, match=r"^train\.eval_clips: toy points have no audio"):
        config("swissroll-edm", train={"eval_every": 2, "eval_clips": 2})
    with pytest.raises(ConfigError, match=r"^train\.eval_every: must be >= 0"):
        config("edm-encodec-tiny", train={"eval_every": -1})
    no_valid = tmp_path / "ds"
    shutil.copytree(dataset, no_valid, ignore=shutil.ignore_patterns("valid"))
    cfg = config("edm-encodec-tiny", data={"batch_size": 1}, train={"eval_every": 2})
    with pytest.raises(InputError, match=r"^train\.eval_every: validation reads the valid split.*no valid-"):
        train(cfg, TrainOptions(tmp_path / "run", no_valid, steps=2), echo=quiet)
    assert not list_checkpoints(tmp_path / "run")  # stopped before the first step


class Board:
    """A stand-in for TensorBoard's SummaryWriter (not installed here) that records what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_judged_clips_add_the_judges_keys_and_tensorboard_gets_the_scalars_a_clip_and_its_png(dataset, tmp_path,
                                                                                          monkeypatch):
    board = Board()
    monkeypatch.setattr(loop_module, "_tensorboard", lambda run_dir: board)
    cfg = config("edm-encodec-tiny", data={"batch_size": 1, "crop_seconds": 2.0},
                 train={"eval_every": 2, "eval_batches": 1, "eval_clips": 2, "sample_steps": 2})
    run = tmp_path / "run"
    train(cfg, TrainOptions(run, dataset, steps=2), echo=quiet)
    keys = validate_module.JUDGE_KEYS
    assert keys and all(k.startswith("crepe_") for k in keys)
    (row,) = eval_rows(run)
    assert list(row) == ["step", "valid_loss", *keys] and row["step"] == "2"
    values = {k: float(row[k]) for k in keys}  # nan where the judge has no value (the untrained model's noise)
    assert all(np.isnan(v) or 0.0 <= v <= 1.0 for v in values.values()), values
    scalars = {args[0]: args[1:] for name, args, _ in board.calls
               if name == "add_scalar" and args[0].startswith("eval/")}
    assert set(scalars) == {f"eval/{k}" for k in ("valid_loss", *keys)} and scalars["eval/valid_loss"][1] == 2
    (audio,) = [(args, kwargs) for name, args, kwargs in board.calls if name == "add_audio"]
    assert audio[0][1].shape == (1, 8 * 24000) and audio[1]["sample_rate"] == 24000
    (image,) = [(args, kwargs) for name, args, kwargs in board.calls if name == "add_image"]
    assert image[0][1].ndim == 3 and image[0][1].shape[2] == 3 and image[1]["dataformats"] == "HWC"
