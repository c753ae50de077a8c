"""Fixtures shared by test modules: the small real build that shard and inspect tests both read."""

from __future__ import annotations

from pathlib import Path

import pytest

from paths import LAKH
from pvtbuild.config import PipelineConfig, config_from_dict
from pvtbuild.pipeline import run_encode, run_render

SMALL_SOURCES = ("00fe58e0b555088db366097cc15634e0", "024bdf7815ae8b97ac8cac959cce3c5f",
                 "034b0de17cfd9fc25471c536c3fbb69e")


def make_config(midi: Path, limit: int = 0, **shard: object) -> PipelineConfig:
    """A small real pipeline: 2 clips per source, 4 per render shard, random EnCodec weights, in-process."""
    return config_from_dict({
        "name": "test", "seed": 0, "midi": str(midi), "limit": limit,
        "select": {"clips_per_source": 2}, "render": {"clips_per_shard": 4},
        "encode": {"weights": "random"}, "shard": {"shard_mb": 2.0, **shard},
        "exec": {"jobs": 1, "scheduler": "sync"},
    })


@pytest.fixture(scope="session")
def small_build(tmp_path_factory) -> tuple[Path, PipelineConfig]:
    """Three Lakh files rendered and encoded (all formats) once per session; tests must not change it."""
    midi = tmp_path_factory.mktemp("midi")
    for md5 in SMALL_SOURCES:
        (midi / f"{md5}.mid").symlink_to(LAKH / f"{md5}.mid")
    out = tmp_path_factory.mktemp("small")
    cfg = make_config(midi)
    rendered = run_render(cfg, out)[-1].total_ok
    assert rendered >= 4  # 6 selected; render may skip a near-silent one
    assert run_encode(cfg, out)[-1].total_ok == rendered
    return out, cfg
