"""The complex CQT format: [2, F, T] float32, real and imaginary parts as channels.

The format is defined by nnAudio's `CQT1992v2` as this stage has always configured it
(fmin, bins per octave, n_bins, hop from `encode.cqt`; centred, reflect padding, Hann
kernels, `normalization_type="librosa"`). It is computed by `fftcqt.FftCqt`, the same
transform in the frequency domain (one FFT per clip, one small inverse FFT per bin):
on one CPU thread 16 ms per 8 s clip, ~25x faster than nnAudio's strided convolution
and ~12x faster than `librosa.cqt` (bench/bench_cqt.py), and the same code on CUDA.
It matches nnAudio to magnitude correlation 0.999999 and relative L2 error 1e-3 (the
part of each kernel's spectrum below -60 dB is dropped), and `TRANSFORM` names it in
encoder.json. nnAudio itself stays as `reference_cqt`, which tests compare against.

nnAudio's CQT2010v2 cannot be used: it fails for hop 100. With the "librosa"
normalisation the kernels are L1-normalised and the output scaled by sqrt(kernel
length), which is what `librosa.cqt` computes with its defaults (`scale=True`,
`norm=1`): on a clip of harmonic tones the magnitudes correlate at 0.99996 and the
per-bin gain is 1.00 +- 0.015, with the same phase convention. The inverse is the
least-squares solution through the transform itself (`inverse`: 82 dB SNR on in-band
tones, where `librosa.icqt`, used before, gave 34.6 dB).

For 8 s at 24 kHz with hop 100 (`center=True`): 192000 // 100 + 1 = 1921 frames.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from pvtbuild.compute import encode_threads
from pvtbuild.config import CqtConfig
from pvtbuild.encoders.fftcqt import CqtParams, FftCqt
from pvtbuild.errors import ConfigError

# What computes the stored CQT, recorded in encoder.json and dataset.json; a new version means
# other numbers, so a build directory made with another one is not resumed (encode/stage.py).
TRANSFORM = {"name": "fftcqt", "version": 1, "defined_by": "nnAudio CQT1992v2"}
INVERSE_ITERATIONS = 16  # conjugate-gradient steps of `inverse`

_CACHE: dict[tuple, FftCqt] = {}
_REFERENCE: dict[tuple, torch.nn.Module] = {}
_LOCK = threading.Lock()


class CqtEncoder:
    """Complex CQT of batches of mono clips.

    Args:
        cfg: the `encode.cqt` config section.
        sample_rate: of the clips (Hz).
        device: where the transform runs.
    """

    def __init__(self, cfg: CqtConfig, sample_rate: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.device = torch.device(device)
        _check_nyquist(cfg, sample_rate)
        self.params = _params(cfg, sample_rate)

    @property
    def min_samples(self) -> int:
        """Shortest clip the transform accepts: the reflect padding needs more than half the longest kernel."""
        return self.params.width() // 2 + 1

    def transform(self, n_samples: int) -> FftCqt:
        """The transform for clips of `n_samples`, built once per process, device and length."""
        key = (self.params, n_samples, str(self.device))
        with _LOCK:
            fft_cqt = _CACHE.get(key)
            if fft_cqt is None:
                with torch.inference_mode(False):  # usable under autograd too, whoever builds it first
                    fft_cqt = _CACHE[key] = FftCqt(self.params, n_samples, self.device)
            return fft_cqt

    def frames(self, n_samples: int) -> int:
        """Number of CQT frames for a clip of `n_samples`."""
        return n_samples // self.cfg.hop_length + 1

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """CQT of each clip.

        Args:
            batch: [B, N] float32 audio.

        Returns:
            [B, 2, F, T] float32: real and imaginary parts, F = `n_bins`, T = N // hop + 1.
        """
        batch = _as_batch(batch)
        if batch.shape[1] < self.min_samples:
            raise ConfigError(
                f"encode.cqt: clips of {batch.shape[1]} samples are shorter than the lowest CQT kernel needs "
                f"({self.min_samples} samples at fmin {self.cfg.fmin} Hz); use longer clips or a higher fmin")
        fft_cqt = self.transform(batch.shape[1])
        with torch.inference_mode():
            out = torch.view_as_real(fft_cqt(torch.from_numpy(batch)))  # [B, F, T, 2]
            return out.permute(0, 3, 1, 2).contiguous().cpu().numpy()

    def inverse(self, cqt: np.ndarray, length: int | None = None) -> np.ndarray:
        """Audio back from a stored CQT; see `inverse`."""
        return inverse(cqt, self.sample_rate, self.cfg, length)


def inverse(cqt: np.ndarray, sample_rate: int, cfg: CqtConfig, length: int | None = None,
            iterations: int = INVERSE_ITERATIONS, device: torch.device | str = "cpu") -> np.ndarray:
    """Audio from a [2, F, T] (or [B, 2, F, T]) CQT, for listening.

    The least-squares solution of `encode(x) = cqt`: conjugate gradients on the normal
    equations, from silence (each iteration is one pass of `FftCqt` and one of its adjoint).
    Content outside fmin .. the top bin is not in the CQT and comes back as nothing (the minimum-norm solution). SNR on
    in-band harmonic tones at 16 iterations: 82 dB, and 58 dB on a clip with notes at
    fmin itself, where `librosa.icqt` (used before) gave 34.6 and 20.9 dB; a CQT that
    no audio has (a model's sample) gives its least-squares audio, which stays bounded
    as the iterations go on. About 0.5 s per 8 s clip on one CPU thread.

    Args:
        cqt: real and imaginary channels as written by `CqtEncoder.encode`.
        sample_rate: of the original audio.
        cfg: the CQT parameters the data was made with.
        length: samples to return; default (T - 1) * hop, the clip length when it is a multiple of hop.
        iterations: conjugate-gradient steps (fewer: faster, rougher; it stops early once converged).
        device: where to run.

    Returns:
        [N] (or [B, N]) float32 audio.
    """
    cqt = np.asarray(cqt)
    if cqt.ndim < 3 or cqt.shape[-3] != 2 or cqt.shape[-2] != cfg.n_bins:
        raise ValueError(f"expected a CQT of shape [..., 2, {cfg.n_bins}, T], got {list(cqt.shape)}")
    frames = cqt.shape[-1]
    if length is None:
        length = (frames - 1) * cfg.hop_length
    n = length if length // cfg.hop_length + 1 == frames else (frames - 1) * cfg.hop_length
    encoder = CqtEncoder(cfg, sample_rate, device)
    if n < encoder.min_samples:
        raise ValueError(f"a CQT of {frames} frames is shorter than the lowest kernel ({encoder.min_samples} samples)")
    flat = torch.from_numpy(np.ascontiguousarray(cqt, dtype=np.float32).reshape(-1, 2, cfg.n_bins, frames))
    with torch.inference_mode(), encode_threads():  # one thread, as the stage: 2 made it 5x slower on 2 busy cores
        target = torch.complex(flat[:, 0], flat[:, 1]).to(encoder.device)
        audio = _least_squares(encoder.transform(n), target, iterations)
    audio = audio.cpu().numpy()[:, :length]
    if audio.shape[1] < length:
        audio = np.pad(audio, ((0, 0), (0, length - audio.shape[1])))
    return audio.reshape(*cqt.shape[:-3], length).astype(np.float32, copy=False)


def reference_cqt(batch: np.ndarray, cfg: CqtConfig, sample_rate: int,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """The format's definition: nnAudio's `CQT1992v2` of each clip, [B, 2, F, T] float32 like `CqtEncoder.encode`.

    What the stage stored before `TRANSFORM` (about 25x slower); tests and the benchmark compare against it.
    """
    layer = _nnaudio_cqt(cfg, sample_rate, torch.device(device))
    with torch.inference_mode():
        out = layer(torch.from_numpy(_as_batch(batch)).to(device))  # [B, F, T, 2]
        return out.permute(0, 3, 1, 2).contiguous().cpu().numpy()


# --- internals --------------------------------------------------------------------------


def _least_squares(transform: FftCqt, target: torch.Tensor, iterations: int) -> torch.Tensor:
    """[B, N] audio minimising |transform(x) - target|^2, by CGNR; the iterate with the smallest normal residual."""
    x, r = torch.zeros(target.shape[0], transform.n_samples, device=target.device), transform.adjoint(target)
    p, rs = r.clone(), r.square().sum(-1, keepdim=True)
    best, best_rs = x.clone(), rs.clone()
    scale = rs.clamp_min(1e-30)
    for _ in range(iterations):
        if bool((rs <= 1e-14 * scale).all()):
            break  # float32 converged
        ap = transform.adjoint(transform(p))
        alpha = rs / (p * ap).sum(-1, keepdim=True).clamp_min(1e-30)
        x, r = x + alpha * p, r - alpha * ap
        new_rs = r.square().sum(-1, keepdim=True)
        p, rs = r + (new_rs / rs.clamp_min(1e-30)) * p, new_rs
        better = rs < best_rs
        best, best_rs = torch.where(better, x, best), torch.where(better, rs, best_rs)
    return best


def _params(cfg: CqtConfig, sample_rate: int) -> CqtParams:
    return CqtParams(sample_rate, float(cfg.fmin), cfg.bins_per_octave, cfg.n_bins, cfg.hop_length)


def _nnaudio_cqt(cfg: CqtConfig, sample_rate: int, device: torch.device) -> torch.nn.Module:
    """The nnAudio layer for these parameters, built once per process and device."""
    key = (cfg.fmin, cfg.bins_per_octave, cfg.n_bins, cfg.hop_length, sample_rate, str(device))
    with _LOCK:
        layer = _REFERENCE.get(key)
        if layer is None:
            _check_nyquist(cfg, sample_rate)
            from nnAudio.features.cqt import CQT1992v2  # noqa: PLC0415  (nnAudio: only the reference layer needs it)

            layer = CQT1992v2(sr=sample_rate, hop_length=cfg.hop_length, fmin=cfg.fmin, n_bins=cfg.n_bins,
                              bins_per_octave=cfg.bins_per_octave, output_format="Complex", verbose=False)
            layer = layer.to(device).eval()
            _REFERENCE[key] = layer
        return layer


def _check_nyquist(cfg: CqtConfig, sample_rate: int) -> None:
    top = cfg.fmin * 2.0 ** ((cfg.n_bins - 1) / cfg.bins_per_octave)
    if top > sample_rate / 2:
        most = math.floor(cfg.bins_per_octave * math.log2(sample_rate / 2 / cfg.fmin)) + 1
        raise ConfigError(f"encode.cqt.n_bins: the top bin ({top:.0f} Hz) is above Nyquist ({sample_rate / 2:.0f} Hz); "
                          f"use at most {most} bins at fmin {cfg.fmin} Hz")


def _as_batch(batch: np.ndarray) -> np.ndarray:
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 2:
        raise ValueError(f"expected a batch of mono clips [B, N], got shape {list(batch.shape)}")
    return batch
