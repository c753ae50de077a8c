"""Checkpoints (pvtbuild.train.checkpoint) as a careless or hostile user hands them in: a file that is not
whole, whose parts are of the wrong kind, or whose weights, config and data do not fit together is one
line naming the file in `sample` and `train --resume`, never a traceback from deep in torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from paths import REPO
from pvtbuild.cli import cli
from pvtbuild.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOY = REPO / "pipelines" / "train" / "swissroll-edm.yaml"


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line(result, *parts: str) -> None:
    """Exit 2, no traceback, and the output ends with one error line holding `parts` (progress lines may precede)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and result.output.count("pvtbuild: error:") == 1, result.output
    assert lines[-1].startswith("pvtbuild: error: ") and all(p in lines[-1] for p in parts), result.output


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "run"
    result = invoke("train", "--config", TOY, "--out", run, "--steps", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run


def tampered(toy_run: Path, tmp_path: Path, change) -> tuple[Path, Path]:
    """A copy of the toy run whose latest checkpoint's state went through `change` (returns run, checkpoint)."""
    run = shutil.copytree(toy_run, tmp_path / "run")
    path = list_checkpoints(run)[-1]
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return run, path


def _set_hidden(state: dict) -> None:
    state["config"]["model"]["hidden"] = 64


@pytest.mark.parametrize("change, reason", [
    (lambda s: s.pop("optimizer"), "not a whole pvtbuild checkpoint (it has no optimizer)"),
    (lambda s: s.update(config=["not", "a", "mapping"]), "its config is a list, not a dict"),
    (lambda s: s["config"]["optim"].update(lr="fast"), "its stored config: optim.lr: must be a number"),
    (_set_hidden, "cannot sample from it: its weights, config and data facts do not fit together"),
])
def test_a_checkpoint_that_does_not_fit_together_is_one_line_in_sample(toy_run, tmp_path, change, reason):
    run, path = tampered(toy_run, tmp_path, change)
    assert_one_line(invoke("sample", "--checkpoint", run, "--out", tmp_path / "s", "--n", "4"), str(path), reason)


def test_resuming_from_a_checkpoint_without_an_optimizer_is_one_line(toy_run, tmp_path):
    run, path = tampered(toy_run, tmp_path, lambda s: s.pop("optimizer"))
    result = invoke("train", "--config", TOY, "--out", run, "--steps", "3", "--resume", "--device", "cpu")
    assert_one_line(result, str(path), "it has no optimizer")


def test_resuming_from_weights_of_another_model_is_one_line(toy_run, tmp_path):
    def other_weights(state: dict) -> None:
        state["model"] = {k: v[..., :1] for k, v in state["model"].items()}

    run, path = tampered(toy_run, tmp_path, other_weights)
    result = invoke("train", "--config", TOY, "--out", run, "--steps", "3", "--resume", "--device", "cpu")
    assert_one_line(result, str(path), "cannot resume from it")


@pytest.mark.parametrize("args, reason", [
    (["--n", "0"], "--n must be within 1..1000000, got 0"),  # once silently 1000 samples
    (["--n", "2000000"], "--n must be within 1..1000000"),
    (["--cfg-scale", "nan"], "--cfg-scale must be a finite number, got nan"),
])
def test_bad_sample_counts_and_guidance_scales_are_one_line(toy_run, tmp_path, args, reason):
    assert_one_line(invoke("sample", "--checkpoint", toy_run, "--out", tmp_path / "s", *args), reason)
    assert not (tmp_path / "s").exists()


def test_resuming_on_a_dataset_of_another_shape_is_one_line(dataset, tmp_path):
    config = REPO / "pipelines" / "train" / "edm-encodec-tiny.yaml"
    run = tmp_path / "run"
    first = invoke("train", "--config", config, "--data", dataset, "--out", run, "--steps", "1", "--device", "cpu")
    assert first.exit_code == 0, first.output
    path = list_checkpoints(run)[-1]
    state = torch.load(path, weights_only=True)
    state["spec"]["shape"] = [64, 600]  # as a run trained on a dataset of other latents
    torch.save(state, path)
    result = invoke("train", "--config", config, "--data", dataset, "--out", run, "--steps", "2", "--resume",
                    "--device", "cpu")
    assert_one_line(result, "trained on data with shape [64, 600], but --data", "has [128, 600]")
