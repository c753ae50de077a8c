"""`pvtbuild export` (pvtbuild.train.export) and sampling's bf16 autocast: an export samples what its run samples,
loads without unpickling, and `sample` / `evaluate` take it in place of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train_loop import config, quiet

from pvtbuild.cli import cli
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.train.checkpoint import load_checkpoint
from pvtbuild.train.export import export_run
from pvtbuild.train.loop import TrainOptions, train
from pvtbuild.train.sample import load_for_sampling, sampling_autocast

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export-toy") / "run"
    train(config("swissroll-edm"), TrainOptions(run, steps=3), echo=quiet)
    return run


@pytest.fixture(scope="module")
def real_run(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export-real") / "run"
    train(config("edm-encodec-tiny", data={"batch_size": 2}), TrainOptions(run, dataset, steps=2), echo=quiet)
    return run


def test_a_toy_export_holds_the_ema_weights_and_samples_the_same_bytes_as_its_run(toy_run, tmp_path):
    res = invoke("export", "--checkpoint", toy_run, "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert names == ["config.yaml", "export.json", "model.safetensors"]  # a toy has no dataset.json
    assert not list(tmp_path.glob(".ex.tmp-*"))  # the temporary folder was renamed
    state, sampler = load_checkpoint(toy_run), load_for_sampling(tmp_path / "ex", torch.device("cpu"))
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(sampler.net.state_dict()[k], v) for k, v in ema.items())
    assert not all(torch.equal(state["model"][k], v) for k, v in ema.items())  # the EMA, not the raw weights
    record = json.loads((tmp_path / "ex" / "export.json").read_text())
    assert record["step"] == 3 and record["spec"]["shape"] == [2] and record["stats"] == state["stats"]
    for src, out in ((toy_run, "a"), (tmp_path / "ex", "b")):
        res = invoke("sample", "--checkpoint", src, "--out", tmp_path / out, "--n", "16", "--steps", "3")
        assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "samples.npy").read_bytes() == (tmp_path / "b" / "samples.npy").read_bytes()


def test_loading_an_export_unpickles_nothing(toy_run, tmp_path, monkeypatch):
    export_run(toy_run, tmp_path / "ex")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    assert load_for_sampling(tmp_path / "ex", torch.device("cpu")).step == 3


def test_an_export_is_never_overwritten_and_a_changed_weights_file_is_one_line(toy_run, tmp_path):
    export_run(toy_run, tmp_path / "ex")
    with pytest.raises(PvtbuildError, match="already exists"):
        export_run(toy_run, tmp_path / "ex")
    weights = tmp_path / "ex" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    res = invoke("sample", "--checkpoint", tmp_path / "ex", "--out", tmp_path / "s")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "model.safetensors: its sha256 is not the one export.json records" in res.output
    (tmp_path / "ex" / "export.json").write_text("{}")
    with pytest.raises(InputError, match="export.json: not a pvtbuild export"):
        load_for_sampling(tmp_path / "ex", torch.device("cpu"))


@pytest.mark.slow  # ~1 min on a loaded 2-core box, most of it evaluate's judges (CREPE, EnCodec embeddings)
def test_a_real_format_export_samples_the_same_wavs_alone_and_evaluate_accepts_it(real_run, dataset, tmp_path):
    res = invoke("export", "--checkpoint", real_run, "--out", tmp_path / "ex")
    assert res.exit_code == 0, res.output
    copied = json.loads((tmp_path / "ex" / "dataset.json").read_text())
    assert copied == json.loads((dataset / "dataset.json").read_text())
    outs = {}
    for src, out in ((real_run, "a"), (tmp_path / "ex", "b")):  # the export needs no --data: its dataset.json decodes
        res = invoke("sample", "--checkpoint", src, "--out", tmp_path / out, "--n", "1", "--steps", "2", "--bpm", "120",
                     "--instrument", "piano", "--no-plot")
        assert res.exit_code == 0, res.output
        outs[out] = {p.name: p.read_bytes() for p in (tmp_path / out).iterdir() if p.suffix in (".wav", ".npy")}
    assert sorted(outs["a"]) == ["0000.npy", "0000.wav"] and outs["a"] == outs["b"]
    res = invoke("evaluate", "--checkpoint", tmp_path / "ex", "--data", dataset, "--n", "2", "--split", "train",
                 "--steps", "1", "--out", tmp_path / "e", "--judge-model", "tiny")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(tmp_path / "ex") and metrics["step"] == 2


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the context is built, never entered, here
def test_sampling_autocasts_the_network_only_on_cuda_with_bf16_training():
    bf16, plain = config("swissroll-edm"), config("swissroll-edm", train={"amp": "none"})
    assert bf16.train.amp == "bf16"
    cuda = sampling_autocast(bf16, torch.device("cuda", 0))
    assert isinstance(cuda, torch.autocast) and cuda.device == "cuda" and cuda.fast_dtype == torch.bfloat16
    for cfg, device in ((bf16, torch.device("cpu")), (plain, torch.device("cuda", 0))):
        assert not isinstance(sampling_autocast(cfg, device), torch.autocast)


def test_init_from_an_export_starts_from_its_ema_weights(toy_run, tmp_path):
    export_run(toy_run, tmp_path / "ex")
    lines: list[str] = []
    cfg = config("swissroll-edm", optim={"lr": 1e-9, "warmup_steps": 0})  # one step that barely moves
    train(cfg, TrainOptions(tmp_path / "ft", steps=1, init_from=tmp_path / "ex"), echo=lines.append)
    assert any("fine-tuning from" in line and "config keys changed: optim.lr, optim.warmup_steps" in line
               for line in lines)
    ema = load_for_sampling(tmp_path / "ex", torch.device("cpu")).net.state_dict()
    ft = load_checkpoint(tmp_path / "ft")
    assert all(torch.allclose(ft["model"][k], v, atol=1e-8) for k, v in ema.items())
    assert int(ft["ema"]["n_averaged"]) == int(load_checkpoint(toy_run)["ema"]["n_averaged"]) + 1
