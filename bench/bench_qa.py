"""QA cost against render cost per clip, in one process and one run (machine load hits both alike).

    python bench/bench_qa.py [N_FILES [ROUNDS]]   # the first N_FILES (default 20) of tests/data/midi/lakh-sample

Renders the clips (render stage, in-process), then times what the qa task runs on each render
shard: `qa.judge_clips` on all of the shard's clips at once (batched analysis + per-clip scores on
the qa grid, with the timbre check, without the YIN sample), inside `analysis.one_blas_thread` as
the task runs it; prints ms per clip of each and the ratio (target <= 0.25), for ROUNDS (default 3)
alternating rounds, and the median ratio. Also printed, for information: the whole `qa.qa_task`
per clip (the same, plus reading and sha256-checking the shard file and writing the qa record).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from dataclasses import replace

    from pvtbuild.analysis import one_blas_thread
    from pvtbuild.config import load_pipeline
    from pvtbuild.pipeline import run_render
    from pvtbuild.qa import QaJob, judge_clips, qa_grid, qa_task, timbre_references
    from pvtbuild.stage import ShardRecord

    n_files = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    cfg = load_pipeline(REPO / "pipelines" / "pvt.yaml", midi=str(REPO / "tests/data/midi/lakh-sample"),
                        limit=n_files, **{"exec.scheduler": "sync"})
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    grid = qa_grid(cfg)
    t0 = time.perf_counter()
    timbre = timbre_references(cfg)
    print(f"timbre references (once per qa stage run): {time.perf_counter() - t0:.2f} s")
    ratios, task_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_render(cfg, out / "warm")  # selection + SoundFont load
        for r in range(rounds):  # render and qa alternate, so that load from other processes hits both alike
            shutil.rmtree(out / "warm" / "render")
            t0 = time.perf_counter()
            summary = run_render(cfg, out / "warm")[-1]
            render_s = time.perf_counter() - t0
            n = summary.ok
            render_dir = out / "warm" / "render"
            shards = []
            for f in sorted(render_dir.glob("shard-*.npz")):
                rec = ShardRecord.from_dict(json.loads(f.with_suffix(".json").read_text()))
                inst = {row["id"]: row["inputs"].get("instrument", "") for row in rec.rows}
                with np.load(f) as d:
                    ids = [str(x) for x in d["id"]]
                    shards.append((rec, d["audio"], {c: d[f"{c}_{grid.name}"] for c in ("voiced", "pitch", "chroma",
                                                                                         "velocity")},
                                   [inst.get(i, "") for i in ids]))
            job = QaJob(replace(cfg.qa, yin_share=0.0), grid, cfg.render.sample_rate, "bench",
                        shards[0][0].params, timbre)
            judge_clips(shards[0][1][:1], {k: v[:1] for k, v in shards[0][2].items()}, shards[0][3][:1], job)  # warm-up
            clips = sum(len(s[1]) for s in shards)
            t0 = time.perf_counter()
            for _, audio, controls, instruments in shards:
                with one_blas_thread():  # as the qa task runs it, once per shard
                    judge_clips(audio, controls, instruments, job)
            qa_s = time.perf_counter() - t0
            qa_dir = out / "warm" / f"qa-{r}"
            qa_dir.mkdir()
            t0 = time.perf_counter()
            for i, (rec, *_) in enumerate(shards):
                qa_task(i, rec, job, str(qa_dir), str(render_dir))
            task_s = time.perf_counter() - t0
            r_ms, q_ms = 1000 * render_s / max(n, 1), 1000 * qa_s / max(clips, 1)
            t_ms = 1000 * task_s / max(clips, 1)
            ratios.append(q_ms / r_ms)
            task_ratios.append(t_ms / r_ms)
            print(f"round {r}: render {n} clips, {r_ms:.2f} ms/clip (stage, in-process); "
                  f"qa {clips} clips in {len(shards)} shards, {q_ms:.2f} ms/clip (judge_clips per shard, on "
                  f"{grid.name}); qa / render = {q_ms / r_ms:.3f}; whole qa_task {t_ms:.2f} ms/clip "
                  f"({t_ms / r_ms:.3f} x render)")
    print(f"qa / render = {float(np.median(ratios)):.3f} (median of {rounds} rounds; target <= 0.25); "
          f"whole qa_task / render = {float(np.median(task_ratios)):.3f} (with reading and checking the shard)")


if __name__ == "__main__":
    main()
