"""Tests for pvtbuild.encoders: device choice, the CQT and EnCodec encoders.

EnCodec runs for real with random weights (no checkpoint can be downloaded here);
clips are short except where the 8 s shapes themselves are tested.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pvtbuild.compute import default_batch_size, pick_device, set_threads
from pvtbuild.config import CqtConfig
from pvtbuild.encoders import cqt as cqt_mod
from pvtbuild.encoders import encodec as enc_mod
from pvtbuild.encoders.cqt import CqtEncoder
from pvtbuild.encoders.encodec import EncodecEncoder, build_random_model, load_encodec
from pvtbuild.errors import ConfigError, InputError

SR = 24000
CLIP = 192000  # 8 s
SRC = Path(__file__).resolve().parents[2] / "src"


def tones(n_clips: int, n_samples: int, seed: int) -> np.ndarray:
    """[n_clips, n_samples] float32: one harmonic note (MIDI 48..72) per second, partials below 7 kHz."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_clips, n_samples))
    t = np.arange(n_samples) / SR
    for c in range(n_clips):
        for start in range(0, n_samples, SR):
            seg = slice(start, min(start + SR, n_samples))
            f0 = 440.0 * 2 ** ((rng.integers(48, 73) - 69) / 12)
            for h in range(1, 8):
                if f0 * h < 7000:
                    out[c, seg] += np.sin(2 * np.pi * f0 * h * t[seg] + rng.uniform(0, 2 * np.pi)) / h
            out[c, seg] *= np.hanning(seg.stop - seg.start)
    return (0.3 * out).astype(np.float32)


# --- device -----------------------------------------------------------------------------


def test_pick_device_auto_is_cuda_only_when_torch_sees_it():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_pick_device_missing_cuda_is_a_one_line_config_error(spec):
    with pytest.raises(ConfigError) as e:
        pick_device(spec)
    assert spec in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "mps"])
def test_pick_device_rejects_unknown_specs(spec):
    with pytest.raises(ConfigError, match="encode.device"):
        pick_device(spec)


def test_default_batch_size_is_one_on_cpu_and_larger_on_cuda():
    assert default_batch_size(torch.device("cpu")) == 1
    assert default_batch_size(torch.device("cuda")) > 1  # a device object needs no GPU


def test_set_threads_sets_torch_intra_op_threads():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        set_threads(0)


# --- CQT --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cqt_clips():
    """Two 8 s tone clips and their CQT."""
    audio = tones(2, CLIP, seed=1)
    return audio, CqtEncoder(CqtConfig(), SR).encode(audio)


def test_cqt_of_8s_clips_is_2x216x1921_float32_and_batch_independent(cqt_clips):
    audio, cqt = cqt_clips
    assert cqt.shape == (2, 2, 216, 1921) and cqt.dtype == np.float32
    assert np.isfinite(cqt).all()
    single = CqtEncoder(CqtConfig(), SR).encode(audio[1:2])
    np.testing.assert_array_equal(single[0], cqt[1])  # on CPU the transform goes clip by clip


def test_cqt_matches_librosa_cqt_magnitude_gain_and_phase(cqt_clips):
    import librosa  # noqa: PLC0415  (librosa takes seconds to import: only the tests that compare with it pay)

    audio, cqt = cqt_clips
    ours = cqt[0, 0] + 1j * cqt[0, 1]
    ref = librosa.cqt(audio[0], sr=SR, hop_length=100, fmin=130.81, n_bins=216, bins_per_octave=36)
    assert ref.shape == ours.shape
    mag, ref_mag = np.abs(ours), np.abs(ref)
    assert np.corrcoef(mag.ravel(), ref_mag.ravel())[0, 1] >= 0.999  # measured 0.99996
    loud = ref_mag.sum(1) > 0.01 * ref_mag.sum(1).max()  # bins the tones reach
    overall = (mag * ref_mag).sum() / (ref_mag**2).sum()
    assert abs(overall - 1) < 0.02, overall  # same scaling as librosa: the inverse needs none (measured 1.007)
    per_bin = (mag * ref_mag).sum(1)[loud] / (ref_mag**2).sum(1)[loud]
    assert np.all(np.abs(per_bin - 1) < 0.1), per_bin  # measured within 0.065
    complex_corr = np.abs(np.vdot(ref, ours)) / np.linalg.norm(ref) / np.linalg.norm(ours)
    assert complex_corr >= 0.999  # same phase convention too (measured 0.99994)


