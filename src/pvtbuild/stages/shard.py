"""The shard stage: a build directory's rendered and encoded clips in, a TFRecord dataset out.

The on-disk format is `pvtbuild.dataset`'s (shards, shapes.txt,
dataset.json); this module decides what goes in it:

- which clips: those `ok` in render and, when an encoded format is asked for,
  `ok` in encode too (the others are counted in the summary with their reason);
- which arrays: each chosen format (``audio`` [1, N]; ``cqt``, ``encodec``,
  ``disc`` as encode wrote them) plus every control on the grid
  `shard.control_grids` names for each format (``velocity_75hz``, ...);
- which metadata: ``id``, the clip's selection (``source_md5``, ``source``,
  ``instrument``, ``program``, ``start``, ``transpose``, ``mod_freq``, ... as
  in `ClipSpec`) and ``bpm``, the clip's median tempo;
- which split: ``valid`` when a sha256 of the source MIDI md5 falls below
  `shard.valid_share`, so all clips of a source file share a split, in every
  build and whatever the seed (a build of a handful of sources gets one
  source moved so that neither split is empty, see `assign_splits`);
- which order: per split, clips sorted by id then permuted by the seed, so
  each shard mixes sources and instruments; shards of about `shard.shard_mb`.

Before any work, every render and encode shard is checked against the sha256
its record holds: a damaged input stops the stage with one line naming the
file (and the command that redoes it), never a dataset that verifies.

One task writes one output shard. Its bookkeeping (stage.json, a record per
shard, manifest.jsonl) lives in ``DATASET/.shard/``, beside the files it
describes: a dataset folder is self-contained, several datasets (say audio
only and EnCodec only) can be built from one build directory, and a rerun
rewrites only the shards that are missing or no longer match their sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from pvtbuild.clip import ClipSpec
from pvtbuild.config import FORMATS, PipelineConfig, config_hash
from pvtbuild.dataset import (
    ShardInfo,
    meta_schema,
    serialize_example,
    shard_name,
    write_dataset_json,
    write_shapes,
    write_shard,
)
from pvtbuild.dataset.layout import SPLITS, num_shards
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow, remove_stale_temporaries, sha256_bytes, stable_hash
from pvtbuild.engine.npz import NpzRows
from pvtbuild.engine.planning import StageRun, chunk, each_shard, plan_stage, run_stages
from pvtbuild.engine.stage_files import ShardRecord, claim_stage_dir, read_finished_stage, write_record
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import Task
from pvtbuild.errors import ConfigError, PvtbuildError
from pvtbuild.music.soundfonts import soundfont_sha256
from pvtbuild.stages.qa_output import qa_status, read_summary
from pvtbuild.stages.render_settings import render_params, render_soundfont

ENCODED = ("cqt", "encodec", "disc")
BOOKKEEPING = ".shard"  # the stage folder inside the dataset directory
DATASET_DIR = "dataset"  # where the shard stage writes unless told otherwise (OUT/dataset)
VERSIONED_PACKAGES = ("pvtbuild", "numpy", "torch", "tensorflow-cpu", "tensorflow", "encodec", "nnAudio",
                      "librosa", "pyfluidsynth", "pretty_midi", "dask", "distributed")
BPM_BIN = 10  # width of dataset.json's BPM histogram bins
_META_CASTS = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class ShardClip:
    """One clip going into the dataset: where its arrays are and the metadata stored with it."""

    clip_id: str
    source_md5: str
    render_file: str  # the render shard (.npz) holding its audio and controls
    encode_file: str  # the encode shard holding its encodings; "" when no encoded format is stored
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: its split, its place among the split's shards, its clips in order."""

    split: str
    index: int
    count: int
    clips: list[ShardClip]

    @property
    def file(self) -> str:
        return f"{self.split}/{shard_name(self.split, self.index, self.count)}"


