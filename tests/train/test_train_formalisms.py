"""The diffusion formalisms (train/formalisms): their math against hand computations and exact
denoisers, guidance through every sampler, and each one trained briefly on its toy data."""

from __future__ import annotations

import math

import pytest
import torch

from discdpm_reference import ReferenceDiscDPM
from pvtbuild.errors import ConfigError
from pvtbuild.train.backbone import UNetConfig, build_unet
from pvtbuild.train.formalisms import (
    DDPM,
    EDM,
    FORMALISMS,
    IADB,
    DDPMConfig,
    DiscDPM,
    DiscDPMConfig,
    EDMConfig,
    IADBConfig,
    discdpm,
    make_formalism,
)
from pvtbuild.train.guidance import Controls, guided
from pvtbuild.train.spec import DataSpec
from pvtbuild.train.toy_data import disc_to_points, swissroll, swissroll_disc
from pvtbuild.train.toy_metrics import nearest_neighbour_distance, sliced_wasserstein
from pvtbuild.train.toy_model import ToyMLPConfig, build_toy_mlp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zero_net(x, level, controls):
    return torch.zeros_like(x, dtype=torch.float32)


# --- registry and configs -----------------------------------------------------------------


def test_registry_builds_each_formalism_and_names_a_bad_key():
    assert set(FORMALISMS) == {"edm", "ddpm", "discdpm", "iadb"}
    for name, (config_cls, cls) in FORMALISMS.items():
        assert isinstance(make_formalism(name, config_cls()), cls)
    assert make_formalism("ddpm", {"schedule": "cosine", "sample_steps": 50}).cfg.sample_steps == 50
    with pytest.raises(ConfigError, match=r"^train\.formalism\.sample_steps: must be within 1\.\.timesteps"):
        make_formalism("ddpm", {"sample_steps": 2000}, key="train.formalism")
    with pytest.raises(ConfigError, match=r"^formalism\.sigma_data: must be > 0"):
        make_formalism("edm", {"sigma_data": 0})
    with pytest.raises(ConfigError, match=r"^formalism\.P_men: unknown key"):
        make_formalism("edm", {"P_men": 0})
    with pytest.raises(ConfigError, match=r"^formalism\.name: unknown formalism 'ddim'"):
        make_formalism("ddim")


# --- EDM ----------------------------------------------------------------------------------


def test_edm_preconditioning_identities():
    sd = 0.7
    edm = EDM(EDMConfig(sigma_data=sd))
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in = edm.c_skip(s), edm.c_out(s), edm.c_in(s)
    torch.testing.assert_close(c_skip, sd ** 2 / (s ** 2 + sd ** 2))
    torch.testing.assert_close(c_out, s * sd / (s ** 2 + sd ** 2).sqrt())
    torch.testing.assert_close(c_in ** 2 * (s ** 2 + sd ** 2), torch.ones_like(s))  # unit-variance input
    torch.testing.assert_close(edm.c_noise(s), s.log() / 4)
    torch.testing.assert_close(edm.loss_weight(s) * c_out ** 2, torch.ones_like(s))  # lambda = 1 / c_out^2
    # The effective target (x0 - c_skip (x0 + n)) / c_out has unit variance for x0 ~ (0, sd^2), n ~ N(0, s^2).
    torch.testing.assert_close(((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * s ** 2) / c_out ** 2, torch.ones_like(s))


def test_edm_denoiser_wraps_the_net_and_is_the_identity_as_sigma_goes_to_0():
    edm = EDM(EDMConfig(sigma_data=0.5))
    x = torch.randn(4, 3, generator=_gen())
    seen = {}

    def spy(x_in, level, controls):
        seen["x_in"], seen["level"] = x_in, level
        return torch.ones_like(x_in)

    d = edm.denoise(spy, x, 2.0, Controls())
    s = torch.tensor(2.0)
    torch.testing.assert_close(seen["x_in"], x * edm.c_in(s))
    torch.testing.assert_close(seen["level"], torch.full((4,), math.log(2.0) / 4))
    torch.testing.assert_close(d, edm.c_skip(s) * x + edm.c_out(s))
    torch.testing.assert_close(edm.denoise(_zero_net, x, 1e-5, Controls()), x)


def test_karras_sigmas_run_from_sigma_max_to_sigma_min_then_0():
    edm = EDM(EDMConfig())
    s = edm.sigmas()
    assert len(s) == 19 and s.dtype == torch.float32
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())
    # rho = 7 spacing: sigma^(1/rho) is linear in i
    r = s[:-1].double() ** (1 / 7)
    torch.testing.assert_close(r[1:] - r[:-1], torch.full((17,), float(r[1] - r[0]), dtype=torch.float64))
    assert len(edm.sigmas(5)) == 6


