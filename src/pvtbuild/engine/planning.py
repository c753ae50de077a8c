"""Run planning: which shards of a stage an earlier run finished, tasks for the others, and running them.

`plan_stage` makes a `StageRun` (finished records plus tasks); `run_stages` runs the tasks of
one or several stages as one stream (a later stage's task takes its input's task as an `After`),
and decides, from a stage's first tasks, whether failures are the input's (recorded, the run goes
on) or the environment's (`ENVIRONMENT_QUORUM`: the run stops, nothing recorded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow, remove_stale_temporaries
from pvtbuild.engine.stage_files import FinishedStage, ShardRecord, finished_record, write_manifest, write_record
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import After, Task, TaskFailure
from pvtbuild.errors import PvtbuildError

ENVIRONMENT_QUORUM = 3  # a stage's first tasks to finish that, all failing the same way, stop the run


@dataclass
class StageRun:
    """One stage's part of a run: shards found finished, tasks still to run, and where results go.

    Made by `plan_stage`, run by `run_stages`: alone (a stage command), or beside the runs
    of the stages it feeds, which then take its unfinished shards as `After`s of its tasks
    (`upstream`) and start on each shard as soon as it exists (`pvtbuild run` streams).
    """

    stage_dir: Path
    params: str
    inputs: str  # what this stage was made from (its stage.json `inputs`): the next stage's claim uses it
    groups: list[Any]
    failed_rows: Callable[[Any, str], list[ManifestRow]]
    summary: "StageSummary"
    unit: str
    records: dict[int, ShardRecord]  # finished shards, old and (as they come) new
    tasks: list[Task]
    covers: dict[str, list[int]]  # task key -> the shards it makes
    on_finish: Callable[[dict[int, ShardRecord]], None] | None = None
    hand_on: Callable[[], Any] | None = None  # what a later stage plans on, if not this `FinishedStage` (select's)
    _early: list[tuple[Task, TaskFailure]] = field(default_factory=list)  # failures held back (`take`)
    _deciding: bool = True  # until a task succeeds or the quorum is reached

    def upstream(self) -> Any:
        """This stage's output as a later stage plans on it: `hand_on()` where the stage gave one, else a
        `FinishedStage` of each shard's record, or an `After` of its task while it is still to run."""
        if self.hand_on is not None:
            return self.hand_on()
        pending = {i: After(key) for key, indices in self.covers.items() for i in indices}
        return FinishedStage(self.params, self.inputs,
                             [self.records.get(i) or pending[i] for i in range(len(self.groups))])

    def take(self, task: Task, result: Any) -> None:
        """Record one task's result (a record, a list of records, or a `TaskFailure`).

        A failure is a record of skipped rows whose params are marked failed, so the run goes
        on and the next run retries it, unless it is the environment's: when this stage's
        first `ENVIRONMENT_QUORUM` tasks to finish (or all of them, if fewer but at least
        two) failed for the same reason on different inputs, raises `PvtbuildError` with
        that reason and records nothing for them, so a rerun after the fix redoes them.
        """
        if self._deciding:
            if isinstance(result, TaskFailure):
                self._early.append((task, result))
                quorum = min(len(self.tasks), ENVIRONMENT_QUORUM)
                if len(self._early) < quorum:
                    return
                if quorum >= 2 and len({_gist(f.reason) for _, f in self._early}) == 1:
                    raise PvtbuildError(
                        f"{self.summary.stage}: its first {quorum} tasks all failed the same way, which is the "
                        f"environment, not the input: {result.reason}; nothing was recorded for them, "
                        f"rerun when it is fixed")
            self._release_early()
            if isinstance(result, TaskFailure):
                return  # recorded with the others held back
        if isinstance(result, TaskFailure):
            self._record_failure(task, result)
            return
        for record in result if isinstance(result, list) else [result]:
            self.records[record.index] = record
            self.summary.add(record, reused=False)

    def _release_early(self) -> None:
        """The decision is made (not the environment): record the failures held back."""
        self._deciding = False
        for held, failure in self._early:
            self._record_failure(held, failure)
        self._early.clear()

    def _record_failure(self, task: Task, failure: TaskFailure) -> None:
        status = f"skipped: task failed: {failure.reason}"
        for i in self.covers[task.key]:
            group = self.groups[i]
            rows = [] if isinstance(group, After) else self.failed_rows(group, status)
            record = ShardRecord(self.summary.stage, i, "", "", self.params, rows, failed=True)
            write_record(self.stage_dir, record)
            self.records[i] = record
            self.summary.add(record, reused=False)
        self.summary.failed_shards.append(f"{task.key}: {status}")

    def finish(self) -> "StageSummary":
        """Write the manifest of every shard and run the stage's own closing step.

        Every task has answered by now, so a temporary still in the folder is what a worker
        killed mid-write left (its task ran again elsewhere): removed here, not at the next run.
        """
        self._release_early()
        remove_stale_temporaries(self.stage_dir)
        write_manifest(self.stage_dir, self.records.values())
        if self.on_finish is not None:
            self.on_finish(self.records)
        return self.summary.finish()