class Shard:
    """The shard stage (see `stages.base.Stage`): reads the build directory's render, encode (and qa) output
    itself, every file sha256-checked, once they are whole; writes the dataset into `dataset` (default
    OUT/dataset) with `formats` (default `shard.formats`)."""

    name = "shard"
    reads = None
    streams = False  # it splits and packs every clip, so it needs them all

    def __init__(self, dataset: Path | None = None, formats: tuple[str, ...] | None = None):
        self.dataset = dataset
        self.formats = formats

    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def check(self, cfg: PipelineConfig, together: frozenset[str]) -> None:
        """With encode in the same command, the dataset may ask only for what encode computes."""
        if "encode" in together:
            check_shard_formats(cfg)
        _check_formats(tuple(self.formats or cfg.shard.formats), cfg)

    def worker_paths(self, cfg: PipelineConfig) -> dict[str, str]:
        return {}

    def plan(self, cfg: PipelineConfig, out: Path, executor: Executor, upstream: Any) -> StageRun:
        return plan_shard(out, self.dataset or Path(out) / DATASET_DIR, cfg, self.formats)


def check_shard_formats(cfg: PipelineConfig) -> None:
    """Stop before any work when the dataset asks for a format the encode stage will not compute."""
    missing = [f for f in cfg.shard.formats if f in ENCODED and f not in cfg.encode.formats]
    if missing:
        raise ConfigError(f"shard.formats: asks for {', '.join(missing)}, which encode.formats "
                          f"({', '.join(cfg.encode.formats)}) does not compute; add it there or drop it here")


def shard(out: Path, dataset: Path, cfg: PipelineConfig, executor: Executor,
          formats: tuple[str, ...] | None = None) -> StageSummary:
    """Write the dataset of build directory `out` into `dataset` (this stage alone, on `executor`)."""
    _check_formats(tuple(formats or cfg.shard.formats), cfg)
    return run_stages(executor, [plan_shard(out, dataset, cfg, formats)])[0]


def plan_shard(out: Path, dataset: Path, cfg: PipelineConfig, formats: tuple[str, ...] | None = None) -> StageRun:
    """The shard stage's run; shards finished by an earlier run are kept, dataset.json is written last."""
    formats = tuple(formats or cfg.shard.formats)
    out, dataset = Path(out), Path(dataset)
    summary = StageSummary("shard")
    inputs = _read_inputs(out, cfg, formats, summary)
    if not inputs.clips:
        raise PvtbuildError(f"{out}: no clip is ready for the dataset (see the skipped reasons of render/encode)")
    shapes = _array_shapes(inputs.clips[0], formats, cfg)
    plans = plan_shards(inputs.clips, shapes, cfg)
    params = config_hash({"formats": formats, "grids": _grids(formats, cfg), "valid_share": cfg.shard.valid_share,
                          "shard_mb": cfg.shard.shard_mb, "seed": cfg.seed, "render": inputs.render_params,
                          "encode": inputs.encode_params,  # and which clip goes where, so no record outlives its plan:
                          "plan": [(p.file, [c.clip_id for c in p.clips]) for p in plans]})
    stage_dir = dataset / BOOKKEEPING
    _claim(dataset, stage_dir, params, stable_hash([c.clip_id for c in inputs.clips]))
    write_shapes(dataset / "shapes.txt", shapes)

    def finish(records: dict[int, ShardRecord]) -> None:
        if not summary.failed_shards:  # else no dataset.json: the dataset is not whole until a rerun finishes it
            _write_dataset_json(dataset, plans, records, shapes, cfg, formats, inputs)

    return plan_stage(stage_dir, params, plans,
                      each_shard(lambda i, plan: Task(f"shard-{params[:6]}-{i:05d}", shard_task,
                                                      (i, plan, shapes, cfg.controls.bpm_max, str(dataset), params))),
                      lambda plan, status: [_row(c, plan, params, status) for c in plan.clips], summary,
                      on_finish=finish)


def split_point(source_md5: str) -> float:
    """A source file's place in [0, 1): a sha256 of its md5 (never Python's salted hash())."""
    return int(hashlib.sha256(f"pvtbuild-split:{source_md5}".encode()).hexdigest()[:15], 16) / 16**15


def split_of(source_md5: str, valid_share: float) -> str:
    """"valid" or "train" for every clip of one source file, the same in every build and for every seed."""
    return "valid" if split_point(source_md5) < valid_share else "train"


