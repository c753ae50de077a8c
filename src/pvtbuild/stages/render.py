"""The render stage: selected clips in, audio and controls out.

Output, per shard of `render.clips_per_shard` clips, `OUT/render/shard-{i:05d}.npz`
(uncompressed, so later stages read it at disk speed) holding, for the n clips
rendered ok, in selection order:
- `id`: [n] clip ids (str);
- `audio`: [n, clip_samples] float32, mono, `render.sample_rate`;
- `{control}_{grid}`: [n, frames] float32 (`instrument_{grid}`: [n, n_instruments, frames])
  for every control of `music.controls` and every grid of `controls.grids`.
Clips that could not be rendered are rows `skipped: <reason>` in the shard record.

A clip's notes come from the select stage of the same build when it ran there
(`OUT/select/shard-*.npz`, see `stages.select`), handed on in the `Selection`; clips of a selection manifest are
re-derived from their source MIDI files, whose md5 is checked. Both give the
same notes, hence the same bytes.
"""

from __future__ import annotations

import os
import zipfile
from itertools import groupby
from pathlib import Path
from typing import Iterator

import numpy as np

from pvtbuild.clip import ClipNotes, ClipSpec, Selection, unpack_notes
from pvtbuild.config import PipelineConfig
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow, sha256_bytes, stable_hash
from pvtbuild.engine.planning import StageRun, chunk, each_shard, plan_stage, run_stages
from pvtbuild.engine.stage_files import ShardRecord, claim_stage_dir, write_record, write_shard_file
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import Task
from pvtbuild.errors import InputError
from pvtbuild.music.controls import clip_controls
from pvtbuild.music.midi import clip_notes, load_midi, md5_file
from pvtbuild.music.soundfonts import soundfont_sha256
from pvtbuild.music.synth import render_notes
from pvtbuild.stages.render_settings import render_params, render_soundfont

# A rendered clip quieter than this (-80 dBFS) is skipped as silence: a program the SoundFont
# lacks, or "ghost" tracks of velocity-1 notes (real in Lakh: RMS ~1e-5, inaudible). Real clips
# measured on lakh-sample and the edge cases: RMS >= 4e-3.


class Render:
    """The render stage (see `stages.base.Stage`): plans on the `Selection` select hands on."""

    name = "render"
    reads = "select"
    streams = False  # it needs the whole selection to cut it into shards

    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def check(self, cfg: PipelineConfig, together: frozenset[str]) -> None:
        render_soundfont(cfg)

    def worker_paths(self, cfg: PipelineConfig) -> dict[str, str]:
        return {"SoundFont": str(render_soundfont(cfg).resolve())}

    def plan(self, cfg: PipelineConfig, out: Path, executor: Executor, upstream: Selection) -> StageRun:
        return plan_render(upstream, out, cfg)


def render(selection: Selection, out: Path, cfg: PipelineConfig, executor: Executor) -> StageSummary:
    """Render every clip into shards under OUT/render (this stage alone, on `executor`)."""
    return run_stages(executor, [plan_render(selection, out, cfg)])[0]


def plan_render(selection: Selection, out: Path, cfg: PipelineConfig) -> StageRun:
    """The render stage's run: `render.clips_per_shard` clips per shard, one task per shard not finished yet.

    A clip's notes come from the select stage file `selection.notes` names, else from its source file.
    """
    clips, stored = selection.clips, selection.notes
    soundfont = render_soundfont(cfg)
    params = render_params(cfg, soundfont_sha256(soundfont))
    stage_dir = out / "render"
    inputs = stable_hash([c.clip_id for c in clips])
    claim_stage_dir(stage_dir, "render", params, inputs)
    return plan_stage(stage_dir, params, chunk(clips, cfg.render.clips_per_shard),
                      each_shard(lambda i, group: Task(
                          f"render-{params[:6]}-{i:05d}", render_task,
                          (i, group, cfg, str(soundfont), str(stage_dir),
                           sorted({stored[c.clip_id] for c in group if c.clip_id in stored})))),
                      lambda group, status: [_row(s, params, status) for s in group], StageSummary("render"),
                      inputs=inputs)


