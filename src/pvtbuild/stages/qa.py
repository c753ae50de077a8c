"""The qa stage: does every rendered clip's audio agree with its controls? Judged from the audio alone.

Reads the render shards of a build (`OUT/render`; in a streamed build, the shard its process
has just rendered, from memory: `written_shards`), analyses each clip's audio on one
control grid (`qa.grid`, default the coarsest; a shard's clips in one `analysis.analyse_batch`
call, `judge_clips`), scores it against that grid's stored controls (`analysis.adherence_batch`),
and names what is wrong with the clips that fail (`failure_reasons`, thresholds in the `qa`
config section). The MIDI is never read: the controls are the claim, the audio the evidence.

Output, per render shard i, `OUT/qa/shard-{i:05d}.json` (a `ShardRecord` with no
data file) holding one manifest row per clip rendered ok:
- `status`: `ok` when the clip passes, `skipped: failed qa: <reason>, <reason>` when not;
- `info`: `instrument`, `reasons` (list), the scores of `analysis.SCORE_KEYS` (rounded),
  and `yin_agreement` on the clips cross-checked by YIN (`qa.yin_share` of them, chosen
  by a hash of the clip id), else absent.
`OUT/qa/manifest.jsonl` holds all rows; `OUT/qa/summary.json` the build's summary
(`summarise`): pass rate, failures by reason, per instrument pass rate and mean scores.
The shard stage copies that summary into `dataset.json` (key `qa`) and, with
`qa.drop_failing` (`pvtbuild shard --drop-failing`), leaves the failing clips out.

Failure reasons (the Slakh failure classes): `silence`, `noise`, `wrong pitch`,
`wrong octave`, `missing notes`, `label longer than sound`, `label shorter than sound`,
`labels shifted`, `loudness`, and `wrong instrument` (see `failure_reasons` for each test).

Wrong instrument (`qa.timbre`): at the start of the stage each instrument's program renders
every pitch of the selection's range (`timbre_references`); a clip's harmonic profile
(log magnitudes at harmonics 1..8 of the frame's pitch, level removed) on its held frames at
the right pitch is compared with every instrument's at the same pitch, and the clip fails
when another instrument's profile fits better than its own by more than
`qa.max_timbre_margin` (`timbre_margin` in the row's info, with `timbre_nearest`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvtbuild.clip import ClipNotes, clip_path
from pvtbuild.config import GridConfig, PipelineConfig, QaConfig, config_hash
from pvtbuild.engine.executor import Executor
from pvtbuild.engine.manifest import ManifestRow, atomic_write_bytes
from pvtbuild.engine.planning import StageRun, each_shard, plan_stage, run_stages
from pvtbuild.engine.stage_files import FinishedStage, ShardRecord, claim_stage_dir, read_finished_stage, write_record
from pvtbuild.engine.summary import StageSummary
from pvtbuild.engine.tasks import Task
from pvtbuild.errors import PvtbuildError
from pvtbuild.music.analysis import (
    SCORE_KEYS,
    SCORED_CONTROLS,
    AnalysisParams,
    Tolerances,
    adherence_batch,
    analyse,
    analyse_batch,
    check_pitch_yin,
    near_changes,
    one_blas_thread,
    pitch_yin,
    timbre_distances_batch,
)
from pvtbuild.music.synth import render_notes
from pvtbuild.stages.qa_output import SUMMARY_JSON, read_qa
from pvtbuild.stages.render_input import read_render_input, rendered_rows, row_from_render, unknown_render_row
from pvtbuild.stages.render_settings import render_soundfont

FAILED = "failed qa"


@dataclass(frozen=True)
class QaJob:
    """What a worker needs to judge one render shard; small and picklable."""

    qa: QaConfig
    grid: GridConfig
    sample_rate: int
    params: str
    render_params: str
    # instrument -> (pitches [P] ascending, harmonic profiles [P, H]) from `timbre_references`; None: no check
    timbre: dict[str, tuple[np.ndarray, np.ndarray]] | None = None


def qa_grid(cfg: PipelineConfig) -> GridConfig:
    """The grid the audio is judged on: `qa.grid`, else the coarsest of `controls.grids`."""
    if cfg.qa.grid:
        return cfg.controls.grid(cfg.qa.grid)
    return min(cfg.controls.grids, key=lambda g: (g.rate or 0.0, g.name))


def analysis_params(qa: QaConfig) -> AnalysisParams:
    return AnalysisParams(qa.floor_db, qa.range_db, qa.min_harmonicity, qa.onset_threshold)


def tolerances(qa: QaConfig, instrument: str) -> Tolerances:
    return Tolerances(qa.onset_frames, qa.release_s.get(instrument, qa.default_release_s))


class Qa:
    """The qa stage (see `stages.base.Stage`): plans on render's output, shard by shard;
    `qa.enabled` puts it in `pvtbuild run`."""

    name = "qa"
    reads = "render"
    streams = True

    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.qa.enabled

    def check(self, cfg: PipelineConfig, together: frozenset[str]) -> None:
        return None  # its settings are checked with the config; the SoundFont of timbre references, by `plan`

    def worker_paths(self, cfg: PipelineConfig) -> dict[str, str]:
        return {}

    def plan(self, cfg: PipelineConfig, out: Path, executor: Executor, upstream: FinishedStage | None) -> StageRun:
        rendered = upstream or read_finished_stage(Path(out), "render", "pvtbuild render")
        return plan_qa(out, cfg, rendered)


def qa(out: Path, cfg: PipelineConfig, executor: Executor) -> StageSummary:
    """Judge every clip of OUT/render into OUT/qa (this stage alone, on `executor`)."""
    return run_stages(executor, [Qa().plan(cfg, out, executor, None)])[0]


def plan_qa(out: Path, cfg: PipelineConfig, rendered: FinishedStage) -> StageRun:
    """The qa stage's run over `rendered`: finished render shards, or (streaming) render tasks of this run."""
    out = Path(out)
    grid = qa_grid(cfg)
    params = config_hash({"qa": {k: v for k, v in asdict(cfg.qa).items() if k not in ("enabled", "drop_failing")},
                          "grid": grid.name, "render": rendered.params})
    stage_dir = out / "qa"
    inputs = config_hash([rendered.params, rendered.inputs])
    claim_stage_dir(stage_dir, "qa", params, inputs)
    timbre = None
    if cfg.qa.timbre:
        try:
            timbre = timbre_references(cfg)
        except PvtbuildError as e:
            raise PvtbuildError(f"qa.timbre renders reference notes with the build's SoundFont, which failed: {e}; "
                                "make it available, or judge without the timbre check (qa.timbre: false)") from None
    job = QaJob(cfg.qa, grid, cfg.render.sample_rate, params, rendered.params, timbre)

    def write_summary(records: dict[int, ShardRecord]) -> None:
        report = summarise([r for _, rec in sorted(records.items()) for r in rec.rows])
        atomic_write_bytes(stage_dir / SUMMARY_JSON, json.dumps(report, indent=1, sort_keys=True).encode())

    return plan_stage(stage_dir, params, rendered.records,
                      each_shard(lambda i, rec: Task(f"qa-{params[:6]}-{i:05d}", qa_task,
                                                     (i, rec, job, str(stage_dir), str(out / "render")))),
                      lambda rec, status: [_row(r, params, status, {}) for r in rendered_rows(rec)],
                      StageSummary("qa", done="passed"), inputs=inputs, on_finish=write_summary)


