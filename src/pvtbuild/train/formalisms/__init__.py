"""Diffusion formalisms, one module each, all with the same two methods.

    class Formalism(Protocol):
        def loss(self, net, x0, controls, generator) -> Tensor          # scalar, float32
        def sample(self, net, shape, controls, steps, cfg_scale, generator) -> Tensor

`net` is the backbone, ``net(x_in, noise_level, controls) -> F``; the formalism owns
everything else (preconditioning, noise schedule, sampler). Continuous formalisms
take and return float tensors ``[B, *shape]``; DiscDPM takes and returns int64
classes ``[B, C, *rest]`` and its net returns logits ``[B, C, K, *rest]`` (class axis 2).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import Tensor

from pvtbuild.config import build_section
from pvtbuild.errors import ConfigError
from pvtbuild.train.formalisms.ddpm import DDPM, DDPMConfig
from pvtbuild.train.formalisms.discdpm import DiscDPM, DiscDPMConfig
from pvtbuild.train.formalisms.edm import EDM, EDMConfig
from pvtbuild.train.formalisms.iadb import IADB, IADBConfig
from pvtbuild.train.guidance import Controls, Net


class Formalism(Protocol):
    """What the loop and the samplers use of a formalism.

    `loss`: the scalar float32 mean loss of a batch of data `x0` (control dropout already applied);
    every random draw comes from `generator`, which lives on x0's device.
    `sample`: `shape` includes the batch; ``steps=None`` is the config's default; classifier-free
    guidance with `cfg_scale` (1: plain conditional); float32 ``[B, *shape[1:]]`` (int64 for DiscDPM);
    runs under ``torch.no_grad()`` on the generator's device.
    """

    def loss(self, net: Net, x0: Tensor, controls: Controls, generator: torch.Generator) -> Tensor: ...

    def sample(self, net: Net, shape: tuple[int, ...], controls: Controls, steps: int | None,
               cfg_scale: float, generator: torch.Generator) -> Tensor: ...


# name -> (config class, formalism class)
FORMALISMS: dict[str, tuple[type, type]] = {
    "edm": (EDMConfig, EDM),
    "ddpm": (DDPMConfig, DDPM),
    "discdpm": (DiscDPMConfig, DiscDPM),
    "iadb": (IADBConfig, IADB),
}


def make_formalism(name: str, cfg: Any = None, key: str = "formalism") -> Formalism:
    """The formalism `name` built from `cfg`: its config dataclass, a mapping of its fields
    (validated like the pipeline configs), or None for the defaults. Mistakes raise a one-line
    `ConfigError` naming the key under `key`."""
    if name not in FORMALISMS:
        raise ConfigError(f"{key}.name: unknown formalism {name!r} (known: {', '.join(FORMALISMS)})")
    config_cls, cls = FORMALISMS[name]
    if cfg is None:
        cfg = config_cls()
    elif isinstance(cfg, Mapping):
        cfg = build_section(config_cls, dict(cfg), key)
    elif not isinstance(cfg, config_cls):
        raise TypeError(f"{name} needs a {config_cls.__name__}, got {type(cfg).__name__}")
    cfg.check(key)
    return cls(cfg)


__all__ = ["FORMALISMS", "Formalism", "make_formalism", "DDPM", "DDPMConfig", "DiscDPM", "DiscDPMConfig",
           "EDM", "EDMConfig", "IADB", "IADBConfig"]
