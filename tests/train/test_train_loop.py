"""The training loop, checkpoints and CLI: real tiny models on toys and on a real small dataset (CPU)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pvtbuild.cli import cli
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import ConfigError, InputError, PvtbuildError
from pvtbuild.train import loop as loop_module
from pvtbuild.train.build import build_backbone, build_formalism
from pvtbuild.train.checkpoint import list_checkpoints, load_checkpoint
from pvtbuild.train.config import load_train_config, train_config_from_dict
from pvtbuild.train.data import DatasetSource, Position, dataset_layout, mix_seed
from pvtbuild.train.loop import LOG_COLUMNS, Resume, TrainOptions, train
from pvtbuild.train.sample import sample_toy
from pvtbuild.train.spec import DataStats

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIGS = REPO / "pipelines" / "train"
TOYS = ("swissroll-edm", "swissroll-ddpm", "swissroll-iadb", "swissroll-discdpm")


def config(name: str, **sections: dict) -> object:
    """A config of pipelines/train with some keys changed (`data={"batch_size": 2}`)."""
    data = yaml.safe_load((TRAIN_CONFIGS / f"{name}.yaml").read_text())
    data["name"] = name
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return train_config_from_dict(data)


def log_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "log.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def quiet(*args, **kwargs) -> None:
    pass


# --- toys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOYS)
def test_every_toy_config_trains_logs_checkpoints_and_samples_through_the_cli(name, tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--config", str(TRAIN_CONFIGS / f"{name}.yaml"), "--out", str(run),
                                   "--steps", "12"])
    assert res.exit_code == 0, res.output
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "loss"] and tuple(header) == LOG_COLUMNS
    assert [int(r["step"]) for r in log_rows(run)] == list(range(1, 13))
    state = torch.load(list_checkpoints(run)[-1], weights_only=True)  # plain tensors and containers only
    assert state["step"] == 12
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s"), "--n", "64",
                                   "--steps", "8"])
    assert res.exit_code == 0, res.output
    samples = np.load(tmp_path / "s" / "samples.npy")
    assert samples.shape == (64, 2)
    if name.endswith("discdpm"):
        assert samples.dtype == np.int64 and samples.min() >= 0 and samples.max() <= 39
    else:
        assert samples.dtype == np.float32 and np.isfinite(samples).all()


def test_sampling_is_reproducible_from_its_seed_and_differs_across_seeds(tmp_path):
    run = tmp_path / "run"
    train(config("swissroll-iadb"), TrainOptions(run, steps=3), echo=quiet)
    a = np.load(sample_toy(run, tmp_path / "a", 32, 4, seed=1))
    b = np.load(sample_toy(run, tmp_path / "b", 32, 4, seed=1))
    c = np.load(sample_toy(run, tmp_path / "c", 32, 4, seed=2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --- exact resume ---------------------------------------------------------------------------


def test_ten_plus_ten_resumed_steps_equal_twenty_bit_for_bit_on_a_toy(tmp_path):
    cfg = config("swissroll-edm", data={"batch_size": 64})
    once, twice = tmp_path / "once", tmp_path / "twice"
    full = train(cfg, TrainOptions(once, steps=20), echo=quiet)
    first = train(cfg, TrainOptions(twice, steps=10), echo=quiet)
    second = train(cfg, TrainOptions(twice, steps=20, resume=Resume.YES), echo=quiet)
    assert first.losses + second.losses == full.losses  # floats compared exactly
    assert [r["loss"] for r in log_rows(twice)] == [r["loss"] for r in log_rows(once)]
    a, b = load_checkpoint(once), load_checkpoint(twice)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_resume_on_a_dataset_continues_at_the_same_data_position_bit_for_bit(dataset, tmp_path):
    cfg = config("edm-encodec-tiny", data={"batch_size": 1})  # 1 per batch: an epoch ends within the run
    once, twice = tmp_path / "once", tmp_path / "twice"
    full = train(cfg, TrainOptions(once, dataset, steps=8), echo=quiet)
    train(cfg, TrainOptions(twice, dataset, steps=4), echo=quiet)
    rest = train(cfg, TrainOptions(twice, dataset, steps=8, resume=Resume.YES), echo=quiet)
    assert rest.losses == full.losses[4:]
    a, b = load_checkpoint(once), load_checkpoint(twice)
    assert a["position"] == b["position"] and a["position"]["epoch"] >= 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_refuses_a_changed_config_naming_the_first_differing_key(tmp_path):
    run = tmp_path / "run"
    train(config("swissroll-ddpm"), TrainOptions(run, steps=2), echo=quiet)
    with pytest.raises(ConfigError, match=r"^optim\.lr: differs .*0\.001 there, 0\.002 now"):
        train(config("swissroll-ddpm", optim={"lr": 2e-3}), TrainOptions(run, steps=4, resume=Resume.YES), echo=quiet)
    # steps may change
    train(config("swissroll-ddpm", train={"steps": 99}), TrainOptions(run, steps=4, resume=Resume.YES), echo=quiet)


def test_a_run_directory_with_checkpoints_is_never_overwritten_without_resume(tmp_path):
    run = tmp_path / "run"
    train(config("swissroll-ddpm"), TrainOptions(run, steps=2), echo=quiet)
    with pytest.raises(PvtbuildError, match="already holds checkpoints.*--resume"):
        train(config("swissroll-ddpm"), TrainOptions(run, steps=4), echo=quiet)
    with pytest.raises(PvtbuildError, match="no checkpoint to resume"):
        train(config("swissroll-ddpm"), TrainOptions(tmp_path / "new", steps=4, resume=Resume.YES), echo=quiet)
    auto = TrainOptions(tmp_path / "auto", steps=2, resume=Resume.AUTO)
    assert train(config("swissroll-ddpm"), auto, echo=quiet).step == 2  # starts
    again = TrainOptions(run, steps=3, resume=Resume.AUTO)
    assert train(config("swissroll-ddpm"), again, echo=quiet).losses.__len__() == 1  # resumes


def test_a_resume_keeps_only_log_rows_up_to_its_checkpoint(tmp_path):
    cfg = config("swissroll-iadb", train={"checkpoint_every": 3})
    run = tmp_path / "run"
    train(cfg, TrainOptions(run, steps=5), echo=quiet)  # checkpoints at 3 and 5
    list_checkpoints(run)[-1].unlink()  # as if killed after step 5's log row, before its checkpoint
    train(cfg, TrainOptions(run, steps=6, resume=Resume.YES), echo=quiet)
    assert [int(r["step"]) for r in log_rows(run)] == [1, 2, 3, 4, 5, 6]


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pvtbuild.cli", "train", "--config", str(TRAIN_CONFIGS / "swissroll-edm.yaml"),
           "--out", str(run), "--steps", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "log.csv").exists() and len((run / "log.csv").read_text().splitlines()) > 3):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by signal" in err and "--resume" in err
    step = load_checkpoint(run)["step"]
    assert 3 <= step < 100000 and int(log_rows(run)[-1]["step"]) == step


# --- failures are counted, not trained on ------------------------------------------------------


def test_a_non_finite_loss_is_counted_and_its_step_skipped(tmp_path, monkeypatch):
    """Fault injection on our own code: the real formalism's loss is made NaN at the 3rd step."""
    real = loop_module.build_formalism

    class NaNAtThird:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def loss(self, *args):
            self.calls += 1
            loss = self.inner.loss(*args)
            return loss * float("nan") if self.calls == 3 else loss

    cfg = config("swissroll-edm")
    monkeypatch.setattr(loop_module, "build_formalism", lambda *a: NaNAtThird(real(*a)))
    run2 = tmp_path / "run2"
    result = train(cfg, TrainOptions(run2, steps=3), echo=quiet)
    assert result.skipped == 1
    rows = log_rows(run2)
    assert rows[2]["loss"] == "nan" and rows[2]["skipped"] == "1"
    ckpt = load_checkpoint(run2)
    assert ckpt["skipped"] == 1
    monkeypatch.setattr(loop_module, "build_formalism", real)
    ref = train(cfg, TrainOptions(tmp_path / "ref", steps=2), echo=quiet)  # the same first two steps, no NaN
    assert ref.losses == result.losses[:2]
    two = load_checkpoint(tmp_path / "ref")["model"]
    assert all(torch.equal(ckpt["model"][k], two[k]) for k in two)  # step 3 changed no weight


