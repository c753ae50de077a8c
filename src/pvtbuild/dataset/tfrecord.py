"""The pvtbuild dataset format: TFRecord shards of `tf.train.Example`s, written without TensorFlow.

On disk
-------
A dataset is one directory::

    DATASET/
      shapes.txt                               how to decode every stored array
      dataset.json                             counts, shard checksums, config, versions
      train/train-00000-of-00012.tfrecord      shard_name("train", 0, 12)
      ...
      valid/valid-00000-of-00003.tfrecord
      .shard/                                  the shard stage's bookkeeping (pvtbuild.stages.shard); readers ignore it

What goes into a pvtbuild dataset (formats, controls, metadata, splits, order)
is decided by `pvtbuild.stages.shard`; this module is only the container.

**Shards** are standard TFRecord files: each record is framed as::

    uint64  length            little-endian, bytes of data
    uint32  masked_crc32c(length bytes)
    byte    data[length]      one serialized tf.train.Example
    uint32  masked_crc32c(data)

with ``masked_crc32c(x) = ((c >> 15 | c << 17) + 0xA282EAD8) mod 2**32`` and ``c``
the CRC-32C (Castagnoli) of x. Shards are written under a temporary name
beside their final one and renamed when complete, so a visible shard is whole.

**Records**: one `tf.train.Example` per clip. Its feature map holds

- every array under its own name (``audio``, ``cqt``, ``encodec``, ``disc``,
  controls ``{control}_{grid}`` such as ``velocity_75hz``) as a ``bytes_list``
  of exactly one value: the array's C-order bytes, little-endian, with the
  dtype and shape given by shapes.txt (nothing about the array is stored in
  the record itself);
- metadata scalars: ``str`` -> ``bytes_list`` (UTF-8; a source file name that is
  not UTF-8 is stored as the file system's own bytes, `text_bytes`, so it
  survives losslessly; readers show it with U+FFFD for the bytes UTF-8 lacks),
  ``int``/``bool`` ->
  ``int64_list``, ``float`` -> ``float_list`` (float32, as Example allows no
  wider float; exact values stay in the stage manifests). The pipeline stores
  the clip id under ``id`` and clip parameters beside it (``source_md5``,
  ``instrument``, ``program``, ``start``, ``transpose``, ``mod_freq``, ...).

`serialize_example` encodes the Example by hand, with the map entries sorted by
key (UTF-8 bytes, lexicographic: C++ protobuf's deterministic order; Python's
upb orders a key after its longer extensions, so "deterministic" protobuf bytes
differ between implementations and are no reference). The bytes are thus a
function of the content alone, whatever the dict order; protobuf and
TensorFlow parse them to the same Example as one they built (tests check).

**shapes.txt** (see `pvtbuild.dataset.shapes`): one line per stored array,
``name dtype d1,d2,...``, e.g. ``cqt float32 2,216,1921``; dtype is a numpy
name. A trainer needs nothing else::

    features = {n: tf.io.FixedLenFeature([], tf.string) for n in shapes}
    x = tf.io.parse_single_example(record, features)
    cqt = tf.reshape(tf.io.decode_raw(x["cqt"], tf.float32), [2, 216, 1921])

The last axis of every array is time; a control has the frames of the format
stored beside it, and frame k sits where that format's frame k is centred:
(k + 1/2)*320/sr s for ``encodec`` / ``disc``, k*hop/sr s for the centred
``cqt`` (`pvtbuild.dataset.shapes` and `pvtbuild.music.controls` spell it out).

**dataset.json** (written by `write_dataset_json`)::

    {
      "format": "pvtbuild-tfrecord",
      "format_version": 1,
      "meta": {"id": "string", "program": "int", "mod_freq": "float", ...},
      "splits": {
        "train": {"count": 96000,
                  "shards": [{"file": "train/train-00000-of-00012.tfrecord",
                              "records": 8000, "bytes": 157286400,
                              "sha256": "9f2c..."}, ...]},
        "valid": {"count": 24000, "shards": [...]}
      },
      "shapes_sha256": "3b1f...",             sha256 of shapes.txt: readers refuse a shapes.txt
                                              that is not this one (it would misread every array)
      ...                                     any further keys the stage passes in
    }                                         (config, package versions, SoundFont
                                               sha256, EnCodec weights, ...)

``meta`` names each metadata feature's kind (string, int, float), so readers
can parse metadata as well as arrays; ``file`` is relative to the dataset
directory; ``count`` is the sum of the split's ``records``. `verify_dataset`
checks a dataset against this file.

Why no TensorFlow here: importing it costs ~4 s and several hundred MB per
worker process, and the writer only needs framing, a CRC and ~30 lines of
protobuf wire format. CRC-32C has no stdlib implementation; the `crc32c`
package computes it with the CPU's CRC instructions (several GB/s), so
readers check every record's CRCs by default.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from crc32c import crc32c as _crc32c

from pvtbuild.engine.manifest import atomic_write, atomic_write_bytes, path_within
from pvtbuild.errors import InputError, brief

FORMAT = "pvtbuild-tfrecord"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")
SHAPES_FILE = "shapes.txt"
DATASET_JSON = "dataset.json"

# dtypes an array may have: those numpy, tf.io.decode_raw and torch all know.
SUPPORTED_DTYPES = tuple(
    np.dtype(d) for d in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "bool")
)
META_KINDS = ("string", "int", "float")

_RESERVED_JSON_KEYS = ("format", "format_version", "meta", "splits", "shapes_sha256")
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.tfrecord$")

MetaValue = str | bytes | int | float


# --- shards ------------------------------------------------------------------------------


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


def shard_name(split: str, i: int, n: int) -> str:
    """File name of shard `i` of `n` of a split: ``train-00003-of-00012.tfrecord``."""
    if not 0 <= i < n:
        raise ValueError(f"shard index {i} out of range for {n} shards")
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def num_shards(total_bytes: int, shard_mb: float) -> int:
    """How many shards keep each near `shard_mb` megabytes (at least one)."""
    return max(1, math.ceil(total_bytes / (shard_mb * 1e6)))


def list_shards(dataset_dir: str | Path, split: str) -> list[Path]:
    """The split's shard files, sorted by name; an `InputError` if there are none."""
    d = Path(dataset_dir) / split
    files = sorted(p for p in d.glob(f"{split}-*-of-*.tfrecord") if _SHARD_RE.match(p.name))
    if not files:
        raise InputError(f"{d}: no {split}-*-of-*.tfrecord shards (is {dataset_dir} a pvtbuild dataset?)")
    return files


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


