"""Toy data, the toy backbone and the sample metrics (train/toy_data.py, toy_model.py, toy_metrics.py)."""

from __future__ import annotations

import math

import pytest
import torch

from pvtbuild.errors import ConfigError
from pvtbuild.train.guidance import Controls
from pvtbuild.train.spec import DataSpec
from pvtbuild.train.toy_data import TOYS, disc_to_points, points_to_disc, swissroll, swissroll_disc
from pvtbuild.train.toy_metrics import nearest_neighbour_distance, sliced_wasserstein
from pvtbuild.train.toy_model import ToyMLPConfig, build_toy_mlp


def test_swissroll_follows_sklearns_make_swiss_roll():
    # installed with librosa; declared in the test extras: absent means fail, not skip
    from sklearn import datasets  # noqa: PLC0415  (scikit-learn takes seconds to import; this test alone needs it)

    theirs = torch.from_numpy(datasets.make_swiss_roll(20000, noise=0.5, random_state=0)[0][:, [0, 2]] / 10).float()
    ours = swissroll(20000, 1)
    assert ours.shape == (20000, 2) and ours.dtype == torch.float32
    same = sliced_wasserstein(ours[:4000], theirs[:4000])
    assert same < 0.04  # sampling noise: 0.017..0.031 over seeds
    assert sliced_wasserstein(ours[:4000] * 1.1, theirs[:4000]) > 0.045  # a 10% wrong scale shows
    for stat in (lambda p: p.norm(dim=1).mean(), lambda p: p.norm(dim=1).std(), lambda p: p.std(dim=0)):
        torch.testing.assert_close(stat(ours), stat(theirs), rtol=0.02, atol=0.0)


def test_swissroll_is_reproducible_from_a_seed_or_generator():
    assert torch.equal(swissroll(100, 3), swissroll(100, torch.Generator().manual_seed(3)))
    assert not torch.equal(swissroll(100, 3), swissroll(100, 4))
    g = torch.Generator().manual_seed(5)
    assert not torch.equal(swissroll(100, g), swissroll(100, g))  # a generator advances


def test_swissroll_disc_quantises_each_coordinate_to_40_classes():
    v = torch.tensor([[-2.0, -1.5], [-1.4999, 0.0], [0.074, 0.076], [1.4999, 1.5], [3.0, -0.0001]])
    torch.testing.assert_close(points_to_disc(v), torch.tensor([[0, 0], [0, 20], [20, 21], [39, 39], [39, 19]]))
    pts = swissroll(2000, 0)
    classes = swissroll_disc(2000, 0)
    assert classes.dtype == torch.int64 and torch.equal(classes, points_to_disc(pts))
    assert int(classes.min()) >= 0 and int(classes.max()) <= 39
    inside = (pts.abs() < 1.5).all(dim=1)
    assert inside.float().mean() > 0.99
    centres = disc_to_points(classes)
    assert float((centres[inside] - pts[inside]).abs().max()) <= 3 / 40 / 2 + 1e-6  # within half a cell
    torch.testing.assert_close(points_to_disc(centres), classes)
    assert TOYS["swissroll-disc"][1] == DataSpec(shape=(2,), num_classes=40)


def test_sliced_wasserstein_and_nearest_neighbour_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 2, generator=g)
    shifted = a + torch.tensor([0.3, 0.0])
    # SW1 of a translation by v is E|<v, theta>| = |v| 2 / pi over directions in the plane
    assert sliced_wasserstein(a, shifted, projections=512) == pytest.approx(0.3 * 2 / math.pi, rel=0.05)
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a[:1000]) < 0.05  # unequal sizes: quantiles on a common grid
    assert nearest_neighbour_distance(a[:500], a) == 0.0
    far = torch.tensor([[10.0, 0.0]])
    assert nearest_neighbour_distance(far, torch.tensor([[7.0, 4.0], [0.0, 0.0]])) == pytest.approx(5.0)
    assert nearest_neighbour_distance(a, a + 1e-3, chunk=256) == pytest.approx(1e-3 * math.sqrt(2), rel=1e-3)


def test_toy_mlp_shapes_for_continuous_and_discrete_data():
    cfg = ToyMLPConfig(hidden=32, layers=2, embed=16)
    net = build_toy_mlp(cfg, DataSpec(shape=(2,)))
    out = net(torch.randn(5, 2), torch.rand(5) * 1000, Controls())
    assert out.shape == (5, 2) and out.dtype == torch.float32
    disc = build_toy_mlp(cfg, DataSpec(shape=(2,), num_classes=40))
    logits = disc(swissroll_disc(5, 0), torch.rand(5) * 1000, Controls())
    assert logits.shape == (5, 2, 40)
    # each coordinate has its own embedding: swapping the two coordinates changes the output
    x = torch.tensor([[3, 17]])
    assert not torch.allclose(disc(x, torch.zeros(1), Controls()), disc(x.flip(1), torch.zeros(1), Controls()).flip(1))
    # the noise level reaches the output
    x = torch.randn(1, 2)
    assert not torch.allclose(net(x, torch.tensor([10.0]), Controls()), net(x, torch.tensor([900.0]), Controls()))
    with pytest.raises(ConfigError, match=r"^model\.layers: must be >= 1"):
        build_toy_mlp(ToyMLPConfig(layers=0), DataSpec(shape=(2,)))
    with pytest.raises(ConfigError, match=r"^controls: the toy MLP takes no local controls"):
        build_toy_mlp(cfg, DataSpec(shape=(2,), local_channels=3))