def assign_splits(source_md5s: Iterable[str], valid_share: float) -> dict[str, str]:
    """`split_of` for each source, except that a small build gets no empty split.

    With few sources the hash may put none in valid (7 sources at 0.2: one
    build in five); then the source closest to valid moves there (and
    likewise for an empty train), as long as there are two sources.
    """
    splits = {m: split_of(m, valid_share) for m in sorted(set(source_md5s))}
    if valid_share > 0 and len(splits) >= 2:
        for empty, pick in (("valid", min), ("train", max)):
            if empty not in splits.values():
                splits[pick(splits, key=split_point)] = empty
    return splits


def plan_shards(clips: list[ShardClip], shapes: dict[str, tuple[Any, tuple[int, ...]]],
                cfg: PipelineConfig) -> list[ShardPlan]:
    """Split, order and cut the clips into shards of about `shard.shard_mb` (train shards first, then valid)."""
    record_bytes = sum(np.dtype(d).itemsize * math.prod(s) for d, s in shapes.values()) + 1024  # + metadata
    splits = assign_splits((c.source_md5 for c in clips), cfg.shard.valid_share)
    plans = []
    for k, split in enumerate(SPLITS):
        members = sorted((c for c in clips if splits[c.source_md5] == split), key=lambda c: c.clip_id)
        if not members:
            continue
        order = np.random.default_rng([cfg.seed, k]).permutation(len(members))
        members = [members[i] for i in order]
        size = math.ceil(len(members) / num_shards(len(members) * record_bytes, cfg.shard.shard_mb))
        groups = chunk(members, size)
        plans += [ShardPlan(split, i, len(groups), g) for i, g in enumerate(groups)]
    return plans


def shard_task(index: int, plan: ShardPlan, shapes: dict[str, tuple[Any, tuple[int, ...]]], bpm_max: float,
               dataset: str, params: str) -> ShardRecord:
    """Write one TFRecord shard of the plan's clips and its record (in DATASET/.shard)."""
    root = Path(dataset)
    readers: dict[str, NpzRows] = {}
    rows = []

    def reader(path: str) -> NpzRows:
        if path not in readers:
            readers[path] = NpzRows(path)
        return readers[path]

    def examples():
        for clip in plan.clips:
            arrays = clip_arrays(clip, shapes, reader)
            meta = dict(clip.meta, bpm=_median_bpm(arrays, bpm_max))
            data = serialize_example(arrays, meta, shapes=shapes)
            rows.append(_row(clip, plan, params, "ok", outputs={"record": sha256_bytes(data)},
                             info={"instrument": meta.get("instrument", ""), "bpm": meta["bpm"]}))
            yield data

    info = write_shard(root / plan.file, examples())
    record = ShardRecord("shard", index, f"../{plan.file}", info.sha256, params, rows)
    write_record(root / BOOKKEEPING, record)
    return record


def clip_arrays(clip: ShardClip, shapes: dict[str, tuple[Any, tuple[int, ...]]],
                reader: Callable[[str], "NpzRows"]) -> dict[str, np.ndarray]:
    """The stored arrays of one clip, read row-wise from its render and encode shards."""
    arrays = {}
    for name, (_, shape) in shapes.items():
        source = clip.encode_file if name in ENCODED else clip.render_file
        arrays[name] = reader(source).row(name, clip.clip_id).reshape(shape)
    return arrays


# --- inputs: what render and encode finished --------------------------------------------------


@dataclass
class _Inputs:
    clips: list[ShardClip]
    render_params: str
    encode_params: str | None
    soundfont_sha256: str
    encoder: dict[str, Any] | None
    skipped: dict[str, int]


