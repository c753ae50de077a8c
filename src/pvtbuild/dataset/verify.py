"""Check a written dataset against its dataset.json and shapes.txt, reading every byte once.

Per shard listed in dataset.json: the file exists, its size and sha256 match,
its TFRecord framing is whole and every CRC matches, its record count
matches; per record: every array of shapes.txt is present with the right
byte length, and float arrays hold only finite values. Per split: the listed
counts add up, shard names follow ``{split}-{i:05d}-of-{n:05d}``, and no
``.tfrecord`` file lies in the split's folder unlisted. Each problem is one
line naming the file (and record) it concerns.

    python -m pvtbuild.dataset.verify build/dataset
"""

from __future__ import annotations

import hashlib
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from pvtbuild.dataset.example import decode_record
from pvtbuild.dataset.framing import masked_crc32c
from pvtbuild.dataset.layout import read_dataset_json, shard_name
from pvtbuild.dataset.shapes import Shapes, read_dataset_shapes
from pvtbuild.errors import InputError

_MAX_PER_SHARD = 5  # record-level problems reported per shard before "... and N more"


@dataclass
class VerifyReport:
    """The outcome of `verify_dataset`: ok when `problems` is empty."""

    problems: list[str] = field(default_factory=list)
    shards: int = 0  # shard files read
    records: int = 0  # records decoded
    bytes: int = 0  # bytes read

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "shards": self.shards, "records": self.records,
                "bytes": self.bytes}

    def summary(self) -> str:
        head = (f"{'ok' if self.ok else 'FAILED'}: {self.shards} shards, {self.records} records, "
                f"{self.bytes / 1e6:.1f} MB")
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def verify_dataset(dataset_dir: str | Path) -> VerifyReport:
    """Verify every shard and record of a dataset directory; never raises for a bad dataset."""
    root = Path(dataset_dir)
    report = VerifyReport()
    try:
        doc = read_dataset_json(root)
        shapes = read_dataset_shapes(root)
    except InputError as e:
        report.problems.append(str(e))
        return report
    splits = doc.get("splits")
    if not isinstance(splits, dict):
        report.problems.append(f"{root}/dataset.json: no 'splits' mapping")
        return report
    for split, info in sorted(splits.items()):
        _verify_split(root, split, info, shapes, report)
    return report


def _verify_split(root: Path, split: str, info: dict[str, Any], shapes: Shapes, report: VerifyReport) -> None:
    shards = info.get("shards", [])
    listed = {(root / s["file"]).resolve() for s in shards}
    if sum(s.get("records", 0) for s in shards) != info.get("count"):
        report.problems.append(f"{split}: count {info.get('count')} is not the sum of its shards' records")
    for i, entry in enumerate(shards):
        if Path(entry["file"]).name != shard_name(split, i, len(shards)):
            report.problems.append(f"{entry['file']}: expected name {shard_name(split, i, len(shards))} "
                                   f"for shard {i} of {len(shards)}")
        _verify_shard(root, entry, shapes, report)
    for path in sorted((root / split).glob("*.tfrecord")):
        if path.resolve() not in listed:
            report.problems.append(f"{path.relative_to(root)}: extra shard, not listed in dataset.json")


def _verify_shard(root: Path, entry: dict[str, Any], shapes: Shapes, report: VerifyReport) -> None:
    rel = entry["file"]
    path = root / rel
    if not path.is_file():
        report.problems.append(f"{rel}: missing shard ({entry['records']} records)")
        return
    report.shards += 1
    size = path.stat().st_size
    if size != entry["bytes"]:
        report.problems.append(f"{rel}: {size} bytes, dataset.json says {entry['bytes']} (truncated or rewritten)")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        count, bad, whole = _read_shard(_HashingReader(fh, h), rel, shapes, report, size)
        h.update(fh.read())  # what is left after a broken frame
    if bad > _MAX_PER_SHARD:
        report.problems.append(f"{rel}: ... and {bad - _MAX_PER_SHARD} more bad records")
    report.records += count
    report.bytes += size
    if h.hexdigest() != entry["sha256"]:
        report.problems.append(f"{rel}: sha256 {h.hexdigest()[:12]}... does not match dataset.json "
                               f"{entry['sha256'][:12]}...")
    if whole and count != entry["records"]:
        report.problems.append(f"{rel}: {count} records read, dataset.json says {entry['records']}")


def _read_shard(fh: "_HashingReader", rel: str, shapes: Shapes, report: VerifyReport,
                size: int) -> tuple[int, int, bool]:
    """Walk the framing of a file of `size` bytes; returns (records, bad records, framing intact to the end).

    A length field is compared with the bytes left before anything is allocated for it: a huge
    length whose CRC is valid must be a "truncated" problem, not a MemoryError.
    """
    count = bad = offset = 0

    def problem(msg: str) -> None:
        nonlocal bad
        bad += 1
        if bad <= _MAX_PER_SHARD:
            report.problems.append(f"{rel}: record {count} (byte {offset}): {msg}")

    while True:
        head = fh.read(12)
        if not head:
            return count, bad, True
        if len(head) < 12:
            problem("truncated shard: incomplete record header")
            return count, bad, False
        (length,) = struct.unpack_from("<Q", head)
        if struct.unpack_from("<I", head, 8)[0] != masked_crc32c(head[:8]):
            problem("length CRC mismatch (corrupt shard); cannot read past it")
            return count, bad, False
        if length > size - offset - 16:
            problem(f"truncated shard: record wants {length} bytes, file ends first")
            return count, bad, False
        data = bytearray(length)
        got = fh.readinto(data)
        foot = fh.read(4)
        if got != length or len(foot) < 4:
            problem(f"truncated shard: record wants {length} bytes, file ends first")
            return count, bad, False
        if struct.unpack("<I", foot)[0] != masked_crc32c(data):
            problem("data CRC mismatch (corrupt record)")
        elif msg := _check_record(data, shapes):
            problem(msg)
        count += 1
        offset += 16 + length


def _check_record(data: bytearray, shapes: Shapes) -> str:
    try:
        arrays = decode_record(data, shapes)
    except InputError as e:
        return str(e)
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return f"{name}: {int((~np.isfinite(arr)).sum())} non-finite values"
    return ""


class _HashingReader:
    """A binary file whose reads also feed a hash."""

    def __init__(self, fh: IO[bytes], h: "hashlib._Hash") -> None:
        self.fh, self.h = fh, h

    def read(self, n: int = -1) -> bytes:
        b = self.fh.read(n)
        self.h.update(b)
        return b

    def readinto(self, buf: bytearray) -> int:
        n = self.fh.readinto(buf) or 0
        self.h.update(memoryview(buf)[:n])
        return n


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pvtbuild.dataset.verify DATASET_DIR", file=sys.stderr)
        return 2
    report = verify_dataset(args[0])
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
