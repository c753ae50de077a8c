"""`train.frechet`: Fréchet distances on pooled embedding frames, and FAD∞.

On synthetic Gaussians (exact values) and on real renders embedded per 75 Hz frame by the
dataset's EnCodec encoder (the real architecture, with the random weights the small build records:
nothing is downloaded).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_train_evaluate import clips, space  # noqa: F401 (fixtures: the small build's train clips)

from pvtbuild.tools.decode import AudioDecoder
from pvtbuild.train.evaluate import encodec_frames
from pvtbuild.train.frechet import Gaussian, frechet, frechet_distance, frechet_infinity

SR = 24000
SECONDS = 2  # of each clip in the gain and noise test


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_frechet_distance_is_zero_for_one_set_and_the_squared_mean_shift_for_a_shifted_one():
    x = np.random.default_rng(0).normal(size=(200, 4))
    assert frechet_distance(x, x) < 1e-6
    assert frechet_distance(x, x + np.array([3.0, 0, 0, 0])) == pytest.approx(9.0, rel=1e-6)
    assert np.isnan(frechet_distance(x[:1], x))


def test_frechet_distance_of_rank_deficient_covariances_is_exact_and_real():
    # 5 frames in 16 dimensions: both covariances have rank 4; the distance of a set to itself scaled by 2 is
    # Tr(S) + Tr(4 S) - 2 Tr(2 S) = Tr(S) (means 0), which a sqrtm of the singular product gets wrong
    x = np.random.default_rng(1).normal(size=(5, 16))
    x -= x.mean(axis=0)
    expected = float(np.trace(np.cov(x, rowvar=False)))
    assert frechet_distance(x, 2 * x) == pytest.approx(expected, rel=1e-12)


def test_gaussians_of_the_same_distribution_converge_to_zero_and_fad_infinity_removes_the_bias():
    rng = np.random.default_rng(2)
    real = Gaussian.of(rng.normal(size=(20000, 8)))
    small, large = (frechet(Gaussian.of(rng.normal(size=(n, 8))), real) for n in (100, 5000))
    assert large < small and large < 0.01
    generated = rng.normal(size=(2000, 8))
    inf = frechet_infinity(generated, real, seed=0)
    assert len(inf.sizes) == 10 and inf.sizes[0] == 32 and inf.sizes[-1] == 2000  # 4 x 8 dimensions .. N
    assert abs(inf.value) < 0.6 * frechet(Gaussian.of(generated), real)  # the 1/N bias, mostly gone
    too_few = frechet_infinity(rng.normal(size=(60, 8)), real)
    assert np.isnan(too_few.value) and "60 generated frames, needs >= 64" in too_few.note


@pytest.fixture(scope="module")
def embedding(dataset, clips):  # noqa: F811
    """(embed: audio [n, S] -> pooled EnCodec frames, the train clips' audio [n, 8 s])."""
    codec = AudioDecoder.for_dataset(dataset).codec
    return (lambda audio: encodec_frames(codec, audio)), np.stack([c.audio for c in clips])


def _halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of n frames."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[::2]), np.sort(order[1::2])


def test_encodec_fd_pools_75hz_frames_and_a_half_of_the_set_is_near_zero_from_the_other(embedding):
    embed, audio = embedding
    frames = embed(audio)
    assert frames.shape == (len(audio) * 600, 128)  # every 75 Hz frame of every 8 s clip, not one mean per clip
    a, b = _halves(len(frames))
    other = Gaussian.of(frames[b])
    same = frechet(Gaussian.of(frames[a]), other)
    # near 0 on FD's own scale: the distance of a set to a point at its mean is Tr(S)
    assert same < 0.05 * np.trace(other.cov), (same, np.trace(other.cov))
    assert frechet_infinity(frames[a], other).value < same  # less of the finite-N bias


def test_encodec_fd_rises_with_every_step_of_gain_down_or_noise_up(embedding):
    embed, audio = embedding
    audio = audio[:, :SECONDS * SR]  # 2 s of each clip: 4 encoder passes in seconds
    frames = embed(audio)
    a, b = _halves(len(frames))
    other = Gaussian.of(frames[b])

    def fd(x: np.ndarray) -> float:
        return frechet(Gaussian.of(embed(x)[a]), other)

    same = frechet(Gaussian.of(frames[a]), other)
    noise = np.random.default_rng(1).normal(size=audio.shape).astype(np.float32) * audio.std(axis=1, keepdims=True)
    gains = [same, fd(audio * 0.5), fd(audio * 0.25)]
    noisy = [same, fd(audio + noise * 10 ** (-10 / 20)), fd(audio + noise)]  # 10 dB and 0 dB SNR
    assert np.all(np.diff(gains) > 0), gains
    assert np.all(np.diff(noisy) > 0), noisy
