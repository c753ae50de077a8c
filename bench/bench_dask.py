"""pvtbuild on stock dask clusters: 1 vs 2 workers, staged vs streamed stages, with vs without the malloc fix.

    python bench/bench_dask.py          # the demo selection (manifests/demo.jsonl, 21 clips)
    python bench/bench_dask.py ROUNDS   # repeat every setup ROUNDS times (default 2), best counts

Every cluster is started as anyone starts one: `dask scheduler --host 127.0.0.1` and
`dask worker ADDRESS --nworkers N --nthreads 1` in an environment without anything pvtbuild
or dask-specific (stock nannies: daemonic workers, MALLOC_TRIM_THRESHOLD_=65536,
OMP_NUM_THREADS=1). Setups, each on its own cluster, interleaved round by round so that load
from other jobs on the machine hits them alike:

- 1 worker, 2 workers: the ratio is the scaling target (>= 1.8 on 2 cores);
- 2 workers, no malloc fix: workers started with PVTBUILD_MALLOC_FIX=0, so pvtbuild leaves
  the nanny's malloc setting alone (executor.prepare_process); the EnCodec per-clip cost
  with / without is the fix's worth;
- 1 worker + 1 "GPU" worker: the second worker advertises `--resources GPU=1`, so every
  encode task goes to it and render tasks to both. It is a CPU standing in for a GPU pool
  (this machine has none): the case streaming is for, where encode has workers of its own.
  `encode.batch_size: 1` (a CPU's best), so that each of its tasks takes one render shard.

Each setup builds the demo clips (one clip per render shard, so two workers have tasks to
share; every format, random EnCodec weights, QA on) twice in fresh folders after a warm-up on
WARMUP clips (imports, the SoundFont, the MIDI parser and the encoders load once per worker
and are reused, so in a 50 000-clip build they cost nothing per clip):

- staged: render, then encode, then qa, each stage's tasks all done before the next starts
  (what the stage commands do); its wall time is about the sum of the three stage times;
- streamed: the three as `pvtbuild run` runs them (pipeline.stream_stages): encode and qa of
  render shard i start as soon as it exists. Its wall time is printed against the staged
  one and against the slowest stage alone (the least streaming could reach).

The shard stage (TFRecord packing) comes after both and is not timed here (bench_read.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distributed import Client

from pvtbuild.build_dir import save_build_config
from pvtbuild.clip import ClipSpec, Selection
from pvtbuild.config import PipelineConfig, load_pipeline
from pvtbuild.engine.executor import Executor, open_executor
from pvtbuild.engine.processes import MALLOC_FIX_ENV, cores
from pvtbuild.pipeline import selected_clips, stream_stages
from pvtbuild.stages.encode import encode
from pvtbuild.stages.qa import qa
from pvtbuild.stages.render import render
from pvtbuild.stages.select import notes_files

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET_SPEEDUP = 1.8
WARMUP = 4  # clips: at least one render and one encode task per worker


@dataclass(frozen=True)
class Setup:
    name: str
    workers: int
    worker_env: tuple[tuple[str, str], ...] = ()
    gpu_worker: bool = False  # one more worker, advertising GPU=1


@dataclass
class Timing:
    clips: int
    startup: float
    render: float
    encode: float
    qa: float
    staged: float  # wall time of the three stage by stage (their times, plus the client's work between them)
    streamed: float  # wall time of the three streamed

    @property
    def slowest(self) -> float:
        return max(self.render, self.encode, self.qa)


SETUPS = [
    Setup("1 worker", 1),
    Setup("2 workers", 2),
    Setup("2 workers, no malloc fix", 2, ((MALLOC_FIX_ENV, "0"),)),
    Setup("1 worker + 1 'GPU' worker", 1, gpu_worker=True),
]


def main(argv: list[str]) -> int:
    rounds = int(argv[1]) if len(argv) > 1 else 2
    cfg = load_pipeline(REPO / "pipelines" / "demo.yaml", **{"render.clips_per_shard": 1, "encode.weights": "random",
                                                            "encode.batch_size": 1, "qa.enabled": True})
    print(f"demo selection, {cores()} cores, {rounds} round(s); stock dask workers (--nthreads 1); render + encode "
          f"({', '.join(cfg.encode.formats)}, random EnCodec weights) + qa, 1 clip per render shard", flush=True)
    best: dict[str, Timing] = {}
    for r in range(rounds):
        for setup in SETUPS:
            t = run_setup(setup, cfg)
            print(f"  round {r + 1} {setup.name:26s} staged: render {t.render:5.1f} s, encode {t.encode:5.1f} s, "
                  f"qa {t.qa:4.1f} s, in all {t.staged:5.1f} s;  streamed {t.streamed:5.1f} s  "
                  f"(cluster start {t.startup:.1f} s)", flush=True)
            if setup.name not in best or t.staged + t.streamed < best[setup.name].staged + best[setup.name].streamed:
                best[setup.name] = t
    report(best)
    return 0


def run_setup(setup: Setup, cfg: PipelineConfig) -> Timing:
    """Warm up, then build the demo clips staged and streamed, on a fresh stock cluster."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        tmp = Path(tmp)
        t0 = time.monotonic()
        with stock_cluster(tmp / "cluster", setup) as address, \
                open_executor(address, 1, quiet=True, wait_for_workers=120) as ex:
            startup = time.monotonic() - t0
            clips, _ = selected_clips(cfg, tmp / "selection", ex)
            staged(clips[:WARMUP], tmp / "warm-up", cfg, ex)
            t0 = time.monotonic()
            stages = staged(clips, tmp / "staged", cfg, ex)
            staged_s = time.monotonic() - t0
            t0 = time.monotonic()
            save_build_config(cfg, tmp / "streamed")
            summaries = stream_stages(clips, cfg, tmp / "streamed", ex)
            streamed = time.monotonic() - t0
    for summary in [*stages.values(), *summaries]:
        if summary.stage != "qa" and summary.ok != len(clips):
            raise SystemExit(f"{setup.name}: {summary.stage} made {summary.ok} of {len(clips)} clips")
    return Timing(len(clips), startup, stages["render"].seconds, stages["encode"].seconds, stages["qa"].seconds,
                  staged_s, streamed)