def _read_inputs(out: Path, cfg: PipelineConfig, formats: tuple[str, ...], summary: StageSummary) -> _Inputs:
    """Clips ok in render (and encode), with their files and metadata; the others are counted as skipped."""
    rendered = read_finished_stage(out, "render", "pvtbuild render", check_files=True)
    render_params = rendered.params
    soundfont_sha = _check_render_config(out, cfg, render_params)
    encoded = [f for f in formats if f in ENCODED]
    encode_params, encoder, encode_status = None, None, {}
    if encoded:
        encoder = _encoder_info(out, encoded)
        encoded_stage = read_finished_stage(out, "encode", f"pvtbuild encode --formats {','.join(encoded)}",
                                            check_files=True)
        encode_params = encoded_stage.params
        for rec in encoded_stage.records:
            for row in rec.rows:
                encode_status[row.id] = (row.status, str(out / "encode" / rec.file) if rec.file else "")
    judged = qa_status(out) if cfg.qa.drop_failing else {}
    clips = []
    for rec in rendered.records:
        for row in rec.rows:
            status, encode_file = row.status, ""
            if status == "ok" and encoded:
                status, encode_file = encode_status.get(row.id, ("skipped: not in the encode stage's output", ""))
            if status == "ok" and cfg.qa.drop_failing:
                status = judged.get(row.id, "skipped: not judged by qa")
            if status != "ok":
                reason = status.split(":", 1)[-1].strip()
                summary.skipped[reason] += 1
                summary.examples.setdefault(reason, row.inputs.get("source", row.id))
                continue
            clips.append(ShardClip(row.id, row.inputs["source_md5"], str(out / "render" / rec.file),
                                   encode_file, _meta(row)))
    return _Inputs(clips, render_params, encode_params, soundfont_sha, encoder, dict(summary.skipped))


def _check_render_config(out: Path, cfg: PipelineConfig, params: str) -> str:
    """The SoundFont's sha256, after checking that render used this config (else the dataset.json would lie)."""
    sha = soundfont_sha256(render_soundfont(cfg))
    if render_params(cfg, sha) != params:
        raise PvtbuildError(f"{out / 'render'}: was rendered with other settings or another SoundFont than this "
                            f"config; drop --pipeline / --seed to go on with the build's own ({out / 'pipeline.json'})")
    return sha


def _encoder_info(out: Path, encoded: list[str]) -> dict[str, Any]:
    path = out / "encode" / "encoder.json"
    fix = f"run `pvtbuild encode --out {out} --formats {','.join(encoded)}` first"
    if not path.is_file():
        raise PvtbuildError(f"{path}: not found; the dataset asks for {','.join(encoded)}: {fix}")
    info = json.loads(path.read_text())
    have = list(info.get("formats") or [])
    missing = [f for f in encoded if f not in have]
    if missing:  # an encode folder holds one set of formats: adding one means encoding them all again
        both = ",".join(have + missing)
        raise PvtbuildError(f"{out / 'encode'}: holds no {','.join(missing)} (has {','.join(have)}); "
                            f"delete that folder "
                            f"and run `pvtbuild encode --out {out} --formats {both}`, or shard only {','.join(have)}")
    return info


def _meta(row: ManifestRow) -> dict[str, Any]:
    """Metadata stored with a clip: its id and selection, each with the type ClipSpec declares."""
    inputs = row.inputs
    meta: dict[str, Any] = {"id": row.id, "source": str(inputs.get("source", ""))}
    for f in fields(ClipSpec):
        cast = _META_CASTS.get(str(f.type))  # scalars only: an Example feature holds no None or nested value
        if f.name in ("clip_id", "source") or f.name not in inputs or cast is None:
            continue
        meta[f.name] = cast(inputs[f.name])
    return meta


def _median_bpm(arrays: dict[str, np.ndarray], bpm_max: float) -> float:
    bpm = [a for name, a in sorted(arrays.items()) if name.startswith("bpm_")]
    return round(float(np.median(bpm[0])) * bpm_max, 2) if bpm else 0.0


# --- layout ------------------------------------------------------------------------------------


def _check_formats(formats: tuple[str, ...], cfg: PipelineConfig) -> None:
    for f in formats:
        if f not in FORMATS:
            raise PvtbuildError(f"--formats: unknown format {f!r} (known: {', '.join(FORMATS)})")
        if f not in cfg.shard.control_grids:
            raise PvtbuildError(f"shard.control_grids: names no grid for format {f!r}")


def _grids(formats: tuple[str, ...], cfg: PipelineConfig) -> list[str]:
    return sorted({cfg.shard.control_grids[f] for f in formats})


