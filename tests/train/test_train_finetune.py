"""What GPU users of a trainer expect (issue 19, item 4), on CPU with tiny toy models: the EMA warm-up,
a cosine schedule with a floor, gradient accumulation, and fine-tuning with `--init-from`."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from click.testing import CliRunner
from test_train_loop import TRAIN_CONFIGS, config, log_rows, quiet

from pvtbuild.cli import cli
from pvtbuild.errors import ConfigError, InputError
from pvtbuild.train.build import build_backbone, build_formalism
from pvtbuild.train.checkpoint import ema_weights, load_checkpoint
from pvtbuild.train.data import Position, ToySource
from pvtbuild.train.guidance import Controls
from pvtbuild.train.loop import Resume, TrainOptions, accumulated_backward, ema_beta, lr_factor, train
from pvtbuild.train.spec import DataStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in b))


# --- EMA warm-up ------------------------------------------------------------------------------


def test_ema_beta_follows_edm_rampup_and_is_capped_by_ema_decay():
    cfg = config("swissroll-edm", optim={"ema_decay": 0.9999, "ema_rampup_ratio": 0.05}).optim
    assert ema_beta(cfg, 10) == pytest.approx(0.5 ** (1 / 0.5))  # half-life 0.05 x 10 steps' examples
    assert ema_beta(cfg, 10 ** 7) == 0.9999  # long past the ramp: the cap
    plain = config("swissroll-edm", optim={"ema_decay": 0.9999}).optim
    assert ema_beta(plain, 10) == 0.9999


def test_with_the_rampup_the_ema_at_step_10_no_longer_holds_the_first_weights(tmp_path):
    """With ema_decay 0.9999 alone, the EMA after 10 steps is ~the weights of step 1; with the ramp-up it is
    near the current weights."""
    def run(name: str, steps: int = 10, **optim) -> dict:
        cfg = config("swissroll-edm", optim={"ema_decay": 0.9999, "warmup_steps": 0, **optim})
        train(cfg, TrainOptions(tmp_path / name, steps=steps), echo=quiet)
        return load_checkpoint(tmp_path / name)

    plain, ramped, first = run("plain"), run("ramped", ema_rampup_ratio=0.05), run("first", steps=1)["model"]
    assert torch.equal(plain["model"]["inp.weight"], ramped["model"]["inp.weight"])  # the EMA changes no step
    moved = _distance(ramped["model"], first)
    assert moved > 0
    assert _distance(ema_weights(ramped["ema"]), ramped["model"]) < 0.2 * moved
    assert _distance(ema_weights(plain["ema"]), first) < 0.01 * moved


def test_the_ema_rampup_resumes_exactly(tmp_path):
    cfg = config("swissroll-edm", data={"batch_size": 64}, optim={"ema_decay": 0.999, "ema_rampup_ratio": 0.05})
    full = train(cfg, TrainOptions(tmp_path / "once", steps=12), echo=quiet)
    train(cfg, TrainOptions(tmp_path / "twice", steps=6), echo=quiet)
    rest = train(cfg, TrainOptions(tmp_path / "twice", steps=12, resume=Resume.YES), echo=quiet)
    assert rest.losses == full.losses[6:]
    a, b = load_checkpoint(tmp_path / "once"), load_checkpoint(tmp_path / "twice")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert int(a["ema"]["n_averaged"]) == 12


# --- the cosine schedule's floor ----------------------------------------------------------------


def test_a_cosine_schedule_decays_to_its_floor_and_stays_there():
    cfg = config("swissroll-edm", optim={"schedule": "cosine", "warmup_steps": 10, "decay_steps": 100,
                                         "min_lr_ratio": 0.1}).optim
    f = lr_factor(cfg)
    assert f(9) == 1.0 and f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(10 ** 6) == pytest.approx(0.1)


def test_a_cosine_schedule_without_floor_refuses_to_train_past_its_end(tmp_path):
    cfg = config("swissroll-edm", optim={"schedule": "cosine", "warmup_steps": 100, "decay_steps": 200})
    with pytest.raises(ConfigError, match=r"^train\.steps: 3000 steps train past step 300, .*optim\.min_lr_ratio"):
        train(cfg, TrainOptions(tmp_path / "run"), echo=quiet)
    assert not (tmp_path / "run").exists()  # refused before any work
    cfg = config("swissroll-edm", optim={"schedule": "cosine", "warmup_steps": 1, "decay_steps": 2},
                 train={"steps": 3})
    with pytest.raises(ConfigError, match=r"^--steps: 5 steps train past step 3"):
        train(cfg, TrainOptions(tmp_path / "run", steps=5), echo=quiet)
    floored = config("swissroll-edm", optim={"schedule": "cosine", "warmup_steps": 1, "decay_steps": 2,
                                             "min_lr_ratio": 0.1}, train={"steps": 3})
    assert train(floored, TrainOptions(tmp_path / "run", steps=5), echo=quiet).step == 5


# --- gradient accumulation ----------------------------------------------------------------------


class PerExampleNoise:
    """The real EDM loss with every example's noise drawn from a generator seeded by that example alone, so a
    batch split in micro-batches draws what the whole batch draws (the loop's per-batch generators cannot)."""

    def __init__(self, edm) -> None:
        self.edm = edm

    def loss(self, net, x0, controls, generator):
        per = []
        for row in x0:
            g = torch.Generator().manual_seed(int(row.abs().sum() * 1e6) % (2 ** 31))
            z = torch.randn((1,), generator=g)
            sigma = (z * self.edm.cfg.P_std + self.edm.cfg.P_mean).exp()
            x = row[None]
            d = self.edm.denoise(net, x + torch.randn(x.shape, generator=g) * sigma, sigma, controls, 1.0)
            per.append(self.edm.loss_weight(sigma) * ((d - x) ** 2).mean())
        return torch.cat(per).mean()


def test_two_accumulated_micro_batches_of_4_step_to_the_weights_of_one_batch_of_8():
    """Same examples, same draws: the loop's accumulation gives the whole batch's gradient, hence its step (SGD:
    Adam's first step, g / |g|, would amplify float rounding in near-zero gradients)."""
    cfg = config("swissroll-edm", data={"batch_size": 8})
    source = ToySource(cfg.data, cfg.seed)
    x = next(source.batches(Position()))[1].x0
    torch.manual_seed(0)
    one = build_backbone(cfg, source.spec)
    two = copy.deepcopy(one)
    formalism = PerExampleNoise(build_formalism(cfg, source.spec, DataStats()))
    losses, grads = [], []
    for net, micro in ((one, [x]), (two, [x[:4], x[4:]])):
        loss = accumulated_backward(net, formalism, [(m, Controls(), torch.Generator()) for m in micro], amp=False)
        losses.append(float(loss))
        grads.append([p.grad.clone() for p in net.parameters()])
        torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    scale = max(float(g.abs().max()) for g in grads[0])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * scale)
    for a, b in zip(one.parameters(), two.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    half = copy.deepcopy(two)  # one micro-batch alone: a different gradient, so the check above can fail
    for p in half.parameters():
        p.grad = None
    accumulated_backward(half, formalism, [(x[:4], Controls(), torch.Generator())], amp=False)
    assert not all(torch.allclose(p.grad, g, rtol=1e-3) for p, g in zip(half.parameters(), grads[0]))


def test_accumulate_reads_n_micro_batches_a_step_and_resumes_exactly(tmp_path):
    cfg = config("swissroll-edm", data={"batch_size": 32}, train={"accumulate": 3})
    full = train(cfg, TrainOptions(tmp_path / "once", steps=6), echo=quiet)
    state = load_checkpoint(tmp_path / "once")
    assert state["position"]["batch"] == 18  # 3 toy batches a step
    assert float(log_rows(tmp_path / "once")[0]["examples_per_s"]) > 0
    train(cfg, TrainOptions(tmp_path / "twice", steps=3), echo=quiet)
    rest = train(cfg, TrainOptions(tmp_path / "twice", steps=6, resume=Resume.YES), echo=quiet)
    assert rest.losses == full.losses[3:]
    one = train(config("swissroll-edm", data={"batch_size": 32}), TrainOptions(tmp_path / "one", steps=6), echo=quiet)
    assert one.losses[0] != full.losses[0]  # the first micro-batch is the same: the loss is averaged with the others


def test_a_bad_accumulate_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^train\.accumulate: must be within 1\.\.4096, got 0"):
        config("swissroll-edm", train={"accumulate": 0})


# --- fine-tuning ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    # moved ~4 x lr 1e-3
    train(config("swissroll-edm", optim={"warmup_steps": 0}), TrainOptions(run, steps=4), echo=quiet)
    return run


def test_init_from_loads_weights_and_ema_not_optimizer_or_step_and_prints_changed_keys(base_run, tmp_path):
    lines: list[str] = []
    cfg = config("swissroll-edm", optim={"lr": 5e-4, "warmup_steps": 3})
    result = train(cfg, TrainOptions(tmp_path / "ft", steps=1, init_from=base_run), echo=lines.append)
    assert result.step == 1
    said = next(line for line in lines if "fine-tuning" in line)
    assert said.endswith("config keys changed: optim.lr, optim.warmup_steps"), said
    base, ft = load_checkpoint(base_run), load_checkpoint(tmp_path / "ft")
    assert ft["step"] == 1 and int(ft["ema"]["n_averaged"]) == int(base["ema"]["n_averaged"]) + 1
    assert len(ft["optimizer"]["state"]) and all(int(s["step"]) == 1 for s in ft["optimizer"]["state"].values())
    # one Adam step (lr 5e-4 / 3 in warm-up) from the base weights, its EMA from the base's EMA
    assert max(float((ft["model"][k] - base["model"][k]).abs().max()) for k in base["model"]) <= 1.01 * 5e-4 / 3
    ema = {k: 0.99 * base["ema"][k] + 0.01 * ft["model"][k[len("module."):]]
           for k in base["ema"] if k.startswith("module.")}
    assert all(torch.allclose(ft["ema"][k], v, atol=1e-7) for k, v in ema.items())
    # without --init-from: the base's 4 steps are gone
    fresh = train(cfg, TrainOptions(tmp_path / "fresh", steps=1), echo=quiet)
    fresh_model = load_checkpoint(tmp_path / "fresh")["model"]
    assert fresh.step == 1 and max(float((fresh_model[k] - base["model"][k]).abs().max()) for k in base["model"]) > 2e-3


def test_init_from_another_architecture_is_one_line_naming_the_parameter(base_run, tmp_path):
    cfg_file = tmp_path / "wide.yaml"
    cfg_file.write_text((TRAIN_CONFIGS / "swissroll-edm.yaml").read_text().replace("hidden: 128", "hidden: 64"))
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg_file), "--out", str(tmp_path / "ft"), "--steps", "1",
                                   "--init-from", str(base_run)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--init-from: parameter inp.weight has shape [128, 2] there, [64, 2] in this config's model" in res.output
    with pytest.raises(InputError, match="no such checkpoint"):
        train(config("swissroll-edm"), TrainOptions(tmp_path / "ft2", steps=1, init_from=tmp_path / "nothing"),
              echo=quiet)
    res = CliRunner().invoke(cli, ["train", "--config", str(TRAIN_CONFIGS / "swissroll-edm.yaml"), "--out",
                                   str(base_run), "--resume", "--init-from", str(base_run)])
    assert res.exit_code == 2 and "pass one" in res.output
