"""Render + encode throughput on dask: 1 worker vs 2 workers, with vs without the malloc fix.

    python bench/bench_dask.py          # the demo selection (manifests/demo.jsonl, 21 clips)
    python bench/bench_dask.py ROUNDS   # repeat every setup ROUNDS times (default 2), best counts

Setups, each on a fresh build folder, interleaved round by round so that load from
other jobs on the machine hits them alike:

- in-process: `scheduler: sync`, torch's default threads (the baseline);
- 1 worker: a local dask cluster of one worker process with all cores' threads;
- 2 workers: two worker processes, cores / 2 threads each (pvtbuild's default);
- 2 workers, no malloc fix: the same with dask's default worker environment (the nanny's
  MALLOC_TRIM_THRESHOLD_=65536, pvtbuild's run-time mallopt switched off; see executor.py).

Each setup runs the demo pipeline's render and encode stages (every format, random EnCodec
weights) with one clip per shard, so two workers have enough tasks to share. Every setup is
warmed up first on WARMUP clips in another folder (imports, the SoundFont, the MIDI-parser
process and the encoders are loaded once per worker and reused, so in a 50 000-clip build they
cost nothing per clip); clips/s counts the stage time of the timed run after it. Cluster
start-up and warm-up are printed apart. Ratios are against numbers measured in this same run: 2 workers / 1 worker (target
>= 1.8 on 2 cores) and with / without the fix. At the end, an estimate of the full 50 000-clip
PVT build from the measured per-clip costs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from pvtbuild import executor as executor_module
from pvtbuild.clip import ClipSpec
from pvtbuild.config import ExecConfig, PipelineConfig, load_pipeline
from pvtbuild.encode.stage import encode
from pvtbuild.executor import Executor, cores, open_executor
from pvtbuild.pipeline import save_build_config, selected_clips
from pvtbuild.render import render
from pvtbuild.shard import shard
from pvtbuild.stage import StageSummary

REPO = Path(__file__).resolve().parent.parent
TARGET_SPEEDUP = 1.8
WARMUP = 4  # clips: at least one render and one encode task per worker
FULL_BUILD = 50_000
CLUSTER_CORES = 32  # CPU cores of the hypothetical cluster in the estimate
ASSUMED_GPU_CLIPS_S = 100  # EnCodec + CQT of 8 s clips per GPU at batch 32: an assumption (~60x one core here)


@dataclass
class Setup:
    name: str
    scheduler: str | None
    jobs: int
    malloc_fix: bool = True


@dataclass
class Timing:
    clips: int
    startup: float
    warmup: float
    render: float
    encode: float
    shard: float  # TFRecord writing: not in the ratios (the baseline was render + encode), in the estimate

    @property
    def total(self) -> float:
        return self.render + self.encode

    def rate(self, seconds: float) -> float:
        return self.clips / seconds if seconds > 0 else 0.0


SETUPS = [
    Setup("in-process", "sync", 1),
    Setup("1 worker", None, 1),
    Setup("2 workers", None, 2),
    Setup("2 workers, no malloc fix", None, 2, malloc_fix=False),
]


def main(argv: list[str]) -> int:
    rounds = int(argv[1]) if len(argv) > 1 else 2
    cfg = load_pipeline(REPO / "pipelines" / "demo.yaml", **{"render.clips_per_shard": 1, "encode.weights": "random"})
    print(f"demo selection, {cores()} cores, {rounds} round(s); render + encode ({', '.join(cfg.encode.formats)}, "
          f"random EnCodec weights), 1 clip per shard", flush=True)
    best: dict[str, Timing] = {}
    for r in range(rounds):
        for setup in SETUPS:
            t = run_setup(setup, cfg)
            print(f"  round {r + 1} {setup.name:26s} render {t.rate(t.render):6.2f} clips/s  encode "
                  f"{t.rate(t.encode):5.2f} clips/s  both {t.rate(t.total):5.2f} clips/s  (start-up {t.startup:.1f} s, warm-up {t.warmup:.1f} s)",
                  flush=True)
            if setup.name not in best or t.total < best[setup.name].total:
                best[setup.name] = t
    report(best)
    return 0


def run_setup(setup: Setup, cfg: PipelineConfig) -> Timing:
    """Render and encode the demo clips with one setup, in a fresh build folder."""
    cfg = dataclasses.replace(cfg, exec=ExecConfig(jobs=setup.jobs, scheduler=setup.scheduler))
    fix = contextlib.nullcontext() if setup.malloc_fix else mock.patch.dict(executor_module.WORKER_ENV, {executor_module.MALLOC_FIX_ENV: "0"})
    with tempfile.TemporaryDirectory() as tmp, fix, contextlib.redirect_stderr(io.StringIO()):
        out = Path(tmp)
        t0 = time.monotonic()
        with open_executor(cfg.exec.scheduler, cfg.exec.jobs, quiet=True) as ex:
            startup = time.monotonic() - t0
            clips, _ = selected_clips(cfg, out, ex)
            t0 = time.monotonic()
            build(clips[:WARMUP], out / "warm-up", cfg, ex)
            warmup = time.monotonic() - t0
            rendered, encoded, sharded = build(clips, out / "timed", cfg, ex)
    if sharded.ok != len(clips):
        raise SystemExit(f"{setup.name}: only {sharded.ok} of {len(clips)} clips made it into the dataset")
    return Timing(len(clips), startup, warmup, rendered.seconds, encoded.seconds, sharded.seconds)


def build(clips: list[ClipSpec], out: Path, cfg: PipelineConfig, ex: Executor
          ) -> tuple[StageSummary, StageSummary, StageSummary]:
    """The render, encode and shard stages of `clips` into the build folder `out`."""
    save_build_config(cfg, out)
    return render(clips, out, cfg, ex), encode(out, cfg, ex), shard(out, out / "dataset", cfg, ex)


def report(best: dict[str, Timing]) -> None:
    base, one, two, nofix = (best[s.name] for s in SETUPS)
    print("\nbest of the rounds, clips/s (render + encode):")
    for name, t in best.items():
        print(f"  {name:26s} {t.rate(t.total):5.2f}   ({t.total / base.total:4.2f}x the in-process time)")
    speedup = one.total / two.total
    print(f"2 workers / 1 worker:            {speedup:.2f}x  (target >= {TARGET_SPEEDUP}: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")
    print(f"2 workers with / without fix:    {nofix.total / two.total:.2f}x  "
          f"(encode alone: {nofix.encode / two.encode:.2f}x)")
    print(f"2 workers / in-process:          {base.total / two.total:.2f}x")
    estimate(two)


def estimate(two: Timing) -> None:
    """The full build from the 2-worker run's per-clip costs (core-seconds per clip, stage by stage).

    Stages run one after the other, so times add up. On GPU workers only encode moves; its
    rate there (ASSUMED_GPU_CLIPS_S per GPU) is an assumption, not measured on this CPU-only machine.
    """
    n = cores()
    cost = {stage: seconds * n / two.clips for stage, seconds in
            (("render", two.render), ("encode", two.encode), ("shard", two.shard))}
    hours = FULL_BUILD * sum(cost.values()) / n / 3600
    print(f"\nestimate, {FULL_BUILD} clips (selection from MIDI files not included): "
          + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()) + f" core-s per clip")
    print(f"  this machine ({n} cores, CPU only): {hours:.1f} h")
    cpu_part = FULL_BUILD * (cost["render"] + cost["shard"]) / CLUSTER_CORES
    for gpus in (1, 4, 8):
        gpu_part = FULL_BUILD / (gpus * ASSUMED_GPU_CLIPS_S)
        print(f"  {CLUSTER_CORES} CPU cores + {gpus} GPU worker(s) at an assumed {ASSUMED_GPU_CLIPS_S} clips/s each: "
              f"render + shard {cpu_part / 60:.0f} min + encode {gpu_part / 60:.0f} min = "
              f"{(cpu_part + gpu_part) / 3600:.2f} h")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