# --- data and configs ---------------------------------------------------------------------------


def test_dry_run_prints_the_parameter_count_and_a_batch_for_every_format(dataset, tmp_path):
    for name, shape in (("edm-encodec-tiny", "[4, 128, 600]"), ("discdpm-disc-tiny", "[4, 16, 600]"),
                        ("edm-cqt-tiny", "[2, 2, 216, 1921]")):
        res = CliRunner().invoke(cli, ["train", "--config", str(TRAIN_CONFIGS / f"{name}.yaml"), "--data",
                                       str(dataset), "--out", str(tmp_path / name), "--dry-run"])
        assert res.exit_code == 0, res.output
        assert "learnable parameters" in res.output and f"x0 {shape}" in res.output
        assert "local controls" in res.output
        assert not (tmp_path / name).exists()


def test_a_config_asking_for_what_the_dataset_lacks_stops_naming_both(dataset, tmp_path):
    small = tmp_path / "ds"
    shutil.copytree(dataset, small)
    shapes = (small / "shapes.txt").read_text().splitlines()
    (small / "shapes.txt").write_text("\n".join(s for s in shapes if not s.startswith(("cqt ", "beat_"))) + "\n")
    with pytest.raises(InputError, match=r"has no 'cqt' array .*data\.format: cqt"):
        train(config("edm-cqt-tiny"), TrainOptions(tmp_path / "r1", small, steps=1), echo=quiet)
    with pytest.raises(InputError, match=r"has no control 'beat_75hz'.*data\.controls"):
        train(config("edm-encodec-tiny", data={"controls": ["velocity", "beat"]}),
              TrainOptions(tmp_path / "r2", small, steps=1), echo=quiet)


