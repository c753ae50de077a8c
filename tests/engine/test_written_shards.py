"""written_shards: a streamed build's encode and qa tasks take the render shards this process just wrote
from memory, with the same results as reading them from disk; a file changed since is read from disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_SOURCES, make_config
from paths import LAKH
from pvtbuild.engine import written_shards
from pvtbuild.engine.stage_files import ShardRecord, read_shard_arrays, write_shard_file
from pvtbuild.errors import InputError
from pvtbuild.pipeline import run_all, run_encode, run_qa, run_render


@pytest.fixture
def midi(tmp_path) -> Path:
    folder = tmp_path / "midi"
    folder.mkdir()
    for md5 in SMALL_SOURCES:
        (folder / f"{md5}.mid").symlink_to(LAKH / f"{md5}.mid")
    return folder


def records(stage_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(stage_dir.glob("shard-*.json"))}


def test_a_streamed_build_reads_render_shards_from_memory_with_the_results_of_reading_them_from_disk(midi, tmp_path):
    cfg = make_config(midi, **{"formats": ["audio"]})
    written_shards.clear()
    run_all(cfg, tmp_path / "streamed")
    render_shards = len(list((tmp_path / "streamed" / "render").glob("shard-*.npz")))
    assert render_shards >= 2
    assert written_shards.stats()["hits"] == 2 * render_shards  # each read once by encode and once by qa
    assert written_shards.stats()["misses"] == 0

    run_render(cfg, tmp_path / "from-disk")
    written_shards.clear()
    run_encode(cfg, tmp_path / "from-disk")
    run_qa(cfg, tmp_path / "from-disk")
    assert written_shards.stats()["hits"] == 0 and written_shards.stats()["misses"] == 2 * render_shards
    for stage in ("render", "encode", "qa"):
        assert records(tmp_path / "streamed" / stage) == records(tmp_path / "from-disk" / stage), stage


def test_a_render_shard_damaged_after_it_was_written_is_read_from_disk_and_named_damaged(midi, tmp_path):
    cfg = make_config(midi)
    run_render(cfg, tmp_path)
    victim = tmp_path / "render" / "shard-00000.npz"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    time.sleep(0.02)  # past the file system's timestamp granularity (see written_shards)
    victim.write_bytes(bytes(blob))
    run_qa(cfg, tmp_path)
    rows = json.loads((tmp_path / "qa" / "shard-00000.json").read_text())["rows"]
    assert rows and all(r["status"].startswith(f"skipped: {victim}: damaged") for r in rows)
    assert all(r["status"] == "ok" or "failed qa" in r["status"]
               for r in json.loads((tmp_path / "qa" / "shard-00001.json").read_text())["rows"])


def test_a_file_replaced_or_deleted_since_it_was_written_is_not_served_from_memory(tmp_path):
    written_shards.clear()
    file, sha = write_shard_file(tmp_path, 0, {"x": np.arange(10)})
    rec = ShardRecord("render", 0, file, sha, "p", [])
    assert read_shard_arrays(tmp_path, rec, ["x"])["x"].tolist() == list(range(10))
    assert written_shards.stats()["hits"] == 1
    replacement = tmp_path / "other.npz"
    replacement.write_bytes((tmp_path / file).read_bytes())
    os.replace(replacement, tmp_path / file)  # the same bytes, another file: read from disk (and intact)
    assert written_shards.lookup(tmp_path / file, sha) is None
    (tmp_path / file).unlink()
    with pytest.raises(InputError, match="missing"):
        read_shard_arrays(tmp_path, rec, ["x"])


def test_memory_held_stays_under_the_cap_newest_kept(tmp_path, monkeypatch):
    written_shards.clear()
    monkeypatch.setattr(written_shards, "MAX_BYTES", 3000)
    shas = [write_shard_file(tmp_path, i, {"x": np.full(200, i, dtype=np.float32)})[1] for i in range(4)]
    held = written_shards.stats()
    assert held["held_bytes"] <= 3000 and held["entries"] == 2
    assert written_shards.lookup(tmp_path / "shard-00003.npz", shas[3]) is not None
    assert written_shards.lookup(tmp_path / "shard-00000.npz", shas[0]) is None
    assert written_shards.lookup(tmp_path / "shard-00003.npz", shas[2]) is None  # another sha: not this file
