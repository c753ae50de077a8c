"""Grid derivation: each control grid's rate, frames and offset follow from the clip and the format it
serves (`resolve_grids`), so a pipeline file names a grid and never repeats what the clip decides.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from pvtbuild.config.loader import require
from pvtbuild.config.sections import ENCODEC_HOP, ControlsConfig, GridConfig
from pvtbuild.errors import ConfigError

if TYPE_CHECKING:  # only an annotation: pipeline_config imports this module
    from pvtbuild.config.pipeline_config import PipelineConfig


def resolve_grids(cfg: PipelineConfig) -> ControlsConfig | None:
    """`controls` with every grid's rate, frames and offset filled in from the clip and the format it serves.

    A grid serves `encodec` (frames of 320 samples: rate sr/320, ceil(N/320)
    frames, sampled at their centres, offset 0.5) or `cqt` (centred frames:
    rate sr/hop, N // hop + 1 frames centred at k*hop/sr, offset 0), N the
    clip's samples. A grid without `serves` that `shard.control_grids` stores
    beside cqt, encodec or disc serves that format (configs listing rate and
    frames by hand, as older ones do). Values given by hand must equal the
    derived ones. Returns None while the clip, sample rate or hop are invalid
    (`check` then names them).
    """
    seconds, sr, hop = cfg.select.clip_seconds, cfg.render.sample_rate, cfg.encode.cqt.hop_length
    if not (seconds > 0 and sr > 0 and hop >= 1):
        return None
    stored: dict[str, dict[str, str]] = {}  # grid name -> {format it serves: shard.control_grids key}
    for fmt, name in cfg.shard.control_grids.items():
        kind = {"cqt": "cqt", "encodec": "encodec", "disc": "encodec"}.get(fmt)
        if kind is not None:
            stored.setdefault(name, {}).setdefault(kind, fmt)
    grids = []
    for n, g in enumerate(cfg.controls.grids):
        key = f"controls.grids[{n}]"
        g.check_given(key)
        kinds = stored.get(g.name, {})
        require(len(kinds) <= 1, "shard.control_grids", f"stores grid {g.name!r} beside both cqt and encodec/disc "
                 f"({', '.join(kinds.values())}), whose frames differ; give each its own grid")
        serves = g.serves
        for kind, fmt in kinds.items():
            require(serves in (None, kind), f"shard.control_grids.{fmt}",
                     f"grid {g.name!r} serves {serves}, not {kind}; name a grid that serves {kind}")
            serves = kind
        grids.append(_derive_grid(g, serves, key, cfg.clip_samples, sr, hop))
    return dataclasses.replace(cfg.controls, grids=tuple(grids))


def _derive_grid(g: GridConfig, serves: str | None, key: str, samples: int, sr: int, hop: int) -> GridConfig:
    seconds = samples / sr
    if serves == "encodec":
        rate, frames, offset = sr / ENCODEC_HOP, -(-samples // ENCODEC_HOP), 0.5
        what = f"EnCodec has {frames} frames of {ENCODEC_HOP} samples"
    elif serves == "cqt":
        rate, frames, offset = sr / hop, samples // hop + 1, 0.0
        what = f"the centred CQT (hop {hop}) has {frames} frames"
    else:
        require(g.rate is not None, f"{key}.rate",
                 "must be given for a grid that serves no format (or say `serves: encodec` / `serves: cqt`)")
        rate, offset = float(g.rate), 0.5 if g.offset is None else g.offset
        frames = int(math.floor(seconds * rate - offset + 1e-9)) + 1  # the times (k + offset)/rate within [0, T]
        what = f"a {rate:g} Hz grid sampled at (k + {offset:g})/{rate:g} s has {frames} frames"
    where = f"for {seconds:g} s clips at {sr} Hz"
    fix = "drop the key: it follows the clip" + (f" and the format the grid serves ({serves})" if serves else "")
    if g.rate is not None and not math.isclose(g.rate, rate, rel_tol=1e-9):
        raise ConfigError(f"{key}.rate: {g.rate:g}, but {what} at {rate:g} Hz {where}; {fix}")
    if g.frames is not None and g.frames != frames:
        raise ConfigError(f"{key}.frames: {g.frames}, but {what} {where}; {fix}")
    if g.offset is not None and not math.isclose(g.offset, offset, abs_tol=1e-9):
        raise ConfigError(f"{key}.offset: {g.offset:g}, but {serves} frame k sits at (k + {offset:g})/{rate:g} s; "
                          f"{fix}")
    return GridConfig(g.name, rate, frames, serves, offset)  # type: ignore[arg-type]
