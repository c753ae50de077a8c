"""The analysis's view of a clip: resampled to 12 kHz, windowed around each frame time, log-compressed
magnitude spectra (`to_analysis_rate`, `frame_windows`, `log_spectrum`, `fill_between`).

The per-frame numpy and torch work of the qa stage lives here; its cost per 8 s clip is in
`pvtbuild.music.analysis.tracker`'s docstring (measured by `bench/bench_qa.py`).
"""

from __future__ import annotations

import threading
from math import gcd

import numpy as np

from pvtbuild.music.analysis.estimates import ANALYSIS_SR, MAX_FREQ, WINDOW


def to_analysis_rate(x: np.ndarray, sr: int, pad: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """[N] samples at `sr` -> [pad + M + pad] float32 at ANALYSIS_SR, with `pad` zeros each side.

    `out`: a float32 buffer to write into (at 24 kHz), used when its length is pad + M + pad.
    """
    x = np.asarray(x, dtype=np.float32)
    if sr == 2 * ANALYSIS_SR:  # [1,3,3,1]/8 low-pass, taken at every other sample only
        n = len(x)
        m = (n + 1) // 2
        if out is None or out.shape != (pad + m + pad,):
            out = np.empty(pad + m + pad, dtype=np.float32)
        out[:pad] = 0
        out[pad + m:] = 0
        y = out[pad:pad + m]  # y[i] = (x[2i-2] + 3 x[2i-1] + 3 x[2i] + x[2i+1]) / 8, x = 0 outside
        even, odd = x[0::2], x[1::2]
        y[0] = 0
        np.add(even[1:], odd[:m - 1], out=y[1:])
        y[0] = even[0] if n else 0
        y *= np.float32(3)
        y[:len(odd)] += odd
        y[1:] += even[:m - 1]
        y *= np.float32(0.125)
        return out
    if sr == ANALYSIS_SR:
        y = x
    else:
        from scipy.signal import resample_poly  # noqa: PLC0415  (~1 s to import; only rates but 24 and 12 kHz need it)

        g = gcd(int(sr), ANALYSIS_SR)
        y = resample_poly(x, ANALYSIS_SR // g, int(sr) // g).astype(np.float32)
    return np.concatenate([np.zeros(pad, np.float32), y, np.zeros(pad, np.float32)]) if pad else y


_HANN = np.hanning(WINDOW + 2)[1:-1].astype(np.float32)
N_BINS = int(MAX_FREQ / (ANALYSIS_SR / WINDOW)) + 2
_HANN_POWER = float(np.dot(_HANN.astype(np.float64), _HANN))
_BLOCK = 600  # frames per rfft block in log_spectrum


def frame_windows(padded: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[T, WINDOW] the samples of the window centred on each time, from `padded` (the clip at ANALYSIS_SR
    with WINDOW zeros each side).

    A regular grid is a strided view (no gather), so it is made once per buffer and sees each
    clip written into that buffer; an irregular one is a gathered copy (then the buffer must not be reused).
    """
    half = WINDOW // 2
    centres = np.rint(times * ANALYSIS_SR).astype(np.int64) + WINDOW
    n = len(centres)
    step = np.diff(centres)
    if n > 1 and step[0] > 0 and np.all(step == step[0]) and centres[0] >= half and centres[-1] + half <= len(padded):
        # writeable only because torch.from_numpy (in log_spectrum) wants it so; nothing writes through it
        return np.lib.stride_tricks.as_strided(padded[centres[0] - half:], (n, WINDOW),
                                               (int(step[0]) * padded.strides[0], padded.strides[0]))
    return padded[centres[:, None] - half + np.arange(WINDOW)[None, :]]


def log_spectrum(frames: np.ndarray, out: np.ndarray) -> np.ndarray:
    """log(1 + |rfft| / floor) of each Hann-windowed frame of `frames` [T, WINDOW] (bins up to ~MAX_FREQ)
    into `out` [T, N_BINS]; returns each frame's loudness in dBFS [T].

    floor = max(1e-4 x the clip's peak magnitude, 1e-7). Taken in blocks of `_BLOCK` frames (an 8 s
    clip at 75 Hz in one): each call's overhead, not the cache, was what larger blocks saved.
    """
    import torch  # noqa: PLC0415  (torch takes ~1.3 s to import; the CLI imports this package without it)

    n = len(frames)
    energy = np.empty(n, dtype=np.float32)
    work = _work_buffer(min(n, _BLOCK))
    src, hann = torch.from_numpy(frames), torch.from_numpy(_HANN)
    for i in range(0, n, _BLOCK):
        # torch's multiply reads the strided frames ~3x faster than numpy's (same products)
        w = torch.mul(src[i:i + _BLOCK], hann, out=work[:min(_BLOCK, n - i)])
        np.einsum("ij,ij->i", w.numpy(), w.numpy(), out=energy[i:i + _BLOCK])
        # torch's rfft: ~3x scipy's on one thread (0.26 vs 0.8 ms for 600 frames here); numpy's
        # complex abs is faster than torch's (same results, to float32 rounding)
        np.abs(torch.fft.rfft(w, dim=1).numpy()[:, :N_BINS], out=out[i:i + _BLOCK])
    floor = max(float(out.max(initial=0.0)) * 1e-4, 1e-7)
    np.divide(out, np.float32(floor), out=out)
    # log(1 + x), not log1p(x): numpy's float32 log1p is not vectorised (0.78 ms for an 8 s clip's 600 x 206
    # bins); torch's log (0.17 ms) is faster than numpy's (0.25): they differ by float32 rounding (1 ulp)
    np.add(out, np.float32(1.0), out=out)
    t = torch.from_numpy(out)
    torch.log(t, out=t)
    return 10.0 * np.log10(np.maximum(energy.astype(np.float64) / _HANN_POWER, 1e-12))


def fill_between(a: np.ndarray) -> None:
    """Odd rows of `a` [T, ...] := the mean of the even rows either side (the last, with none after it: the one
    before), in place: the frames `analyse_batch` takes no spectrum of."""
    even, odd = a[0::2], a[1::2]
    n = len(even) - 1
    if n > 0:
        np.add(even[:-1], even[1:], out=odd[:n])
        odd[:n] *= np.float32(0.5)
    if len(odd) > max(n, 0):
        odd[-1] = even[-1]


_WORK = threading.local()  # per thread: dask may run qa tasks in threads


def _work_buffer(rows: int):
    """A [rows, WINDOW] float32 torch buffer for `log_spectrum`, the same one from call to call in this
    thread (a 1.2 MB block allocated per clip costs page faults)."""
    import torch  # noqa: PLC0415  (torch takes ~1.3 s to import; the CLI imports this package without it)

    buf = getattr(_WORK, "buf", None)
    if buf is None or buf.shape[0] < rows:
        buf = _WORK.buf = torch.empty((rows, WINDOW), dtype=torch.float32)
    return buf[:rows]
