"""QA cost against render cost per clip, in one process and one run (machine load hits both alike).

    python bench/bench_qa.py [N_FILES [ROUNDS]]   # the first N_FILES (default 20) of tests/data/midi/lakh-sample

Each round (default 3; render and qa alternate so that load from other processes hits both alike):
- render: the render stage in-process (`run_render`), ms per clip: the baseline;
- qa streamed (the target, <= 0.25 x render): what `pvtbuild run` pays, the qa task of each render
  shard right after the render task that wrote it, in the same process (as the in-process executor
  runs them, and dask, which runs a task where its input lives): the task takes the shard's bytes
  from memory (`written_shards`), judges its clips (with pvt.yaml's qa settings, the YIN
  cross-check of `qa.yin_share` of them included) and writes its record;
- qa from disk: the same task on a finished build (`pvtbuild qa` alone), reading the shard file
  and checking its sha256 first;
- judge_clips: the analysis and scoring alone (batched per shard, with the timbre check, without
  the YIN sample), inside `analysis.one_blas_thread` as the task runs it.
Prints ms per clip of each, the ratios, and their medians over the rounds. Once per run, not
counted: the timbre references (once per qa stage run) and librosa's first YIN call (once per
worker process), printed at the start.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pvtbuild.clip import Selection
from pvtbuild.config import load_pipeline
from pvtbuild.engine import written_shards
from pvtbuild.engine.stage_files import ShardRecord
from pvtbuild.music.analysis import SCORED_CONTROLS, one_blas_thread, pitch_yin
from pvtbuild.pipeline import executor_for, run_render, selected_clips
from pvtbuild.stages.qa import QaJob, judge_clips, qa_grid, qa_task, timbre_references, warm_yin
from pvtbuild.stages.render import plan_render
from pvtbuild.stages.select import notes_files

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    n_files = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cfg = load_pipeline(REPO / "pipelines" / "pvt.yaml", midi=str(REPO / "tests/data/midi/lakh-sample"),
                        limit=n_files, **{"exec.scheduler": "sync"})
    grid = qa_grid(cfg)
    t0 = time.perf_counter()
    timbre = timbre_references(cfg)
    print(f"timbre references (once per qa stage run): {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    warm_yin()  # what a qa task's first call pays
    print(f"librosa's first YIN call (once per worker process): {time.perf_counter() - t0:.2f} s; "
          f"YIN cross-checks qa.yin_share = {cfg.qa.yin_share:g} of the clips")
    yin_ms = _yin_ms(cfg)
    ratios: dict[str, list[float]] = {"streamed": [], "from disk": [], "judge_clips": []}
    extra_yin: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_render(cfg, out / "warm")  # selection + SoundFont load
        with executor_for(cfg) as ex:
            clips, _ = selected_clips(cfg, out / "warm", ex)
        for r in range(rounds):
            shutil.rmtree(out / "warm" / "render")
            t0 = time.perf_counter()
            n = run_render(cfg, out / "warm")[-1].ok
            render_ms = 1000 * (time.perf_counter() - t0) / max(n, 1)
            render_dir = out / "warm" / "render"
            recs = [ShardRecord.from_dict(json.loads(f.read_text())) for f in sorted(render_dir.glob("shard-*.json"))]
            job = QaJob(cfg.qa, grid, cfg.render.sample_rate, "bench", recs[0].params, timbre)
            judge_job = replace(job, qa=replace(cfg.qa, yin_share=0.0))
            clips_judged = sum(len([row for row in rec.rows if row.status == "ok"]) for rec in recs)

            # streamed: render task i, then qa task i (only the qa task timed)
            build = out / f"streamed-{r}"
            (build / "qa").mkdir(parents=True)
            run = plan_render(Selection(clips, notes_files(build, cfg)), build, cfg)
            qa_task(0, recs[0], job, str(out / "scratch"), str(render_dir))  # warm-up (first-call costs)
            streamed_s = 0.0
            for task in run.tasks:
                rec = task.fn(*task.args)
                t0 = time.perf_counter()
                qa_task(rec.index, rec, job, str(build / "qa"), str(build / "render"))
                streamed_s += time.perf_counter() - t0

            # from disk: nothing in memory
            written_shards.clear()
            (out / f"qa-{r}").mkdir()
            t0 = time.perf_counter()
            judged = [qa_task(rec.index, rec, job, str(out / f"qa-{r}"), str(render_dir)) for rec in recs]
            disk_s = time.perf_counter() - t0
            assert written_shards.stats()["hits"] == 0

            # judge_clips alone
            judge_s = 0.0
            for rec in recs:
                inst = {row.id: row.inputs.get("instrument", "") for row in rec.rows}
                with np.load(render_dir / rec.file) as d:
                    audio, controls = d["audio"], {c: d[f"{c}_{grid.name}"] for c in SCORED_CONTROLS}
                    instruments = [inst.get(str(i), "") for i in d["id"]]
                t0 = time.perf_counter()
                with one_blas_thread():
                    judge_clips(audio, controls, instruments, judge_job)
                judge_s += time.perf_counter() - t0

            ms = {"streamed": streamed_s, "from disk": disk_s, "judge_clips": judge_s}
            ms = {k: 1000 * v / max(clips_judged, 1) for k, v in ms.items()}
            # the YIN sample is chosen by a hash of the clip id: few clips here, so its share is off
            sampled = sum("yin_agreement" in row.info for rec in judged for row in rec.rows)
            extra_yin.append((cfg.qa.yin_share - sampled / max(clips_judged, 1)) * yin_ms / render_ms)
            for k in ratios:
                ratios[k].append(ms[k] / render_ms)
            print(f"round {r}: render {n} clips, {render_ms:.2f} ms/clip (stage, in-process); qa of {clips_judged} "
                  f"clips in {len(recs)} shards, ms/clip (x render): "
                  + ", ".join(f"{k} {ms[k]:.2f} ({ms[k] / render_ms:.3f})" for k in ms))
    med = {k: float(np.median(v)) for k, v in ratios.items()}
    print(f"qa streamed / render = {med['streamed']:.3f} (median of {rounds} rounds; target <= 0.25); "
          f"from disk {med['from disk']:.3f}; judge_clips alone {med['judge_clips']:.3f}")
    print(f"YIN: {yin_ms:.1f} ms per cross-checked clip; this sample checks {sampled} of {clips_judged} clips; with "
          f"the YIN sample at its expected share ({cfg.qa.yin_share:g}): qa streamed / render = "
          f"{float(np.median(np.array(ratios['streamed']) + np.array(extra_yin))):.3f}")


def _yin_ms(cfg) -> float:
    """ms of one YIN cross-check (`analysis.pitch_yin`) on a clip-long signal, the best of 5."""
    grid = qa_grid(cfg)
    x = np.random.default_rng(0).standard_normal(cfg.clip_samples).astype(np.float32) * 0.1
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        pitch_yin(x, cfg.render.sample_rate, grid.rate, grid.frames, grid.offset)
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


if __name__ == "__main__":
    main()