def qa_task(index: int, render: ShardRecord, job: QaJob, stage_dir: str, render_dir: str) -> ShardRecord:
    """Judge the clips of one render shard; writes and returns its qa record."""
    if job.qa.yin_share > 0:
        warm_yin()
    stage = Path(stage_dir)
    g = job.grid.name
    arrays = read_render_input("qa", index, render, job.render_params, job.params, Path(render_dir), stage,
                               ("id", "audio", *(f"{name}_{g}" for name in SCORED_CONTROLS)),
                               lambda row, status: _row(row, job.params, status, {}))
    if isinstance(arrays, ShardRecord):
        return arrays
    rendered = {r.id: r for r in rendered_rows(render)}
    ids = [str(x) for x in arrays["id"]]
    audio = arrays["audio"]
    controls = {name: arrays[f"{name}_{g}"] for name in SCORED_CONTROLS}
    rows = []
    given = [rendered.get(cid) or unknown_render_row(cid) for cid in ids]
    instruments = [row.inputs.get("instrument", "") for row in given]
    with one_blas_thread():  # once per shard (see analysis.one_blas_thread)
        judged = judge_clips(audio, controls, instruments, job, ids)
    for row, instrument, (scores, extra) in zip(given, instruments, judged):
        reasons = failure_reasons(scores, job.qa)
        status = "ok" if not reasons else f"skipped: {FAILED}: {', '.join(reasons)}"
        info = {"instrument": instrument, "reasons": reasons, **_rounded(scores), **extra}
        rows.append(_row(row, job.params, status, info))
    return write_record(stage, ShardRecord("qa", index, "", "", job.params, rows))