def test_a_bad_training_config_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, message in (
        ("formalism: {name: edm}\noptim: {lr: -1}\n", "optim.lr: must be > 0"),
        ("formalism: {name: edm}\ndata: {controls: [loudness]}\n", "data.controls: unknown control 'loudness'"),
        ("formalism: {name: flow}\n", "formalism.name: must be one of"),
        ("formalism: {name: edm}\ndata: {format: disc}\n", "data.format: formalism edm cannot model format 'disc'"),
        ("formalism: {name: edm, rho: oops}\n", "formalism.rho"),
    ):
        bad.write_text(text)
        res = CliRunner().invoke(cli, ["train", "--config", str(bad), "--out", str(tmp_path / "r")])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_every_shipped_training_config_loads():
    names = sorted(p.stem for p in TRAIN_CONFIGS.glob("*.yaml"))
    assert set(TOYS) <= set(names) and "edm-encodec-tiny" in names
    for name in names:
        load_train_config(TRAIN_CONFIGS / f"{name}.yaml")


def test_two_ranks_read_disjoint_files_that_cover_the_split_each_epoch(dataset):
    cfg = config("edm-encodec-tiny", data={"batch_size": 1})
    layout = dataset_layout(cfg.data, dataset)
    ids = []
    for rank in (0, 1):
        source = DatasetSource(cfg.data, dataset, layout, DataStats(), seed=0, rank=rank, world_size=2)
        epoch0 = []
        for pos, batch in source.batches(Position()):
            if pos.epoch > 0:
                break
            epoch0 += batch.ids
        ids.append(epoch0)
    every = sorted(r["id"] for r in TFRecordIterableDataset(dataset, "train", names=["id"]))
    assert set(ids[0]).isdisjoint(ids[1]) and ids[0] and ids[1]
    assert sorted(ids[0] + ids[1]) == every


def test_controls_are_the_datasets_and_resampled_to_the_data_grid(dataset):
    cfg = config("edm-cqt-tiny", data={"batch_size": 1, "control_grid": "75hz", "controls": ["velocity"]})
    layout = dataset_layout(cfg.data, dataset)
    source = DatasetSource(cfg.data, dataset, layout, DataStats(), seed=0)
    _, batch = next(source.batches(Position()))
    assert batch.controls.local.shape == (1, 1, 1921)
    rec = next(r for r in TFRecordIterableDataset(dataset, "train", names=["id", "velocity_75hz"])
               if r["id"] == batch.ids[0])
    v75 = rec["velocity_75hz"].numpy()
    got = batch.controls.local[0, 0].numpy()
    assert set(np.unique(got)) <= set(np.unique(v75))  # nearest-frame resampling, no invented values
    assert got[0] == v75[0] and got[-1] == v75[-1]