def plan_stage(stage_dir: Path, params: str, groups: list[Any], make_task: Callable[[list[int], list[Any]], Task],
               failed_rows: Callable[[Any, str], list[ManifestRow]], summary: "StageSummary",
               unit: str = "shard", inputs_of: Callable[[Any], str] | None = None, inputs: str = "",
               per_task: int = 1, on_finish: Callable[[dict[int, ShardRecord]], None] | None = None,
               hand_on: Callable[[], Any] | None = None) -> StageRun:
    """Find the shards an earlier run finished and make tasks for the others.

    Shard i is made from `groups[i]`; with `inputs_of`, its record is reused only if its
    `inputs` equal `inputs_of(group)`. Unfinished shards go `per_task` to a task, by
    fixed blocks of indices (`make_task(indices, groups)`), so a rerun groups them as the
    first run did; `each_shard` makes `make_task` of a function of one (index, group).
    A group may be an `After` (the shard's input is still being made).
    """
    records: dict[int, ShardRecord] = {}
    blocks: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        rec = finished_record(stage_dir, i, params, inputs_of(group) if inputs_of else "")
        if rec is not None:
            records[i] = rec
            summary.add(rec, reused=True)
        else:
            blocks.setdefault(i // per_task, []).append(i)
    tasks, covers = [], {}
    for indices in blocks.values():
        task = make_task(indices, [groups[i] for i in indices])
        tasks.append(replace(task, group=task.group or summary.stage))
        covers[task.key] = indices
    return StageRun(Path(stage_dir), params, inputs, groups, failed_rows, summary, unit, records, tasks, covers,
                    on_finish, hand_on)


def each_shard(make: Callable[[int, Any], Task]) -> Callable[[list[int], list[Any]], Task]:
    """`plan_stage`'s `make_task` for tasks that make one shard each, from `make(index, group)`."""
    return lambda indices, groups: make(indices[0], groups[0])


def run_stages(executor: Executor, runs: list[StageRun]) -> list["StageSummary"]:
    """Run the tasks of several stages as one stream, shard by shard, then finish each stage.

    Tasks are submitted in shard order, a shard's stages in `runs` order, so that the tasks
    of a later stage come right after the tasks they take (`After`) and run as soon as
    their input exists while the earlier stage goes on with its next shards.
    """
    owner = {task.key: (n, run) for n, run in enumerate(runs) for task in run.tasks}
    tasks = sorted((task for run in runs for task in run.tasks),
                   key=lambda t: (owner[t.key][1].covers[t.key][0], owner[t.key][0]))
    unit = runs[0].unit if runs else "shard"
    for task, result in executor.run(tasks, desc=" + ".join(run.summary.stage for run in runs), unit=unit):
        owner[task.key][1].take(task, result)
    return [run.finish() for run in runs]


def _gist(reason: str) -> str:
    """A failure reason without what names the input (quoted paths, numbers): equal gists, same cause."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", reason)


def chunk(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]