def judge_clip(audio: np.ndarray, controls: dict[str, np.ndarray], instrument: str, job: QaJob,
               clip_id: str = "") -> tuple[dict[str, float], dict[str, Any]]:
    """Scores of one clip on the job's grid, and the YIN cross-check when the clip is in its sample."""
    return judge_clips(np.asarray(audio)[None], {k: np.asarray(v)[None] for k, v in controls.items()}, [instrument],
                       job, [clip_id])[0]


def judge_clips(audio: np.ndarray, controls: dict[str, np.ndarray], instruments: list[str], job: QaJob,
                clip_ids: list[str] | None = None) -> list[tuple[dict[str, float], dict[str, Any]]]:
    """`judge_clip` on B clips at once (one render shard): audio [B, N], controls [B, T] each; one answer per clip.

    The analysis and the scores run on the whole batch (`analysis.analyse_batch`, `adherence_batch`),
    the timbre check and the YIN cross-check per clip.
    """
    grid = job.grid
    held = controls["voiced"] > 0.5
    midi = np.rint(controls["pitch"] * 127.0)
    expected = np.where(held, controls["pitch"] * 127.0, np.nan)
    ests = analyse_batch(audio, job.sample_rate, grid.rate, grid.frames, grid.offset, expected_pitch=expected,
                         params=analysis_params(job.qa))
    all_scores = adherence_batch(ests, controls, [tolerances(job.qa, i) for i in instruments])
    inner = held & ~near_changes(held, midi, job.qa.onset_frames)  # held, away from label changes
    margins = timbre_margins(ests, inner, midi, instruments, job)
    out = []
    for n, (est, scores, instrument) in enumerate(zip(ests, all_scores, instruments)):
        clip_id = clip_ids[n] if clip_ids else ""
        extra: dict[str, Any] = {}
        if n in margins:
            scores["timbre_margin"], extra["timbre_nearest"] = margins[n]
            extra["timbre_margin"] = _round(scores["timbre_margin"])
        if clip_id and _in_sample(clip_id, job.qa.yin_share):
            yin = pitch_yin(audio[n], job.sample_rate, grid.rate, grid.frames, grid.offset)
            extra["yin_agreement"] = _round(check_pitch_yin(est, yin, inner[n]))
        out.append((scores, extra))
    return out


_YIN_WARM = False


def warm_yin() -> None:
    """librosa's YIN costs ~1.9 s on its first call in a process (lazy imports, numba compiling),
    then ~10 ms: pay it on a worker's first qa task, not at whichever task a sampled clip first
    falls in (so task times, and a benchmark's warm-up, see it where it belongs)."""
    global _YIN_WARM
    if not _YIN_WARM:
        pitch_yin(np.zeros(4800, dtype=np.float32), 24000, 75.0, 4)
        _YIN_WARM = True


