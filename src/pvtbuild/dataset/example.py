"""One record of a pvtbuild dataset: a clip as a `tf.train.Example`, encoded and decoded by hand
(`serialize_example`, `parse_example`, `decode_record`), without protobuf or TensorFlow.

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
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pvtbuild.errors import InputError

# dtypes an array may have: those numpy, tf.io.decode_raw and torch all know.
SUPPORTED_DTYPES = tuple(
    np.dtype(d) for d in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "bool")
)
META_KINDS = ("string", "int", "float")

MetaValue = str | bytes | int | float


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
        raise ValueError(f"array {name!r}: dtype {arr.dtype} not supported "
                         f"(use one of {[d.name for d in SUPPORTED_DTYPES]})")
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
                f"array {name!r}: {arr.dtype} {list(arr.shape)} does not match shapes.txt "
                f"{np.dtype(dtype)} {list(shape)}"
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
