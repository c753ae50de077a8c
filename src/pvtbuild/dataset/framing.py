"""TFRecord files, written and read without TensorFlow: record framing, CRC-32C, whole shard files
(`write_shard`, `iter_records`, `shard_info`, ...).

**Shards** are standard TFRecord files: each record is framed as::

    uint64  length            little-endian, bytes of data
    uint32  masked_crc32c(length bytes)
    byte    data[length]      one serialized tf.train.Example
    uint32  masked_crc32c(data)

with ``masked_crc32c(x) = ((c >> 15 | c << 17) + 0xA282EAD8) mod 2**32`` and ``c``
the CRC-32C (Castagnoli) of x. Shards are written under a temporary name
beside their final one and renamed when complete, so a visible shard is whole.

Why no TensorFlow here: importing TensorFlow costs ~4 s and several hundred MB per
worker process, and the writer only needs framing, a CRC and ~30 lines of
protobuf wire format. CRC-32C has no stdlib implementation; the `crc32c`
package computes it with the CPU's CRC instructions (several GB/s), so
readers check every record's CRCs by default.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping

from crc32c import crc32c as _crc32c

from pvtbuild.engine.manifest import atomic_write
from pvtbuild.errors import InputError


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: where it is, how many records and bytes, and its sha256."""

    path: Path
    records: int
    bytes: int
    sha256: str

    def to_dict(self, root: str | Path) -> dict[str, Any]:
        """The shard's dataset.json entry, its file named relative to the dataset directory `root`."""
        try:
            rel = Path(self.path).resolve().relative_to(Path(root).resolve())
        except ValueError:
            raise ValueError(f"shard {self.path} is not inside the dataset directory {root}") from None
        return {"file": rel.as_posix(), "records": self.records, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: str | Path) -> "ShardInfo":
        return cls(Path(root) / d["file"], int(d["records"]), int(d["bytes"]), str(d["sha256"]))


def write_shard(path: str | Path, records: Iterable[bytes]) -> ShardInfo:
    """Write serialized records as one TFRecord file, atomically (temporary name, then rename).

    Args:
        path: the shard's final path, normally ``DATASET/{split}/`` + `shard_name`.
        records: serialized Examples (`serialize_example`), consumed once, in order.

    Returns:
        The shard's `ShardInfo` (record count, size, sha256 of the file).
    """
    h = hashlib.sha256()
    count = size = 0
    with atomic_write(path, "wb") as fh:
        for data in records:
            for part in frame_record(data):
                fh.write(part)
                h.update(part)
                size += len(part)
            count += 1
    return ShardInfo(Path(path), count, size, h.hexdigest())


def frame_record(data: bytes | bytearray | memoryview) -> tuple[bytes, bytes | bytearray | memoryview, bytes]:
    """TFRecord framing of one record: (length + its CRC, data, data CRC)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)), data, struct.pack("<I", masked_crc32c(data))


def iter_records(path: str | Path, verify_crc: bool = True) -> Iterator[bytearray]:
    """Records of one TFRecord file, each a fresh writable `bytearray`.

    Every record's length is checked against its CRC and against the bytes
    left in the file before anything is allocated for it; with `verify_crc`
    (the default) each record's data CRC is checked too. A damaged or
    truncated file raises `InputError`, one line naming the file and the
    record's byte offset.
    """
    with open(path, "rb") as fh:
        yield from read_records(fh, str(path), verify_crc, os.fstat(fh.fileno()).st_size)


def read_records(fh: IO[bytes], name: str, verify_crc: bool = True, size: int | None = None,
                 offset: int = 0) -> Iterator[bytearray]:
    """Like `iter_records`, from an open binary file object (`name` is used in errors, `size` bounds lengths,
    `offset` is where `fh` stands in the file)."""
    while True:
        head = fh.read(12)
        if not head:
            return
        length = _record_length(head, name, offset, size)
        data = bytearray(length)
        got = fh.readinto(data)
        foot = fh.read(4)
        if got != length or len(foot) < 4:
            raise InputError(f"{name}: truncated record at byte {offset} (wants {length} bytes)")
        if verify_crc and struct.unpack("<I", foot)[0] != masked_crc32c(data):
            raise InputError(f"{name}: data CRC mismatch in record at byte {offset} (corrupt shard)")
        offset += 16 + length
        yield data


def check_framing(path: str | Path) -> int:
    """Walk a TFRecord file's record headers (lengths and their CRCs) without reading the records;
    returns the record count, or raises `InputError` as `iter_records` would.

    For readers that hand files to code which trusts a length field: tf.data's TFRecordDataset
    crashed the process (a segfault) on a header whose length CRC was valid and whose length
    was near 2**62. Costs one 12-byte read per record.
    """
    return len(record_offsets(path))


def record_offsets(path: str | Path) -> list[int]:
    """The byte offset of every record of a TFRecord file, from its checked headers alone (`check_framing`),
    so a reader can fetch records in any order with `read_record_at`."""
    offsets: list[int] = []
    offset = 0
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while head := fh.read(12):
            length = _record_length(head, str(path), offset, size)
            offsets.append(offset)
            offset += 16 + length
            fh.seek(offset)
    return offsets


def read_record_at(path: str | Path, offset: int, verify_crc: bool = True) -> bytearray:
    """The record at byte `offset` of a TFRecord file (one of `record_offsets`), checked as `iter_records`
    checks every record: its length against its CRC and the file's size, its data CRC unless told not to."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        for record in read_records(fh, str(path), verify_crc, os.fstat(fh.fileno()).st_size, offset):
            return record
    raise InputError(f"{path}: no record at byte {offset} (the file changed since it was indexed)")


def _record_length(head: bytes, name: str, offset: int, size: int | None) -> int:
    """The data length a 12-byte record header at `offset` gives, checked against its CRC and against the
    `size` of the file (when known) before anything is allocated for it."""
    if len(head) < 12:
        raise InputError(f"{name}: truncated record header at byte {offset}")
    (length,) = struct.unpack_from("<Q", head)
    if struct.unpack_from("<I", head, 8)[0] != masked_crc32c(head[:8]):
        raise InputError(f"{name}: length CRC mismatch in the record header at byte {offset} (corrupt shard)")
    if size is not None and length > size - offset - 16:
        raise InputError(f"{name}: truncated record at byte {offset} (wants {length} bytes, "
                         f"{max(0, size - offset - 16)} left in the file)")
    return length


def shard_info(path: str | Path, verify_crc: bool = True) -> ShardInfo:
    """Re-derive a shard's `ShardInfo` from the file (e.g. to skip it on resume); reads it whole."""
    h = hashlib.sha256()

    class _Hashing:
        def __init__(self, fh: IO[bytes]) -> None:
            self.fh = fh

        def read(self, n: int) -> bytes:
            b = self.fh.read(n)
            h.update(b)
            return b

        def readinto(self, buf: bytearray) -> int:
            n = self.fh.readinto(buf)
            h.update(memoryview(buf)[:n])
            return n

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        count = sum(1 for _ in read_records(_Hashing(fh), str(path), verify_crc, size))  # type: ignore[arg-type]
    return ShardInfo(Path(path), count, Path(path).stat().st_size, h.hexdigest())


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses (the `crc32c` package: SSE4.2/ARMv8 instructions)."""
    return _crc32c(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC-32C of `data`: the CRC rotated and offset, so a CRC of CRCs is not trivial."""
    c = _crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
