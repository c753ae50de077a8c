"""Uncompressed .npz files (what every stage writes, `npz_bytes`), read by their members' offsets.

`np.load` reads a whole member, copies it and checks its zip CRC. Two readers want less:
- `NpzRows`: single rows of members, without loading the rest (the shard stage gathers a few
  clips from each of many render shards);
- `npz_arrays`: the members of a file already read and sha256-checked (`stage.read_shard_arrays`,
  the encode and qa tasks), as read-only views into its bytes: no copy, and no zip CRC on top of
  the sha256 (at qa's ~3 ms per clip, CRC and copies were another ~1 ms).
Both find a member's data from its local zip header and its .npy header (`member_header`).
The writer, `npz_bytes`, starts every array's data at a 64-byte boundary, so those views are aligned.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from pvtbuild.errors import InputError


def member_header(fh: BinaryIO, info: zipfile.ZipInfo, path: str | Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(offset of the array's data in the file, dtype, shape) of one stored (uncompressed) member.

    Raises:
        InputError: one line naming `path` for a member no stage writes: compressed, Fortran order,
            a header that is not .npy, Python objects, or data the file is too short to hold (checked
            here, so that no reader allocates for a shape a damaged or hostile header claims).
    """
    name = info.filename[:-4]
    if info.compress_type != zipfile.ZIP_STORED:
        raise InputError(f"{path}: {name} is compressed; pvtbuild stages write uncompressed .npz")
    try:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except (ValueError, struct.error, EOFError) as e:
        raise InputError(f"{path}: {name} is not a readable .npy member ({' '.join(str(e).split())[:80]})") from None
    if fortran:
        raise InputError(f"{path}: {name} is stored in Fortran order")
    if dtype.hasobject:
        raise InputError(f"{path}: {name} holds Python objects; pvtbuild stages store plain arrays")
    offset = fh.tell()
    size = fh.seek(0, io.SEEK_END)
    if offset + math.prod(shape) * dtype.itemsize > size:
        raise InputError(f"{path}: truncated ({name}: {dtype} {list(shape)} does not fit in the file's {size} bytes)")
    return offset, dtype, tuple(shape)


def npz_arrays(blob: bytes, names: Iterable[str], path: str | Path) -> dict[str, np.ndarray]:
    """The members `names` of the .npz whose bytes are `blob`, as read-only views into it.

    Raises:
        InputError: one line naming `path`: not a zip, a member missing, compressed or cut short.
    """
    fh = io.BytesIO(blob)
    members = _members(fh, path)
    arrays = {}
    for name in names:
        offset, dtype, shape = member_header(fh, _member(members, name, path), path)  # fits in the blob
        arrays[name] = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    return arrays


ALIGN = 64  # bytes: each array's data starts at a multiple of this in the file (`npz_bytes`)
_PADDING_ID = 0xD935  # the zip extra-field id zipalign uses for padding; readers skip unknown ids
_ZIP64_FIELD = 20  # bytes of the zip64 extra field zipfile writes into a local header with force_zip64


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz of `arrays` (what `np.load` reads, as `np.savez` writes) whose every array's data
    starts at a multiple of `ALIGN` bytes in the file.

    Why: `npz_arrays` hands out views into the file's bytes, and `np.savez` leaves the data at
    whatever offset the zip headers end at (the audio of a render shard at 35 mod 64): numpy's
    ufuncs on an unaligned float32 view take a slower path (qa's decimation 0.18 vs 0.12 ms per
    clip). The .npy header is already padded to 64 bytes; here each member's local zip header
    is padded too (an extra field, as zipalign does). Members are written as zip64, as np.savez
    writes them, so one may exceed 2 GiB. Same inputs, same bytes.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            # the data follows the 30-byte header, the name, this field's id and size, its padding, and the
            # zip64 field (id, size, two 8-byte sizes) zipfile appends after it
            data_at = buf.tell() + 30 + len(info.filename.encode()) + 4 + _ZIP64_FIELD
            pad = -data_at % ALIGN
            info.extra = struct.pack("<HH", _PADDING_ID, pad) + bytes(pad)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def _members(source: BinaryIO | Path, path: str | Path) -> dict[str, zipfile.ZipInfo]:
    """Array name -> zip entry of the .npz `source` (a file object or path); `InputError` if not a zip."""
    try:
        with zipfile.ZipFile(source) as zf:
            return {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz ({e})") from None


def _member(members: dict[str, zipfile.ZipInfo], name: str, path: str | Path) -> zipfile.ZipInfo:
    if name not in members:
        raise InputError(f"{path}: holds no array {name!r} (has {', '.join(members)})")
    return members[name]


class NpzRows:
    """Single rows of the arrays of an uncompressed .npz (as np.savez writes), read without loading the rest.

    A render shard holds 32 clips; a dataset shard takes a few clips from many
    render shards (its clips are shuffled), so reading whole arrays would read
    the build many times over. Rows are found by the ``id`` array.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._members = _members(self.path, self.path)
        self._headers: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        ids = self._read("id", 0, self.header("id")[2][0])
        self._row_of = {str(i): n for n, i in enumerate(ids)}

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def header(self, name: str) -> tuple[int, np.dtype, tuple[int, ...]]:
        """(data offset in the file, dtype, shape) of one member array."""
        if name not in self._headers:
            info = _member(self._members, name, self.path)
            with open(self.path, "rb") as fh:
                self._headers[name] = member_header(fh, info, self.path)
        return self._headers[name]

    def row(self, name: str, clip_id: str) -> np.ndarray:
        if clip_id not in self._row_of:
            raise InputError(f"{self.path}: no clip {clip_id}")
        return self._read(name, self._row_of[clip_id], 1)[0]

    def _read(self, name: str, first: int, n: int) -> np.ndarray:
        offset, dtype, shape = self.header(name)
        per_row = dtype.itemsize * math.prod(shape[1:])
        with open(self.path, "rb") as fh:
            fh.seek(offset + first * per_row)
            data = fh.read(n * per_row)
        if len(data) != n * per_row:
            raise InputError(f"{self.path}: truncated ({name} ends early)")
        return np.frombuffer(data, dtype=dtype).reshape((n,) + shape[1:])
