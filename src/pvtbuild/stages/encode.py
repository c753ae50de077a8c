"""The encode stage: rendered clips in, CQT / EnCodec latents / EnCodec codes out.

Reads the render stage's output in `OUT/render/` and writes, per render shard `i`,
`OUT/encode/shard-{i:05d}.npz` (same index; uncompressed .npz, `npz.npz_bytes`) holding, for
the n clips of that render shard that encoded ok, in the render shard's order:
- `id`: [n] clip ids (str);
- `cqt`: [n, 2, n_bins, frames] float32, real and imaginary CQT ([n, 2, 216, 1921] for 8 s);
- `encodec`: [n, 128, frames] float32, EnCodec encoder output before the quantizer ([n, 128, 600]);
- `disc`: [n, K, frames] int16, EnCodec codes, values 0..1023 ([n, 16, 600] at 12 kbps);
each only when asked for in `encode.formats`. `audio` needs no encoding: it stays in the
render shard. Beside it, `shard-{i:05d}.json` (a `ShardRecord` with one row per clip the
render shard holds: `ok` with the sha256 of each format's array, or `skipped: reason`),
`manifest.jsonl`, `stage.json`, and `encoder.json`, which says how the arrays were made:

    {"formats": [...], "weights": "pretrained" | "random" | null (no EnCodec format),
     "checkpoint": path or null, "checkpoint_sha256": ... or null, "seed": int,
     "bandwidth": kbps, "cqt": {fmin, bins_per_octave, n_bins, hop_length},
     "cqt_transform": {"name": "fftcqt", "version": 1, "defined_by": ...} or null (no cqt format)}

The stage's parameter hash covers the formats, the weights' identity (random + seed,
or the checkpoint's sha256), the CQT and EnCodec settings, the CQT transform and its
version (`cqt.TRANSFORM`) and the render parameters, so a build directory never mixes
arrays made two ways; one whose encoder.json names another CQT transform (or none:
nnAudio, before `TRANSFORM` was recorded) is refused with a line saying so. The batch
size and the device are not part of it: they change latents only by float rounding
(codes not at all; the CQT on CPU not at all either, it goes clip by clip), so each
row's `info.device` says which device computed it (`pvtbuild.compute` says what differs).
The torch thread count would change them too, so it is fixed (`compute.ENCODE_THREADS`):
outputs are byte-identical whatever --jobs.

A task encodes one render shard on CPU; on a GPU, enough consecutive render shards to
fill a batch (`shards_per_task`), each still written as its own encode shard. Within
`pvtbuild run`, an encode task takes its render shards' records as `After`s of the
render tasks, so it starts as soon as they are rendered (see `engine.planning.run_stages`).

Render shards whose task failed have no clips to encode; their encode record is
marked failed, so the next run (after render redid them) encodes them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from pvtbuild.compute import default_batch_size, deterministic_cuda, encode_threads, pick_device
from pvtbuild.config import CqtConfig, PipelineConfig, config_hash
from pvtbuild.encoders.cqt import TRANSFORM, CqtEncoder
from pvtbuild.encoders.encodec import EncodecEncoder, hub_checkpoint_path, resolve_checkpoint
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow, atomic_write_bytes, sha256_bytes, sha256_file
from pvtbuild.engine.planning import StageRun, plan_stage, run_stages
from pvtbuild.engine.stage_files import (
    FinishedStage,
    ShardRecord,
    claim_stage_dir,
    read_finished_stage,
    shard_stem,
    write_record,
    write_shard_file,
)
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import Task
from pvtbuild.errors import ConfigError, InputError, PvtbuildError
from pvtbuild.stages.render_input import read_render_input, rendered_rows, row_from_render, unknown_render_row

ENCODED_FORMATS = ("cqt", "encodec", "disc")  # what this stage computes, in storage order
ENCODEC_FORMATS = ("encodec", "disc")
ENCODER_JSON = "encoder.json"


@dataclass(frozen=True)
class Weights:
    """The EnCodec weights every worker loads, decided once in the client before any work."""

    kind: str | None  # "pretrained", "random", or None when no EnCodec format is asked for
    checkpoint: str | None = None  # resolved path of the pretrained state dict
    sha256: str | None = None
    seed: int = 0  # draws the random weights

    def identity(self) -> dict[str, Any] | None:
        """What makes two runs' EnCodec outputs equal: the seed of random weights, or the checkpoint's bytes."""
        if self.kind == "random":
            return {"weights": "random", "seed": self.seed}
        if self.kind == "pretrained":
            return {"weights": "pretrained", "sha256": self.sha256}
        return None


@dataclass(frozen=True)
class EncodeJob:
    """Everything a worker needs to encode one render shard; small and picklable."""

    formats: tuple[str, ...]
    weights: Weights
    cqt: CqtConfig
    bandwidth: float
    sample_rate: int
    clip_samples: int
    device: str  # encode.device, resolved on the worker (it may have the GPU the client lacks)
    batch_size: int  # 0: per device
    params: str
    render_params: str


def encode_formats(cfg: PipelineConfig) -> tuple[str, ...]:
    """The formats to compute, in storage order (`audio`, if listed, is the render shard itself)."""
    return tuple(f for f in ENCODED_FORMATS if f in cfg.encode.formats)


def resolve_weights(cfg: PipelineConfig) -> Weights:
    """Which EnCodec weights to use, from `encode.weights`; raises before any work when they are missing.

    pretrained: the checkpoint (encode.encodec.checkpoint, else torch hub's cache) must exist;
    random: the untrained architecture drawn from the seed; auto: pretrained if in torch hub's cache
    (or at encode.encodec.checkpoint, which must then exist), else random.
    """
    if not any(f in ENCODEC_FORMATS for f in encode_formats(cfg)):
        return Weights(None, seed=cfg.seed)
    if cfg.render.sample_rate != 24000:
        raise ConfigError(f"encode.formats: encodec and disc need 24 kHz audio (the EnCodec 24 kHz model), "
                          f"but render.sample_rate is {cfg.render.sample_rate}")
    mode = cfg.encode.weights
    if mode == "random":
        return Weights("random", seed=cfg.seed)
    try:
        path = resolve_checkpoint(cfg.encode.encodec.checkpoint)
    except InputError:
        if mode == "pretrained" or cfg.encode.encodec.checkpoint is not None:
            raise  # asked for, or a path given that is not there: a mistake, not a reason for random weights
        return Weights("random", seed=cfg.seed)  # auto, and nothing in torch hub's cache
    return Weights("pretrained", str(path.resolve()), sha256_file(path), cfg.seed)


def check_encode_config(cfg: PipelineConfig) -> Weights:
    """What encode can check before any work: the weights exist and, for local workers, the device."""
    weights = resolve_weights(cfg)
    if cfg.exec.scheduler in (None, "sync"):
        pick_device(cfg.encode.device)  # local workers see the devices this process sees
    return weights


def encode_params(cfg: PipelineConfig, weights: Weights, render_params: str) -> str:
    """The stage's parameter hash: what went into every array it writes."""
    formats = encode_formats(cfg)
    return config_hash({"formats": list(formats), "weights": weights.identity(),
                        "cqt": cfg.encode.cqt if "cqt" in formats else None,
                        "cqt_transform": TRANSFORM if "cqt" in formats else None,
                        "bandwidth": cfg.encode.encodec.bandwidth if weights.kind else None,
                        "clip_samples": cfg.clip_samples, "sample_rate": cfg.render.sample_rate,
                        "render": render_params})


def encoder_info(cfg: PipelineConfig, weights: Weights) -> dict[str, Any]:
    """The content of `encoder.json`, read by the shard stage for dataset.json."""
    return {"formats": list(encode_formats(cfg)), "weights": weights.kind, "checkpoint": weights.checkpoint,
            "checkpoint_sha256": weights.sha256, "seed": cfg.seed, "bandwidth": cfg.encode.encodec.bandwidth,
            "cqt": asdict(cfg.encode.cqt), "cqt_transform": TRANSFORM if "cqt" in encode_formats(cfg) else None}


def task_resources(device: str, advertised: dict[str, float]) -> dict[str, float]:
    """`{"GPU": 1}` when encoding on CUDA on a cluster whose workers advertise GPUs, so CPU-only workers render."""
    wants_cuda = device.startswith("cuda") or device == "auto"
    return {"GPU": 1} if wants_cuda and advertised.get("GPU", 0) > 0 else {}


def shards_per_task(cfg: PipelineConfig, resources: dict[str, float], local: bool) -> int:
    """Render shards per encode task: 1 on CPU; on a GPU enough for a whole batch (`encode.batch_size`,
    else 32), since a render shard may hold fewer clips than a GPU batch wants.

    The GPU is known to be there when tasks ask workers for one, or when the workers are
    local and this process sees CUDA. Grouping never changes which arrays a shard gets,
    only how many shards one call encodes.
    """
    on_gpu = resources.get("GPU", 0) > 0 or (local and pick_device(cfg.encode.device).type == "cuda")
    if not on_gpu:
        return 1
    batch = cfg.encode.batch_size or default_batch_size(torch.device("cuda"))
    return max(1, -(-batch // cfg.render.clips_per_shard))


class Encode:
    """The encode stage (see `stages.base.Stage`): plans on render's output, shard by shard."""

    name = "encode"
    reads = "render"
    streams = True

    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def check(self, cfg: PipelineConfig, together: frozenset[str]) -> None:
        check_encode_config(cfg)

    def worker_paths(self, cfg: PipelineConfig) -> dict[str, str]:
        return {}

    def plan(self, cfg: PipelineConfig, out: Path, executor: Executor, upstream: FinishedStage | None) -> StageRun:
        rendered = upstream or read_finished_stage(Path(out), "render", "pvtbuild render")
        return plan_encode(out, cfg, executor, rendered)


def encode(out: Path, cfg: PipelineConfig, executor: Executor) -> StageSummary:
    """Encode every render shard of OUT/render into OUT/encode (this stage alone, on `executor`)."""
    return run_stages(executor, [Encode().plan(cfg, out, executor, None)])[0]


def plan_encode(out: Path, cfg: PipelineConfig, executor: Executor, rendered: FinishedStage) -> StageRun:
    """The encode stage's run over `rendered`: finished render shards, or (streaming) render tasks of this run."""
    render_dir, stage_dir = Path(out) / "render", Path(out) / "encode"
    weights = check_encode_config(cfg)
    resources = task_resources(cfg.encode.device, executor.worker_resources())
    params = encode_params(cfg, weights, rendered.params)
    _check_cqt_transform(stage_dir, encode_formats(cfg))
    inputs = config_hash([rendered.params, rendered.inputs])
    claim_stage_dir(stage_dir, "encode", params, inputs)
    atomic_write_bytes(stage_dir / ENCODER_JSON, json.dumps(encoder_info(cfg, weights), indent=1).encode())
    _announce(weights, cfg.encode.weights)
    job = EncodeJob(encode_formats(cfg), weights, cfg.encode.cqt, cfg.encode.encodec.bandwidth,
                    cfg.render.sample_rate, cfg.clip_samples, cfg.encode.device, cfg.encode.batch_size,
                    params, rendered.params)
    summary = StageSummary("encode")

    def note_failed_renders(records: dict[int, ShardRecord]) -> None:
        for i, rec in sorted(records.items()):
            if rec.failed and not rec.rows:
                summary.failed_shards.append(f"render {shard_stem(i)} failed; rerun render, then encode, to retry it")

    local = cfg.exec.scheduler in (None, "sync")
    return plan_stage(stage_dir, params, rendered.records,
                      lambda indices, recs: Task(f"encode-{params[:6]}-{indices[0]:05d}", encode_task,
                                                 (indices, recs, job, str(stage_dir), str(render_dir)), resources),
                      lambda rec, status: [_row(r, params, status, job) for r in rendered_rows(rec)], summary,
                      inputs=inputs, per_task=shards_per_task(cfg, resources, local), on_finish=note_failed_renders)


def encode_task(indices: list[int], renders: list[ShardRecord], job: EncodeJob, stage_dir: str,
                render_dir: str) -> list[ShardRecord]:
    """Encode render shards (several per call on a GPU, so its batches fill) into one encode shard each.

    A clip that cannot be encoded is a skipped row; the clips of all shards go through the
    encoders together, in shard order, `batch_size` at a time.
    """
    stage = Path(stage_dir)
    done: dict[int, ShardRecord] = {}
    loaded: list[tuple[int, list[ManifestRow], list[str], np.ndarray]] = []  # index, its rows, ids, audio
    for index, render in zip(indices, renders):
        got = read_render_input("encode", index, render, job.render_params, job.params, Path(render_dir), stage,
                                ("id", "audio"), lambda row, status: _row(row, job.params, status, job))
        if isinstance(got, ShardRecord):
            done[index] = got
        else:
            loaded.append((index, rendered_rows(render), [str(x) for x in got["id"]], got["audio"]))
    if loaded:
        audio = np.concatenate([clips for *_, clips in loaded])
        encoded, problems = encode_clips(audio, job)
        device = str(pick_device(job.device).type)
        start = 0
        for index, rendered, ids, clips in loaded:
            span = range(start, start + len(ids))
            start += len(ids)
            done[index] = _write_encoded(stage, index, rendered, ids, {f: {n - span.start: a for n, a in got.items()
                                                                         if n in span} for f, got in encoded.items()},
                                         {n - span.start: p for n, p in problems.items() if n in span}, job, device)
    return [done[i] for i in indices]


def _write_encoded(stage: Path, index: int, rendered: list[ManifestRow], ids: list[str],
                   encoded: dict[str, dict[int, np.ndarray]], problems: dict[int, str], job: EncodeJob,
                   device: str) -> ShardRecord:
    """Write one encode shard (its clips that encoded ok, in render order) and its record."""
    sources = {r.id: r for r in rendered}
    rows = []
    for n, cid in enumerate(ids):
        if n in problems:
            rows.append(_row(sources.get(cid) or unknown_render_row(cid), job.params, f"skipped: {problems[n]}", job,
                             device=device))
        else:
            outputs = {f: sha256_bytes(encoded[f][n].tobytes()) for f in job.formats}
            rows.append(_row(sources.get(cid) or unknown_render_row(cid), job.params, "ok", job, outputs, device))
    keep = [n for n in range(len(ids)) if n not in problems]
    file, sha = "", ""
    if keep:
        arrays = {"id": np.array([ids[n] for n in keep])}
        arrays.update({f: np.stack([encoded[f][n] for n in keep]) for f in job.formats})
        file, sha = write_shard_file(stage, index, arrays)
    return write_record(stage, ShardRecord("encode", index, file, sha, job.params, rows))


def encode_clips(audio: np.ndarray, job: EncodeJob) -> tuple[dict[str, dict[int, np.ndarray]], dict[int, str]]:
    """Encode clips in batches: (format -> clip index -> array, clip index -> skip reason).

    Unusable clips (wrong length, NaN/inf) are set aside before batching; a batch the
    model fails on is retried clip by clip, so one bad clip costs only itself.
    """
    cqt, codec, device = _encoders(job)
    problems = {n: p for n in range(len(audio)) if (p := _audio_problem(audio[n], job.clip_samples))}
    good = [n for n in range(len(audio)) if n not in problems]
    batch_size = job.batch_size or default_batch_size(device)
    encoded: dict[str, dict[int, np.ndarray]] = {f: {} for f in job.formats}
    with torch.inference_mode(), encode_threads():  # a fixed count, not PVTBUILD_THREADS: see compute.py
        for start in range(0, len(good), batch_size):
            batch = good[start:start + batch_size]
            for members, result in _encode_or_split(np.stack([audio[n] for n in batch]), batch, job, cqt, codec):
                if isinstance(result, str):
                    problems.update({n: result for n in members})
                    continue
                for k, n in enumerate(members):
                    bad = [f for f in job.formats if not np.isfinite(result[f][k]).all()]
                    if bad:
                        problems[n] = f"{bad[0]} output is not finite"
                    else:
                        for f in job.formats:
                            encoded[f][n] = result[f][k]
    return encoded, problems


# --- internals --------------------------------------------------------------------------


def _encoders(job: EncodeJob) -> tuple[CqtEncoder | None, EncodecEncoder | None, torch.device]:
    """This worker's encoders, built once per process and reused across tasks (`encoders.cqt`, `encoders.encodec`)."""
    device = pick_device(job.device)
    if device.type == "cuda":
        deterministic_cuda()
    cqt = CqtEncoder(job.cqt, job.sample_rate, device) if "cqt" in job.formats else None
    codec = None
    if job.weights.kind is not None:
        codec = EncodecEncoder.load(checkpoint=job.weights.checkpoint, random_weights=job.weights.kind == "random",
                                    seed=job.weights.seed, bandwidth=job.bandwidth, device=device)
        if codec.info["sha256"] != job.weights.sha256:
            raise InputError(f"EnCodec checkpoint {job.weights.checkpoint}: differs on this worker from the client's "
                             f"(sha256 {codec.info['sha256']} vs {job.weights.sha256})")
    return cqt, codec, device


def _encode_or_split(batch: np.ndarray, members: list[int], job: EncodeJob, cqt: CqtEncoder | None,
                     codec: EncodecEncoder | None) -> Iterator[tuple[list[int], dict[str, np.ndarray] | str]]:
    """Yield (members, arrays by format) for the batch; when the model fails on it, clip by clip (reason str)."""
    try:
        result = _encode_batch(batch, job, cqt, codec)
    except PvtbuildError:
        raise
    except Exception as e:  # noqa: BLE001 - a clip the model cannot take; find which
        if len(members) == 1:
            yield members, f"encoder failed: {' '.join(f'{type(e).__name__}: {e}'.split())[:200]}"
        else:
            for k, n in enumerate(members):
                yield from _encode_or_split(batch[k:k + 1], [n], job, cqt, codec)
        return
    yield members, result


def _encode_batch(batch: np.ndarray, job: EncodeJob, cqt: CqtEncoder | None,
                  codec: EncodecEncoder | None) -> dict[str, np.ndarray]:
    out = {}
    if cqt is not None:
        out["cqt"] = cqt.encode(batch)
    if "encodec" in job.formats and "disc" in job.formats:
        out["encodec"], out["disc"] = codec.encode_both(batch)  # one encoder pass for both
    elif "encodec" in job.formats:
        out["encodec"] = codec.latents(batch)
    elif "disc" in job.formats:
        out["disc"] = codec.codes(batch)
    return out


def _audio_problem(clip: np.ndarray, n_samples: int) -> str:
    if clip.shape != (n_samples,):
        return f"audio has {clip.shape[-1] if clip.ndim else 0} samples, expected {n_samples}"
    bad = int(np.count_nonzero(~np.isfinite(clip)))
    return f"audio has {bad} non-finite samples (NaN/inf)" if bad else ""


def _row(render_row: ManifestRow, params: str, status: str, job: EncodeJob,
         outputs: dict[str, str] | None = None, device: str | None = None) -> ManifestRow:
    """An encode manifest row; `device` ("cpu", "cuda") is the one that computed its arrays (they differ by it)."""
    info = {"weights": job.weights.kind} if device is None else {"weights": job.weights.kind, "device": device}
    return row_from_render(render_row, "encode", params, status, outputs, info)


def _check_cqt_transform(stage_dir: Path, formats: tuple[str, ...]) -> None:
    """Refuse, in one line, to resume an encode folder whose CQT arrays another transform computed."""
    path = stage_dir / ENCODER_JSON
    if "cqt" not in formats or not path.is_file():
        return
    old = json.loads(path.read_text())
    if "cqt" not in (old.get("formats") or []):
        return  # other formats: claim_stage_dir refuses it as other settings
    recorded = old.get("cqt_transform")
    if recorded != TRANSFORM:
        what = f"{recorded.get('name')} v{recorded.get('version')}" if recorded else "nnAudio CQT1992v2 (unversioned)"
        raise PvtbuildError(f"{stage_dir}: its CQT was computed by {what}, this pvtbuild computes "
                            f"{TRANSFORM['name']} v{TRANSFORM['version']}; delete that folder to re-encode, "
                            f"or use another --out")


def _announce(weights: Weights, requested: str) -> None:
    """Say loudly which EnCodec weights are used; random ones make data that is only good for tests."""
    if weights.kind == "random":
        why = f" (encode.weights auto: no checkpoint at {hub_checkpoint_path()})" if requested == "auto" else ""
        tqdm.write(f"encode: *** RANDOM EnCodec weights (seed {weights.seed}){why}: latents and codes are NOT those "
                   f"of the pretrained model; fine for tests and dry runs only (recorded in encode/{ENCODER_JSON}) ***",
                   file=sys.stderr)
    elif weights.kind == "pretrained":
        tqdm.write(f"encode: pretrained EnCodec weights from {weights.checkpoint}", file=sys.stderr)