# --- Example encoding ------------------------------------------------------------------


def serialize_example(
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, MetaValue],
    *,
    shapes: Mapping[str, tuple[Any, Sequence[int]]] | None = None,
) -> bytes:
    """One clip as a serialized `tf.train.Example` (see the module docstring).

    Args:
        arrays: name -> array; stored as raw little-endian C-order bytes.
        meta: name -> str | bytes | int | bool | float (numpy scalars too).
        shapes: if given (``read_shapes`` output), every array must match it exactly
            and every name in it must be present.

    Returns:
        The Example's bytes; equal content gives equal bytes whatever the dict order.
    """
    if shapes is not None:
        _check_against_shapes(arrays, shapes)
    clash = set(arrays) & set(meta)
    if clash:
        raise ValueError(f"names used both as array and as metadata: {sorted(clash)}")
    features: dict[bytes, list[bytes | memoryview]] = {}
    for name, arr in arrays.items():
        features[_key(name)] = _bytes_feature(_array_bytes(name, arr))
    for name, value in meta.items():
        features[_key(name)] = _meta_feature(name, value)
    parts: list[bytes | memoryview] = []
    for key in sorted(features):  # protobuf's deterministic map order: by key bytes
        feat = features[key]
        feat_len = sum(len(p) for p in feat)
        entry_head = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(feat_len)
        parts += [b"\x0a", _varint(len(entry_head) + feat_len), entry_head, *feat]
    body_len = sum(len(p) for p in parts)
    return b"".join([b"\x0a", _varint(body_len), *parts])


