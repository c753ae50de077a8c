"""The conditional U-Net backbone: shapes (1D, 2D, discrete), controls, gradients, sizes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pvtbuild.errors import ConfigError
from pvtbuild.train.backbone import UNet, UNetConfig, build_unet, count_parameters
from pvtbuild.train.guidance import Controls
from pvtbuild.train.spec import DataSpec

TINY = UNetConfig(channels=8, channel_mults=(1, 2, 2), control_channels=4, noise_embed_dim=16)

CQT = DataSpec((2, 36, 97), local_channels=5)  # odd F and T: padded and cropped back
ENCODEC = DataSpec((8, 50), local_channels=3, global_channels=2)
DISC = DataSpec((4, 40), num_classes=7, local_channels=2)

# Manté 2024's Table 4.1 frameworks (cited in train/__init__.py): (spec, model config, learnable parameters). The same
# `model:` sections are in pipelines/train/{ddpm,edm}-{cqt,encodec}.yaml and discdpm-disc.yaml.
REPORT_CONTROLS = 5  # velocity (1) + chroma (1) + instrument (3)
TABLE_4_1 = {
    "cqt": (DataSpec((2, 216, 1921), local_channels=REPORT_CONTROLS),
            UNetConfig(channels=128, channel_mults=(1, 2, 4, 8), control_channels=128, noise_embed_dim=128), 56.9e6),
    "encodec": (DataSpec((128, 600), local_channels=REPORT_CONTROLS),
                UNetConfig(channels=512, channel_mults=(1, 2, 4, 4, 4), control_channels=128, noise_embed_dim=256),
                225.8e6),
    "disc": (DataSpec((16, 600), num_classes=1024, local_channels=REPORT_CONTROLS),
             UNetConfig(channels=256, channel_mults=(1, 2, 4, 4, 4), up_channel_mults=(4, 4, 4, 4, 4),
                        control_channels=128, code_embed_dim=32, noise_embed_dim=128), 87.9e6),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(spec: DataSpec, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Controls]:
    g = torch.Generator().manual_seed(seed)
    if spec.discrete:
        x = torch.randint(0, spec.num_classes, (batch, *spec.shape), generator=g)
    else:
        x = torch.randn((batch, *spec.shape), generator=g)
    local = torch.rand((batch, spec.local_channels, spec.shape[-1]), generator=g) if spec.local_channels else None
    glob = torch.rand((batch, spec.global_channels), generator=g) if spec.global_channels else None
    return x, torch.rand(batch, generator=g) * 4 - 2, Controls(local=local, glob=glob)


def _net(spec: DataSpec, cfg: UNetConfig = TINY, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return build_unet(cfg if spec.global_channels == 0 else replace(cfg, global_mlp=(8, 6)), spec)


@pytest.mark.parametrize("spec,expected", [
    (CQT, (3, 2, 36, 97)),
    (ENCODEC, (3, 8, 50)),
    (DISC, (3, 4, 7, 40)),  # logits [B, C, K, T]: the class axis is 2
    (DataSpec((2,)), (3, 2)),  # toy points: a length-1 sequence
    (DataSpec((2,), num_classes=40), (3, 2, 40)),
])
def test_output_shapes(spec: DataSpec, expected: tuple[int, ...]) -> None:
    x, sigma, controls = _batch(spec, batch=3)
    out = _net(spec)(x, sigma, controls)
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("spec", [CQT, ENCODEC, DISC], ids=["cqt", "encodec", "disc"])
def test_local_controls_change_the_output(spec: DataSpec) -> None:
    net = _net(spec).eval()
    x, sigma, controls = _batch(spec)
    with torch.no_grad():
        a = net(x, sigma, controls)
        b = net(x, sigma, controls.null())
        unconditional = net(x, sigma, Controls())  # no control tensors: the null value
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(unconditional, b)


@pytest.mark.parametrize("spec", [DataSpec((8, 50), local_channels=3), DataSpec((2, 8, 26), local_channels=3)],
                         ids=["1d", "2d"])
def test_controls_can_be_learned(spec: DataSpec) -> None:
    """The control branch carries usable, time-aligned information: trained briefly to output one
    binary control (everywhere, from pure noise input), a tiny net gets its loss 5x down."""
    net = _net(spec)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        local = (torch.rand(8, 3, spec.shape[-1], generator=g) > 0.5).float()
        x = torch.randn((8, *spec.shape), generator=g)
        target = (local[:, 0] * 2 - 1).view(8, *([1] * (len(spec.shape) - 1)), -1).expand_as(x)
        loss = (net(x, torch.zeros(8), Controls(local=local)) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.2 * losses[0], losses


def test_model_without_controls() -> None:
    spec = DataSpec((8, 50))
    net = _net(spec)
    x, sigma, _ = _batch(spec)
    assert net.control is None and net.glob is None
    assert net(x, sigma, Controls()).shape == x.shape
    with pytest.raises(ValueError, match="local controls"):
        net(x, sigma, Controls(local=torch.zeros(2, 3, 50)))


def test_global_film_changes_the_output() -> None:
    net = _net(ENCODEC).eval()
    x, sigma, controls = _batch(ENCODEC)
    other = Controls(local=controls.local, glob=1 - controls.glob)
    with torch.no_grad():
        assert (net(x, sigma, controls) - net(x, sigma, other)).abs().max() > 1e-4


def test_noise_level_changes_the_output() -> None:
    net = _net(ENCODEC).eval()
    x, sigma, controls = _batch(ENCODEC)
    with torch.no_grad():
        assert (net(x, sigma, controls) - net(x, sigma + 1, controls)).abs().max() > 1e-4


@pytest.mark.parametrize("spec", [CQT, ENCODEC, DISC], ids=["cqt", "encodec", "disc"])
def test_every_parameter_gets_a_gradient(spec: DataSpec) -> None:
    """No unused parameters: DistributedDataParallel would otherwise need find_unused_parameters."""
    net = _net(spec)
    x, sigma, controls = _batch(spec)
    out = net(x, sigma, controls)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bf16_autocast_forward_is_finite() -> None:
    for spec in (CQT, ENCODEC, DISC):
        net = _net(spec)
        x, sigma, controls = _batch(spec)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, sigma, controls)
        assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", sorted(TABLE_4_1))
def test_table_4_1_parameter_counts(name: str) -> None:
    spec, cfg, report = TABLE_4_1[name]
    with torch.device("meta"):  # shapes only: no memory, no init time
        n = count_parameters(build_unet(cfg, spec))
    assert abs(n / report - 1) < 0.02, f"{name}: {n} parameters, report {report:.0f}"


def test_count_parameters_counts_only_learnable() -> None:
    net = _net(ENCODEC)
    n = count_parameters(net)
    net.out.weight.requires_grad_(False)
    assert count_parameters(net) == n - net.out.weight.numel()


def test_config_errors_name_the_key() -> None:
    bad = UNetConfig(channel_mults=(1, 2), up_channel_mults=(4,))
    with pytest.raises(ConfigError, match=r"^model\.up_channel_mults: "):
        build_unet(bad, ENCODEC)
    with pytest.raises(ConfigError, match=r"^train\.model\.channels: "):
        UNetConfig(channels=0).check("train.model")
    with pytest.raises(ConfigError, match=r"^model\.global_mlp: "):
        build_unet(UNetConfig(), ENCODEC)  # global controls but no MLP to read them


def test_wrong_shapes_are_refused() -> None:
    net = _net(CQT)
    x, sigma, controls = _batch(CQT)
    with pytest.raises(ValueError, match="expected examples"):
        net(x[:, :, :-1], sigma, controls)
    with pytest.raises(ValueError, match="time grid"):
        net(x, sigma, Controls(local=controls.local[..., :-1]))


def test_the_frequency_embedding_tells_interior_bins_apart() -> None:
    """Without it a 2-D U-Net is blind to where on the frequency axis it is (far from the padded edges,
    a flat input gives a flat output over frequency); with it, each bin can learn to answer differently."""
    spec = DataSpec((2, 64, 16), local_channels=1)
    x, noise, _ = _batch(spec)
    x = torch.zeros_like(x)
    controls = Controls(local=torch.ones(2, 1, 16))
    cfg = replace(TINY, channel_mults=(1,))  # one level: a 5-bin receptive field, so bins 8..55 see no edge
    with torch.no_grad():
        plain = _net(spec, cfg)(x, noise, controls)[:, :, 8:56]
        embedded = _net(spec, replace(cfg, freq_embed_channels=4))(x, noise, controls)[:, :, 8:56]
    assert torch.allclose(plain, plain[:, :, :1].expand_as(plain), atol=1e-6)
    assert (embedded.std(dim=2) > 1e-3).all()


def test_the_frequency_embedding_is_refused_for_data_without_a_frequency_axis() -> None:
    with pytest.raises(ConfigError, match=r"^model\.freq_embed_channels: only 2-D data"):
        build_unet(replace(TINY, freq_embed_channels=4), ENCODEC)


def test_the_frequency_embedding_lets_a_control_act_differently_on_each_bin() -> None:
    """What a control changes is the same on every interior bin of a plain 2-D U-Net (controls are
    broadcast over frequency); through the per-bin projection it differs bin by bin (chroma k -> bins of k)."""
    spec = DataSpec((2, 64, 16), local_channels=2)
    x, noise, _ = _batch(spec)
    x = torch.zeros_like(x)
    a, b = Controls(local=torch.zeros(2, 2, 16)), Controls(local=torch.ones(2, 2, 16))
    cfg = replace(TINY, channel_mults=(1,))
    with torch.no_grad():
        plain, embedded = _net(spec, cfg), _net(spec, replace(cfg, freq_embed_channels=4))
        d_plain = (plain(x, noise, b) - plain(x, noise, a))[:, :, 8:56]
        d_embedded = (embedded(x, noise, b) - embedded(x, noise, a))[:, :, 8:56]
    assert d_plain.abs().max() > 1e-3 and torch.allclose(d_plain, d_plain[:, :, :1].expand_as(d_plain), atol=1e-6)
    assert (d_embedded.std(dim=2) > 1e-3).all()