def test_edm_loss_is_zero_for_the_exact_effective_target():
    """A net that knows x0 and returns (x0 - c_skip x) / c_out: checks the noising, c_in, c_noise and weighting."""
    edm = EDM(EDMConfig(sigma_data=0.5))
    x0 = torch.randn(64, 2, generator=_gen(1)) * 0.5

    def oracle(x_in, level, controls):
        s = (4 * level).exp()[:, None]
        x = x_in / edm.c_in(s)
        return (x0 - edm.c_skip(s) * x) / edm.c_out(s)

    assert edm.loss(oracle, x0, Controls(), _gen(2)).item() < 1e-6
    loss = edm.loss(_zero_net, x0, Controls(), _gen(2))
    assert loss.dtype == torch.float32 and loss.dim() == 0 and 0.3 < loss.item() < 3


def test_edm_heun_sampler_with_the_exact_gaussian_denoiser_gives_the_data_variance():
    """For x0 ~ N(0, s^2) the exact denoiser is D = s^2 / (sigma^2 + s^2) x; sampling it must give std s."""
    s_data = 1.5
    edm = EDM(EDMConfig(sigma_data=0.5))

    def exact(x_in, level, controls):
        sig = (4 * level).exp()[:, None]
        x = x_in / edm.c_in(sig)
        return (s_data ** 2 / (sig ** 2 + s_data ** 2) * x - edm.c_skip(sig) * x) / edm.c_out(sig)

    out = edm.sample(exact, (20000, 1), Controls(), None, 1.0, _gen(3))
    assert out.dtype == torch.float32 and out.shape == (20000, 1)
    assert out.std().item() == pytest.approx(s_data, rel=0.08)  # 18 Heun steps: ~4% discretisation error here
    out = edm.sample(exact, (20000, 1), Controls(), 200, 1.0, _gen(3))
    assert out.std().item() == pytest.approx(s_data, rel=0.015)  # 2nd order: ~0.04% at 200 steps, + sampling noise
    churned = EDM(EDMConfig(sigma_data=0.5, S_churn=40, S_min=0.05, S_max=50))
    out = churned.sample(exact, (20000, 1), Controls(), 100, 1.0, _gen(4))
    assert out.std().item() == pytest.approx(s_data, rel=0.03)


# --- DDPM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_schedules_end_at_pure_noise_and_respacing_keeps_the_marginals(schedule):
    ddpm = DDPM(DDPMConfig(schedule=schedule))
    abar = ddpm.alphas_cumprod
    assert abar[-1].item() < 1e-4 and abar[0].item() > 0.99
    assert bool((abar[1:] < abar[:-1]).all())
    ts, betas, abar_r = ddpm.respaced(100)
    assert len(ts) == 100 and ts[0].item() == 1 and ts[-1].item() == 1000 and bool((ts[1:] > ts[:-1]).all())
    torch.testing.assert_close(abar_r, abar[ts - 1])
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), abar[ts - 1])  # the respaced chain's own alpha-bar
    ts_all, betas_all, _ = ddpm.respaced(1000)
    torch.testing.assert_close(ts_all, torch.arange(1, 1001))
    torch.testing.assert_close(betas_all, ddpm.betas)
    with pytest.raises(ConfigError, match=r"^steps: must be within 1\.\.1000"):
        ddpm.respaced(1001)