def test_cqt_inverse_reconstructs_in_band_audio(cqt_clips):
    audio, cqt = cqt_clips
    back = cqt_mod.inverse(cqt[0], SR, CqtConfig(), length=CLIP)
    assert back.shape == (CLIP,) and back.dtype == np.float32
    snr = 10 * np.log10((audio[0] ** 2).sum() / ((audio[0] - back) ** 2).sum())
    assert snr >= 60.0, snr  # measured 81.6 dB (librosa.icqt, the inverse before: 34.6 dB)
    assert cqt_mod.inverse(cqt, SR, CqtConfig()).shape == (2, CLIP)  # default length: (T - 1) * hop


def test_cqt_rejects_clips_shorter_than_its_lowest_kernel():
    enc = CqtEncoder(CqtConfig(), SR)
    with pytest.raises(ConfigError, match="shorter than the lowest CQT kernel"):
        enc.encode(np.zeros((1, 4000), np.float32))


def test_cqt_rejects_bins_above_nyquist_naming_the_key():
    with pytest.raises(ConfigError, match=r"encode.cqt.n_bins: .*at most 214 bins"):
        CqtEncoder(CqtConfig(), 16000)


def test_cqt_transform_is_built_once_per_process():
    assert CqtEncoder(CqtConfig(), SR).transform(CLIP) is CqtEncoder(CqtConfig(), SR).transform(CLIP)


