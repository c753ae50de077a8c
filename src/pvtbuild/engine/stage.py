"""What every stage shares: its folder in the build directory, shard records, resume, summaries.

A stage writes into `OUT/<stage>/`:
- `stage.json`: the stage's parameter hash and a hash of its inputs. A rerun with
  other parameters or inputs stops with one line instead of silently mixing
  outputs built two ways. (A stage that keys each shard by its own inputs,
  `ShardRecord.inputs`, as select does by its files' md5s, checks them per shard.)
- per output shard `i`: the shard file (`shard-{i:05d}.npz`, written atomically)
  and then `shard-{i:05d}.json`, its `ShardRecord` (the file's sha256 and one
  manifest row per item). The record is written last, so it marks completion.
- `manifest.jsonl`: all rows of all shards, rebuilt at the end of each run.

Resume is therefore: skip shard `i` when its record exists, names the current
parameters (and inputs, where keyed per shard), and its file still has the
recorded sha256. A later stage checks
the same sha256 before it uses a shard (`check_shard_file`): encode as it reads
each render shard, shard for every render and encode shard before it packs any.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from pvtbuild.clip import check_clip_id
from pvtbuild.engine import written_shards
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import (
    ManifestRow,
    atomic_write,
    atomic_write_bytes,
    path_within,
    read_jsonl,
    remove_stale_temporaries,
    sha256_bytes,
    sha256_file,
    skip_reason,
    write_jsonl,
)
from pvtbuild.engine.npz import npz_arrays, npz_bytes
from pvtbuild.engine.tasks import After, Task, TaskFailure
from pvtbuild.errors import InputError, PvtbuildError


@dataclass
class ShardRecord:
    """A finished output shard: where it is, its checksum, and the manifest rows of its items."""

    stage: str
    index: int
    file: str  # relative to the stage folder; "" when the shard has no file (all items skipped)
    sha256: str
    params: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    inputs: str = ""  # what the shard was made from, where a stage keys shards by their inputs (else "")

    def manifest_rows(self) -> list[ManifestRow]:
        return [ManifestRow.from_dict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        # Shallow: the fields are JSON data already; asdict's deep copy of every nested dict
        # was ~15 % of the render stage's time.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardRecord":
        return cls(**d)


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def record_path(stage_dir: Path, index: int) -> Path:
    return stage_dir / f"{shard_stem(index)}.json"


def write_record(stage_dir: Path, record: ShardRecord) -> ShardRecord:
    """Write a task's record (atomically, last of its outputs) and return it, as tasks return their record."""
    blob = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(record_path(stage_dir, record.index), blob)
    return record


def rendered_rows(render: ShardRecord) -> list[dict[str, Any]]:
    """The render rows of the clips a render shard holds (those rendered ok), in its order."""
    return [r for r in render.rows if r["stage"] == "render" and r["status"] == "ok"]


def read_record(stage_dir: Path, index: int) -> ShardRecord | None:
    """Shard `index`'s record, or None (the shard is redone) when it is missing or unusable: not a
    record, a `file` outside the folder that holds the stage folder (the build directory; the dataset,
    for the shard stage's `.shard`, whose files sit beside it), or a row whose id is not a clip id."""
    path = record_path(stage_dir, index)
    if not path.is_file():
        return None
    try:
        rec = ShardRecord.from_dict(json.loads(path.read_text()))
        if rec.file:
            path_within(stage_dir.parent, os.path.join(stage_dir.name, rec.file), str(path))
        for row in rec.rows:
            check_clip_id(row["id"], str(path))
    except (ValueError, TypeError, KeyError, InputError):
        return None
    return rec


def check_shard_file(stage_dir: Path, rec: ShardRecord, data: bytes | None = None) -> None:
    """Raise `InputError`, one line naming the file, unless `rec`'s file exists with the sha256 it records.

    Args:
        stage_dir: the folder of the stage that wrote `rec`.
        rec: a record with a file (`rec.file` not "").
        data: the file's bytes, when the caller has read them already (then it is not read again).
    """
    path = stage_dir / rec.file
    if data is None:
        if not path.is_file():
            raise InputError(f"{path}: missing (its record {record_path(stage_dir, rec.index).name} names it)")
        sha = sha256_file(path)
    else:
        sha = sha256_bytes(data)
    if sha != rec.sha256:
        raise InputError(f"{path}: damaged, its sha256 is not the one its record "
                         f"{record_path(stage_dir, rec.index).name} holds")