def render_task(index: int, specs: list[ClipSpec], cfg: PipelineConfig, soundfont: str, stage_dir: str,
                notes_files: list[str] | None = None) -> ShardRecord:
    """Render one shard of clips and write it; a clip that fails is a skipped row, the others go on.

    `notes_files` are select shards holding some of these clips' notes; the others are
    re-derived from their source files.
    """
    params = render_params(cfg, soundfont_sha256(Path(soundfont)))
    stored = _read_notes(notes_files or [])
    rows: list[ManifestRow] = []
    ok: list[tuple[str, dict[str, np.ndarray]]] = []
    audio = np.empty((len(specs), cfg.clip_samples), dtype=np.float32)  # row k: the k-th clip rendered ok
    for _, group in groupby(specs, key=lambda s: s.source):
        for spec, notes in _clip_notes(list(group), stored, cfg):
            if isinstance(notes, InputError):
                rows.append(_row(spec, params, f"skipped: {notes}"))
                continue
            try:
                controls, info = render_clip(notes, spec, cfg, Path(soundfont), out=audio[len(ok)])
            except InputError as e:
                rows.append(_row(spec, params, f"skipped: {e}"))
                continue
            rows.append(_row(spec, params, "ok", outputs={"audio": sha256_bytes(audio[len(ok)].data)}, info=info))
            ok.append((spec.clip_id, controls))
    stage = Path(stage_dir)
    file, sha = "", ""
    if ok:
        file, sha = write_shard_file(stage, index, _stack(ok, audio[:len(ok)]))
    record = ShardRecord("render", index, file, sha, params, rows)
    write_record(stage, record)
    return record


def render_clip(notes: ClipNotes, spec: ClipSpec, cfg: PipelineConfig, soundfont: Path,
                out: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Render one clip's audio into `out` ([clip_samples] float32); returns its controls on every grid and info."""
    names = [i.name for i in cfg.select.instruments]
    if spec.instrument not in names:
        raise InputError(f"instrument {spec.instrument!r} is not in this pipeline ({', '.join(names)})")
    audio, n_clipped = render_notes(notes, spec.program, soundfont, cfg.render, cfg.clip_samples, out=out)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if not np.isfinite(rms):
        raise InputError("rendered audio is not finite")
    if rms < cfg.render.silence_rms:
        raise InputError(f"rendered near-silence (RMS < render.silence_rms = {cfg.render.silence_rms:g}): "
                         f"notes of very low velocity, "
                         f"or no program {spec.program} in the SoundFont")
    controls = clip_controls(notes, spec.instrument, cfg)
    info = {"rms": round(rms, 6), "peak": round(float(np.max(np.abs(audio))), 6), "clipped": int(n_clipped)}
    return controls, info


def _read_notes(files: list[str]) -> dict[str, ClipNotes]:
    """Clip id -> notes from select shards; an unreadable shard is passed over (its clips are parsed)."""
    stored: dict[str, ClipNotes] = {}
    for path in files:
        try:
            with np.load(path) as data:
                stored.update(unpack_notes(dict(data)))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
    return stored


def _clip_notes(group: list[ClipSpec], stored: dict[str, ClipNotes],
                cfg: PipelineConfig) -> Iterator[tuple[ClipSpec, ClipNotes | InputError]]:
    """The notes of each clip of one source file: stored ones, else from the file, parsed at most once."""
    midi = None  # the parsed file, or the InputError parsing it raised
    for spec in group:
        if spec.clip_id in stored:
            yield spec, stored[spec.clip_id]
            continue
        if midi is None:
            try:
                midi = _load_source(spec.source, spec.source_md5, cfg)
            except InputError as e:
                midi = e
        if isinstance(midi, InputError):
            yield spec, midi
            continue
        try:
            notes = clip_notes(midi, spec, cfg.select)
        except InputError as e:
            yield spec, e
            continue
        yield spec, notes


def _load_source(source: str, md5: str, cfg: PipelineConfig):
    if not os.path.isfile(source):
        raise InputError(f"{source}: source MIDI file not found")
    if md5_file(source) != md5:
        raise InputError(f"{os.path.basename(source)}: source MIDI changed since selection (md5 differs)")
    return load_midi(source, cfg.select)


def _row(spec: ClipSpec, params: str, status: str, outputs: dict | None = None,
         info: dict | None = None) -> ManifestRow:
    inputs = dict(spec.to_dict(), source=os.path.basename(spec.source))
    return ManifestRow(spec.clip_id, "render", status, inputs, params, outputs or {}, info or {})


def _stack(ok: list[tuple[str, dict[str, np.ndarray]]], audio: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {"id": np.array([cid for cid, _ in ok]), "audio": audio}
    for name in ok[0][1]:
        arrays[name] = np.stack([c[name] for _, c in ok], dtype=np.float32)
    return arrays