# --- EnCodec: torchaudio stand-in -------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None, reason="torchaudio is installed")
def test_encodec_imports_without_torchaudio_through_an_explicit_stand_in():
    code = textwrap.dedent("""
        import sys
        from pvtbuild.encoders.encodec import import_encodec
        from pvtbuild.music.torchaudio_free import TorchaudioStandIn
        encodec = import_encodec()
        assert encodec.EncodecModel.encodec_model_24khz  # the model is usable
        assert "torchaudio" not in sys.modules  # the stand-in was only there during the import
        stand_in = sys.modules["encodec.utils"].torchaudio
        assert isinstance(stand_in, TorchaudioStandIn)
        try:
            stand_in.load
        except ImportError as e:
            assert "torchaudio is not installed" in str(e) and "stand-in" in str(e), e
        else:
            raise AssertionError("the stand-in pretended to have torchaudio.load")
        try:
            import torch
            encodec.utils.convert_audio(torch.zeros(1, 100), 48000, 24000, 1)
        except ImportError:
            pass
        else:
            raise AssertionError("convert_audio worked without torchaudio")
        try:
            import torchaudio
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("import torchaudio succeeded after the stand-in was removed")
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# --- EnCodec: encoding ------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    return EncodecEncoder.load(checkpoint=None, random_weights=True, seed=0, bandwidth=12.0, device="cpu")


@pytest.fixture(scope="module")
def encoded_8s(encoder):
    audio = tones(1, CLIP, seed=2)
    return audio, encoder.encode_both(audio)


def test_encodec_formats_for_8s_are_128x600_float32_and_16x600_int16(encoded_8s, encoder):
    _, (latents, codes) = encoded_8s
    assert latents.shape == (1, 128, 600) and latents.dtype == np.float32
    assert codes.shape == (1, 16, 600) and codes.dtype == np.int16
    assert np.isfinite(latents).all() and 0 <= codes.min() and codes.max() <= 1023
    assert encoder.info == {"weights": "random", "checkpoint": None, "sha256": None, "bandwidth": 12.0}


def test_random_weight_codes_spread_over_the_codebooks(encoded_8s):
    _, (_, codes) = encoded_8s
    assert len(np.unique(codes)) >= 500  # measured ~1000 of 1024
    assert min(len(np.unique(book)) for book in codes[0]) >= 50  # every codebook, not just a few


def test_latents_and_codes_equal_the_models_own_encoder_and_encode(encoder):
    audio = tones(2, SR, seed=3)
    latents, codes = encoder.encode_both(audio)
    x = torch.from_numpy(audio)[:, None, :]
    with torch.inference_mode():
        ref_latents = encoder.model.encoder(x)
        frames = encoder.model.encode(x)
    assert len(frames) == 1 and frames[0][1] is None  # 24 kHz model: one segment, no normalisation
    assert torch.equal(torch.from_numpy(latents), ref_latents)
    assert torch.equal(torch.from_numpy(codes).long(), frames[0][0])
    np.testing.assert_array_equal(encoder.latents(audio), latents)
    np.testing.assert_array_equal(encoder.codes(audio), codes)


def test_encoding_is_deterministic_across_calls_and_batch_sizes(encoder):
    audio = tones(3, SR, seed=4)
    latents, codes = encoder.encode_both(audio)
    again_latents, again_codes = encoder.encode_both(audio)
    np.testing.assert_array_equal(again_latents, latents)
    np.testing.assert_array_equal(again_codes, codes)
    one_by_one = [encoder.encode_both(audio[i:i + 1]) for i in range(3)]
    # conv kernels differ with the batch size: latents agree to float rounding (measured 2e-7 relative)
    np.testing.assert_allclose(np.concatenate([lat for lat, _ in one_by_one]), latents,
                               rtol=1e-5, atol=1e-5 * np.abs(latents).max())
    np.testing.assert_array_equal(np.concatenate([c for _, c in one_by_one]), codes)


def test_decoders_return_audio_of_the_clip_length(encoder):
    audio = tones(2, SR, seed=5)
    latents, codes = encoder.encode_both(audio)
    from_latents, from_codes = encoder.decode_latents(latents), encoder.decode_codes(codes)
    assert from_latents.shape == from_codes.shape == (2, SR) and from_latents.dtype == np.float32
    assert np.isfinite(from_latents).all() and np.isfinite(from_codes).all()
    assert encoder.decode_codes(codes[0]).shape == (SR,)  # one clip without a batch axis
    with pytest.raises(ValueError, match="0..1023"):
        encoder.decode_codes(np.full((16, 4), 1024, np.int16))


# --- EnCodec: weights -------------------------------------------------------------------


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_random_weights_depend_only_on_the_seed():
    rng_before = torch.random.get_rng_state()
    first, again, other = (_state(build_random_model(s)) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert _same_state(first, again)
    assert not any(torch.equal(first[k], other[k]) for k in first if k.endswith(("weight_v", "embed")))
    inited = [v for k, v in first.items() if k.endswith("_codebook.inited")]
    assert len(inited) == 32 and all(bool(v.item()) for v in inited)


def test_load_encodec_caches_one_model_per_parameters():
    a, _ = load_encodec(checkpoint=None, random_weights=True, seed=11, bandwidth=12.0, device="cpu")
    b, _ = load_encodec(checkpoint=None, random_weights=True, seed=11, bandwidth=12.0, device="cpu")
    c, _ = load_encodec(checkpoint=None, random_weights=True, seed=12, bandwidth=12.0, device="cpu")
    assert a is b and a is not c
    assert a.bandwidth == 12.0 and not a.training


def test_pretrained_weights_load_from_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = _state(build_random_model(5))
    path = tmp_path / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th"
    path.parent.mkdir(parents=True)
    torch.save(weights, path)
    model, info = load_encodec(checkpoint=None, random_weights=False, seed=0, bandwidth=12.0, device="cpu")
    assert info == {"weights": "pretrained", "checkpoint": str(path),
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bandwidth": 12.0}
    assert _same_state(_state(model), weights)
    explicit, info = load_encodec(checkpoint=str(path), random_weights=False, seed=0, bandwidth=6.0, device="cpu")
    assert info["checkpoint"] == str(path) and _same_state(_state(explicit), weights)
    enc_mod.clear_model_cache()


def test_missing_checkpoint_is_a_one_line_input_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError) as e:
        load_encodec(checkpoint=None, random_weights=False, seed=0, bandwidth=12.0, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th") in msg
    assert "--random-weights" in msg and "--encodec-checkpoint" in msg
    with pytest.raises(InputError, match="nowhere.th not found"):
        load_encodec(checkpoint=str(tmp_path / "nowhere.th"), random_weights=False, seed=0, bandwidth=12.0,
                     device="cpu")


def test_unusable_checkpoints_are_one_line_input_errors(tmp_path):
    bad = tmp_path / "truncated.th"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="truncated.th: not a readable torch state dict") as e:
        load_encodec(checkpoint=str(bad), random_weights=False, seed=0, bandwidth=12.0, device="cpu")
    assert "\n" not in str(e.value)
    other = tmp_path / "other.th"
    torch.save({"linear.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(InputError, match="other.th: not the 24 kHz EnCodec model's weights") as e:
        load_encodec(checkpoint=str(other), random_weights=False, seed=0, bandwidth=12.0, device="cpu")
    assert "\n" not in str(e.value)
