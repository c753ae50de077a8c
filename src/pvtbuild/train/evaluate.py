"""How well a trained model obeys its controls, measured on the audio it makes (`pvtbuild evaluate`).

For N clips of the dataset's valid split (`--split train` for a dataset too small to have two), the model samples under each clip's controls (as
`pvtbuild sample --like` would, at each guidance scale); the generated audio is analysed with the
same module the data QA stage uses (`pvtbuild.analysis`: one pitch tracker for both) and scored
against the controls that were asked for. Two reference rows frame the numbers: the dataset's
own audio for those clips against their controls (the ceiling: what the analysis can confirm on
perfect audio) and the same audio against another clip's controls (the floor: clip i scored
against clip i+1's, a derangement, so no clip keeps its own).

Metrics (per row: the mean over clips that have a value; nan where none has):

| key                          | what                                                                 |
| ---------------------------- | -------------------------------------------------------------------- |
| voiced_agreement             | share of scored frames where the audio's voicing matches `voiced`    |
| chroma_accuracy              | pitch-class accuracy on frames the controls call voiced (and sounding)|
| octave_accuracy              | exact MIDI pitch among frames with the right pitch class             |
| pitch_accuracy               | exact MIDI pitch on those frames                                     |
| loudness_velocity_spearman   | rank correlation of frame loudness (dBFS) with `velocity`            |
| tempo_error                  | abs(estimated / requested BPM - 1); requested = the `bpm` control     |
| tempo_error_octave           | the same, forgiving a factor 2 or 1/2 (the usual octave slack)       |
| beat_f_measure               | mir_eval's beat F-measure (70 ms window) of tracked vs requested beats|
| fd_encodec                   | Fréchet distance of generated vs real clips in EnCodec's encoder      |
|                              | embedding (the 128-d latents averaged over time), generated rows only |
| fad_vggish                   | Fréchet distance in VGGish embeddings (the report's FAD), when the    |
|                              | VGGish weights are on this machine; else null and a line saying so    |

The first five come from `analysis.analyse` and `analysis.adherence` (their docstring says which
frames are left out around note changes), called as the qa stage calls them: frames are those of
the model's control grid, and the pitch search is limited to +-13 semitones of the asked pitch
(`expected_pitch`), which still shows a semitone or an octave error (the unlimited search confuses
harmonics on these renders: chroma accuracy ~0.5 on the dataset's own audio). Requested beats are the
starts of the `beat` sawtooth's teeth, t_k - phase_k * 60 / BPM_k; estimated tempo and beats come
from librosa's beat tracker on the audio, without the requested tempo as a prior. With N small,
the Fréchet distances are biased upwards (both covariances are estimated from N clips): compare
them between runs of the same N only.

Outputs: `OUT/metrics.json` (every metric named, per row, with per-clip values, the embedding each
Fréchet distance is in, and the settings), a table on stdout, and with `--plot` `OUT/adherence.png`
(adherence against guidance scale, ceiling and floor dashed).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import GridConfig
from ..errors import InputError, PvtbuildError
from ..manifest import atomic_write

ADHERENCE_KEYS = ("voiced_agreement", "chroma_accuracy", "octave_accuracy", "pitch_accuracy",
                  "loudness_velocity_spearman")
TEMPO_KEYS = ("tempo_error", "tempo_error_octave", "beat_f_measure")
FRECHET_KEYS = ("fd_encodec", "fad_vggish")
METRIC_KEYS = ADHERENCE_KEYS + TEMPO_KEYS + FRECHET_KEYS
_SHORT = {"voiced_agreement": "voiced", "chroma_accuracy": "chroma", "octave_accuracy": "octave",
          "pitch_accuracy": "pitch", "loudness_velocity_spearman": "vel~loud", "tempo_error": "tempo_err",
          "tempo_error_octave": "tempo_err8", "beat_f_measure": "beat_F", "fd_encodec": "FD_encodec",
          "fad_vggish": "FAD_vggish"}


@dataclass
class EvalClip:
    """A valid clip: its real audio and every control on the model's grid."""

    clip_id: str
    audio: np.ndarray  # [N] float32
    controls: dict[str, np.ndarray]  # CONTROL_NAMES -> [T] ([I, T] instrument)