# --- learning and several processes -----------------------------------------------------------


def _mean_loss(cfg, state: dict, dataset: Path, n: int = 6) -> float:
    """The loss of fixed batches and fixed noise under the weights in `state` (model, not EMA)."""
    layout = dataset_layout(cfg.data, dataset)
    stats = DataStats(**state["stats"])
    net = build_backbone(cfg, layout.spec)
    net.load_state_dict(state["model"])
    formalism = build_formalism(cfg, layout.spec, stats)
    source = DatasetSource(cfg.data, dataset, layout, stats, seed=0)
    total = 0.0
    with torch.no_grad():
        for i, (_, batch) in zip(range(n), source.batches(Position())):
            total += float(formalism.loss(net, batch.x0, batch.controls, torch.Generator().manual_seed(i)))
    return total / n


# (config, batch, steps, lr, required ratio of the loss after to before): the 1024-class DiscDPM costs ~0.3 s
# a step here ([B, 16, 1024, 600] logits) and its KL, averaged over 1000 timesteps, moves by ~2 % in 16 steps;
# EDM's loss moves by ~12 % in 30. Fixed batches, noise and threads make both comparisons deterministic.
LEARNING = [("edm-encodec-tiny", 2, 30, 1e-3, 0.93), ("discdpm-disc-tiny", 1, 16, 1e-2, 0.99)]


@pytest.mark.parametrize("name,batch,steps,lr,ratio", LEARNING)
def test_tiny_real_configs_learn_on_a_real_dataset(name, batch, steps, lr, ratio, dataset, tmp_path,
                                                  one_torch_thread):
    cfg = config(name, data={"batch_size": batch}, optim={"lr": lr, "warmup_steps": 5}, guidance={"p_feature": 0.0},
                 train={"checkpoint_every": 1})
    run = tmp_path / "run"
    train(cfg, TrainOptions(run, dataset, steps=steps), echo=quiet)
    first, last = load_checkpoint(list_checkpoints(run)[0]), load_checkpoint(run)
    torch.manual_seed(mix_seed(cfg.seed, 0))
    init = {"model": build_backbone(cfg, dataset_layout(cfg.data, dataset).spec).state_dict(), "stats": last["stats"]}
    before, after = _mean_loss(cfg, init, dataset, n=4), _mean_loss(cfg, last, dataset, n=4)
    assert after < ratio * before, (before, after)
    assert first["step"] == steps - 2 and last["step"] == steps  # the newest 3 kept


def test_two_gloo_processes_under_torchrun_keep_identical_weights(dataset, tmp_path):
    run = tmp_path / "run"
    cfg_file = tmp_path / "tiny.yaml"
    data = yaml.safe_load((TRAIN_CONFIGS / "edm-encodec-tiny.yaml").read_text())
    data["data"]["batch_size"] = 1  # the small split gives each rank only a couple of examples
    data["train"]["eval_every"] = 2  # rank 0 validates while rank 1 waits at a barrier
    cfg_file.write_text(yaml.safe_dump(data))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pvtbuild.cli", "train",
           "--config", str(cfg_file), "--data", str(dataset), "--out", str(run), "--steps", "4", "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, "\n".join(s for s in res.stderr.splitlines() if "%|" not in s)[-3000:]
    state = load_checkpoint(run)
    digests = state["rank_weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert state["step"] == 4 and "2 processes" in res.stderr
    assert len(log_rows(run)) == 4  # rank 0 alone writes
    assert [line.split(",")[0] for line in (run / "eval.csv").read_text().splitlines()] == ["step", "2", "4"]


def test_a_checkpoint_from_before_a_config_key_existed_still_resumes(tmp_path):
    """Keys added since (data.crop_seconds, train.eval_*) read as their defaults, not as a changed config."""
    run = tmp_path / "run"
    train(config("swissroll-ddpm"), TrainOptions(run, steps=2), echo=quiet)
    path = list_checkpoints(run)[-1]
    state = torch.load(path, weights_only=True)
    del state["config"]["data"]["crop_seconds"], state["config"]["train"]["eval_every"]
    torch.save(state, path)
    assert train(config("swissroll-ddpm"), TrainOptions(run, steps=3, resume=Resume.YES), echo=quiet).step == 3