def test_ddpm_linear_schedule_is_hos():
    ddpm = DDPM(DDPMConfig(schedule="linear"))
    assert ddpm.betas[0].item() == pytest.approx(1e-4) and ddpm.betas[-1].item() == pytest.approx(0.02)


def _ddpm_eps_oracle(ddpm: DDPM, x0: torch.Tensor):
    def oracle(x_t, level, controls):
        t = torch.round(level * ddpm.T / 1000).long()
        abar = ddpm.alphas_cumprod[t - 1].float()[:, None]
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    return oracle


def test_ddpm_loss_is_zero_for_the_true_noise():
    ddpm = DDPM(DDPMConfig())
    x0 = torch.randn(64, 2, generator=_gen(1))
    assert ddpm.loss(_ddpm_eps_oracle(ddpm, x0), x0, Controls(), _gen(2)).item() < 1e-8
    assert 0.5 < ddpm.loss(_zero_net, x0, Controls(), _gen(2)).item() < 2  # E[eps^2] = 1


@pytest.mark.parametrize("schedule,steps,rel", [("linear", 1000, 0.02), ("cosine", 1000, 0.02),
                                                 ("linear", 100, 0.1), ("cosine", 50, 0.1)])
def test_ddpm_sampler_with_the_exact_gaussian_eps_gives_the_data_variance(schedule, steps, rel):
    """Exact at T steps; respaced, the posterior variance beta~ omits Var[x0 | x_t] and shrinks the spread
    a little (~5% at 100 steps for this data), the known cost of fixed-small variances."""
    s_data = 0.5
    ddpm = DDPM(DDPMConfig(schedule=schedule))

    def exact(x_t, level, controls):  # x0 ~ N(0, s^2): E[eps | x_t] = sqrt(1 - abar) x_t / (abar s^2 + 1 - abar)
        t = torch.round(level * ddpm.T / 1000).long()
        abar = ddpm.alphas_cumprod[t - 1].float()[:, None]
        return (1 - abar).sqrt() * x_t / (abar * s_data ** 2 + 1 - abar)

    out = ddpm.sample(exact, (20000, 1), Controls(), steps, 1.0, _gen(3))
    assert out.dtype == torch.float32
    assert out.std().item() == pytest.approx(s_data, rel=rel)


# --- DiscDPM ------------------------------------------------------------------------------