@dataclass
class EvalReport:
    out: Path
    metrics: dict[str, Any]
    lines: list[str] = field(default_factory=list)


# --- scoring one clip -------------------------------------------------------------------------


def score_clip(audio: np.ndarray, sample_rate: int, controls: Mapping[str, np.ndarray], grid: GridConfig,
               bpm_max: float) -> dict[str, float]:
    """Adherence and tempo metrics of one clip's audio against controls on `grid` (nan where undefined)."""
    from ..analysis import adherence, analyse

    expected = None
    if "pitch" in controls and "voiced" in controls and (np.asarray(controls["pitch"]) >= 0).all():
        # as the qa stage does: search +-13 semitones of the asked pitch, so a semitone or octave error still shows
        expected = np.where(np.asarray(controls["voiced"]) > 0.5, np.asarray(controls["pitch"]) * 127.0, np.nan)
    est = analyse(audio, sample_rate, float(grid.rate), int(grid.frames), float(grid.offset), expected_pitch=expected)
    labels = {k: np.asarray(controls[k], dtype=np.float32) for k in ("voiced", "pitch", "chroma", "velocity")
              if k in controls}
    scores = adherence(est, labels, rate=float(grid.rate))
    out = {k: float(scores[k]) for k in ADHERENCE_KEYS}
    out.update(tempo_scores(audio, sample_rate, controls.get("beat"), controls.get("bpm"), est.times, bpm_max))
    return out


def requested_beats(beat: np.ndarray, bpm: np.ndarray, times: np.ndarray, bpm_max: float,
                    duration: float) -> np.ndarray:
    """Beat times (s) the `beat` sawtooth asks for: the start of each tooth, t_k - phase_k * 60 / BPM_k."""
    beat, bpm = np.asarray(beat, dtype=np.float64), np.asarray(bpm, dtype=np.float64) * bpm_max
    ok = (beat >= 0) & (bpm > 0)
    starts = times[ok] - beat[ok] * 60.0 / bpm[ok]
    starts = np.unique(np.round(starts, 3))
    starts = starts[(starts >= 0) & (starts <= duration)]
    if len(starts) > 1:  # one beat per tooth: merge starts closer than a tenth of a beat (rounding of phases)
        keep = np.concatenate([[True], np.diff(starts) > 0.1 * 60.0 / float(np.median(bpm[ok]))])
        starts = starts[keep]
    return starts


