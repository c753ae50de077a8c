"""nnAudio's CQT1992v2, computed in the frequency domain: one FFT per clip, one small inverse FFT per bin.

The stored `cqt` format is defined by nnAudio's `CQT1992v2` as the encode stage has
always configured it (Hann kernels of length ceil(Q sr / f_k), L1-normalised, placed
in a `width`-sample frame (the next power of two above the longest kernel), the clip
reflect-padded by width // 2, one strided correlation, and the output scaled by
sqrt(kernel length): "librosa" normalisation). That is, for bin k and frame t,

    C[k, t] = sqrt(l_k) * sum_m x_pad[t * hop + m] * conj(K_k[m]),   m in [0, width).

Here the same numbers come from the spectra (Brown & Puckette 1992):

1. `x_pad` is zero-extended to L = T' * hop samples, T' >= (N + width) / hop, so no
   frame's window wraps around; one real FFT gives X[q], q in [0, L/2].
2. The correlation theorem makes C[k, .] the inverse FFT of X[q] * conj(K^_k[q]),
   sampled every `hop` samples. K^_k is computed in closed form (a Hann window is three
   complex exponentials, so its spectrum is three Dirichlet kernels) and kept only in
   its band: the q where |K^_k| >= `BAND_FLOOR` times its peak (about +-6.6 kernel
   bins of sr / l_k around f_k; per bin, 1e-6 of the kernel's energy is dropped).
3. Sampling every `hop` samples folds the spectrum modulo T': the T frames are the
   size-T' inverse FFT of the band cut into T'-long blocks and summed. A low bin's band
   (~300 q-bins at 130 Hz) fits in one or two blocks; the top bins' (~19 000 at 8 kHz,
   wider than the 240 Hz frame rate) span up to ten. So every inverse FFT has the
   smallest size that yields T frames, and the product costs each bin what its band
   needs: bins are grouped by how many blocks their band spans and each group is one
   batched gather, product and sum. Blocks are aligned to multiples of T', so the
   gather moves whole blocks and needs no phase correction.

The residual against nnAudio is the dropped part of each kernel spectrum (relative L2
~1e-3 on tones, noise and renders) plus float32 rounding; the edges agree, because
the padding is nnAudio's own. Everything after the kernel spectra (built once, in
float64 numpy) is torch, so one code path runs on CPU and CUDA; nothing sums with
atomics, so outputs do not depend on run order or batch size. They do depend, by float
rounding, on the torch thread count (torch's complex multiply rounds differently at the
edges of each thread's chunk), which the encode stage fixes (`device.ENCODE_THREADS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BAND_FLOOR = 1e-3  # keep a kernel's spectrum where it is >= this fraction of its peak (-60 dB)
_EVAL_HALF_WIDTH = 10  # kernel bins (sr / l) each side of f_k where the spectrum is evaluated; the band is ~6.6


@dataclass(frozen=True)
class CqtParams:
    """The transform's parameters, named as nnAudio's `CQT1992v2` names them."""

    sample_rate: int
    fmin: float
    bins_per_octave: int
    n_bins: int
    hop_length: int

    def frequencies(self) -> np.ndarray:
        """[n_bins] centre frequencies (Hz)."""
        return self.fmin * 2.0 ** (np.arange(self.n_bins) / float(self.bins_per_octave))

    def lengths(self) -> np.ndarray:
        """[n_bins] kernel lengths in samples (float, as nnAudio keeps them): ceil(Q sr / f_k)."""
        q = 1.0 / (2.0 ** (1.0 / self.bins_per_octave) - 1.0)
        return np.ceil(q * self.sample_rate / self.frequencies())

    def width(self) -> int:
        """Samples of the frame each kernel sits in: the next power of two above the longest kernel."""
        return int(2 ** np.ceil(np.log2(self.lengths().max())))


class FftCqt:
    """The CQT of clips of one length, computed in the frequency domain (see the module docstring).

    Args:
        params: the transform's parameters.
        n_samples: the clip length the kernels are laid out for.
        device: where the kernel blocks live and the transform runs.
    """

    def __init__(self, params: CqtParams, n_samples: int, device: torch.device | str = "cpu"):
        self.params = params
        self.n_samples = n_samples
        self.device = torch.device(device)
        hop, width = params.hop_length, params.width()
        self.pad = width // 2
        self.frames = n_samples // hop + 1
        self.block = _smooth_at_least(math.ceil((n_samples + width) / hop))  # T'
        self.fft_size = self.block * hop  # L
        self.n_blocks = self.fft_size // 2 // self.block + 1  # blocks covering q in [0, L/2]
        starts, bands = kernel_bands(params, self.fft_size, self.pad)
        self.groups = _block_groups(starts, bands, self.block, self.n_blocks, self.device)
        order = torch.cat([bins for bins, _, _ in self.groups])
        self._unsort = torch.argsort(order).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] float32 audio (N = `n_samples`) to its [B, n_bins, frames] complex64 CQT.

        On CPU the clips go one at a time (a batch's intermediates outgrow the caches: measured
        twice as slow per clip at 32 clips), which also makes each clip's output independent of
        the batch it came in; on CUDA the batch goes at once.
        """
        if x.ndim != 2 or x.shape[1] != self.n_samples:
            raise ValueError(f"expected [B, {self.n_samples}] audio, got {list(x.shape)}")
        return self._clip_by_clip_on_cpu(self._transform, x.to(self.device, torch.float32))

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x[:, None], (self.pad, self.pad), mode="reflect")[:, 0]
        spectrum = torch.fft.rfft(padded, n=self.fft_size)  # [B, L/2 + 1]
        spectrum = torch.nn.functional.pad(spectrum, (0, self.n_blocks * self.block - spectrum.shape[1]))
        blocks = spectrum.view(x.shape[0], self.n_blocks, self.block)
        folded = []
        for _, block_index, kernel in self.groups:
            n_bins, per_bin = kernel.shape[0], kernel.shape[1]
            product = blocks.index_select(1, block_index).view(x.shape[0], n_bins, per_bin, self.block) * kernel
            total = product[:, :, 0]
            for p in range(1, per_bin):  # in a fixed order, whatever the thread count
                total = total + product[:, :, p]
            folded.append(total)  # [B, n_bins of the group, T']
        folded = torch.cat(folded, 1).index_select(1, self._unsort)
        return torch.fft.ifft(folded)[..., :self.frames]


    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The transform's adjoint: [B, n_bins, frames] complex to [B, N] real, for least-squares inverses.

        Re <transform(x), y> = <x, adjoint(y)> for every real x; each step of `_transform` taken back in
        reverse order. On CUDA, blocks shared by neighbouring bins are summed with atomics (float rounding
        varies run to run); nothing stored depends on it.
        """
        if y.ndim != 3 or tuple(y.shape[1:]) != (self.params.n_bins, self.frames):
            raise ValueError(f"expected [B, {self.params.n_bins}, {self.frames}] CQT, got {list(y.shape)}")
        return self._clip_by_clip_on_cpu(self._adjoint, y.to(self.device, torch.complex64))

    def _clip_by_clip_on_cpu(self, step, batch: torch.Tensor) -> torch.Tensor:
        """`step` on the batch at once on CUDA; on CPU one clip at a time (see `__call__`), concatenated."""
        if self.device.type == "cpu" and batch.shape[0] > 1:
            return torch.cat([step(batch[i:i + 1]) for i in range(batch.shape[0])])
        return step(batch)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        batch, n_spectrum = y.shape[0], self.fft_size // 2 + 1
        spread = torch.fft.fft(torch.nn.functional.pad(y, (0, self.block - self.frames))) / self.block
        blocks = torch.zeros(batch, self.n_blocks, self.block, dtype=torch.complex64, device=self.device)
        for bins, block_index, kernel in self.groups:
            n_bins, per_bin = kernel.shape[0], kernel.shape[1]
            part = spread.index_select(1, bins)[:, :, None, :] * kernel.conj()  # [B, n, P, T']
            blocks.index_add_(1, block_index, part.reshape(batch, n_bins * per_bin, self.block))
        spectrum = blocks.view(batch, -1)[:, :n_spectrum].clone()
        spectrum[:, 1:(self.fft_size + 1) // 2] *= 0.5  # irfft counts those bins twice
        spectrum[:, 0] = spectrum[:, 0].real.to(spectrum.dtype)
        if self.fft_size % 2 == 0:
            spectrum[:, -1] = spectrum[:, -1].real.to(spectrum.dtype)
        padded = torch.fft.irfft(spectrum, n=self.fft_size)[:, :self.n_samples + 2 * self.pad] * self.fft_size
        p, n = self.pad, self.n_samples
        x = padded[:, p:p + n].clone()
        x[:, 1:p + 1] += padded[:, :p].flip(1)  # the reflect padding, folded back
        x[:, n - 1 - p:n - 1] += padded[:, p + n:].flip(1)
        return x


def kernel_bands(params: CqtParams, fft_size: int, pad: int) -> tuple[list[int], list[np.ndarray]]:
    """Each bin's band of its correlation spectrum at FFT size `fft_size`: (first q, complex128 values).

    The values are conj(K^_k[q]) * sqrt(l_k) / hop, with K_k nnAudio's kernel where it sits in
    its frame (so C[k, t] is the inverse FFT of X * values, sampled at t * hop).
    """
    freqs, lengths, width = params.frequencies(), params.lengths(), params.width()
    if pad != width // 2:
        raise ValueError(f"pad must be width // 2 = {width // 2}, got {pad}")
    starts, bands = [], []
    for f, length in zip(freqs, lengths):
        centre = f * fft_size / params.sample_rate
        half = _EVAL_HALF_WIDTH * fft_size / length
        lo, hi = max(0, math.floor(centre - half)), min(fft_size // 2, math.ceil(centre + half))
        q = np.arange(lo, hi + 1)
        spec = np.conj(kernel_spectrum(f, length, width, params.sample_rate, q / fft_size))
        spec *= math.sqrt(length) / params.hop_length
        mag = np.abs(spec)
        kept = np.flatnonzero(mag >= BAND_FLOOR * mag.max())
        first, last = int(kept[0]), int(kept[-1])
        if (first == 0 and lo > 0) or (last == len(q) - 1 and hi < fft_size // 2):
            raise AssertionError(f"CQT kernel band of {f:.1f} Hz reaches the evaluated range; widen it")
        starts.append(lo + first)
        bands.append(spec[first:last + 1])
    return starts, bands


def kernel_spectrum(freq: float, length: float, width: int, sample_rate: int, nu: np.ndarray) -> np.ndarray:
    """DTFT at `nu` (cycles per sample) of nnAudio's kernel for `freq`, placed in its `width`-sample frame.

    The kernel is w[j] exp(i 2 pi freq (j - ceil(l/2)) / sr) / sum(w), j in [0, l), with w the
    periodic Hann window of length l, starting at nnAudio's offset in the frame.
    """
    n = int(length)
    start = int(np.ceil(width / 2.0 - length / 2.0)) - (1 if n % 2 == 1 else 0)
    theta = 2 * np.pi * freq / sample_rate
    phi = theta - 2 * np.pi * nu
    step = 2 * np.pi / n
    window_sum = n / 2.0  # a periodic Hann window sums to l/2
    hann = 0.5 * _dirichlet(phi, n) - 0.25 * _dirichlet(phi + step, n) - 0.25 * _dirichlet(phi - step, n)
    phase = np.exp(1j * theta * math.floor(-length / 2)) * np.exp(-2j * np.pi * nu * start)
    return phase * hann / window_sum


# --- internals --------------------------------------------------------------------------


def _dirichlet(phi: np.ndarray, n: int) -> np.ndarray:
    """sum_{j < n} exp(i phi j), in closed form."""
    half = np.sin(phi / 2)
    small = np.abs(half) < 1e-12
    ratio = np.where(small, float(n), np.sin(n * phi / 2) / np.where(small, 1.0, half))
    return np.exp(0.5j * phi * (n - 1)) * ratio


def _block_groups(starts: list[int], bands: list[np.ndarray], block: int, n_blocks: int,
                  device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Bins grouped by how many T'-blocks their band spans: (bins, block indices, kernel [n, P, T'] complex64)."""
    by_span: dict[int, list[int]] = {}
    first_blocks = []
    for k, (start, band) in enumerate(zip(starts, bands)):
        first, last = start // block, (start + len(band) - 1) // block
        if last >= n_blocks:
            raise AssertionError("CQT kernel band above Nyquist")
        first_blocks.append(first)
        by_span.setdefault(last - first + 1, []).append(k)
    groups = []
    for span, bins in sorted(by_span.items()):
        kernel = np.zeros((len(bins), span * block), np.complex128)
        index = np.empty((len(bins), span), np.int64)
        for i, k in enumerate(bins):
            offset = starts[k] - first_blocks[k] * block
            kernel[i, offset:offset + len(bands[k])] = bands[k]
            index[i] = first_blocks[k] + np.arange(span)
        groups.append((torch.tensor(bins, device=device), torch.from_numpy(index.ravel()).to(device),
                       torch.from_numpy(kernel.reshape(len(bins), span, block).astype(np.complex64)).to(device)))
    return groups


def _smooth_at_least(n: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n: a size FFTs are fast at."""
    best = 1 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best
