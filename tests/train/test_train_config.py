"""Tests of pvtbuild.train.config as a user meets it: `pvtbuild train --config FILE` with a config a
careless or hostile user wrote stops at load with one line naming the file and the key."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import BOMB
from paths import REPO
from pvtbuild.cli import cli

SWISSROLL = (REPO / "pipelines" / "train" / "swissroll-edm.yaml").read_text()


@pytest.mark.parametrize("change, message", [
    (("lr: 1.0e-3", "lr: .inf"), "optim.lr: must be a finite number, got inf"),
    (("formalism: {name: edm,", "formalism: {name: [edm],"), "formalism.name: must be one of"),
    (("seed: 0", "seed: 2020-01-01"), "seed: must be an integer, got '2020-01-01'"),
    (("seed: 0", "seed: 0\nseed: 1"), "not valid YAML (line 5): key 'seed' given twice"),
    (("seed: 0", BOMB), "not a config: its aliases expand it past"),
    (("batch_size: 512", "batch_size: 5120000"), "data.batch_size: must be within 1..65536"),
])
def test_a_bad_training_config_is_one_line_naming_the_file_and_key_and_trains_nothing(tmp_path, change, message):
    config = tmp_path / "bad.yaml"
    config.write_text(SWISSROLL.replace(*change))
    assert config.read_text() != SWISSROLL
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"pvtbuild: error: {config}: {message}") and result.output.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_model_too_wide_to_build_is_one_line_at_load_not_an_allocator_traceback(tmp_path):
    config = tmp_path / "wide.yaml"
    tiny = (REPO / "pipelines" / "train" / "edm-cqt-tiny.yaml").read_text()
    config.write_text(tiny.replace("channels: 8,", "channels: 800000,"))
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"pvtbuild: error: {config}: model.channels: must be within 1..4096, got 800000")
