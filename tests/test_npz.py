"""Reading uncompressed .npz members by offset (npz.py): the same arrays as np.load, and one-line errors."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pvtbuild.errors import InputError
from pvtbuild.npz import ALIGN, NpzRows, npz_arrays, npz_bytes


def saved(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    fh = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return fh.getvalue()


def test_members_are_read_only_views_equal_to_what_np_load_reads(tmp_path):
    arrays = {"id": np.array(["a", "bb", "ccc"]), "audio": np.random.default_rng(0).standard_normal((3, 1000)).astype(
        np.float32), "codes": np.arange(3 * 16 * 5, dtype=np.int16).reshape(3, 16, 5)}
    blob = saved(**arrays)

    got = npz_arrays(blob, ["id", "audio", "codes"], "x.npz")

    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and np.array_equal(got[name], a)
        assert not got[name].flags.writeable  # a view into the bytes, not a copy
    (tmp_path / "x.npz").write_bytes(blob)
    assert np.array_equal(NpzRows(tmp_path / "x.npz").row("codes", "bb"), arrays["codes"][1])


def test_npz_bytes_is_what_np_load_reads_with_every_array_aligned_and_the_same_bytes_each_time(tmp_path):
    arrays = {"id": np.array(["a", "bb", "ccc"]), "audio": np.random.default_rng(0).standard_normal((3, 1001)).astype(
        np.float32), "pitch_75hz": np.arange(3 * 7, dtype=np.float32).reshape(3, 7), "empty": np.zeros((0, 2))}
    blob = npz_bytes(arrays)
    assert npz_bytes(arrays) == blob
    with np.load(io.BytesIO(blob)) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        assert all(loaded[k].dtype == a.dtype and np.array_equal(loaded[k], a) for k, a in arrays.items())
    base = np.frombuffer(blob, np.uint8).ctypes.data
    for name, view in npz_arrays(blob, list(arrays), "x.npz").items():
        assert (view.ctypes.data - base) % ALIGN == 0 and view.flags.aligned, name
        assert np.array_equal(view, arrays[name])
    (tmp_path / "x.npz").write_bytes(blob)
    assert np.array_equal(NpzRows(tmp_path / "x.npz").row("audio", "bb"), arrays["audio"][1])


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "x.npz: not a readable .npz"),
    (lambda b: b"not a zip at all", "x.npz: not a readable .npz"),
])
def test_a_damaged_file_is_one_line_naming_it(damage, message):
    blob = saved(audio=np.zeros((2, 4000), np.float32))
    with pytest.raises(InputError, match=f"^{message}"):
        npz_arrays(damage(blob), ["audio"], "x.npz")


def test_a_missing_or_compressed_member_is_one_line_naming_file_and_member():
    with pytest.raises(InputError, match=r"^x.npz: holds no array 'audio' \(has id\)$"):
        npz_arrays(saved(id=np.array(["a"])), ["audio"], "x.npz")
    with pytest.raises(InputError, match=r"^x.npz: audio is compressed"):
        npz_arrays(saved(compressed=True, audio=np.zeros(10, np.float32)), ["audio"], "x.npz")