def staged(clips: list[ClipSpec], out: Path, cfg: PipelineConfig, ex: Executor) -> dict:
    """Render, then encode, then qa `clips` into `out`; each stage's summary (with its time)."""
    save_build_config(cfg, out)
    return {"render": render(Selection(clips, notes_files(out, cfg)), out, cfg, ex), "encode": encode(out, cfg, ex),
            "qa": qa(out, cfg, ex)}


@contextlib.contextmanager
def stock_cluster(folder: Path, setup: Setup) -> Iterator[str]:
    """A `dask scheduler` and `dask worker --nworkers N --nthreads 1` (plus a GPU-labelled one)
    on 127.0.0.1, started as anyone starts them; stopped, by session, afterwards."""
    folder.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PVTBUILD_", "MALLOC_", "DASK_", "OMP_"))}
    procs = [spawn([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                    "127.0.0.1:0", "--scheduler-file", folder / "scheduler.json"], env, folder / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not (folder / "scheduler.json").is_file():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise SystemExit(f"the dask scheduler did not start; see {folder / 'scheduler.log'}")
            time.sleep(0.1)
        address = json.loads((folder / "scheduler.json").read_text())["address"]
        worker_env = {**env, **dict(setup.worker_env)}
        procs.append(spawn([BIN / "dask", "worker", address, "--nworkers", str(setup.workers), "--nthreads", "1"],
                           worker_env, folder / "workers.log"))
        if setup.gpu_worker:
            procs.append(spawn([BIN / "dask", "worker", address, "--nthreads", "1", "--resources", "GPU=1"],
                               worker_env, folder / "gpu-worker.log"))

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(setup.workers + setup.gpu_worker, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):  # workers first
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def spawn(cmd: list, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            start_new_session=True)


def report(best: dict[str, Timing]) -> None:
    one, two, nofix, gpu = (best[s.name] for s in SETUPS)
    print("\nbest of the rounds (render + encode + qa of the demo clips):")
    print(f"  {'setup':26s} {'staged':>10s} {'slowest stage':>13s} {'streamed':>9s}  streamed / staged")
    for name, t in best.items():
        print(f"  {name:26s} {t.staged:8.1f} s {t.slowest:11.1f} s {t.streamed:7.1f} s  {t.streamed / t.staged:5.2f}x")
    for label, key in (("staged", "staged"), ("streamed", "streamed")):
        speedup = getattr(one, key) / getattr(two, key)
        print(f"2 workers / 1 worker, {label + ':':10s} {speedup:.2f}x  (target >= {TARGET_SPEEDUP}: "
              f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")
    print(f"EnCodec + CQT per clip in a stock worker (encode stage, 2 workers x 1 core): "
          f"{nofix.encode * 2 / nofix.clips:.2f} s without pvtbuild's malloc fix, "
          f"{two.encode * 2 / two.clips:.2f} s with it ({nofix.encode / two.encode:.2f}x)")
    print(f"1 CPU + 1 'GPU' worker: streamed {gpu.streamed:.1f} s against staged {gpu.staged:.1f} s "
          f"({gpu.staged / gpu.streamed:.2f}x faster) and the slowest stage alone {gpu.slowest:.1f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