def _array_shapes(clip: ShardClip, formats: tuple[str, ...],
                  cfg: PipelineConfig) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """name -> (dtype, shape) of every stored array, from the npz headers of the first clip's shards."""
    render = NpzRows(clip.render_file)
    shapes: dict[str, tuple[Any, tuple[int, ...]]] = {}
    for f in formats:
        if f == "audio":
            _, dtype, shape = render.header("audio")
            shapes["audio"] = (dtype, (1,) + shape[1:])
        else:
            _, dtype, shape = NpzRows(clip.encode_file).header(f)
            shapes[f] = (dtype, shape[1:])
    for grid in _grids(formats, cfg):
        for name in render.names:
            if name.endswith(f"_{grid}"):
                _, dtype, shape = render.header(name)
                shapes[name] = (dtype, shape[1:])
    return dict(sorted(shapes.items()))


def _claim(dataset: Path, stage_dir: Path, params: str, inputs: str) -> None:
    try:
        claim_stage_dir(stage_dir, "shard", params, inputs)
    except PvtbuildError:
        raise PvtbuildError(f"{dataset}: holds a dataset built with other settings or clips; "
                            f"use another --dataset, or delete that folder to rebuild it") from None
    for split in SPLITS:  # shards live beside the bookkeeping folder, not in it
        if (dataset / split).is_dir():
            remove_stale_temporaries(dataset / split)


def _row(clip: ShardClip, plan: ShardPlan, params: str, status: str, outputs: dict | None = None,
         info: dict | None = None) -> ManifestRow:
    inputs = {"source": clip.meta.get("source", ""), "source_md5": clip.source_md5, "split": plan.split,
              "file": plan.file}
    return ManifestRow(clip.clip_id, "shard", status, inputs, params, outputs or {}, info or {})


def _write_dataset_json(dataset: Path, plans: list[ShardPlan], records: dict[int, ShardRecord],
                        shapes: dict, cfg: PipelineConfig, formats: tuple[str, ...], inputs: _Inputs) -> None:
    splits: dict[str, list[ShardInfo]] = {s: [] for s in SPLITS}
    stats: dict[str, dict[str, Any]] = {}
    for i, plan in enumerate(plans):
        rec = records[i]
        path = dataset / plan.file
        splits[plan.split].append(ShardInfo(path, len(rec.rows), path.stat().st_size, rec.sha256))
        split_stats = stats.setdefault(plan.split, {"instruments": Counter(), "bpm_histogram": Counter()})
        for row in rec.rows:
            split_stats["instruments"][row.info["instrument"]] += 1
            split_stats["bpm_histogram"][_bpm_bin(row.info["bpm"])] += 1
    first = inputs.clips[0]
    meta_kinds = meta_schema(dict(first.meta, bpm=0.0))
    config = {k: v for k, v in cfg.to_dict().items() if k != "exec"}  # how many workers ran it changes nothing
    extra = {
        "config": config,
        "formats": list(formats),
        "control_grids": {f: cfg.shard.control_grids[f] for f in formats},
        "sample_rate": cfg.render.sample_rate,
        "seed": cfg.seed,
        "soundfont": {"name": cfg.render.soundfont, "sha256": inputs.soundfont_sha256},
        "encoder": inputs.encoder,
        "weights": (inputs.encoder or {}).get("weights") if any(f in ("encodec", "disc") for f in formats) else None,
        "versions": _versions(),
        "skipped": dict(sorted(inputs.skipped.items())),
        "qa": _qa_summary(Path(inputs.clips[0].render_file).parent.parent, cfg),
        "stats": {s: {k: dict(sorted(c.items())) for k, c in v.items()} for s, v in sorted(stats.items())},
    }
    write_dataset_json(dataset / "dataset.json", splits, extra, meta_kinds)


def _qa_summary(out: Path, cfg: PipelineConfig) -> dict[str, Any] | None:
    """The qa stage's summary (`stages.qa.summarise`) and whether failing clips were dropped; None: qa did not run."""
    report = read_summary(out)
    return None if report is None else dict(report, dropped_failing=cfg.qa.drop_failing)


def _bpm_bin(bpm: float, width: int = BPM_BIN) -> str:
    """Histogram bin label of a tempo: its lower edge, zero-padded so bins sort as numbers ("090", "120")."""
    return f"{int(bpm // width) * width:03d}"


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
