"""The render stage: selected clips in, audio and controls out.

Output, per shard of `render.clips_per_shard` clips, `OUT/render/shard-{i:05d}.npz`
(uncompressed, so later stages read it at disk speed) holding, for the n clips
rendered ok, in selection order:
- `id`: [n] clip ids (str);
- `audio`: [n, clip_samples] float32, mono, `render.sample_rate`;
- `{control}_{grid}`: [n, frames] float32 (`instrument_{grid}`: [n, n_instruments, frames])
  for every control of controls.py and every grid of `controls.grids`.
Clips that could not be rendered are rows `skipped: <reason>` in the shard record.
"""

from __future__ import annotations

import os
from itertools import groupby
from pathlib import Path

import numpy as np

from .clip import ClipSpec
from .config import PipelineConfig, config_hash
from .errors import InputError
from .executor import Executor, Task
from .manifest import ManifestRow, atomic_write, sha256_bytes, sha256_file, stable_hash
from .stage import ShardRecord, StageSummary, chunk, claim_stage_dir, run_stage, shard_stem, write_record

SILENCE_RMS = 1e-5  # a rendered clip quieter than this is skipped (e.g. a program the SoundFont lacks)


def render_params(cfg: PipelineConfig, soundfont_sha256: str) -> str:
    return config_hash({"select": cfg.select, "render": cfg.render, "controls": cfg.controls,
                        "seed": cfg.seed, "soundfont": soundfont_sha256})


def render(clips: list[ClipSpec], out: Path, cfg: PipelineConfig, executor: Executor) -> StageSummary:
    """Render every clip into shards under OUT/render; shards finished by an earlier run are kept."""
    from .soundfonts import resolve_soundfont, soundfont_sha256

    soundfont = resolve_soundfont(cfg.render.soundfont)
    params = render_params(cfg, soundfont_sha256(soundfont))
    stage_dir = out / "render"
    claim_stage_dir(stage_dir, "render", params, stable_hash([c.clip_id for c in clips]))
    summary = StageSummary("render")
    run_stage(executor, stage_dir, params, chunk(clips, cfg.render.clips_per_shard),
              lambda i, group: Task(f"render-{params[:6]}-{i:05d}", render_task,
                                    (i, group, cfg, str(soundfont), str(stage_dir))),
              lambda group, status: [_row(s, params, status) for s in group], summary)
    return summary.finish()


def render_task(index: int, specs: list[ClipSpec], cfg: PipelineConfig, soundfont: str, stage_dir: str) -> ShardRecord:
    """Render one shard of clips and write it; a clip that fails is a skipped row, the others go on."""
    from .soundfonts import soundfont_sha256

    params = render_params(cfg, soundfont_sha256(Path(soundfont)))
    rows: list[dict] = []
    ok: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
    for source, group in groupby(specs, key=lambda s: s.source):
        group = list(group)
        try:
            midi = _load_source(source, group[0].source_md5, cfg)
        except InputError as e:
            rows.extend(_row(s, params, f"skipped: {e}") for s in group)
            continue
        for spec in group:
            try:
                audio, controls, info = render_clip(midi, spec, cfg, Path(soundfont))
            except InputError as e:
                rows.append(_row(spec, params, f"skipped: {e}"))
                continue
            ok.append((spec.clip_id, audio, controls))
            rows.append(_row(spec, params, "ok", outputs={"audio": sha256_bytes(audio.tobytes())}, info=info))
    stage = Path(stage_dir)
    file, sha = "", ""
    if ok:
        file = f"{shard_stem(index)}.npz"
        with atomic_write(stage / file) as fh:
            np.savez(fh, **_stack(ok))
        sha = sha256_file(stage / file)
    record = ShardRecord("render", index, file, sha, params, rows)
    write_record(stage, record)
    return record


def render_clip(midi, spec: ClipSpec, cfg: PipelineConfig, soundfont: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """One clip's audio and its controls on every grid, from the parsed source file."""
    from .controls import compute_controls
    from .midi import clip_notes
    from .synth import render_notes

    names = [i.name for i in cfg.select.instruments]
    if spec.instrument not in names:
        raise InputError(f"instrument {spec.instrument!r} is not in this pipeline ({', '.join(names)})")
    notes = clip_notes(midi, spec, cfg.select)
    audio, n_clipped = render_notes(notes, spec.program, soundfont, cfg.render, cfg.clip_samples)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if not np.isfinite(rms):
        raise InputError("rendered audio is not finite")
    if rms < SILENCE_RMS:
        raise InputError(f"rendered silence (does the SoundFont have program {spec.program}?)")
    controls = {}
    for grid in cfg.controls.grids:
        for name, values in compute_controls(notes, names.index(spec.instrument), len(names), grid,
                                             cfg.controls.bpm_max).items():
            controls[f"{name}_{grid.name}"] = values
    info = {"rms": round(rms, 6), "peak": round(float(np.max(np.abs(audio))), 6), "clipped": int(n_clipped)}
    return audio, controls, info


def _load_source(source: str, md5: str, cfg: PipelineConfig):
    from .midi import load_midi, md5_file

    if not os.path.isfile(source):
        raise InputError(f"{source}: source MIDI file not found")
    if md5_file(source) != md5:
        raise InputError(f"{os.path.basename(source)}: source MIDI changed since selection (md5 differs)")
    return load_midi(source, cfg.select)


def _row(spec: ClipSpec, params: str, status: str, outputs: dict | None = None, info: dict | None = None) -> dict:
    inputs = dict(spec.to_dict(), source=os.path.basename(spec.source))
    return ManifestRow(spec.clip_id, "render", status, inputs, params, outputs or {}, info or {}).to_dict()


def _stack(ok: list[tuple[str, np.ndarray, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    arrays = {"id": np.array([cid for cid, _, _ in ok]), "audio": np.stack([a for _, a, _ in ok]).astype(np.float32)}
    for name in ok[0][2]:
        arrays[name] = np.stack([c[name] for _, _, c in ok]).astype(np.float32)
    return arrays