def timbre_margins(ests: list, inner: np.ndarray, midi: np.ndarray, instruments: list[str],
                   job: QaJob) -> dict[int, tuple[float, str | None]]:
    """Per clip with a reference for its instrument (by its index): (own reference's profile distance minus
    the nearest other instrument's, the nearest instrument).

    Frames used: `inner` ([B, T]: held by the label, away from label changes) at the labelled pitch
    (`midi` [B, T], +-0.5), so a wrong pitch or a missing note is not also called a wrong instrument.
    nan / None with fewer than 10 such frames. The clips go through `timbre_distances_batch` together.
    """
    clips = [n for n, i in enumerate(instruments) if job.timbre and i in job.timbre]
    if not clips:
        return {}
    frames = [inner[n] & (np.abs(ests[n].pitch - midi[n]) < 0.5) for n in clips]
    out = {}
    for n, d in zip(clips, timbre_distances_batch([ests[n] for n in clips], job.timbre or {}, frames)):
        others = [v for k, v in d.items() if k != instruments[n] and not math.isnan(v)]
        if math.isnan(d.get(instruments[n], math.nan)) or not others:
            out[n] = (float("nan"), None)
        else:
            out[n] = (d[instruments[n]] - min(others), min((k for k in d if not math.isnan(d[k])), key=d.get))
    return out


