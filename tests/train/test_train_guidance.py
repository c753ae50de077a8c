"""Control dropout and the Controls a batch carries (guidance's combination is tested with the formalisms)."""

from __future__ import annotations

import pytest
import torch

from pvtbuild.train.guidance import NULL_VALUE, Controls, drop_controls


def controls(batch: int = 4000) -> Controls:
    """velocity [1], chroma [1], instrument [3] on 8 frames, all > 0 so a nulled feature is unmistakable; bpm global."""
    local = torch.rand(batch, 5, 8) + 0.1
    glob = torch.rand(batch, 1) + 0.1
    return Controls(local, glob, local_groups=(1, 1, 3), global_groups=(1,))


def nulled(c: Controls) -> torch.Tensor:
    """[B, features]: which features of each example are entirely the unconditional value."""
    starts = [0, 1, 2]
    feats = [(c.local[:, s:s + n] == NULL_VALUE).flatten(1) for s, n in zip(starts, c.local_groups)]
    feats.append((c.glob == NULL_VALUE).flatten(1))
    whole = torch.stack([f.all(dim=1) for f in feats], dim=1)
    partial = torch.stack([f.any(dim=1) for f in feats], dim=1)
    assert torch.equal(whole, partial), "a feature was nulled in part"
    return whole


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_each_feature_of_each_example_is_dropped_independently_at_the_configured_rate(p):
    drop = nulled(drop_controls(controls(), p, 0.0, torch.Generator().manual_seed(0))).float()
    rates = drop.mean(dim=0)
    assert torch.all((rates - p).abs() < 0.03), rates  # 4000 examples: 3 sigma is ~0.022
    both = (drop[:, 0] * drop[:, 1]).mean()
    assert abs(float(both) - p * p) < 0.03  # independent across features
    per_example = drop.sum(dim=1)
    assert (per_example > 1).any() and (per_example == 0).any()  # not "at most one example per batch"


def test_p_all_drops_every_feature_of_an_example_at_once():
    drop = nulled(drop_controls(controls(), 0.0, 0.25, torch.Generator().manual_seed(1)))
    rows = drop.all(dim=1)
    assert torch.equal(drop.any(dim=1), rows)  # never some features without the others
    assert abs(float(rows.float().mean()) - 0.25) < 0.03


def test_dropout_leaves_kept_features_untouched_and_is_reproducible():
    c = controls(64)
    a = drop_controls(c, 0.3, 0.1, torch.Generator().manual_seed(5))
    b = drop_controls(c, 0.3, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(a.local, b.local) and torch.equal(a.glob, b.glob)
    kept = a.local != NULL_VALUE
    assert torch.equal(a.local[kept], c.local[kept])
    assert drop_controls(c, 0.0, 0.0, torch.Generator()) is c
    assert drop_controls(Controls(), 0.3, 0.1, torch.Generator()).empty


def test_null_cat_and_select_keep_the_feature_layout():
    c = controls(3)
    both = c.cat(c.null())
    assert both.local.shape == (6, 5, 8) and both.glob.shape == (6, 1)
    assert torch.all(both.local[3:] == NULL_VALUE) and torch.equal(both.local[:3], c.local)
    assert both.local_groups == (1, 1, 3) and torch.equal(both.select(slice(0, 3)).glob, c.glob)
