"""The select stage: MIDI files in, a selection manifest of clips out.

Output: `OUT/select/selection.jsonl`, one `ClipSpec` per line, its `source`
relative to the manifest's folder, so a manifest can be moved with its MIDI
files or committed (see `manifests/demo.jsonl`) and rendered anywhere with
`pvtbuild render --midi MANIFEST`. Files that yield nothing are rows with
status `skipped: <reason>` in `OUT/select/manifest.jsonl`.

Beside it, per task, `OUT/select/shard-{i:05d}.npz` holds the notes of the
task's clips (`clip.pack_notes`: folded, modulated, with their beats), which
the render stage of the same build reads instead of parsing every MIDI file a
second time (`notes_files`).

Files are keyed by content: a task takes `exec.select_files_per_task` files in
md5 order, and its record names their md5s (`ShardRecord.inputs`). A rerun
redoes a task only when its files' contents changed: a file moved or renamed
is reused (its clips take the new path), a file edited in place is redone,
whatever its size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pvtbuild.clip import ClipSpec, Selection, pack_notes
from pvtbuild.config import PipelineConfig, config_hash
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow, read_jsonl, stable_hash, write_jsonl
from pvtbuild.engine.planning import StageRun, chunk, each_shard, plan_stage, run_stages
from pvtbuild.engine.stage_files import (
    ShardRecord,
    check_shard_file,
    claim_stage_dir,
    read_record,
    shard_stem,
    write_manifest,
    write_record,
    write_shard_file,
)
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import Task
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.music.midi import clip_notes, load_midi, md5_file, select_clips
from pvtbuild.stages.base import Ready

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")
SELECTION_NAME = "selection.jsonl"
_UNREADABLE = "unreadable:"  # content_key of a file that cannot be read


def find_midi_files(root: Path, limit: int = 0) -> list[Path]:
    """MIDI files under `root`, sorted so that shards and ids do not depend on the file system's order."""
    if not root.is_dir():
        raise PvtbuildError(f"{root}: not a folder of MIDI files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    if not files:
        raise PvtbuildError(f"{root}: no MIDI files (*.mid, *.midi, *.kar) found")
    return files[:limit] if limit else files


def select_params(cfg: PipelineConfig) -> str:
    return config_hash({"select": cfg.select, "seed": cfg.seed})


class Select:
    """The select stage (see `stages.base.Stage`): the head of a build, from `cfg.midi`.

    `manifest_ok`: a selection manifest (.jsonl) may stand for the folder (render and run: its clips
    are handed on as they are, nothing is selected); the select command alone needs a folder.
    """

    name = "select"
    reads = None
    streams = False

    def __init__(self, manifest_ok: bool = True):
        self.manifest_ok = manifest_ok

    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def check(self, cfg: PipelineConfig, together: frozenset[str]) -> None:
        if self.manifest_ok:
            midi_source(cfg)
        elif not cfg.midi or not Path(cfg.midi).is_dir():
            raise PvtbuildError(f"--midi {cfg.midi or '(none)'}: select needs a folder of MIDI files")

    def worker_paths(self, cfg: PipelineConfig) -> dict[str, str]:
        return {"MIDI input": str(midi_source(cfg).resolve())}

    def plan(self, cfg: PipelineConfig, out: Path, executor: Executor, upstream: Any) -> StageRun | Ready:
        source = midi_source(cfg)
        if self.manifest_ok and source.is_file() and source.suffix == ".jsonl":
            return Ready(Selection(manifest_clips(source, cfg.limit), notes_files(out, cfg)))
        return plan_select(source, out, cfg)


def midi_source(cfg: PipelineConfig) -> Path:
    """The configured MIDI input (a folder or a selection manifest), which must exist."""
    if not cfg.midi:
        raise PvtbuildError("no MIDI input: pass --midi DIR_OR_MANIFEST or set `midi` in the pipeline")
    source = Path(cfg.midi)
    if not source.exists():
        raise PvtbuildError(f"{source}: no such MIDI folder or selection manifest")
    return source


def manifest_clips(path: Path, limit: int) -> list[ClipSpec]:
    """The clips of a selection manifest; `limit` counts source files, as it does for a MIDI folder."""
    clips = read_selection(path)
    if limit:
        keep = set(list(dict.fromkeys(c.source_md5 for c in clips))[:limit])
        clips = [c for c in clips if c.source_md5 in keep]
    return clips


def select(midi_dir: Path, out: Path, cfg: PipelineConfig, executor: Executor) -> tuple[list[ClipSpec], StageSummary]:
    """Select clips from every MIDI file under `midi_dir` (this stage alone, on `executor`)."""
    run = plan_select(midi_dir, out, cfg)
    [summary] = run_stages(executor, [run])
    return run.upstream().clips, summary


def plan_select(midi_dir: Path, out: Path, cfg: PipelineConfig) -> StageRun:
    """The select stage's run: resumable, one task per group of files; hands on a `Selection`."""
    files = find_midi_files(midi_dir, cfg.limit)
    stage_dir = out / "select"
    params = select_params(cfg)
    claim_stage_dir(stage_dir, "select", params, None)  # inputs are checked per task, by md5
    with ThreadPoolExecutor(4) as pool:
        keys = list(pool.map(content_key, files))
    groups = chunk([str(p.resolve()) for _, p in sorted(zip(keys, files))], cfg.exec.select_files_per_task)
    _drop_stale_shards(stage_dir, len(groups))
    key_of = dict(zip((str(p.resolve()) for p in files), keys))
    selection: list[Selection] = []

    def finish(records: dict[int, ShardRecord]) -> None:
        moved = [_follow_moved_files(stage_dir, records[i], group) for i, group in enumerate(groups)]
        if any(moved):
            write_manifest(stage_dir, records.values())
        clips = [ClipSpec.from_dict(r.inputs) for i in sorted(records) for r in records[i].rows
                 if r.status == "ok" and r.stage == "select-clip"]
        write_selection(stage_dir / SELECTION_NAME, clips)
        # where the notes are, from the records in hand (a reused one's file was sha256-checked at planning,
        # a new one's just written): what `notes_files` would read back from the folder, without reading it
        notes = dict(pair for i in sorted(records) for pair in _notes_in(stage_dir, records[i]))
        selection.append(Selection(clips, notes))

    return plan_stage(stage_dir, params, groups,
                      each_shard(lambda i, group: Task(f"select-{params[:6]}-{i:05d}", select_task,
                                                       (i, group, cfg, str(stage_dir)))),
                      lambda group, status: [_file_row(stable_hash(os.path.basename(p)), p, params, status)
                                             for p in group],
                      StageSummary("select", unit="file", done="with clips"), unit="group",
                      inputs_of=lambda group: _group_key([key_of[p] for p in group]), on_finish=finish,
                      hand_on=lambda: selection[0])


def select_task(index: int, paths: list[str], cfg: PipelineConfig, stage_dir: str) -> ShardRecord:
    """Select clips from a group of MIDI files; a bad file becomes a skipped row, never an error."""
    params = select_params(cfg)
    rows: list[ManifestRow] = []
    notes = []
    keys = []
    for path in paths:
        md5 = content_key(path)
        keys.append(md5)
        file_id = stable_hash(os.path.basename(path))
        try:
            if md5.startswith(_UNREADABLE):
                raise InputError("cannot read the file")
            file_id = md5
            midi = load_midi(path, cfg.select)
            clips = select_clips(midi, path, md5, cfg.select, cfg.seed)
        except InputError as e:
            rows.append(_file_row(file_id, path, params, f"skipped: {e}"))
            continue
        if not clips:
            names = "/".join(i.name for i in cfg.select.instruments)
            reason = f"no monophonic {cfg.select.clip_seconds:g} s window on a {names} track"
            rows.append(_file_row(file_id, path, params, f"skipped: {reason}"))
            continue
        rows.append(_file_row(file_id, path, params, "ok", clips=len(clips)))
        rows.extend(ManifestRow(c.clip_id, "select-clip", "ok", c.to_dict(), params) for c in clips)
        notes.extend((c.clip_id, clip_notes(midi, c, cfg.select)) for c in clips)
    stage = Path(stage_dir)
    file, sha = "", ""
    if notes:
        file, sha = write_shard_file(stage, index, pack_notes(notes))
    record = ShardRecord("select", index, file, sha, params, rows, inputs=_group_key(keys))
    write_record(stage, record)
    return record


def content_key(path: str | Path) -> str:
    """What select keys a file by: its md5; a file that cannot be read, by its name until it can."""
    try:
        return md5_file(path)
    except OSError:
        return f"{_UNREADABLE}{os.path.basename(path)}"


def _group_key(keys: list[str]) -> str:
    """A task's `ShardRecord.inputs`: a hash of its files' `content_key`s, in order."""
    return stable_hash(keys)


def _drop_stale_shards(stage_dir: Path, count: int) -> None:
    """Remove shards numbered `count` and up, left by an earlier run over more files."""
    for path in stage_dir.glob("shard-*.json"):
        index = int(path.stem.split("-")[1])
        if index >= count:
            (stage_dir / f"{shard_stem(index)}.npz").unlink(missing_ok=True)
            path.unlink()


def _follow_moved_files(stage_dir: Path, record: ShardRecord, group: list[str]) -> bool:
    """Point a reused record's rows at where its files are now (a record lists its files in group order).

    Returns whether a row changed (the record is then written again).
    """
    current, changed = "", False
    files = iter(group)
    for row in record.rows:
        if row.stage == "select":
            current = next(files)
        if row.inputs.get("source") != current:
            row.inputs["source"] = current
            changed = True
    if changed:
        write_record(stage_dir, record)
    return changed


def notes_files(out: Path, cfg: PipelineConfig) -> dict[str, str]:
    """Clip id -> the select shard holding its notes, for a build whose select stage ran with `cfg`, read back
    from its folder (a select that runs in the same command hands on the same map from its records instead).

    Empty when there is no select stage (clips came from a manifest) or it was run with
    other settings; shards that do not verify are left out (render then parses the file).
    """
    stage_dir = Path(out) / "select"
    params = select_params(cfg)
    found: dict[str, str] = {}
    for path in sorted(stage_dir.glob("shard-*.json")):
        rec = read_record(stage_dir, int(path.stem.split("-")[1]))
        if rec is None or rec.failed or rec.params != params or not rec.file:
            continue
        try:
            check_shard_file(stage_dir, rec)
        except InputError:
            continue
        found.update(_notes_in(stage_dir, rec))
    return found


def _notes_in(stage_dir: Path, rec: ShardRecord) -> list[tuple[str, str]]:
    """(clip id, select shard file) for each clip whose notes the file of `rec` holds; none for a failed task."""
    if rec.failed or not rec.file:
        return []
    return [(r.id, str(stage_dir / rec.file)) for r in rec.rows if r.stage == "select-clip"]


def _file_row(file_id: str, path: str, params: str, status: str, **info: int) -> ManifestRow:
    return ManifestRow(file_id, "select", status, {"source": path}, params, info=dict(info))


def write_selection(path: Path, clips: list[ClipSpec]) -> None:
    """Write a selection manifest with sources relative to its folder."""
    base = path.parent.resolve()
    rows = []
    for c in clips:
        d = c.to_dict()
        d["source"] = os.path.relpath(Path(c.source).resolve(), base)
        rows.append(d)
    write_jsonl(path, rows)


def read_selection(path: Path) -> list[ClipSpec]:
    """Read a selection manifest; sources become absolute paths resolved from its folder."""
    if not path.is_file():
        raise PvtbuildError(f"{path}: selection manifest not found")
    base = path.parent.resolve()
    clips = []
    for n, d in enumerate(_read_rows(path), start=1):
        try:
            spec = ClipSpec.from_dict(d)
        except InputError as e:
            raise InputError(f"{path}:{n}: not a clip selection row ({e})") from None
        source = Path(spec.source)
        resolved = source if source.is_absolute() else (base / source).resolve()
        clips.append(ClipSpec.from_dict(dict(d, source=str(resolved))))
    return clips


def _read_rows(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except ValueError as e:
        raise PvtbuildError(f"{path}: not a JSON-lines selection manifest ({e})") from None
