"""QA cost against render cost per clip, in one process and one run (machine load hits both alike).

    python bench/bench_qa.py [N_FILES [ROUNDS]]   # the first N_FILES (default 20) of tests/data/midi/lakh-sample

Renders the clips (render stage, in-process), then times `qa.judge_clip` (analysis + scoring on the
qa grid with the timbre check, without the YIN sample) on every rendered clip, inside `analysis.one_blas_thread` as the
qa stage runs it (once per shard); prints ms per clip of each and the ratio (target <= 0.25), for
ROUNDS (default 3) alternating rounds, and the median ratio.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from dataclasses import replace

    from pvtbuild.config import load_pipeline
    from pvtbuild.pipeline import run_render
    from pvtbuild.analysis import one_blas_thread
    from pvtbuild.qa import QaJob, judge_clip, qa_grid, timbre_references

    n_files = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    cfg = load_pipeline(REPO / "pipelines" / "pvt.yaml", midi=str(REPO / "tests/data/midi/lakh-sample"),
                        limit=n_files, **{"exec.scheduler": "sync"})
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    grid = qa_grid(cfg)
    t0 = time.perf_counter()
    timbre = timbre_references(cfg)
    print(f"timbre references (once per qa stage run): {time.perf_counter() - t0:.2f} s")
    job = QaJob(replace(cfg.qa, yin_share=0.0), grid, cfg.render.sample_rate, "", "", timbre)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_render(cfg, out / "warm")  # selection + SoundFont load
        for r in range(rounds):  # render and qa alternate, so that load from other processes hits both alike
            shutil.rmtree(out / "warm" / "render")
            t0 = time.perf_counter()
            summary = run_render(cfg, out / "warm")[-1]
            render_s = time.perf_counter() - t0
            n = summary.ok
            clips = []
            for f in sorted((out / "warm" / "render").glob("shard-*.npz")):
                with np.load(f) as d:
                    for k in range(len(d["id"])):
                        clips.append((d["audio"][k], {c: d[f"{c}_{grid.name}"][k]
                                                      for c in ("voiced", "pitch", "chroma", "velocity")}))
            judge_clip(clips[0][0], clips[0][1], "piano", job)  # warm-up (template built once)
            t0 = time.perf_counter()
            with one_blas_thread():  # as the qa stage runs it, once per shard
                for audio, controls in clips:
                    judge_clip(audio, controls, "piano", job)
            qa_s = time.perf_counter() - t0
            r_ms, q_ms = 1000 * render_s / max(n, 1), 1000 * qa_s / max(len(clips), 1)
            ratios.append(q_ms / r_ms)
            print(f"round {r}: render {n} clips, {r_ms:.2f} ms/clip (stage, in-process); "
                  f"qa {len(clips)} clips, {q_ms:.2f} ms/clip (analysis + scores on {grid.name}); "
                  f"qa / render = {q_ms / r_ms:.3f}")
    print(f"qa / render = {float(np.median(ratios)):.3f} (median of {rounds} rounds; target <= 0.25)")

if __name__ == "__main__":
    main()
