"""Tests of the run planner (pvtbuild.engine.planning) on the in-process executor and tiny tasks:
the environment quorum, resume (what is reused, what is redone) and upstream (`After`s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow
from pvtbuild.engine.planning import ENVIRONMENT_QUORUM, each_shard, plan_stage, run_stages
from pvtbuild.engine.stage_files import ShardRecord, read_record, record_path, write_record, write_shard_file
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import After, Task
from pvtbuild.errors import PvtbuildError

SYNC = Executor(None, "in-process")
CALLS: list[str] = []  # which task ran, in order (in-process tasks run in this process)


def make(index: int, item: int, stage_dir: str, stage: str = "a", params: str = "p") -> ShardRecord:
    """A task of stage `stage`: one stage file holding `item`, and its record."""
    CALLS.append(f"{stage}{index}")
    if item < 0:
        raise RuntimeError(f"cannot make item {item}")  # the same reason for every negative item
    if item >= 100:
        raise ValueError("broken input" if item == 100 else "another kind of breakage")
    file, sha = write_shard_file(Path(stage_dir), index, {"x": np.array([item])})
    row = ManifestRow(f"clip{index}", stage, "ok", {"item": item}, params)
    return write_record(Path(stage_dir), ShardRecord(stage, index, file, sha, params, [row]))


def follow(index: int, upstream: ShardRecord, stage_dir: str) -> ShardRecord:
    """A task of stage "b" made from stage "a"'s record of the same shard (it must be a record by now)."""
    assert isinstance(upstream, ShardRecord)
    return make(index, upstream.index * 10, stage_dir, stage="b")


def failed_rows(group, status: str) -> list[ManifestRow]:
    return [ManifestRow("clipx", "a", status, {}, "p")]


def plan(stage_dir: Path, groups: list, params: str = "p", inputs_of=None):
    return plan_stage(stage_dir, params, groups,
                      each_shard(lambda i, item: Task(f"a-{i}", make, (i, item, str(stage_dir), "a", params))),
                      failed_rows, StageSummary("a"), inputs_of=inputs_of)


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()


# --- the environment quorum -------------------------------------------------------------------------


def test_first_tasks_failing_the_same_way_stop_the_run_and_record_nothing(tmp_path):
    run = plan(tmp_path, [-1, -2, -3, -4, -5])
    with pytest.raises(PvtbuildError, match=f"its first {ENVIRONMENT_QUORUM} tasks all failed the same way"):
        run_stages(SYNC, [run])
    assert CALLS == ["a0", "a1", "a2"]  # stopped at the quorum, the others never ran
    assert not list(tmp_path.glob("shard-*.json"))  # so a rerun after the fix redoes them


def test_failures_for_different_reasons_are_recorded_as_failed_shards_and_the_run_goes_on(tmp_path):
    run = plan(tmp_path, [100, 101, 3, 4])
    [summary] = run_stages(SYNC, [run])
    assert CALLS == ["a0", "a1", "a2", "a3"]
    failed = read_record(tmp_path, 0)
    assert failed.failed and failed.params == "p" and failed.file == ""
    assert failed.rows[0].status == "skipped: task failed: ValueError: broken input"
    assert json.loads(record_path(tmp_path, 0).read_text())["params"] == "failed:p"  # as stored
    assert read_record(tmp_path, 1).failed
    assert [read_record(tmp_path, i).failed for i in (2, 3)] == [False, False]
    assert summary.ok == 2 and len(summary.failed_shards) == 2
    assert (tmp_path / "manifest.jsonl").is_file()


def test_a_failure_after_a_success_is_recorded_not_taken_for_the_environment(tmp_path):
    run = plan(tmp_path, [1, -1, -2, -3])
    [summary] = run_stages(SYNC, [run])
    assert len(CALLS) == 4 and len(summary.failed_shards) == 3


# --- resume ------------------------------------------------------------------------------------------