def _mixture(d: DiscDPM, x_t: torch.Tensor, logits: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """The full distribution ``[B, C, *rest, K]`` (class axis last) of the fast posterior's mixture."""
    b = x_t.shape[0]
    keep, from_pi = d.posterior(x_t, logits, torch.full((b,), t), torch.full((b,), s))
    pi = torch.softmax(logits.movedim(2, -1).double(), dim=-1)
    kept = torch.nn.functional.one_hot(x_t, d.K).double()
    return keep.double().unsqueeze(-1) * kept + (1 - keep.double().unsqueeze(-1)) * \
        (from_pi.double().unsqueeze(-1) * pi + (1 - from_pi.double().unsqueeze(-1)) / d.K)


def _onehot_logits(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logits ``[B, C, K, *rest]`` whose softmax is x's one-hot (0 and -inf): x0 known exactly."""
    return torch.where(torch.nn.functional.one_hot(x, k).bool(), 0.0, -math.inf).movedim(-1, 2)


def _transition(alpha: float, k: int) -> torch.Tensor:
    """Q[i, j] = q(x_t = j | x_{t-1} = i) = alpha [i == j] + (1 - alpha) / K."""
    return alpha * torch.eye(k, dtype=torch.float64) + (1 - alpha) / k


def test_discdpm_posterior_mixture_sums_to_1_and_matches_eq_2_15_by_hand():
    k, T = 3, 5
    d = DiscDPM(DiscDPMConfig(num_classes=k, timesteps=T, schedule="cosine", sample_steps=T))
    abar = d.log_abar.exp()  # index t, abar_0 = 1
    x_t, x0 = torch.tensor([[2, 0]]), torch.tensor([[1, 0]])
    for t in range(1, T + 1):
        got = _mixture(d, x_t, _onehot_logits(x0, k), t, t - 1)[0]
        alpha_t = float(abar[t] / abar[t - 1])
        ab_prev = float(abar[t - 1])
        for pos in range(2):
            by_hand = (alpha_t * torch.eye(k, dtype=torch.float64)[x_t[0, pos]] + (1 - alpha_t) / k) * \
                      (ab_prev * torch.eye(k, dtype=torch.float64)[x0[0, pos]] + (1 - ab_prev) / k)
            torch.testing.assert_close(got[pos], by_hand / by_hand.sum(), atol=1e-6, rtol=1e-5)
        if t == 1:  # abar_0 = 1: x_0 is known
            torch.testing.assert_close(got[0], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    # soft x0 (a net's prediction), skipped steps: normalised, and equal to Bayes over the product of transitions
    logits = torch.randn(1, 2, k, generator=_gen(0))
    for t, s in [(5, 2), (4, 0), (3, 2)]:
        got = _mixture(d, x_t, logits, t, s)[0]
        torch.testing.assert_close(got.sum(-1), torch.ones(2, dtype=torch.float64))
        q_ts = torch.eye(k, dtype=torch.float64)
        for u in range(s + 1, t + 1):
            q_ts = q_ts @ _transition(float(abar[u] / abar[u - 1]), k)
        q_s0 = float(abar[s]) * torch.softmax(logits[0].double(), -1) + (1 - float(abar[s])) / k  # q(x_s | x0 dist)
        for pos in range(2):
            bayes = q_ts[:, x_t[0, pos]] * q_s0[pos]
            torch.testing.assert_close(got[pos], bayes / bayes.sum(), atol=1e-6, rtol=1e-5)


# Hand-made logits [1, 4 positions, K = 5]: a confident net, a flat one, a random one, one sure of a class
# that is not x_t; x_t on the confident class, elsewhere, elsewhere, elsewhere.
_HAND_LOGITS = torch.tensor([[[9.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5, [1.5, -2.0, 0.3, 4.0, -0.7],
                              [0.0, 0.0, 60.0, 0.0, 0.0]]])
_HAND_X_T = torch.tensor([[0, 3, 1, 4]])


@pytest.mark.parametrize("t,s", [(1, 0), (2, 1), (50, 49), (100, 99), (100, 0), (80, 20), (30, 29)])
def test_discdpm_fast_posterior_is_the_reference_distribution_on_hand_made_cases(t, s):
    d = DiscDPM(DiscDPMConfig(num_classes=5, timesteps=100))
    ref = ReferenceDiscDPM(d)
    logits = _HAND_LOGITS  # [1, 4, K]: for 1-D toy data the class axis is last and dim 2 alike
    want = ref.q_posterior_log(_HAND_X_T, torch.log_softmax(_HAND_LOGITS, -1), torch.tensor([t]), torch.tensor([s]))
    torch.testing.assert_close(_mixture(d, _HAND_X_T, logits, t, s), want.exp().double(), atol=1e-6, rtol=1e-5)
    # the same four positions as codes [B = 1, C = 2, T = 2]: logits [1, 2, K, 2], reduced over dim 2
    codes = _mixture(d, _HAND_X_T.reshape(1, 2, 2), _HAND_LOGITS.reshape(1, 2, 2, 5).movedim(-1, 2), t, s)
    torch.testing.assert_close(codes, want.exp().double().reshape(1, 2, 2, 5), atol=1e-6, rtol=1e-5)


def test_discdpm_draws_follow_the_reference_posterior():
    """100 000 draws of each hand-made position from the fast sampler's step (mixture, inverse CDF at the positions
    that draw from pi) against the reference's distribution, and the reference's Gumbel-max draws alike."""
    d = DiscDPM(DiscDPMConfig(num_classes=5, timesteps=100))
    ref = ReferenceDiscDPM(d)
    n = 100_000
    x_t = _HAND_X_T.expand(n, -1).contiguous()
    logits = _HAND_LOGITS.expand(n, -1, -1).contiguous()  # [n, 4, K]
    for t, s in [(60, 40), (10, 9)]:
        tt, ss = torch.full((n,), t), torch.full((n,), s)
        want = ref.q_posterior_log(_HAND_X_T, torch.log_softmax(_HAND_LOGITS, -1), tt[:1], ss[:1]).exp()[0]
        keep, from_pi = d.posterior(x_t, logits, tt, ss)
        fast = d.draw(x_t, logits, keep, from_pi, _gen(t))
        slow = ref.step(x_t, logits, tt, ss, _gen(t))
        for draws in (fast, slow):
            freq = torch.nn.functional.one_hot(draws, 5).double().mean(0)  # [4, K]
            assert (freq - want.double()).abs().max().item() < 0.006  # 4 sigma of a 100 000-draw frequency
        assert not torch.equal(fast, x_t)  # some positions move


def _tiny_disc_unet():
    torch.manual_seed(0)  # a 3-level U-Net on [4, 26] codes of K = 64: T padded to 28, so its logits are a cropped view
    spec = DataSpec((4, 26), num_classes=64, local_channels=0)
    return build_unet(UNetConfig(channels=8, channel_mults=(1, 2, 2), code_embed_dim=4,
                                 noise_embed_dim=8), spec), spec


@pytest.mark.parametrize("chunk", [1, 1 << 22], ids=["row-by-row", "one-chunk"])
def test_discdpm_loss_and_gradients_equal_the_reference(chunk, monkeypatch):
    """Same loss and same parameter gradients as the reference KL, on the swiss-roll toy MLP (K = 40) and on a
    U-Net's [B, C, K, T] logits (K = 64), over seeds that draw t = 1 (the NLL term) and t >= 2 alike; the
    chunked class reductions give the same whether they take one row at a time or everything at once."""
    monkeypatch.setattr(discdpm, "_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    toy = build_toy_mlp(ToyMLPConfig(hidden=32, layers=2, embed=16), DataSpec(shape=(2,), num_classes=40))
    unet, spec = _tiny_disc_unet()
    cases = [(toy, swissroll_disc(64, 0), 40), (unet, torch.randint(64, (3, *spec.shape), generator=_gen(2)), 64)]
    for net, x0, k in cases:
        for timesteps in (2, 1000):  # T = 2: t = 1 in about half of the examples
            d = DiscDPM(DiscDPMConfig(num_classes=k, timesteps=timesteps, sample_steps=2))
            ref = ReferenceDiscDPM(d)
            for seed in range(2):
                fast = d.loss(net, x0, Controls(), _gen(seed))
                fast_grads = torch.autograd.grad(fast, list(net.parameters()))
                slow = ref.loss(net, x0, Controls(), _gen(seed))
                slow_grads = torch.autograd.grad(slow, list(net.parameters()))
                assert fast.dtype == torch.float32 and fast.dim() == 0
                torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
                scale = max(g.abs().max().item() for g in slow_grads)
                assert scale > 0
                for a, b in zip(fast_grads, slow_grads):  # the reference's float32 sums over K are themselves
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)  # up to 6e-5 x scale off float64


def test_discdpm_cosine_schedule_ends_uniform_and_forward_draws_follow_eq_2_14():
    d = DiscDPM(DiscDPMConfig(num_classes=40, timesteps=100))
    assert d.log_abar[-1].exp().item() < 1e-4
    x0 = torch.full((20000, 1), 7)
    for t in (10, 50):
        x_t = d.q_sample(x0, torch.full((20000,), t), _gen(t))
        ab = d.log_abar[t].exp().item()
        assert (x_t == 7).float().mean().item() == pytest.approx(ab + (1 - ab) / 40, abs=0.015)


def test_discdpm_loss_is_finite_nonnegative_and_zero_for_a_perfect_predictor():
    d = DiscDPM(DiscDPMConfig(num_classes=40, timesteps=100))
    x0 = swissroll_disc(256, 0)

    def perfect(x_t, level, controls):
        return torch.nn.functional.one_hot(x0, 40).float() * 60.0

    def rubbish(x_t, level, controls):
        return torch.randn(*x_t.shape, 40, generator=_gen(9)) * 3

    good = d.loss(perfect, x0, Controls(), _gen(1))
    bad = d.loss(rubbish, x0, Controls(), _gen(1))
    assert good.dtype == torch.float32 and good.dim() == 0
    assert 0 <= good.item() < 1e-5
    assert math.isfinite(bad.item()) and bad.item() > 0.01
    # the t = 1 term alone (a T = 2 chain draws t = 1 half the time) is -log p(x0 | x1): still ~0 when perfect
    d2 = DiscDPM(DiscDPMConfig(num_classes=40, timesteps=2, sample_steps=2))
    assert 0 <= d2.loss(perfect, x0, Controls(), _gen(1)).item() < 1e-5
    assert d2.loss(rubbish, x0, Controls(), _gen(1)).item() > 0.1


def test_discdpm_samples_with_100_steps_by_default_and_a_perfect_predictor_returns_the_data():
    d = DiscDPM(DiscDPMConfig(num_classes=40, timesteps=1000))
    target = swissroll_disc(64, 3)
    calls = []

    def perfect(x_t, level, controls):
        calls.append(level[0].item())
        return torch.nn.functional.one_hot(target, 40).float() * 60.0

    for steps in (None, 10):
        calls.clear()
        out = d.sample(perfect, (64, 2), Controls(), steps, 1.0, _gen(4))
        assert out.dtype == torch.int64 and torch.equal(out, target)
        assert len(calls) == (steps or 100) and calls[0] == 1000.0 and calls[-1] == 1.0


# --- IADB ---------------------------------------------------------------------------------


def test_iadb_alpha_grid_ends_exactly_at_1():
    iadb = IADB(IADBConfig())
    for n in (1, 3, 7, 10, 49, 128, 1000):
        a = iadb.alphas(n)
        assert len(a) == n + 1 and a[0].item() == 0.0 and a[-1].item() == 1.0
        torch.testing.assert_close(a[1:] - a[:-1], torch.full((n,), 1 / n, dtype=torch.float64))
    assert iadb.alphas()[-1].item() == 1.0 and len(iadb.alphas()) == 129


def test_iadb_one_step_from_an_exact_prediction_reaches_the_data():
    iadb = IADB(IADBConfig())
    data = swissroll(32, 0)
    levels = []

    def exact(x, level, controls):  # at alpha = 0, x is the noise: predict data - noise
        levels.append(level)
        return data - x

    out = iadb.sample(exact, (32, 2), Controls(), 1, 1.0, _gen(1))
    torch.testing.assert_close(out, data)
    assert len(levels) == 1 and torch.equal(levels[0], torch.zeros(32))


def test_iadb_loss_is_zero_for_the_exact_difference():
    iadb = IADB(IADBConfig())
    data = swissroll(64, 0)

    def oracle(x_alpha, level, controls):
        a = (level / 1000)[:, None]
        noise = (x_alpha - a * data) / (1 - a)
        return data - noise

    assert iadb.loss(oracle, data, Controls(), _gen(2)).item() < 1e-6


def test_iadb_sampler_with_the_exact_gaussian_prediction_gives_the_data_variance():
    s_data = 0.5
    iadb = IADB(IADBConfig())

    def exact(x, level, controls):  # data ~ N(0, s^2), noise ~ N(0, 1): E[data - noise | x_alpha]
        a = (level / 1000)[:, None]
        return (a * s_data ** 2 - (1 - a)) / ((1 - a) ** 2 + a ** 2 * s_data ** 2) * x

    out = iadb.sample(exact, (20000, 1), Controls(), 64, 1.0, _gen(3))
    assert out.std().item() == pytest.approx(s_data, rel=0.03)


# --- guidance and dtypes, all formalisms ----------------------------------------------------


def _controls(b: int) -> Controls:
    return Controls(glob=torch.rand(b, 3, generator=_gen(5)), global_groups=(1, 2))


def test_guidance_scale_1_is_the_conditional_output_and_w_combines_affinely():
    net = build_toy_mlp(ToyMLPConfig(hidden=16, layers=1, embed=8), DataSpec(shape=(2,), global_channels=3))
    x, level, c = torch.randn(5, 2, generator=_gen(1)), torch.rand(5) * 1000, _controls(5)
    with torch.no_grad():
        cond, uncond = net(x, level, c), net(x, level, c.null())
        assert not torch.allclose(cond, uncond)
        torch.testing.assert_close(guided(net, x, level, c, 1.0), cond)
        torch.testing.assert_close(guided(net, x, level, c, 0.0), uncond)
        torch.testing.assert_close(guided(net, x, level, c, 2.5), uncond + 2.5 * (cond - uncond))
    edm = EDM(EDMConfig())
    with torch.no_grad():  # D is affine in F, so guiding F guides D: D_u + w (D_c - D_u)
        d_c, d_u = edm.denoise(net, x, 0.8, c, 1.0), edm.denoise(net, x, 0.8, c, 0.0)
        torch.testing.assert_close(edm.denoise(net, x, 0.8, c, 3.0), d_u + 3.0 * (d_c - d_u))


@pytest.mark.parametrize("name", sorted(FORMALISMS))
def test_every_sampler_guides_in_one_doubled_batch_and_returns_float32_or_classes(name):
    disc = name == "discdpm"
    f = make_formalism(name, {"num_classes": 40, "timesteps": 50, "sample_steps": 50} if disc else None)
    calls = []

    def spy(x, level, controls):  # answers in bf16, as a net under autocast would
        calls.append((x.shape[0], controls.glob[x.shape[0] // 2:]))
        shape = (*x.shape, 40) if disc else x.shape
        return torch.zeros(shape, dtype=torch.bfloat16)

    out = f.sample(spy, (4, 2), _controls(4), 3, 2.0, _gen(0))
    assert out.shape == (4, 2) and out.dtype == (torch.int64 if disc else torch.float32)
    assert calls and all(b == 8 and bool((null == -1).all()) for b, null in calls)
    calls.clear()
    f.sample(spy, (4, 2), _controls(4), 3, 1.0, _gen(0))
    assert calls and all(b == 4 for b, _ in calls)
    x0 = swissroll_disc(4, 0) if disc else swissroll(4, 0)
    loss = f.loss(spy, x0, _controls(4), _gen(1))
    assert loss.dtype == torch.float32 and loss.dim() == 0 and math.isfinite(loss.item())


def _oracle(f, x0: torch.Tensor):
    """A net that knows the batch's data and answers each formalism's training target exactly."""
    def per(v):  # [B] -> broadcastable against x0
        return v.reshape(-1, *([1] * (x0.dim() - 1)))

    def net(x, level, controls):
        assert level.shape == (x0.shape[0],) and level.dtype == torch.float32
        if isinstance(f, EDM):
            s = per((4 * level).exp())
            return (x0 - f.c_skip(s) * x / f.c_in(s)) / f.c_out(s)
        if isinstance(f, DDPM):
            abar = per(f.alphas_cumprod[torch.round(level * f.T / 1000).long() - 1].float())
            return (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        if isinstance(f, IADB):
            a = per(level / 1000)
            return x0 - (x - a * x0) / (1 - a)
        return torch.nn.functional.one_hot(x0, f.K).float().movedim(-1, 2) * 60.0  # [B, C, K, *rest]
    return net


@pytest.mark.parametrize("name", sorted(FORMALISMS))
@pytest.mark.parametrize("shape", [(5, 4, 7), (5, 2, 6, 5)], ids=["1d", "2d"])
def test_formalisms_take_the_real_formats_shapes(name, shape):
    """Per-example noise levels broadcast over [B, C, T] (encodec, disc) and [B, 2, F, T] (cqt) alike:
    the exact answer for each example scores ~0, and samples come back in the batch's shape."""
    disc = name == "discdpm"
    f = make_formalism(name, {"num_classes": 7, "timesteps": 30, "sample_steps": 30} if disc else None)
    x0 = torch.randint(7, shape, generator=_gen(0)) if disc else torch.randn(shape, generator=_gen(0))
    assert f.loss(_oracle(f, x0), x0, Controls(), _gen(1)).item() < 1e-5
    assert f.loss(_oracle(f, x0.flip(0)), x0, Controls(), _gen(1)).item() > 1e-2  # another example's answer

    def net(x, level, controls):
        return torch.zeros(*x.shape[:2], 7, *x.shape[2:]) if disc else torch.zeros_like(x)

    out = f.sample(net, shape, Controls(), 3, 1.0, _gen(2))
    assert out.shape == shape and out.dtype == (torch.int64 if disc else torch.float32)


def test_sampling_is_reproducible_from_the_generator():
    for name in ("edm", "ddpm", "iadb", "discdpm"):
        disc = name == "discdpm"
        torch.manual_seed(0)
        spec = DataSpec(shape=(2,), num_classes=40 if disc else 0)
        net = build_toy_mlp(ToyMLPConfig(hidden=16, layers=1, embed=8), spec)
        f = make_formalism(name, {"num_classes": 40} if disc else None)
        a = f.sample(net, (8, 2), Controls(), 4, 1.0, _gen(7))
        assert torch.equal(a, f.sample(net, (8, 2), Controls(), 4, 1.0, _gen(7)))
        assert not torch.equal(a, f.sample(net, (8, 2), Controls(), 4, 1.0, _gen(8)))


# --- each formalism learns its toy ----------------------------------------------------------


def _fit(formalism, net: torch.nn.Module, sampler_of_data, steps: int, batch: int = 256, lr: float = 2e-3) -> float:
    """Plain Adam on fresh batches of `sampler_of_data(n, generator)`, the learning rate decaying linearly to 0
    (the final weights then sit still, as an EMA's would); returns the mean loss of the last 100 steps."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    data_gen, noise_gen = _gen(100), _gen(101)
    losses = []
    for _ in range(steps):
        loss = formalism.loss(net, sampler_of_data(batch, data_gen), Controls(), noise_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
        losses.append(loss.item())
    return sum(losses[-100:]) / len(losses[-100:])


TOY_CASES = {  # name: (formalism config, sampling steps)
    "edm": ({"sigma_data": 0.7}, 18),
    "ddpm": ({"schedule": "linear"}, 100),
    "iadb": ({}, 32),
    "discdpm": ({"num_classes": 40, "timesteps": 100}, 100),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_formalism_learns_its_toy(name):
    """Trained briefly, a ToyMLP's samples are near a fresh draw of the swiss roll (sliced W1, 2000 points)
    and several times nearer than the untrained model's; data against data scores about 0.024."""
    disc = name == "discdpm"
    cfg, steps = TOY_CASES[name]
    f = make_formalism(name, cfg)
    spec = DataSpec(shape=(2,), num_classes=40 if disc else 0)
    torch.manual_seed(0)
    net = build_toy_mlp(ToyMLPConfig(hidden=128, layers=4), spec)
    fresh = swissroll(2000, 12345)

    def score() -> tuple[float, float]:
        net.eval()
        out = f.sample(net, (2000, 2), Controls(), steps, 1.0, _gen(7))
        net.train()
        pts = disc_to_points(out) if disc else out
        assert pts.shape == (2000, 2) and bool(torch.isfinite(pts).all())
        return sliced_wasserstein(pts, fresh, generator=_gen(0)), nearest_neighbour_distance(pts, fresh)

    sw_before, nn_before = score()
    _fit(f, net, swissroll_disc if disc else swissroll, steps=1500)
    sw_after, nn_after = score()
    print(f"{name}: sliced W1 {sw_before:.4f} -> {sw_after:.4f}, NN distance {nn_before:.4f} -> {nn_after:.4f}")
    assert sw_after < 0.07
    assert sw_after * 3 < sw_before
    assert nn_after * 2 < nn_before