def meta_schema(meta: Mapping[str, MetaValue]) -> dict[str, str]:
    """Kinds of metadata features (``string``/``int``/``float``) for dataset.json's ``meta``."""
    return {name: _meta_kind(name, value) for name, value in sorted(meta.items())}


# --- Example decoding ------------------------------------------------------------------

# A decoded feature: kind ("bytes", "float", "int") and its values; bytes values are
# memoryviews into the record (no copy).
Feature = tuple[str, list[Any]]


def parse_example(data: bytes | bytearray | memoryview) -> dict[str, Feature]:
    """Decode a serialized `tf.train.Example` without protobuf or TensorFlow.

    Handles what any Example writer produces: the feature map in any order,
    packed or unpacked float/int64 lists, unknown fields (skipped). Raises
    `InputError` on malformed wire data.
    """
    mv = memoryview(data).cast("B")
    out: dict[str, Feature] = {}
    try:
        for field, wt, a, b in _fields(mv, 0, len(mv)):
            if field != 1 or wt != 2:
                continue
            for ffield, fwt, fa, fb in _fields(mv, a, b):  # Features
                if ffield != 1 or fwt != 2:
                    continue
                key = ""
                feat: Feature = ("bytes", [])
                for efield, ewt, ea, eb in _fields(mv, fa, fb):  # map entry
                    if efield == 1 and ewt == 2:
                        key = bytes(mv[ea:eb]).decode("utf-8")
                    elif efield == 2 and ewt == 2:
                        feat = _parse_feature(mv, ea, eb)
                out[key] = feat
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise InputError(f"malformed tf.train.Example: {e}") from None
    return out


def decode_record(
    data: bytes | bytearray | memoryview,
    shapes: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
    names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Arrays (numpy views into `data` where aligned) and metadata values of one record.

    Args:
        data: one serialized Example; pass a `bytearray` for writable arrays.
        shapes: `read_shapes` output.
        names: what to return (arrays from shapes.txt or metadata keys); default all arrays.

    Returns:
        name -> np.ndarray (native byte order) for arrays; str, int, float (or a
        list, for a metadata feature with other than one value) for metadata.
    """
    feats = parse_example(data)
    out: dict[str, Any] = {}
    for name in (shapes if names is None else names):
        if name not in feats:
            raise InputError(f"record has no feature {name!r} (has {sorted(feats)})")
        kind, values = feats[name]
        if name in shapes:
            dtype, shape = shapes[name]
            out[name] = _array_from(name, kind, values, dtype, shape)
        else:
            out[name] = _meta_value(kind, values)
    return out


# --- dataset.json --------------------------------------------------------------------


def write_dataset_json(
    path: str | Path,
    splits_info: Mapping[str, Sequence[ShardInfo]],
    extra: Mapping[str, Any],
    meta_schema: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write dataset.json (schema in the module docstring), atomically, keys sorted.

    Args:
        path: ``DATASET/dataset.json``; shard paths are stored relative to its folder, and the
            sha256 of the shapes.txt there (write it first) as ``shapes_sha256``.
        splits_info: split name -> its shards in order (empty list: an empty split).
        extra: further top-level keys: config, package versions, SoundFont sha256, ...
        meta_schema: metadata kinds, e.g. from `meta_schema(meta_of_one_record)`.

    Returns:
        The document written.
    """
    path = Path(path)
    reserved = sorted(set(extra) & set(_RESERVED_JSON_KEYS))
    if reserved:
        raise ValueError(f"extra keys {reserved} are reserved in dataset.json")
    for name, kind in (meta_schema or {}).items():
        if kind not in META_KINDS:
            raise ValueError(f"meta_schema[{name!r}]: kind must be one of {META_KINDS}, got {kind!r}")
    splits = {}
    for split, shards in splits_info.items():
        entries = [s.to_dict(path.parent) for s in shards]
        splits[split] = {"count": sum(e["records"] for e in entries), "shards": entries}
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": dict(meta_schema or {}),
        "splits": splits,
        **extra,
    }
    shapes = path.parent / SHAPES_FILE
    if shapes.is_file():  # written first: readers check the shapes.txt they find is this one
        doc["shapes_sha256"] = hashlib.sha256(shapes.read_bytes()).hexdigest()
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode())
    return doc


