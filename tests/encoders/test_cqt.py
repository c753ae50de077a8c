"""The CQT format's transform (encode/fftcqt.py, behind encode/cqt.py) against its definition, nnAudio's CQT1992v2.

Bounds from issue 13: magnitude correlation >= 0.9999 and relative L2 error <= 1 %, on
tones, noise and real renders, on CPU and (where present) CUDA. Measured values are in
the comments; the residual is the part of each kernel's spectrum below
`fftcqt.BAND_FLOOR` of its peak, which the transform drops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_encode import tones

from pvtbuild.config import CqtConfig
from pvtbuild.encoders import cqt as cqt_mod
from pvtbuild.encoders import fftcqt
from pvtbuild.encoders.cqt import CqtEncoder, reference_cqt

SR = 24000
CFG = CqtConfig()


def agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(magnitude correlation, relative L2 error of the complex values) of [..., 2, F, T] CQTs."""
    a, b = ours[..., 0, :, :] + 1j * ours[..., 1, :, :], ref[..., 0, :, :] + 1j * ref[..., 1, :, :]
    corr = np.corrcoef(np.abs(a).ravel(), np.abs(b).ravel())[0, 1]
    return float(corr), float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_agrees(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == np.float32
    corr, rel = agreement(ours, ref)
    assert corr >= 0.9999 and rel <= 0.01, (corr, rel)
    edges = np.concatenate([ours[..., :8], ours[..., -8:]], -1), np.concatenate([ref[..., :8], ref[..., -8:]], -1)
    assert agreement(*edges)[1] <= 0.01  # the first and last frames read the reflect padding: same as nnAudio's


@pytest.fixture(scope="module")
def tone_clips() -> np.ndarray:
    return tones(2, 8 * SR, seed=1)


def test_cqt_matches_nnaudio_on_8s_harmonic_tones(tone_clips):
    ours, ref = CqtEncoder(CFG, SR).encode(tone_clips), reference_cqt(tone_clips, CFG, SR)
    assert ours.shape == (2, 2, 216, 1921)
    assert_agrees(ours, ref)  # measured corr 0.9999995, relative L2 1.0e-3


def test_cqt_matches_nnaudio_on_noise_of_4s_and_an_odd_length():
    rng = np.random.default_rng(0)
    for n in (4 * SR, 4 * SR + 57):  # a length that is not a multiple of the hop: still n // hop + 1 frames
        noise = (0.1 * rng.standard_normal((1, n))).astype(np.float32)
        ours = CqtEncoder(CFG, SR).encode(noise)
        assert ours.shape == (1, 2, 216, n // 100 + 1)
        assert_agrees(ours, reference_cqt(noise, CFG, SR))  # measured corr 0.999999, relative L2 1.0e-3


def test_stored_cqt_of_rendered_lakh_clips_matches_nnaudio(small_build):
    out, _ = small_build
    for i, path in enumerate(sorted((out / "encode").glob("shard-*.npz"))[:2]):
        with np.load(path) as enc, np.load(out / "render" / path.name) as ren:
            audio, stored = ren["audio"][:2], enc["cqt"][:2]
        assert_agrees(stored, reference_cqt(audio, CFG, SR))  # measured relative L2 1.0e-3


def test_each_clip_of_a_batch_gets_the_same_bytes_as_alone(tone_clips):
    enc = CqtEncoder(CFG, SR)
    np.testing.assert_array_equal(enc.encode(tone_clips)[1], enc.encode(tone_clips[1:])[0])


def test_kernel_spectra_equal_the_fft_of_nnaudios_own_kernels():
    from nnAudio.utils import create_cqt_kernels  # noqa: PLC0415  (nnAudio: this test's reference only)

    params = fftcqt.CqtParams(SR, CFG.fmin, CFG.bins_per_octave, CFG.n_bins, CFG.hop_length)
    q_factor = 1.0 / (2 ** (1 / CFG.bins_per_octave) - 1)
    kernels, width, lengths, _ = create_cqt_kernels(q_factor, SR, CFG.fmin, CFG.n_bins, CFG.bins_per_octave)
    assert width == params.width() and np.array_equal(lengths.numpy(), params.lengths().astype(np.float32))
    size = 3 * width
    nu = np.arange(size) / size
    for k in (0, 71, 143, 215):  # lowest, two middle and the top bin
        fft = np.fft.fft(kernels[k].astype(np.complex128), size)
        closed = fftcqt.kernel_spectrum(params.frequencies()[k], params.lengths()[k], width, SR, nu)
        assert np.abs(closed - fft).max() <= 1e-6 * np.abs(fft).max()  # complex64 kernels: measured ~1e-8


def test_the_kept_bands_hold_all_but_a_millionth_of_each_kernels_energy():
    params = fftcqt.CqtParams(SR, CFG.fmin, CFG.bins_per_octave, CFG.n_bins, CFG.hop_length)
    size = 2 ** 15  # >= the frame width: the sampled spectrum holds all of the kernel's energy
    starts, bands = fftcqt.kernel_bands(params, size, params.width() // 2)
    nu = np.arange(size) / size
    for k in range(0, CFG.n_bins, 23):
        full = fftcqt.kernel_spectrum(params.frequencies()[k], params.lengths()[k], params.width(), SR, nu)
        full_energy = (np.abs(full) ** 2).sum() * params.lengths()[k] / CFG.hop_length ** 2
        kept = (np.abs(bands[k]) ** 2).sum()
        assert 0 < 1 - kept / full_energy <= 2e-6, (k, 1 - kept / full_energy)  # measured 1.0e-6 to 1.1e-6


def snr_db(clean: np.ndarray, back: np.ndarray) -> float:
    return 10 * math.log10((clean ** 2).sum() / ((clean - back) ** 2).sum())


def test_inverse_beats_librosa_icqt_of_nnaudios_cqt_the_inverse_before(tone_clips):
    import librosa  # noqa: PLC0415  (librosa takes seconds to import: only the tests that compare with it pay)

    cqt = CqtEncoder(CFG, SR).encode(tone_clips)
    back = cqt_mod.inverse(cqt, SR, CFG, length=tone_clips.shape[1])
    ref = reference_cqt(tone_clips[:1], CFG, SR)[0]
    before = librosa.icqt(ref[0] + 1j * ref[1], sr=SR, hop_length=CFG.hop_length, fmin=CFG.fmin,
                          bins_per_octave=CFG.bins_per_octave, length=tone_clips.shape[1])
    snr = [snr_db(tone_clips[i], back[i]) for i in range(2)]
    assert snr[0] >= snr_db(tone_clips[0], before) + 20, snr  # measured 81.6 dB against 34.6 dB
    assert snr[1] >= 45, snr  # notes at fmin itself, half their band below the CQT: measured 57.7 dB (librosa 20.9)


def test_adjoint_is_the_transforms_adjoint_and_equals_autograds():
    transform = CqtEncoder(CFG, SR).transform(4 * SR + 57)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4 * SR + 57, generator=gen)
    y = torch.randn(2, CFG.n_bins, transform.frames, dtype=torch.complex64, generator=gen)
    back = transform.adjoint(y)
    lhs, rhs = float((transform(x).conj() * y).real.sum()), float((x * back).sum())
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)  # measured 9e-8
    leaf = torch.zeros_like(x, requires_grad=True)
    (grad,) = torch.autograd.grad((y.conj() * transform(leaf)).real.sum(), leaf)
    assert float((grad - back).norm() / grad.norm()) <= 1e-5  # measured 3e-7


def test_inverse_of_a_cqt_no_audio_has_stays_bounded_and_finite():
    rng = np.random.default_rng(3)
    made_up = rng.standard_normal((2, 2, CFG.n_bins, 961)).astype(np.float32)  # like a model's raw sample
    short, longer = (cqt_mod.inverse(made_up, SR, CFG, iterations=k) for k in (8, 16))
    assert short.shape == longer.shape == (2, 96000) and np.isfinite(longer).all()
    assert np.linalg.norm(longer) <= 1.5 * np.linalg.norm(short)  # measured 1.13


def test_transform_is_built_once_per_process_device_and_length():
    enc = CqtEncoder(CFG, SR)
    assert enc.transform(4 * SR) is CqtEncoder(CFG, SR).transform(4 * SR)
    assert enc.transform(4 * SR) is not enc.transform(8 * SR)
    with pytest.raises(ValueError, match=r"expected \[B, 96000\] audio"):
        enc.transform(4 * SR)(torch.zeros(1, 8 * SR))


def test_fft_sizes_are_smooth_numbers():
    assert [fftcqt._smooth_at_least(n) for n in (1, 2084, 2100, 2101, 1025)] == [1, 2100, 2100, 2160, 1029]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_the_same_transform_and_matches_nnaudio(tone_clips):
    cpu, cuda = CqtEncoder(CFG, SR).encode(tone_clips), CqtEncoder(CFG, SR, "cuda").encode(tone_clips)
    assert_agrees(cuda, reference_cqt(tone_clips, CFG, SR, "cuda"))
    assert agreement(cuda, cpu)[1] <= 1e-5  # float32 FFTs of another library: rounding only
    back = cqt_mod.inverse(cuda[:1], SR, CFG, device="cuda")
    assert snr_db(tone_clips[0], back[0]) >= 60
