"""Tests for pvtbuild.engine.manifest: atomic writes and content-derived ids."""

from __future__ import annotations

import os
import stat

import pytest

from pvtbuild.engine.manifest import atomic_write, atomic_write_bytes, remove_stale_temporaries, stable_hash


def test_atomically_written_files_are_readable_by_others_as_plain_files_are(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "atomic").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_a_failed_atomic_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "out.bin") as fh:
            fh.write(b"half")
            raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_previous_complete_file(tmp_path):
    atomic_write_bytes(tmp_path / "out.bin", b"complete")
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "out.bin") as fh:
            fh.write(b"half")
            raise RuntimeError("killed midway")
    assert (tmp_path / "out.bin").read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_stable_hash_depends_on_content_only_not_on_dict_order():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_stale_temporaries_of_a_killed_write_are_removed_and_finished_files_kept(tmp_path):
    atomic_write_bytes(tmp_path / "done.npz", b"complete")
    (tmp_path / ".shard-00001.npz.abc123.tmp").write_bytes(b"half")  # what SIGKILL mid-write leaves
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["done.npz"]