def read_shard_arrays(stage_dir: Path, rec: ShardRecord, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays `names` of `rec`'s shard file, read once and checked against its sha256 first
    (the encode and qa tasks, on a render shard): read-only views into the file's bytes.

    Raises:
        InputError: one line naming the file: missing, damaged (`check_shard_file`) or unreadable.
    """
    path = Path(stage_dir) / rec.file
    blob = written_shards.lookup(path, rec.sha256)  # this process wrote it a moment ago (a streamed build)
    if blob is None:
        if not path.is_file():
            check_shard_file(stage_dir, rec)  # raises: missing
        blob = path.read_bytes()
        check_shard_file(stage_dir, rec, blob)
    return npz_arrays(blob, names, path)


def write_shard_file(stage_dir: Path, index: int, arrays: dict[str, np.ndarray]) -> tuple[str, str]:
    """Write a task's shard file (an uncompressed .npz with aligned arrays, `npz.npz_bytes`; atomically);
    returns (its name, its sha256) for the task's `ShardRecord`.

    The bytes are made and hashed in memory, written once (no fsync: the record, written durably
    after, holds the sha256 that a resume checks), and kept in `written_shards` for the tasks
    of later stages that read this shard next in this process.
    """
    blob = npz_bytes(arrays)
    file = f"{shard_stem(index)}.npz"
    path, sha = Path(stage_dir) / file, sha256_bytes(blob)
    with atomic_write(path, durable=False) as fh:
        fh.write(blob)
    written_shards.keep(path, sha, blob)
    return file, sha


def read_render_input(stage: str, index: int, render: ShardRecord, render_params: str, params: str,
                      render_dir: Path, stage_dir: Path, names: Iterable[str],
                      skipped_row: Callable[[dict[str, Any], str], dict[str, Any]]
                      ) -> dict[str, np.ndarray] | ShardRecord:
    """What a task of a stage fed by render shard `index` (encode, qa) reads: the arrays `names`
    (`read_shard_arrays`), or, when there is nothing to read, the task's final record, written:

    - the render task failed (its params are not `render_params`): failed, so it is retried with it;
    - the render shard holds no clip: empty;
    - its file is missing or damaged: failed, one `skipped_row(render row, status)` per clip.
    """
    if render.params != render_params:
        return write_record(stage_dir, ShardRecord(stage, index, "", "", f"failed:{params}", []))
    if not render.file:
        return write_record(stage_dir, ShardRecord(stage, index, "", "", params, []))
    try:
        return read_shard_arrays(render_dir, render, names)
    except InputError as e:
        status = f"skipped: {e}; rerun render"
        return write_record(stage_dir, ShardRecord(stage, index, "", "", f"failed:{params}",
                                                   [skipped_row(r, status) for r in rendered_rows(render)]))


def finished_record(stage_dir: Path, index: int, params: str, inputs: str = "") -> ShardRecord | None:
    """The shard's record if the shard is complete, intact and made from `inputs`, else None (it must be redone)."""
    rec = read_record(stage_dir, index)
    if rec is None or rec.params != params or rec.inputs != inputs:
        return None
    if rec.file:
        try:
            check_shard_file(stage_dir, rec)
        except InputError:
            return None
    return rec


def claim_stage_dir(stage_dir: Path, stage: str, params: str, inputs: str | None) -> None:
    """Create the stage folder, or check that an existing one was built with the same parameters.

    `inputs` None: the stage checks its inputs shard by shard (`ShardRecord.inputs`), not here.
    Temporaries that a killed run left in an existing folder are removed here, before any task starts.
    """
    meta_path = stage_dir / "stage.json"
    meta = {"stage": stage, "params": params, "inputs": inputs}
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("params") != params or (inputs is not None and old.get("inputs") != inputs):
            what = "settings" if old.get("params") != params else "inputs"
            raise PvtbuildError(
                f"{stage_dir}: was built with other {what}; use another --out, or delete that folder to rebuild")
        remove_stale_temporaries(stage_dir)
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(meta_path, json.dumps(meta, sort_keys=True, indent=1).encode())


@dataclass(frozen=True)
class FinishedStage:
    """An earlier stage's output as a later stage reads it: its parameters, its inputs' hash, its shard records."""

    params: str
    inputs: str
    # In shard order; a failed task's record has params "failed:<params>". While the stage is
    # still running in the same streamed run (`StageRun.upstream`), a shard not made yet is an `After`.
    records: list[ShardRecord | After]


def read_finished_stage(out: Path, stage: str, command: str, check_files: bool = False) -> FinishedStage:
    """The records of `out/stage`, which must have run to its end; else one line saying what to run.

    With `check_files`, every shard file is also checked against its record's sha256
    (`check_shard_file`, a few files at a time), for a reader that would not notice damage.
    """
    stage_dir = Path(out) / stage
    meta_path = stage_dir / "stage.json"
    if not meta_path.is_file():
        raise PvtbuildError(f"{stage_dir}: no {stage} output; run `{command} --out {out}` first")
    if not (stage_dir / "manifest.jsonl").is_file():
        raise PvtbuildError(f"{stage_dir}: {stage} has not finished; rerun `{command} --out {out}`")
    meta = json.loads(meta_path.read_text())
    params = meta["params"]
    records = []
    for i in range(len(list(stage_dir.glob("shard-*.json")))):
        rec = read_record(stage_dir, i)
        if rec is None or rec.params not in (params, f"failed:{params}"):
            raise PvtbuildError(f"{record_path(stage_dir, i)}: missing, unreadable or from other settings; "
                                f"rerun `{command} --out {out}`")
        if rec.params == params and rec.file and not (stage_dir / rec.file).is_file():
            raise PvtbuildError(f"{stage_dir / rec.file}: missing; rerun `{command} --out {out}`")
        records.append(rec)
    if check_files:
        done = [rec for rec in records if rec.params == params and rec.file]
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # hashlib lets go of the GIL
            problems = list(pool.map(lambda rec: _problem(stage_dir, rec), done))
        first = next(filter(None, problems), None)  # in shard order
        if first:
            raise PvtbuildError(f"{first}; rerun `{command} --out {out}` to redo it")
    return FinishedStage(params, meta["inputs"], records)


def _problem(stage_dir: Path, rec: ShardRecord) -> str | None:
    try:
        check_shard_file(stage_dir, rec)
    except InputError as e:
        return str(e)
    return None


def write_manifest(stage_dir: Path, records: Iterable[ShardRecord]) -> Path:
    """Rebuild `manifest.jsonl` from the shard records, in shard order."""
    rows = [r for rec in sorted(records, key=lambda r: r.index) for r in rec.rows]
    path = stage_dir / "manifest.jsonl"
    write_jsonl(path, rows)
    return path


def read_manifest(stage_dir: Path) -> list[ManifestRow]:
    path = stage_dir / "manifest.jsonl"
    if not path.is_file():
        raise PvtbuildError(f"{path}: not found; run the stage that writes it first")
    return [ManifestRow.from_dict(d) for d in read_jsonl(path)]


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
    failed_rows: Callable[[Any, str], list[dict[str, Any]]]
    summary: "StageSummary"
    unit: str
    records: dict[int, ShardRecord]  # finished shards, old and (as they come) new
    tasks: list[Task]
    covers: dict[str, list[int]]  # task key -> the shards it makes
    on_finish: Callable[[dict[int, ShardRecord]], None] | None = None
    _early: list[tuple[Task, TaskFailure]] = field(default_factory=list)  # failures held back (`take`)
    _deciding: bool = True  # until a task succeeds or the quorum is reached

    def upstream(self) -> "FinishedStage":
        """This stage's output as a later stage plans on it: each shard's record, or an `After` of its task."""
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
            record = ShardRecord(self.summary.stage, i, "", "", f"failed:{self.params}", rows)
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
               failed_rows: Callable[[Any, str], list[dict[str, Any]]], summary: "StageSummary",
               unit: str = "shard", inputs_of: Callable[[Any], str] | None = None, inputs: str = "",
               per_task: int = 1, on_finish: Callable[[dict[int, ShardRecord]], None] | None = None) -> StageRun:
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
                    on_finish)


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


