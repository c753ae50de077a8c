"""What defines a build's rendered audio: the SoundFont it was rendered with and the render parameter hash.

Render writes under `render_params`; qa renders its timbre references with the same SoundFont, and the
shard stage checks that a build's render output was made with the config it records in dataset.json.
Kept apart from `stages.render` so that those stages do not import another stage.
"""

from __future__ import annotations

from pathlib import Path

from pvtbuild.config import PipelineConfig, config_hash
from pvtbuild.errors import ConfigError, InputError
from pvtbuild.music.soundfonts import resolve_soundfont


def render_params(cfg: PipelineConfig, soundfont_sha256: str) -> str:
    """The render stage's parameter hash: everything that changes a rendered clip's bytes."""
    return config_hash({"select": cfg.select, "render": cfg.render, "controls": cfg.controls,
                        "seed": cfg.seed, "soundfont": soundfont_sha256})


def render_soundfont(cfg: PipelineConfig) -> Path:
    """The configured SoundFont, resolved and verified; a problem is a ConfigError naming `render.soundfont`."""
    try:
        return resolve_soundfont(cfg.render.soundfont)
    except InputError as e:
        raise ConfigError(f"render.soundfont: {e}") from None
