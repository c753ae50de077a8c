"""Tests of pvtbuild.config.yaml_file: config files a careless or hostile user hands in (a YAML bomb,
duplicate keys, dates, binary, bytes that are not UTF-8) give one line naming the file, and nothing hangs."""

from __future__ import annotations

import pytest

from conftest import BOMB
from pvtbuild.config.yaml_file import MAX_NODES, load_config_yaml
from pvtbuild.errors import ConfigError


def load(tmp_path, text: str | bytes):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_config_yaml(path), path


def refused(tmp_path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: ") and "\n" not in message and len(message) < 300
    return message


def test_a_yaml_bomb_is_refused_before_it_is_expanded(tmp_path):
    assert len(BOMB) < 500
    assert "aliases expand it past" in refused(tmp_path, BOMB)


def test_a_document_that_contains_itself_through_an_alias_is_refused(tmp_path):
    assert "an alias refers to a node that contains it" in refused(tmp_path, "a: &a [1, *a]\n")


def test_aliases_that_expand_to_a_normal_size_still_load(tmp_path):
    data, _ = load(tmp_path, "base: &b {rate: 75, frames: 600}\ngrids: [*b, *b]\n")
    assert data["grids"] == [{"rate": 75, "frames": 600}] * 2
    assert MAX_NODES >= 10_000


def test_a_key_given_twice_is_refused_naming_its_line_instead_of_keeping_the_last(tmp_path):
    text = "select:\n  clip_seconds: 8\n  clip_seconds: 4\n"
    assert "(line 3): key 'clip_seconds' given twice" in refused(tmp_path, text)


@pytest.mark.parametrize("text, reason", [
    ("seed: !!binary aGVsbG8=\n", "(line 1): binary values are not config data"),
    ("seed: !!set {a, b}\n", "(line 1): set values are not config data"),
    (b"name: \xff\xfe\n", "not UTF-8 text (byte 6"),
    ("a: [" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_values_no_config_takes_and_bytes_that_are_not_text_are_one_line(tmp_path, text, reason):
    assert reason in refused(tmp_path, text)


def test_a_date_stays_the_string_it_was_written_as(tmp_path):
    data, _ = load(tmp_path, "seed: 2020-01-01\n")
    assert data == {"seed": "2020-01-01"}