def tempo_scores(audio: np.ndarray, sample_rate: int, beat: np.ndarray | None, bpm: np.ndarray | None,
                 times: np.ndarray, bpm_max: float) -> dict[str, float]:
    """tempo_error, tempo_error_octave, beat_f_measure of `audio` against the requested beat and bpm controls."""
    nan = {k: float("nan") for k in TEMPO_KEYS}
    if beat is None or bpm is None or (np.asarray(bpm) <= 0).all() or (np.asarray(beat) < 0).all():
        return nan
    import librosa
    import mir_eval

    bpm = np.asarray(bpm, dtype=np.float64)
    requested = float(np.median(bpm[bpm > 0])) * bpm_max
    duration = len(audio) / sample_rate
    ref = requested_beats(beat, bpm, times, bpm_max, duration)
    tempo, est = librosa.beat.beat_track(y=np.asarray(audio, dtype=np.float32), sr=sample_rate, units="time")
    tempo = float(np.atleast_1d(tempo)[0])
    out = dict(nan)
    if tempo > 0:
        out["tempo_error"] = abs(tempo / requested - 1.0)
        out["tempo_error_octave"] = min(abs(tempo * f / requested - 1.0) for f in (1.0, 2.0, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval warns on an empty beat list; the score is then 0
        out["beat_f_measure"] = float(mir_eval.beat.f_measure(ref, np.asarray(est, dtype=np.float64)))
    return out


# --- Fréchet distances ------------------------------------------------------------------------


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two sets of embeddings [n, d] (float64)."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # singular product (few clips): regularise, as the FID reference code does
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = np.real(covmean)
    return float(max(0.0, ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean)))


def encodec_embeddings(codec: Any, audio: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[n, 128]: EnCodec's encoder latents of each clip, averaged over time."""
    return np.concatenate([codec.latents(audio[i:i + batch_size]).mean(axis=-1)
                           for i in range(0, len(audio), batch_size)]).astype(np.float64)


# --- the evaluation ----------------------------------------------------------------------------


def evaluate(checkpoint: str | Path, dataset: Path, n: int = 16, cfg_scales: tuple[float, ...] = (1.0,),
             out: Path | None = None, steps: int | None = None, seed: int = 0, batch_size: int = 8,
             device: torch.device | str = "cpu", plot: bool = False, vggish: Path | None = None,
             split: str = "valid") -> EvalReport:
    """Sample with the controls of `n` clips of `split` at each guidance scale and score them (module docstring)."""
    from ..decode import AudioDecoder
    from .conditioning import RequestedControls, model_controls
    from .sample import control_space, decode_batches, generate, load_for_sampling, training_dataset

    if n < 2:
        raise PvtbuildError(f"--n must be >= 2 (the floor row shuffles controls between clips), got {n}")
    if not cfg_scales:
        raise PvtbuildError("--cfg-scale: give at least one guidance scale")
    sampler = load_for_sampling(checkpoint, torch.device(device))
    if sampler.cfg.is_toy:
        raise PvtbuildError(f"{sampler.checkpoint}: a toy model; evaluate needs a model of a dataset's formats")
    dataset = training_dataset(sampler, dataset)
    space = control_space(sampler, dataset)
    decoder = AudioDecoder.for_dataset(dataset, str(device))
    clips, real_from = read_clips(dataset, space, n, decoder, split)
    n = len(clips)
    out = Path(out) if out is not None else sampler.run_dir / f"eval-{sampler.step:08d}"
    grid, bpm_max, sr = space.grid, space.pipeline.controls.bpm_max, decoder.sample_rate
    t0 = time.perf_counter()

    rows: list[dict[str, Any]] = []
    real = np.stack([c.audio for c in clips])
    rows.append(_row("ceiling", f"dataset audio ({real_from}), its own controls", None,
                     [score_clip(c.audio, sr, c.controls, grid, bpm_max) for c in clips]))
    rows.append(_row("floor", "dataset audio, another clip's controls (clip i scored against clip i+1's)", None,
                     [score_clip(c.audio, sr, clips[(i + 1) % n].controls, grid, bpm_max)
                      for i, c in enumerate(clips)]))
    codec = decoder.codec if sampler.cfg.data.format in ("encodec", "disc") else _codec_for_embedding(decoder)
    real_emb = encodec_embeddings(codec, real)
    vggish_model, vggish_note = _vggish(vggish)
    real_vgg = None if vggish_model is None else vggish_model.embed_clips(real, sr)
    requests = [RequestedControls(dict(c.controls)) for c in clips]
    controls = model_controls(requests, space)
    timing = []
    for scale in cfg_scales:
        gen = generate(sampler, controls, n, steps, scale, seed, batch_size)
        audio = decode_batches(decoder, sampler.cfg.data.format, gen.arrays)
        row = _row(f"cfg {scale:g}", f"generated at guidance scale {scale:g}", scale,
                   [score_clip(a, sr, c.controls, grid, bpm_max) for a, c in zip(audio, clips)])
        row["metrics"]["fd_encodec"] = frechet_distance(encodec_embeddings(codec, audio), real_emb)
        if vggish_model is not None:
            row["metrics"]["fad_vggish"] = frechet_distance(vggish_model.embed_clips(audio, sr), real_vgg)
        row["samples_per_s"], row["nfe_per_sample"] = gen.samples_per_s, gen.nfe
        rows.append(row)
        timing.append(f"cfg {scale:g}: {gen.samples_per_s:.3g} samples/s, NFE {gen.nfe:g} per sample")

    metrics = {
        "checkpoint": str(sampler.checkpoint), "step": sampler.step, "config": sampler.cfg.name,
        "formalism": sampler.cfg.formalism_name, "format": sampler.cfg.data.format, "dataset": str(dataset),
        "split": split, "n": n, "clip_ids": [c.clip_id for c in clips], "grid": grid.name, "steps": steps,
        "seed": seed, "cfg_scales": list(cfg_scales), "metric_keys": list(METRIC_KEYS),
        "embeddings": {
            "fd_encodec": f"EnCodec 24 kHz encoder output (128-d), averaged over time; weights: "
                          f"{_weights_of(decoder)}",
            "fad_vggish": "VGGish (128-d per 0.96 s, averaged over each clip's frames)" if vggish_model is not None
                          else f"not computed: {vggish_note}",
        },
        "decoder": decoder.weights_label, "rows": rows, "seconds": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "metrics.json", "w") as fh:
        json.dump(_json_safe(metrics), fh, indent=2, sort_keys=True)
    lines = [f"evaluate: {sampler.checkpoint} ({sampler.cfg.formalism_name} on {sampler.cfg.data.format}, "
             f"step {sampler.step}) on {n} {split} clips of {dataset}, controls on {grid.name}",
             *table(rows),
             f"evaluate: FD_encodec in {metrics['embeddings']['fd_encodec']}",
             f"evaluate: FAD_vggish {metrics['embeddings']['fad_vggish']}",
             f"evaluate: decoder: {decoder.weights_label}",
             *(f"evaluate: {t}" for t in timing),
             f"evaluate: wrote {out / 'metrics.json'}"]
    if plot:
        lines.append(f"evaluate: wrote {plot_adherence(rows, out / 'adherence.png')}")
    return EvalReport(out, metrics, lines)


def read_clips(dataset: Path, space: Any, n: int, decoder: Any, split: str = "valid") -> tuple[list[EvalClip], str]:
    """The first `n` clips of `split` (file order): real audio and controls on the model's grid."""
    from ..controls import CONTROL_NAMES
    from ..dataset import decode_record, iter_records, list_shards, read_shapes
    from ..decode import DECODABLE

    shapes = read_shapes(dataset)
    grid = space.grid.name
    names = [f"{c}_{grid}" for c in CONTROL_NAMES]
    missing = [m for m in names if m not in shapes]
    if missing:
        raise InputError(f"{dataset}: stores no {', '.join(missing)}; evaluate needs every control on {grid}")
    fmt = next((f for f in DECODABLE if f in shapes), None)
    if fmt is None:
        raise InputError(f"{dataset}: stores none of {', '.join(DECODABLE)}, so there is no real audio to compare")
    clips: list[EvalClip] = []
    arrays = []
    if split not in ("train", "valid"):
        raise PvtbuildError(f"--split must be train or valid, got {split!r}")
    for path in list_shards(dataset, split):
        for rec in iter_records(path):
            d = decode_record(rec, shapes, [*names, fmt, "id"])
            clips.append(EvalClip(str(d["id"]), np.zeros(0, np.float32),
                                  {c: np.array(d[f"{c}_{grid}"], dtype=np.float32) for c in CONTROL_NAMES}))
            arrays.append(np.array(d[fmt]))
            if len(clips) == n:
                break
        if len(clips) == n:
            break
    if len(clips) < 2:
        raise InputError(f"{dataset}/{split}: {len(clips)} clip(s); evaluate needs at least 2 (a tiny dataset: "
                         f"try --split train)")
    audio = np.concatenate([decoder.decode(fmt, np.stack(arrays[i:i + 8])) for i in range(0, len(arrays), 8)])
    for c, a in zip(clips, audio):
        c.audio = a
    return clips, ("stored audio" if fmt == "audio" else f"decoded from {fmt}")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a fixed-width table, one line per row."""
    keys = [k for k in METRIC_KEYS if any(math.isfinite(_num(r["metrics"].get(k))) for r in rows)]
    head = f"{'row':<10}" + "".join(f"{_SHORT[k]:>12}" for k in keys)
    lines = [head]
    for r in rows:
        lines.append(f"{r['row']:<10}" + "".join(f"{_fmt(r['metrics'].get(k)):>12}" for k in keys))
    return lines


def plot_adherence(rows: list[dict[str, Any]], path: Path) -> Path:
    """Adherence metrics against guidance scale, with the ceiling and floor rows dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = [r for r in rows if r["cfg_scale"] is not None]
    ref = {r["row"]: r for r in rows if r["cfg_scale"] is None}
    keys = ADHERENCE_KEYS + ("beat_f_measure",)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), constrained_layout=True)
    scales = [r["cfg_scale"] for r in gen]
    for ax, key in zip(axes, keys):
        ax.plot(scales, [_num(r["metrics"][key]) for r in gen], "o-", label="generated")
        for name, style in (("ceiling", "g--"), ("floor", "r--")):
            if name in ref:
                ax.axhline(_num(ref[name]["metrics"][key]), color=style[0], ls="--", label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


# --- internals ------------------------------------------------------------------------------


def _row(name: str, what: str, scale: float | None, per_clip: list[dict[str, float]]) -> dict[str, Any]:
    metrics = {k: float("nan") for k in METRIC_KEYS}
    for k in ADHERENCE_KEYS + TEMPO_KEYS:
        values = np.array([c[k] for c in per_clip], dtype=np.float64)
        if np.isfinite(values).any():
            metrics[k] = float(np.nanmean(values))
    return {"row": name, "what": what, "cfg_scale": scale, "metrics": metrics, "per_clip": per_clip}


def _codec_for_embedding(decoder: Any) -> Any:
    """EnCodec for the embedding of a CQT model's audio: the dataset's recorded weights when it has EnCodec
    formats, else the pretrained model from torch hub's cache (an InputError saying so when absent)."""
    if (decoder.doc.get("encoder") or {}).get("weights") in ("random", "pretrained"):
        return decoder.codec
    from ..encode.encodec import EncodecEncoder

    return EncodecEncoder.load(checkpoint=None, random_weights=False, seed=0, bandwidth=12.0, device=decoder.device)


def _weights_of(decoder: Any) -> str:
    enc = decoder.doc.get("encoder") or {}
    if enc.get("weights") == "random":
        return f"RANDOM (seed {enc.get('seed', 0)}), as the dataset records: a pipeline check, not a quality measure"
    if enc.get("weights") == "pretrained":
        return f"pretrained (sha256 {str(enc.get('checkpoint_sha256'))[:12]}...)"
    return "pretrained, from torch hub's cache"


def _vggish(path: Path | None) -> tuple[Any, str]:
    from .vggish import find_vggish_weights, load_vggish

    found = find_vggish_weights(path)
    if found is None:
        return None, ("no VGGish weights on this machine (torchvggish's vggish-10086976.pth in torch hub's "
                      "cache, or --vggish PATH); FAD as the report measured it needs them")
    return load_vggish(found), str(found)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: Any) -> str:
    x = _num(v)
    return "-" if not math.isfinite(x) else f"{x:.3f}" if abs(x) < 100 else f"{x:.4g}"


def _json_safe(obj: Any) -> Any:
    """nan and inf as null (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


__all__ = ["METRIC_KEYS", "ADHERENCE_KEYS", "TEMPO_KEYS", "EvalClip", "EvalReport", "score_clip", "tempo_scores",
           "requested_beats", "frechet_distance", "encodec_embeddings", "evaluate", "read_clips", "table",
           "plot_adherence"]