def run_stage(executor: Executor, stage_dir: Path, params: str, groups: list[Any],
              make_task: Callable[[int, Any], Task], failed_rows: Callable[[Any, str], list[dict[str, Any]]],
              summary: "StageSummary", unit: str = "shard",
              inputs_of: Callable[[Any], str] | None = None) -> dict[int, ShardRecord]:
    """One stage alone, one task per unfinished shard (`make_task(i, group)`); every shard's record, old and new."""
    run = plan_stage(stage_dir, params, groups, each_shard(make_task), failed_rows, summary, unit, inputs_of)
    run_stages(executor, [run])
    return run.records


def _gist(reason: str) -> str:
    """A failure reason without what names the input (quoted paths, numbers): equal gists, same cause."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", reason)


def chunk(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@dataclass
class StageSummary:
    """Counts for the end-of-stage report: what was written, reused, skipped (by reason), failed."""

    stage: str
    unit: str = "clip"
    done: str = "written"  # what an ok item is, in the report: "3 files with clips"
    ok: int = 0
    reused: int = 0  # items in shards found complete from an earlier run
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first file it happened to
    failed_shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def add(self, record: ShardRecord, reused: bool) -> None:
        for row in record.rows:
            if row["stage"] != self.stage:
                continue  # e.g. the clip rows a select shard carries beside its file rows
            status = row["status"]
            if status == "ok":
                if reused:
                    self.reused += 1
                else:
                    self.ok += 1
            else:
                reason = skip_reason(status) or status
                self.skipped[reason] += 1
                source = str(row.get("inputs", {}).get("source", ""))
                self.examples.setdefault(reason, Path(source).name if source else row["id"])

    def finish(self) -> "StageSummary":
        self.seconds = time.monotonic() - self._t0
        return self

    @property
    def total_ok(self) -> int:
        return self.ok + self.reused

    def lines(self, top: int = 8) -> list[str]:
        rate = self.ok / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.stage}: {self.ok} {self.unit}s {self.done}, {self.reused} already done, "
               f"{sum(self.skipped.values())} skipped, {self.seconds:.1f} s ({rate:.2f} {self.unit}s/s)"]
        for reason, n in self.skipped.most_common(top):
            out.append(f"  skipped {n:5d}: {reason} (e.g. {self.examples[reason]})")
        if len(self.skipped) > top:
            out.append(f"  ... and {len(self.skipped) - top} other reasons (see the stage's manifest.jsonl)")
        for f in self.failed_shards:
            out.append(f"  failed shard: {f}")
        return out
