"""Fréchet distances between sets of embedding frames (FAD, Kilgour et al. 2019), and FAD∞ (Gui et al. 2024).

Each set is the frames of all its clips pooled ([frames, d]; VGGish's 0.96 s examples, or EnCodec's
75 Hz encoder frames), fitted with one Gaussian (mean, covariance). The distance of two Gaussians is

    ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2),

with Tr((S_a S_b)^1/2) taken as the sum of the square roots of the eigenvalues of
S_a^1/2 S_b S_a^1/2: that matrix is symmetric and positive semi-definite and has the same
eigenvalues as S_a S_b, so `eigh` gives them exactly where a general `sqrtm` of the non-symmetric
product goes complex on rank-deficient covariances (few frames, or a silent embedding dimension).
Eigenvalues below 0 (or below 1e-12 of the largest) are rounding and are clipped to 0; nothing is
regularised, nothing imaginary is dropped.

The estimate is biased upwards by about c / N for N frames (both covariances are estimated).
FAD∞, as fadtk computes it: the distance of random subsets of the generated frames of sizes
spaced evenly from `min_frames` to all N, a least-squares line through (1/n, FAD_n), and its
value at 1/n = 0. It needs N >= 2 * min_frames, so that the
sizes span a factor of 2 at least (min_frames = 4 d by default: below that, the bias is not yet
linear in 1/n); otherwise it is nan and `note` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INF_STEPS = 10  # subset sizes in the FAD∞ fit
INF_MIN_PER_DIM = 4  # FAD∞'s smallest subset: this many frames per dimension (1/n bias is linear for n >> d)
_ROUNDING = 1e-12


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of a set of embedding frames, and how many frames gave them."""

    mean: np.ndarray  # [d]
    cov: np.ndarray  # [d, d]
    frames: int

    @classmethod
    def of(cls, x: np.ndarray) -> "Gaussian":
        """Fitted to [frames, d] embeddings (float64; needs >= 2 frames)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"a Gaussian needs [frames >= 2, d] embeddings, got shape {x.shape}")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), len(x))


@dataclass(frozen=True)
class Extrapolated:
    """FAD∞: the fit's value at 1/n = 0 (nan when N is too small: `note` says why) and its points."""

    value: float
    sizes: list[int] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    note: str = ""


def frechet(a: Gaussian, b: Gaussian) -> float:
    """The Fréchet distance of two Gaussians (module docstring), >= 0."""
    w, v = np.linalg.eigh(a.cov)
    root_a = (v * np.sqrt(_nonnegative(w))) @ v.T
    m = root_a @ b.cov @ root_a
    cross = np.sqrt(_nonnegative(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    d = float(((a.mean - b.mean) ** 2).sum() + np.trace(a.cov) + np.trace(b.cov) - 2.0 * cross)
    return max(d, 0.0)


def _nonnegative(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding removed: below 0, or below 1e-12 of the largest (the zero
    eigenvalues of a rank-deficient covariance come out as +-1e-16, and their square roots, 1e-8 each, would
    add up), set to 0."""
    top = float(eigenvalues.max(initial=0.0))
    return np.where(eigenvalues > top * _ROUNDING, eigenvalues, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two sets of embedding frames [n, d]; nan when either has fewer than 2."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return frechet(Gaussian.of(a), Gaussian.of(b))


def frechet_infinity(generated: np.ndarray, real: Gaussian, min_frames: int | None = None,
                     steps: int = INF_STEPS, seed: int = 0) -> Extrapolated:
    """FAD∞ of `generated` [N, d] frames against `real` (module docstring); subsets drawn from `seed`."""
    generated = np.asarray(generated, dtype=np.float64)
    n, d = generated.shape
    low = INF_MIN_PER_DIM * d if min_frames is None else int(min_frames)
    if n < 2 * low:
        return Extrapolated(float("nan"), note=f"not computed: {n} generated frames, needs >= {2 * low} (subsets "
                                                f"from {low} frames for {d} dimensions up to N, a factor 2 apart)")
    rng = np.random.default_rng(seed)
    sizes = sorted({int(s) for s in np.linspace(low, n, steps)})
    dists = [frechet(Gaussian.of(generated[rng.choice(n, size=s, replace=False)]), real) for s in sizes]
    _, intercept = np.polyfit(1.0 / np.array(sizes, dtype=np.float64), np.array(dists), 1)
    return Extrapolated(float(intercept), sizes, dists,
                        note=f"linear fit of FAD over 1/n at {len(sizes)} subset sizes {low}..{n}")


__all__ = ["Gaussian", "Extrapolated", "frechet", "frechet_distance", "frechet_infinity", "INF_STEPS",
           "INF_MIN_PER_DIM"]