def read_dataset_json(dataset_dir: str | Path) -> dict[str, Any]:
    """dataset.json of a dataset directory, checked to be this format."""
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        raise InputError(f"{path}: not found (is {dataset_dir} a pvtbuild dataset?)")
    try:
        doc = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    _expect(isinstance(doc, dict), path, "the document", "a JSON object", doc)
    if doc.get("format") != FORMAT:
        raise InputError(f"{path}: format is {brief(doc.get('format'))}, expected {FORMAT!r}")
    version = doc.get("format_version", 0)
    _expect(_is_int(version), path, "format_version", "an integer", version)
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: format_version {version} is newer than this pvtbuild reads ({FORMAT_VERSION})")
    _check_dataset_doc(doc, path)
    return doc


def _check_dataset_doc(doc: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming the key, a dataset.json whose parts readers rely on are malformed,
    or whose shard `file` lies outside the dataset directory."""
    for key in ("meta", "control_grids"):
        value = doc.get(key, {})
        _expect(isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), path, key,
                "a mapping of names to strings", value)
    splits = doc.get("splits")
    _expect(isinstance(splits, dict), path, "splits", "a mapping of split names to {count, shards}", splits)
    for split, info in splits.items():
        key = f"splits.{split}"
        _expect(isinstance(info, dict) and _is_int(info.get("count")) and isinstance(info.get("shards"), list),
                path, key, "a mapping with an integer count and a list of shards", info)
        for i, entry in enumerate(info["shards"]):
            ok = (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)
                  and _is_int(entry.get("records")) and _is_int(entry.get("bytes")))
            _expect(ok, path, f"{key}.shards[{i}]", "{file, records, bytes, sha256}", entry)
            path_within(path.parent, entry["file"], f"{path}: {key}.shards[{i}]")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(ok: bool, path: Path, key: str, what: str, value: Any) -> None:
    """Raise `PATH: KEY: must be WHAT, got VALUE` (VALUE cut short) unless `ok`."""
    if not ok:
        raise InputError(f"{path}: {key}: must be {what}, got {brief(value)}")


# --- CRC-32C -------------------------------------------------------------------------


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses (the `crc32c` package: SSE4.2/ARMv8 instructions)."""
    return _crc32c(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    c = _crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- internals -----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative ints
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(name: str) -> bytes:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"feature name must be a non-empty string without whitespace, got {name!r}")
    return name.encode("utf-8")


def _array_bytes(name: str, arr: np.ndarray) -> memoryview:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"array {name!r}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise ValueError(f"array {name!r}: dtype {arr.dtype} not supported (use one of {[d.name for d in SUPPORTED_DTYPES]})")
    if arr.ndim == 0:
        raise ValueError(f"array {name!r}: 0-d arrays are not stored as arrays; pass the value as metadata")
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return memoryview(le).cast("B")


def _bytes_feature(payload: bytes | memoryview) -> list[bytes | memoryview]:
    # Feature{bytes_list(1): BytesList{value(1): payload}}
    inner_head = b"\x0a" + _varint(len(payload))
    inner_len = len(inner_head) + len(payload)
    return [b"\x0a" + _varint(inner_len) + inner_head, payload]


def text_bytes(text: str) -> bytes:
    """A metadata string's stored bytes: UTF-8, losslessly, and never an error.

    A file name that is not UTF-8 reaches Python as a string with escape characters
    (`os.fsdecode`'s surrogateescape); it is stored as its original bytes (`os.fsencode`).
    Any other lone surrogate (only a hand-made string has one) is stored UTF-8-style
    (surrogatepass). Valid text gives exactly its UTF-8 bytes.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _meta_kind(name: str, value: Any) -> str:
    if isinstance(value, (str, bytes)):
        return "string"
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    raise TypeError(f"metadata {name!r}: expected str, bytes, int or float, got {type(value).__name__}")


def _meta_feature(name: str, value: Any) -> list[bytes | memoryview]:
    kind = _meta_kind(name, value)
    if kind == "string":
        return _bytes_feature(text_bytes(value) if isinstance(value, str) else bytes(value))
    if kind == "int":
        packed = _varint(int(value))
        inner = b"\x0a" + _varint(len(packed)) + packed  # Int64List, packed
        return [b"\x1a" + _varint(len(inner)) + inner]
    inner = b"\x0a\x04" + struct.pack("<f", float(value))  # FloatList, packed, one float32
    return [b"\x12" + _varint(len(inner)) + inner]


def _check_against_shapes(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[Any, Sequence[int]]]) -> None:
    missing = sorted(set(shapes) - set(arrays))
    extra = sorted(set(arrays) - set(shapes))
    if missing or extra:
        raise ValueError(f"arrays do not match shapes.txt: missing {missing}, not in shapes.txt {extra}")
    for name, (dtype, shape) in shapes.items():
        arr = arrays[name]
        if arr.dtype.newbyteorder("=") != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
            raise ValueError(
                f"array {name!r}: {arr.dtype} {list(arr.shape)} does not match shapes.txt {np.dtype(dtype)} {list(shape)}"
            )


def _read_varint(mv: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = mv[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(mv: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in mv[pos:end]; for varints start is the value."""
    while pos < end:
        tag, pos = _read_varint(mv, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 2:
            n, pos = _read_varint(mv, pos)
            if pos + n > end:
                raise ValueError("length-delimited field runs past its message")
            yield field, wt, pos, pos + n
            pos += n
        elif wt == 0:
            v, pos = _read_varint(mv, pos)
            yield field, wt, v, pos
        elif wt == 5:
            yield field, wt, pos, pos + 4
            pos += 4
        elif wt == 1:
            yield field, wt, pos, pos + 8
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
    if pos != end:
        raise ValueError("message runs past its end")


def _parse_feature(mv: memoryview, pos: int, end: int) -> Feature:
    kind, values = "bytes", []
    for field, wt, a, b in _fields(mv, pos, end):
        if field == 1 and wt == 2:  # BytesList
            kind = "bytes"
            values = [mv[va:vb] for f, w, va, vb in _fields(mv, a, b) if f == 1 and w == 2]
        elif field == 2 and wt == 2:  # FloatList
            kind, values = "float", []
            for f, w, va, vb in _fields(mv, a, b):
                if f == 1 and w == 2:  # packed
                    values += np.frombuffer(mv[va:vb], "<f4").tolist()
                elif f == 1 and w == 5:
                    values.append(struct.unpack("<f", mv[va:vb])[0])
        elif field == 3 and wt == 2:  # Int64List
            kind, values = "int", []
            for f, w, va, vb in _fields(mv, a, b):
                if f == 1 and w == 2:  # packed varints
                    p = va
                    while p < vb:
                        v, p = _read_varint(mv, p)
                        values.append(v - (1 << 64) if v >> 63 else v)
                elif f == 1 and w == 0:
                    values.append(va - (1 << 64) if va >> 63 else va)
    return kind, values


def _array_from(name: str, kind: str, values: list[Any], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if kind != "bytes" or len(values) != 1:
        raise InputError(f"feature {name!r}: expected one bytes value, got {kind} x{len(values)}")
    raw = values[0]
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != want:
        raise InputError(f"feature {name!r}: {len(raw)} bytes, shapes.txt {dtype} {list(shape)} needs {want}")
    arr = np.frombuffer(raw, dtype.newbyteorder("<")).reshape(shape)
    if not arr.dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def _meta_value(kind: str, values: list[Any]) -> Any:
    if kind == "bytes":
        values = [bytes(v).decode("utf-8", errors="replace") for v in values]
    return values[0] if len(values) == 1 else values
