"""Fixtures shared by test modules: the small real build that shard and inspect tests both read.

And the clean-clone guard: a test that opens, lists, copies or links anything under the
project's `shared/` folder (`paths.SHARED_ROOTS`) fails, even where that folder exists, so a
test can never pass here and fail on a clone with nothing beside it. An audit hook sees
this process's reads; `.ci/run` also hides the folder from the processes tests start.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from paths import LAKH, SHARED_ROOTS
from pvtbuild.config import PipelineConfig, config_from_dict
from pvtbuild.pipeline import run_encode, run_render, run_shard

_READ_EVENTS = frozenset({"open", "os.listdir", "os.scandir", "shutil.copyfile", "os.symlink", "os.link"})
_shared_reads: list[str] = []


def _outside_repo_guard(event: str, args: tuple) -> None:
    """Audit hook: refuse (and remember) any read of a path under `SHARED_ROOTS`."""
    if event not in _READ_EVENTS or not args:
        return
    path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return  # a file descriptor
    full = os.path.abspath(os.fsdecode(path))
    if any(full == root or full.startswith(root + os.sep) for root in SHARED_ROOTS):
        _shared_reads.append(f"{event} {full}")
        raise PermissionError(f"tests may read only inside the repository, not {full} (see tests/paths.py)")


sys.addaudithook(_outside_repo_guard)


@pytest.fixture(autouse=True)
def _no_shared_reads():
    """Fail the test that read `shared/`, even if it caught the PermissionError."""
    before = len(_shared_reads)
    yield
    assert _shared_reads[before:] == [], "read outside the repository (tests/data has the test data)"


SMALL_SOURCES = ("00fe58e0b555088db366097cc15634e0", "024bdf7815ae8b97ac8cac959cce3c5f",
                 "034b0de17cfd9fc25471c536c3fbb69e")


def make_config(midi: Path, limit: int = 0, select: dict | None = None, **shard: object) -> PipelineConfig:
    """A small real pipeline: 2 clips per source (or `select`'s settings over that), 4 per render shard,
    random EnCodec weights, in-process."""
    return config_from_dict({
        "name": "test", "seed": 0, "midi": str(midi), "limit": limit,
        "select": {"clips_per_source": 2, **(select or {})}, "render": {"clips_per_shard": 4},
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


@pytest.fixture(scope="session")
def dataset(small_build, tmp_path_factory) -> Path:
    """The small build as a dataset of many small shards, every format (audio too), for the trainer, sampling
    and evaluation tests; tests must not change it."""
    out, cfg = small_build
    build = tmp_path_factory.mktemp("train-build")
    for name in ("render", "encode"):
        shutil.copytree(out / name, build / name)
    ds = build / "dataset"
    run_shard(cfg, build, ds, ("audio", "cqt", "encodec", "disc"))
    assert len(list((ds / "train").glob("*.tfrecord"))) >= 2  # the 2-rank test needs a file per rank
    return ds


# A YAML bomb (the config tests of pipeline files, training files and the CLI refuse it): nine levels of
# nine aliases, 9**9 (387 million) strings once expanded, from ~400 bytes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def write_slow_midi(path: Path, events: int = 2_400_000) -> Path:
    """A valid 7 MB type-0 MIDI file (under select.max_file_mb) of `events` note events: mido and pretty_midi
    take 10-40 s to parse it here, far past any test's parse_timeout, on a quiet machine or a busy one."""
    body = bytes([0x00, 0x90, 60, 100]) + bytes([0x01, 60, 0, 0x01, 60, 100]) * (events // 2) + b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(body)) + body)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): the two
    cores are shared by everything a test run starts, where two threads stalled tiny models 10-20x, and oneDNN's
    float results depend on the thread count, which checks that compare floats must fix."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