def test_a_finished_intact_shard_is_reused_and_only_the_others_get_tasks(tmp_path):
    run_stages(SYNC, [plan(tmp_path, [1, 2, 3])])
    CALLS.clear()
    again = plan(tmp_path, [1, 2, 3])
    assert again.tasks == [] and sorted(again.records) == [0, 1, 2] and again.summary.reused == 3

    (tmp_path / "shard-00001.npz").write_bytes(b"damaged")  # the record's sha256 no longer holds
    rec = read_record(tmp_path, 2)
    write_record(tmp_path, ShardRecord(rec.stage, rec.index, rec.file, rec.sha256, "other", rec.rows))
    third = plan(tmp_path, [1, 2, 3])
    assert [t.key for t in third.tasks] == ["a-1", "a-2"]
    run_stages(SYNC, [third])
    assert CALLS == ["a1", "a2"] and read_record(tmp_path, 2).params == "p"


def test_a_shard_whose_record_is_missing_or_failed_is_redone(tmp_path):
    run_stages(SYNC, [plan(tmp_path, [1, 100])])
    record_path(tmp_path, 0).unlink()
    again = plan(tmp_path, [1, 100])
    assert [t.key for t in again.tasks] == ["a-0", "a-1"]  # missing, and failed last time


def test_with_inputs_of_a_shard_is_reused_only_when_made_from_the_same_inputs(tmp_path):
    def group_key(item: int) -> str:
        return f"key{item}"

    def keyed(index: int, item: int, stage_dir: str) -> ShardRecord:
        rec = make(index, item, stage_dir)
        return write_record(Path(stage_dir), ShardRecord("a", index, rec.file, rec.sha256, "p", rec.rows,
                                                         inputs=group_key(item)))

    def plan_keyed(groups):
        make_task = each_shard(lambda i, item: Task(f"a-{i}", keyed, (i, item, str(tmp_path))))
        return plan_stage(tmp_path, "p", groups, make_task, failed_rows, StageSummary("a"), inputs_of=group_key)

    run_stages(SYNC, [plan_keyed([1, 2, 3])])
    again = plan_keyed([1, 5, 3])
    assert [t.key for t in again.tasks] == ["a-1"]


def test_unfinished_shards_go_per_task_by_fixed_blocks_of_indices(tmp_path):
    run_stages(SYNC, [plan(tmp_path, [1, 2, 3, 4, 5])])
    for i in (1, 4):
        record_path(tmp_path, i).unlink()
    seen = []
    run = plan_stage(tmp_path, "p", [1, 2, 3, 4, 5], lambda indices, groups: seen.append(indices) or
                     Task(f"a-{indices[0]}", make, (indices[0], groups[0], str(tmp_path))),
                     failed_rows, StageSummary("a"), per_task=2)
    assert seen == [[1], [4]]  # blocks {0, 1} and {4, 5}: as the first run grouped them
    assert run.covers == {"a-1": [1], "a-4": [4]}


# --- upstream -----------------------------------------------------------------------------------------


def test_a_later_stage_plans_on_afters_of_unfinished_shards_and_each_task_runs_after_its_input(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    run_stages(SYNC, [plan(a_dir, [1])])  # shard 0 of stage a is finished before this run
    CALLS.clear()
    a = plan(a_dir, [1, 2, 3])
    upstream = a.upstream()
    assert isinstance(upstream.records[0], ShardRecord)
    assert upstream.records[1:] == [After("a-1"), After("a-2")]
    b = plan_stage(b_dir, "p", upstream.records,
                   each_shard(lambda i, rec: Task(f"b-{i}", follow, (i, rec, str(b_dir)))),
                   failed_rows, StageSummary("b"))
    run_stages(SYNC, [a, b])
    assert CALLS == ["b0", "a1", "b1", "a2", "b2"]  # by shard, each shard's stages in order
    assert read_record(b_dir, 2).rows[0].inputs == {"item": 20}  # made from a's record of shard 2


def test_a_task_of_a_later_stage_fails_with_its_inputs_task(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = plan(a_dir, [1, 100, 3])
    b = plan_stage(b_dir, "p", a.upstream().records,
                   each_shard(lambda i, rec: Task(f"b-{i}", follow, (i, rec, str(b_dir)))),
                   failed_rows, StageSummary("b"))
    run_stages(SYNC, [a, b])
    assert "b1" not in CALLS  # never ran: its input failed
    assert read_record(b_dir, 1).failed
    assert read_record(b_dir, 1).rows == []  # nothing to name: its input was an `After` that failed
    assert read_record(b_dir, 2).params == "p"
