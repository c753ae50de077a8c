"""Encode stage cost per clip against the bare model forward, and the stage's CQT against librosa's.

    python bench/bench_encode.py              # 8 clips of the demo selection, batch size per device
    python bench/bench_encode.py N [BATCH]    # the first N clips of the demo selection, BATCH clips per call

What is compared, in one process and one run (so machine load hits both alike):

- bare: the CQT layer and the EnCodec encoder + quantizer (random weights) called
  on the clips already in memory, BATCH clips per call, under `torch.inference_mode`
  and the stage's thread count (`ENCODE_THREADS`): the models' cost and nothing else.
- stage: the real encode stage (`pvtbuild.stages.encode.encode`, in-process executor)
  on the render output of the same clips: reading and checking render shards, the
  same model calls, checksums, npz shards and records written atomically. Its
  encode folder is removed between repeats; the models stay loaded (as in a worker).

Both are warmed up first and timed `REPEATS` times, interleaved; the best time of
each counts. bare/stage time is the stage's efficiency (target >= 0.9).

Also measured, per 8 s clip: the stage's CQT (encode/fftcqt.py) at the stage's thread count
and at every core, against `librosa.cqt` with the same parameters.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from demo_clips import render_demo_clips
from pvtbuild.compute import ENCODE_THREADS, default_batch_size, encode_threads
from pvtbuild.config import config_from_dict
from pvtbuild.encoders.cqt import CqtEncoder
from pvtbuild.encoders.encodec import EncodecEncoder
from pvtbuild.engine.executor import Executor
from pvtbuild.stages.encode import encode

REPO = Path(__file__).resolve().parent.parent
REPEATS = 3
TARGET = 0.9


def main(argv: list[str]) -> int:
    n_clips = int(argv[1]) if len(argv) > 1 else 8
    batch = int(argv[2]) if len(argv) > 2 else default_batch_size(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        out = render_demo_clips(Path(tmp), n_clips, "bench-encode")
        cfg = config_from_dict(json.loads((out / "pipeline.json").read_text()), **{"encode.batch_size": batch})
        audio = np.concatenate([np.load(p)["audio"] for p in sorted((out / "render").glob("shard-*.npz"))])
        cqt = CqtEncoder(cfg.encode.cqt, cfg.render.sample_rate)
        codec = EncodecEncoder.load(checkpoint=None, random_weights=True, seed=cfg.seed,
                                    bandwidth=cfg.encode.encodec.bandwidth, device="cpu")
        ex = Executor(None, "in-process")

        def bare() -> None:
            with torch.inference_mode(), encode_threads():
                for start in range(0, len(audio), batch):
                    cqt.encode(audio[start:start + batch])
                    codec.encode_both(audio[start:start + batch])

        def stage() -> None:
            shutil.rmtree(out / "encode", ignore_errors=True)
            with contextlib.redirect_stderr(io.StringIO()):  # its banner and progress bar, every repeat
                summary = encode(out, cfg, ex)
            assert summary.ok == len(audio), summary.lines()

        bare(), stage()  # warm up: models loaded, kernels chosen
        bare_s, stage_s = [], []
        for _ in range(REPEATS):
            bare_s.append(_time(bare))
            stage_s.append(_time(stage))
        cqt_costs = _cqt_costs(audio[0], cqt, cfg)
    n = len(audio)
    ratio = min(bare_s) / min(stage_s)
    verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
    print(f"bench_encode: {n} clips of 8 s, formats cqt+encodec+disc, batch {batch}, "
          f"{ENCODE_THREADS} torch thread(s), random EnCodec weights")
    print(f"  bare model forward (CQT + EnCodec encoder + quantizer): {1e3 * min(bare_s) / n:7.1f} ms/clip")
    print(f"  encode stage (read, check, encode, hash, write)       : {1e3 * min(stage_s) / n:7.1f} ms/clip")
    print(f"  ratio bare / stage: {ratio:.2f}  (target >= {TARGET}: {verdict})")
    threads, ours_1, ours_all, theirs = cqt_costs
    print(f"  CQT per clip: stage (fftcqt) {1e3 * ours_1:.1f} ms at {ENCODE_THREADS} thread(s), "
          f"{1e3 * ours_all:.1f} ms at {threads}; librosa {1e3 * theirs:.1f} ms; "
          f"stage/librosa time {ours_1 / theirs:.2f} ({ours_all / theirs:.2f} at {threads} threads)")
    return 0


def _cqt_costs(clip: np.ndarray, cqt: CqtEncoder,
               cfg) -> tuple[int, float, float, float]:  # type: ignore[no-untyped-def]
    """Best-of-REPEATS seconds for one clip: the stage's CQT at ENCODE_THREADS and at all cores, librosa."""
    import librosa  # noqa: PLC0415  (librosa takes seconds to import: only its baseline needs it)

    c = cfg.encode.cqt
    threads = torch.get_num_threads()
    with encode_threads():
        ours_1 = min(_time(lambda: cqt.encode(clip[None])) for _ in range(REPEATS))
    ours_all = min(_time(lambda: cqt.encode(clip[None])) for _ in range(REPEATS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = min(_time(lambda: librosa.cqt(clip, sr=cfg.render.sample_rate, hop_length=c.hop_length,
                                               fmin=c.fmin, n_bins=c.n_bins, bins_per_octave=c.bins_per_octave))
                     for _ in range(REPEATS + 1))  # the first call builds librosa's filter cache
    return threads, ours_1, ours_all, theirs


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
