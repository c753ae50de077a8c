"""Stage files and their records: what a stage leaves in its folder, and how a later run or stage trusts it.

A stage writes into `OUT/<stage>/`:
- `stage.json`: the stage's parameter hash and a hash of its inputs. A rerun with
  other parameters or inputs stops with one line instead of silently mixing
  outputs built two ways. (A stage that keys each shard by its own inputs,
  `ShardRecord.inputs`, as select does by its files' md5s, checks them per shard.)
- per output shard `i`: the stage file (`shard-{i:05d}.npz`, written atomically)
  and then `shard-{i:05d}.json`, its `ShardRecord` (the file's sha256 and one
  manifest row per item). The record is written last, so it marks completion.
- `manifest.jsonl`: all rows of all shards, rebuilt at the end of each run.

Resume is therefore: skip shard `i` when its record exists, names the current
parameters (and inputs, where keyed per shard), and its file still has the
recorded sha256 (`finished_record`). A later stage checks the same sha256 before
it uses a shard (`check_shard_file`): encode as it reads each render shard, shard
for every render and encode shard before it packs any. Planning and running the
tasks that write these files is `engine.planning`'s.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pvtbuild.clip import check_clip_id
from pvtbuild.dataclass_dict import shallow_dict
from pvtbuild.engine import written_shards
from pvtbuild.engine.manifest import (
    ManifestRow,
    atomic_write,
    atomic_write_bytes,
    path_within,
    read_jsonl,
    remove_stale_temporaries,
    sha256_bytes,
    sha256_file,
    write_jsonl,
)
from pvtbuild.engine.npz import npz_arrays, npz_bytes
from pvtbuild.engine.tasks import After
from pvtbuild.errors import InputError, PvtbuildError

FAILED_PREFIX = "failed:"  # on disk, a failed task's record names its params so; in memory, `failed`


@dataclass
class ShardRecord:
    """A finished output shard: where it is, its checksum, and the manifest rows of its items."""

    stage: str
    index: int
    file: str  # relative to the stage folder; "" when the shard has no file (all items skipped)
    sha256: str
    params: str  # the stage's parameter hash it was made with (a failed task: tried with)
    rows: list[ManifestRow] = field(default_factory=list)
    inputs: str = ""  # what the shard was made from, where a stage keys shards by their inputs (else "")
    failed: bool = False  # its task failed: `rows` are its items, skipped; the next run redoes it

    def to_dict(self) -> dict[str, Any]:
        """The record as stored: a failed one as its params prefixed by `FAILED_PREFIX`, with no `failed` key."""
        d = shallow_dict(self)
        d["params"] = f"{FAILED_PREFIX}{self.params}" if d.pop("failed") else self.params
        d["rows"] = [row.to_dict() for row in self.rows]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardRecord":
        """The record `to_dict` stored; raises TypeError / ValueError / KeyError on anything else."""
        d = dict(d)
        failed = isinstance(d.get("params"), str) and d["params"].startswith(FAILED_PREFIX)
        if failed:
            d["params"] = d["params"][len(FAILED_PREFIX):]
        d["rows"] = [ManifestRow.from_dict(row) for row in d.get("rows", [])]
        return cls(**d, failed=failed)


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def record_path(stage_dir: Path, index: int) -> Path:
    return stage_dir / f"{shard_stem(index)}.json"


def write_record(stage_dir: Path, record: ShardRecord) -> ShardRecord:
    """Write a task's record (atomically, last of its outputs) and return it, as tasks return their record."""
    blob = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(record_path(stage_dir, record.index), blob)
    return record


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
            check_clip_id(row.id, str(path))
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


def finished_record(stage_dir: Path, index: int, params: str, inputs: str = "") -> ShardRecord | None:
    """The shard's record if the shard is complete, intact and made from `inputs`, else None (it must be redone)."""
    rec = read_record(stage_dir, index)
    if rec is None or rec.failed or rec.params != params or rec.inputs != inputs:
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
    # In shard order; a failed task's record is `failed`. While the stage is
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
        if rec is None or rec.params != params:
            raise PvtbuildError(f"{record_path(stage_dir, i)}: missing, unreadable or from other settings; "
                                f"rerun `{command} --out {out}`")
        if not rec.failed and rec.file and not (stage_dir / rec.file).is_file():
            raise PvtbuildError(f"{stage_dir / rec.file}: missing; rerun `{command} --out {out}`")
        records.append(rec)
    if check_files:
        done = [rec for rec in records if not rec.failed and rec.file]
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
    rows = [r.to_dict() for rec in sorted(records, key=lambda r: r.index) for r in rec.rows]
    path = stage_dir / "manifest.jsonl"
    write_jsonl(path, rows)
    return path


def read_manifest(stage_dir: Path) -> list[ManifestRow]:
    path = stage_dir / "manifest.jsonl"
    if not path.is_file():
        raise PvtbuildError(f"{path}: not found; run the stage that writes it first")
    return [ManifestRow.from_dict(d) for d in read_jsonl(path)]