def timbre_references(cfg: PipelineConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each instrument's harmonic profile per pitch, from notes rendered with its program through the render path.

    Every pitch of select.pitch_min..pitch_max, 0.5 s notes at velocities 64 and 112, analysed like
    a clip (with the expected pitch) on the qa grid; a pitch's profile is the median of
    `FrameEstimates.harmonics` over its held frames read at the right pitch (0.06..0.45 s in).
    About 20 renders per instrument, once per stage run.
    """
    grid = qa_grid(cfg)
    soundfont = render_soundfont(cfg)
    pitches = np.arange(cfg.select.pitch_min, cfg.select.pitch_max + 1)
    per_note = 0.65  # 0.5 s note, 0.15 s gap
    batch = max(1, int((cfg.select.clip_seconds - 0.2) // per_note))
    out = {}
    for inst in cfg.select.instruments:
        frames: dict[int, list[np.ndarray]] = {int(p): [] for p in pitches}
        for vel in (64, 112):
            for i in range(0, len(pitches), batch):
                ps = pitches[i:i + batch]
                on = 0.1 + per_note * np.arange(len(ps))
                notes = ClipNotes(on, on + 0.5, ps.astype(np.int16), np.full(len(ps), vel, np.int16), np.zeros(0),
                                  cfg.select.clip_seconds)
                audio, _ = render_notes(notes, inst.program, soundfont, cfg.render, cfg.clip_samples)
                t = (np.arange(grid.frames) + grid.offset) / grid.rate
                expected = np.full(grid.frames, np.nan)
                for p, t0 in zip(ps, on):
                    expected[(t >= t0) & (t < t0 + 0.5)] = p
                est = analyse(audio, cfg.render.sample_rate, grid.rate, grid.frames, grid.offset, expected,
                              analysis_params(cfg.qa))
                for p, t0 in zip(ps, on):
                    k = (t > t0 + 0.06) & (t < t0 + 0.45) & est.voiced & (np.abs(est.pitch - p) < 0.5)
                    frames[int(p)].append(est.harmonics[k])
        keep = [p for p in frames if sum(len(f) for f in frames[p]) >= 3]
        profiles = [np.nanmedian(np.concatenate(frames[p]), axis=0) for p in keep]
        ok = [i for i, v in enumerate(profiles) if np.all(np.isfinite(v))]
        out[inst.name] = (np.array([keep[i] for i in ok], dtype=np.float64),
                          np.array([profiles[i] for i in ok], dtype=np.float32).reshape(len(ok), -1))
    return out


def failure_reasons(s: dict[str, float], q: QaConfig) -> list[str]:
    """What is wrong with a clip, from its scores (`analysis.adherence`); [] when it passes.

    A score that is nan (nothing to score it on) never fails a clip.
    """
    def below(key: str, limit: float, frames: float | None = None) -> bool:
        """The score is below the limit; a share of `frames` frames only when it is so with ~95 % confidence
        (`share_bounds`): 3 wrong frames in 20 are no evidence, 45 in 300 are."""
        if math.isnan(s[key]):
            return False
        return (share_bounds(s[key], frames)[1] if frames is not None else s[key]) < limit

    def above(key: str, limit: float, frames: float | None = None) -> bool:
        if math.isnan(s[key]):
            return False
        return (share_bounds(s[key], frames)[0] if frames is not None else s[key]) > limit

    pitch_n = s.get("pitch_frames", math.nan)

    if math.isnan(s["peak_db"]) or s["peak_db"] < q.silence_db:
        return ["silence"]
    reasons = []
    if below("harmonicity", q.min_noise_harmonicity):
        reasons.append("noise")
    if below("chroma_accuracy", q.min_chroma_accuracy, pitch_n):
        reasons.append("wrong pitch")
    elif below("octave_accuracy", q.min_octave_accuracy, pitch_n * s["chroma_accuracy"]):
        reasons.append("wrong octave")
    if above("missing_notes", q.max_missing_notes):
        reasons.append("missing notes")
    if above("label_beyond_sound", q.max_label_beyond_sound, s.get("held_frames", math.nan)):
        reasons.append("label longer than sound")
    if above("sound_beyond_label", q.max_sound_beyond_label, s.get("quiet_frames", math.nan)):
        reasons.append("label shorter than sound")
    if ((not math.isnan(s["label_lag_ms"]) and abs(s["label_lag_ms"]) > q.max_label_lag_ms)
            or s.get("change_lag_ms", math.nan) <= -q.max_switch_lead_ms
            or s.get("switch_lag_ms", math.nan) >= q.max_switch_lag_ms):
        reasons.append("labels shifted")
    if below("loudness_velocity_spearman", q.min_loudness_spearman):
        reasons.append("loudness")
    if not math.isnan(s.get("timbre_margin", math.nan)) and s["timbre_margin"] > q.max_timbre_margin:
        reasons.append("wrong instrument")
    return reasons


Z_ONE_SIDED = 1.645  # ~95 % one-sided: how sure a share's verdict must be (`share_bounds`)


def share_bounds(share: float, n: float) -> tuple[float, float]:
    """(lower, upper) Wilson bounds (`Z_ONE_SIDED`) of a share measured on n frames; (share, share) when n is nan.

    A share of a few frames says little: qa fails a clip on a share only when its bound is past the
    limit (the frames of one note are not independent, so these bounds are, if anything, narrow).
    """
    if math.isnan(n) or n <= 0:
        return share, share
    z2 = Z_ONE_SIDED ** 2
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_ONE_SIDED * math.sqrt(max(share * (1 - share), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def summarise(rows: list[ManifestRow]) -> dict[str, Any]:
    """The build's qa summary: pass rate, failures by reason, per instrument (clips, pass rate, mean scores)."""
    judged = [r for r in rows if r.stage == "qa" and "reasons" in r.info]
    reasons: Counter = Counter()
    per: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in judged:
        reasons.update(r.info["reasons"])
        per[r.info.get("instrument", "")].append(r)
    passed = sum(1 for r in judged if not r.info["reasons"])
    out: dict[str, Any] = {"clips": len(judged), "passed": passed,
                           "pass_rate": round(passed / len(judged), 4) if judged else None,
                           "failures": dict(reasons.most_common()), "instruments": {}}
    for inst, rs in sorted(per.items()):
        entry: dict[str, Any] = {"clips": len(rs), "pass_rate": round(sum(1 for r in rs if not r.info["reasons"])
                                                                       / len(rs), 4)}
        for key in ("voiced_agreement", "chroma_accuracy", "octave_accuracy", "loudness_velocity_spearman",
                    "onset_offset_ms", "yin_agreement"):
            vals = [r.info[key] for r in rs if r.info.get(key) is not None]
            entry[key] = round(float(np.mean(vals)), 4) if vals else None
        out["instruments"][inst] = entry
    return out


# --- internals --------------------------------------------------------------------------


def _in_sample(clip_id: str, share: float) -> bool:
    return int(hashlib.sha256(f"qa-yin:{clip_id}".encode()).hexdigest()[:8], 16) / 16**8 < share


def _round(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def _rounded(scores: dict[str, float]) -> dict[str, float | None]:
    return {k: _round(scores[k]) for k in SCORE_KEYS}


def _row(render_row: ManifestRow, params: str, status: str, info: dict[str, Any]) -> ManifestRow:
    return row_from_render(render_row, "qa", params, status, None, info)


def plot_failing(out: Path, cfg: PipelineConfig, n: int, plot_dir: Path) -> list[Path]:
    """PNGs of the first n failing clips: each control against what the audio says, failure reasons in the title."""
    import matplotlib  # noqa: PLC0415  (matplotlib takes ~1 s to import and only --plot-failing draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (as above; after use("Agg"), so no display is needed)

    stage = read_qa(out)
    if stage is None:
        raise PvtbuildError(f"{Path(out) / 'qa'}: no qa output; run `pvtbuild qa --out {out}` first")
    failing = {r.id: r for rec in stage.records for r in rec.rows if r.status != "ok" and r.info.get("reasons")}
    wanted = list(failing)[:n]
    grid = qa_grid(cfg)
    rendered = read_finished_stage(Path(out), "render", "pvtbuild render")
    job = QaJob(cfg.qa, grid, cfg.render.sample_rate, "", "")
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rec in rendered.records:
        if not rec.file or not any(r.id in wanted for r in rec.rows):
            continue
        with np.load(Path(out) / "render" / rec.file) as npz:
            ids = [str(x) for x in npz["id"]]
            for cid in (c for c in ids if c in wanted):
                k = ids.index(cid)
                controls = {name: npz[f"{name}_{grid.name}"][k] for name in ("voiced", "pitch", "velocity")}
                expected = np.where(controls["voiced"] > 0.5, controls["pitch"] * 127.0, np.nan)
                est = analyse(npz["audio"][k], job.sample_rate, grid.rate, grid.frames, grid.offset, expected,
                              analysis_params(cfg.qa))
                fig, ax = plt.subplots(3, 1, figsize=(12, 7), sharex=True)
                t = est.times
                ax[0].plot(t, np.where(controls["voiced"] > 0.5, controls["pitch"] * 127, np.nan), label="label pitch")
                ax[0].plot(t, est.pitch, ".", ms=2, label="audio pitch")
                ax[0].set_ylabel("MIDI")
                ax[0].legend(loc="upper right")
                ax[1].plot(t, controls["voiced"], label="label voiced")
                ax[1].plot(t, est.voiced.astype(float) * 0.9, label="audio voiced (x0.9)")
                ax[1].vlines(est.onsets, 0, 1, colors="k", lw=0.5, label="audio onsets")
                ax[1].legend(loc="upper right")
                ax[2].plot(t, est.loudness, label="loudness dBFS")
                ax2 = ax[2].twinx()
                ax2.plot(t, controls["velocity"], "C1", label="velocity")
                ax[2].set_xlabel("s")
                ax[2].legend(loc="upper left")
                fig.suptitle(f"{cid} ({failing[cid].info.get('instrument', '')}): "
                             f"{', '.join(failing[cid].info['reasons'])}")
                path = clip_path(plot_dir, cid, ".png")
                fig.savefig(path, dpi=80)
                plt.close(fig)
                paths.append(path)
    return paths
