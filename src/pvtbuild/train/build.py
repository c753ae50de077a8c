"""What a training config builds: the backbone and the formalism, for a given data spec and data statistics.

One place, used by `loop` (training) and `sample` (generation from a checkpoint), so both
always build the same network from the same config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from pvtbuild.train.backbone import build_unet
from pvtbuild.train.config import TrainConfig
from pvtbuild.train.formalisms import make_formalism
from pvtbuild.train.spec import DataSpec, DataStats
from pvtbuild.train.toy_model import build_toy_mlp


def build_backbone(cfg: TrainConfig, spec: DataSpec) -> nn.Module:
    """The toy MLP for toy data, the conditional U-Net for a dataset's formats."""
    if cfg.is_toy:
        return build_toy_mlp(cfg.model, spec)
    return build_unet(cfg.model, spec)


def build_formalism(cfg: TrainConfig, spec: DataSpec, stats: DataStats) -> Any:
    """The configured formalism, with what only the data can tell filled in (classes, measured sigma_data)."""
    fcfg = cfg.formalism
    names = {f.name for f in dataclasses.fields(fcfg)}
    if spec.discrete and "num_classes" in names:
        fcfg = dataclasses.replace(fcfg, num_classes=spec.num_classes)
    if cfg.sigma_data_auto and "sigma_data" in names:
        fcfg = dataclasses.replace(fcfg, sigma_data=stats.std / stats.scale)
    return make_formalism(cfg.formalism_name, fcfg)
