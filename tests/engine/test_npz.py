"""Reading uncompressed .npz members by offset (npz.py): the same arrays as np.load, and one-line errors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from pvtbuild.engine.npz import ALIGN, NpzRows, npz_arrays, npz_bytes
from pvtbuild.errors import InputError


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


def stored_member(name: str, header: dict, data: bytes, allow_pickle_array: np.ndarray | None = None) -> bytes:
    """A one-member uncompressed .npz whose .npy header says `header` (whatever the data is)."""
    npy = io.BytesIO()
    if allow_pickle_array is not None:
        np.lib.format.write_array(npy, allow_pickle_array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(npy, header)
        npy.write(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}.npy", npy.getvalue())
    return buf.getvalue()


HOSTILE_MEMBERS = {
    # a shape of 8 TB in a file of a few hundred bytes: once a MemoryError in NpzRows (seen by the
    # stage's quorum as "the environment"), now a damaged file like any other
    "huge shape": (stored_member("id", {"descr": "<U4", "fortran_order": False, "shape": (2**40,)}, b"x" * 32),
                   "truncated (id: <U4 [1099511627776] does not fit in the file's"),
    "object dtype": (stored_member("id", {}, b"", np.array([{"a": 1}], dtype=object)), "id holds Python objects"),
    "not .npy": (stored_member("id", {"descr": "<f4", "fortran_order": False, "shape": (1,)}, bytes(4)).replace(
        b"\x93NUMPY", b"\x93NOTPY"), "id is not a readable .npy member"),
    "not a zip": (b"PK but not a zip" * 8, "not a readable .npz"),
}


@pytest.mark.parametrize("case", HOSTILE_MEMBERS)
def test_a_stage_file_whose_contents_no_stage_writes_is_one_line_in_both_readers(tmp_path, case):
    blob, message = HOSTILE_MEMBERS[case]
    path = tmp_path / "x.npz"
    path.write_bytes(blob)
    for read in (lambda: npz_arrays(blob, ["id"], path), lambda: NpzRows(path)):
        with pytest.raises(InputError) as err:
            read()
        assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)
