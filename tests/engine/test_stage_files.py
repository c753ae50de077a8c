"""Tests of stage files and their records (pvtbuild.engine.stage_files): shard records read back from disk."""

from __future__ import annotations

import json

import pytest

from pvtbuild.engine.manifest import ManifestRow
from pvtbuild.engine.stage_files import ShardRecord, read_record, record_path, write_record


def _record(**changes) -> dict:
    row = {"id": "231052b4b5b4dfd8", "stage": "render", "status": "ok", "inputs": {}, "params": "p",
           "outputs": {}, "info": {}}
    return {**ShardRecord("render", 0, "shard-00000.npz", "0" * 64, "p", [ManifestRow.from_dict(row)]).to_dict(),
            **changes}


def test_a_written_record_reads_back(tmp_path):
    rec = write_record(tmp_path, ShardRecord.from_dict(_record()))
    assert read_record(tmp_path, 0) == rec
    assert isinstance(rec.rows[0], ManifestRow) and rec.rows[0].id == "231052b4b5b4dfd8"


def test_a_failed_record_is_stored_as_its_params_marked_failed_and_reads_back_failed(tmp_path):
    """On disk a failed task's record is what it always was (params "failed:<params>", no other key)."""
    rec = write_record(tmp_path, ShardRecord("render", 0, "", "", "p", [], failed=True))
    stored = json.loads(record_path(tmp_path, 0).read_text())
    assert stored == {"stage": "render", "index": 0, "file": "", "sha256": "", "params": "failed:p", "rows": [],
                      "inputs": ""}
    back = read_record(tmp_path, 0)
    assert back == rec and back.failed and back.params == "p"


@pytest.mark.parametrize("changes", [
    {"file": "../../outside.npz"},
    {"file": "../../../outside.npz"},
    {"file": "/etc/passwd"},
    {"rows": [{"id": "../../../PWNED", "stage": "render", "status": "ok"}]},
    {"rows": [["not", "a", "row"]]},
    {"unknown": 1},
])
def test_a_record_naming_a_file_outside_its_folder_or_a_path_as_id_is_not_trusted(tmp_path, changes):
    record_path(tmp_path, 0).write_text(json.dumps(_record(**changes)))
    assert read_record(tmp_path, 0) is None  # the shard is redone, nothing read or written through it


def test_the_shard_stages_records_naming_dataset_files_beside_their_folder_are_trusted(tmp_path):
    """The shard stage keeps its records in DATASET/.shard and its files in DATASET/train: a check that
    refused `../train/...` would redo every shard on every rerun."""
    stage_dir = tmp_path / "dataset" / ".shard"
    stage_dir.mkdir(parents=True)
    rec = write_record(stage_dir, ShardRecord.from_dict(_record(file="../train/train-00000-of-00001.tfrecord")))
    assert read_record(stage_dir, 0) == rec
