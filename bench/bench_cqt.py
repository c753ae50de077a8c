"""The CQT format's transform (encoders/fftcqt.py) against nnAudio's CQT1992v2 and librosa.cqt, and the encode
stage before/after.

    python bench/bench_cqt.py   # 8 s clips of the demo selection, 24 kHz, fmin 130.81, 36 bins/oct, 216 bins, hop 100

What is timed, in one process and one run (so machine load hits all alike), best of REPEATS:

- one 8 s clip on one torch thread (the encode stage's count): the new transform,
  nnAudio's `CQT1992v2` (the format's definition, what the stage used before) and
  `librosa.cqt` with the same parameters; ratios librosa/new (target >= 5, aim 10) and nnAudio/new;
- 32 clips in one call on CPU, at one thread and at every core: ms per clip;
- on CUDA, when torch sees a GPU, 32 clips per call, new and nnAudio (else it prints "no GPU");
- the inverse of one clip (`cqt.inverse`) against `librosa.icqt`, the inverse before;
- the encode stage (`cqt,encodec,disc`, random EnCodec weights, in-process, batch 1)
  on N real renders: CPU seconds per clip with the new transform and with nnAudio's
  put back in its place (`CqtEncoder.encode` swapped for `reference_cqt`), interleaved.

It also prints the agreement with nnAudio on the rendered clips (magnitude correlation, relative L2 error).
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
from typing import Callable

import numpy as np
import torch

from demo_clips import render_demo_clips
from pvtbuild.compute import ENCODE_THREADS, encode_threads
from pvtbuild.config import config_from_dict
from pvtbuild.encoders import cqt as cqt_mod
from pvtbuild.encoders.cqt import CqtEncoder, reference_cqt
from pvtbuild.engine.executor import Executor
from pvtbuild.stages.encode import encode

REPO = Path(__file__).resolve().parent.parent
REPEATS = 5
BATCH = 32
TARGET, AIM = 5.0, 10.0


def main(argv: list[str]) -> int:
    n_clips = int(argv[1]) if len(argv) > 1 else 4
    with tempfile.TemporaryDirectory(prefix="bench-cqt-") as tmp:
        out = render_demo_clips(Path(tmp), n_clips, "bench-cqt")
        cfg = config_from_dict(json.loads((out / "pipeline.json").read_text()), **{"encode.batch_size": 1,
                                                                                   "encode.device": "cpu"})
        audio = np.concatenate([np.load(p)["audio"] for p in sorted((out / "render").glob("shard-*.npz"))])
        c, sr = cfg.encode.cqt, cfg.render.sample_rate
        enc = CqtEncoder(c, sr)
        clip = audio[:1]
        print(f"bench_cqt: 8 s clips at {sr} Hz, fmin {c.fmin}, {c.bins_per_octave} bins/octave, {c.n_bins} bins, "
              f"hop {c.hop_length}; best of {REPEATS}")

        corr, rel = _agreement(enc.encode(audio), reference_cqt(audio, c, sr))
        print(f"  agreement with nnAudio on {len(audio)} rendered clips: magnitude corr {corr:.7f}, "
              f"relative L2 {rel:.2e}")

        with encode_threads():
            new = _best(lambda: enc.encode(clip))
            ref = _best(lambda: reference_cqt(clip, c, sr), REPEATS // 2 + 1)
            lib = _librosa(clip[0], cfg)
        ratio = lib / new
        verdict = "ok" if ratio >= AIM else ("ok (below the 10x aim)" if ratio >= TARGET else "BELOW TARGET")
        print(f"  one clip, {ENCODE_THREADS} thread: new {1e3 * new:.1f} ms, nnAudio {1e3 * ref:.1f} ms, "
              f"librosa {1e3 * lib:.1f} ms")
        print(f"  ratio librosa/new: {ratio:.1f}x (target >= {TARGET:.0f}x, aim {AIM:.0f}x: {verdict}); "
              f"nnAudio/new: {ref / new:.1f}x")

        batch = np.resize(audio, (BATCH, audio.shape[1]))
        with encode_threads():
            one = _best(lambda: enc.encode(batch), 2) / BATCH
        every = _best(lambda: enc.encode(batch), 2) / BATCH
        print(f"  {BATCH} clips per call on CPU: new {1e3 * one:.1f} ms/clip at {ENCODE_THREADS} thread, "
              f"{1e3 * every:.1f} ms/clip at {torch.get_num_threads()} threads")
        _cuda(batch, cfg)

        stored = enc.encode(clip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import librosa  # noqa: PLC0415  (librosa takes seconds to import; under the warnings filter)

            def before() -> np.ndarray:
                return librosa.icqt(stored[0, 0] + 1j * stored[0, 1], sr=sr, hop_length=c.hop_length, fmin=c.fmin,
                                    bins_per_octave=c.bins_per_octave, length=clip.shape[1])

            t_before, t_after = _best(before, 2), _best(lambda: cqt_mod.inverse(stored, sr, c), 2)
        print(f"  inverse of one clip: {1e3 * t_after:.0f} ms (least squares, {cqt_mod.INVERSE_ITERATIONS} steps, "
              f"1 thread), librosa.icqt {1e3 * t_before:.0f} ms")

        before, after = _stage_cpu(out, cfg, len(audio))
        print(f"  encode stage, cqt+encodec+disc, CPU per clip: {before:.3f} s with nnAudio's CQT, "
              f"{after:.3f} s with the new one ({before / after:.2f}x)")
    return 0


def _cuda(batch: np.ndarray, cfg) -> None:  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available():
        print("  CUDA: no GPU")
        return
    c, sr = cfg.encode.cqt, cfg.render.sample_rate
    enc = CqtEncoder(c, sr, "cuda")
    x = torch.from_numpy(batch).cuda()
    transform = enc.transform(batch.shape[1])

    def new() -> None:
        transform(x)
        torch.cuda.synchronize()

    layer = cqt_mod._nnaudio_cqt(c, sr, torch.device("cuda"))

    def ref() -> None:
        with torch.inference_mode():
            layer(x)
        torch.cuda.synchronize()

    with torch.inference_mode():
        new(), ref()
        t_new, t_ref = _best(new), _best(ref)
    corr, rel = _agreement(enc.encode(batch[:4]), reference_cqt(batch[:4], c, sr, "cuda"))
    print(f"  CUDA ({torch.cuda.get_device_name()}), {len(batch)} clips per call: new {1e3 * t_new / len(batch):.2f} "
          f"ms/clip, nnAudio {1e3 * t_ref / len(batch):.2f} ms/clip ({t_ref / t_new:.1f}x); "
          f"agreement corr {corr:.7f}, relative L2 {rel:.2e}")


def _stage_cpu(out: Path, cfg, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """CPU seconds per clip of the real encode stage, with nnAudio's CQT swapped in and with the new one."""
    ex = Executor(None, "in-process")
    new_encode = CqtEncoder.encode

    def old_encode(self: CqtEncoder, batch: np.ndarray) -> np.ndarray:
        return reference_cqt(batch, self.cfg, self.sample_rate, self.device)

    def run(method: Callable) -> float:
        CqtEncoder.encode = method  # type: ignore[method-assign]
        try:
            shutil.rmtree(out / "encode", ignore_errors=True)
            t0 = time.process_time()
            with contextlib.redirect_stderr(io.StringIO()):
                summary = encode(out, cfg, ex)
            assert summary.ok == n, summary.lines()
            return (time.process_time() - t0) / n
        finally:
            CqtEncoder.encode = new_encode  # type: ignore[method-assign]

    run(new_encode)  # warm up: models loaded
    before, after = [], []
    for _ in range(2):
        before.append(run(old_encode))
        after.append(run(new_encode))
    return min(before), min(after)


def _librosa(clip: np.ndarray, cfg) -> float:  # type: ignore[no-untyped-def]
    import librosa  # noqa: PLC0415  (librosa takes seconds to import: only its baseline needs it)

    c = cfg.encode.cqt

    def call() -> None:
        librosa.cqt(clip, sr=cfg.render.sample_rate, hop_length=c.hop_length, fmin=c.fmin, n_bins=c.n_bins,
                    bins_per_octave=c.bins_per_octave)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call()  # builds librosa's filter cache
        return _best(call)


def _agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, b = ours[:, 0] + 1j * ours[:, 1], ref[:, 0] + 1j * ref[:, 1]
    return float(np.corrcoef(np.abs(a).ravel(), np.abs(b).ravel())[0, 1]), float(np.linalg.norm(a - b) /
                                                                                  np.linalg.norm(b))


def _best(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    sys.exit(main(sys.argv))
