"""shapes.txt: the dtype and shape of every array a dataset stores, one line each.

Format (see `pvtbuild.dataset` for the whole dataset format)::

    audio float32 1,192000
    cqt float32 2,216,1921
    disc int16 16,600
    velocity_75hz float32 600

``name dtype d1,d2,...``, separated by single spaces, lines sorted by name;
dtype is a numpy dtype name (the bytes are little-endian whatever the
machine). Blank lines and lines starting with ``#`` are ignored on reading.

The last dimension of a pvtbuild array is time. A control ``{name}_{grid}``
has the frames of the format stored beside it (dataset.json's
``control_grids``), and its frame k describes the instant that format's frame
k is centred on (with N samples at sr Hz; pvtbuild.music.controls has the details):

- ``encodec``, ``disc``: ceil(N/320) frames, frame k covers samples
  [320k, 320(k+1)); controls on their grid sample (k + 1/2)*320/sr s.
- ``cqt``: N // hop + 1 frames of a centred CQT, frame k centred on sample
  k*hop; controls on its grid sample k*hop/sr s (the first at 0, the last at N/sr).
- ``audio``: N samples; controls on the grid named for it, as above.

Each grid's rate, frames and offset (t_k = (k + offset)/rate) are in
dataset.json under ``config.controls.grids``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pvtbuild.dataset.example import SUPPORTED_DTYPES
from pvtbuild.dataset.layout import DATASET_JSON, SHAPES_FILE, read_dataset_json
from pvtbuild.engine.manifest import atomic_write_bytes
from pvtbuild.errors import InputError

Shapes = dict[str, tuple[np.dtype, tuple[int, ...]]]


def format_shapes(shapes: Mapping[str, tuple[Any, Sequence[int]]]) -> str:
    """The text of shapes.txt for name -> (dtype, shape)."""
    lines = []
    for name in sorted(shapes):
        dtype, shape = shapes[name]
        dtype = np.dtype(dtype).newbyteorder("=")
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"array name must be non-empty without whitespace, got {name!r}")
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"array {name!r}: dtype {dtype} not supported "
                             f"(use one of {[d.name for d in SUPPORTED_DTYPES]})")
        if len(shape) == 0 or any(int(d) < 1 for d in shape):
            raise ValueError(f"array {name!r}: shape must have at least one dimension, all >= 1, got {list(shape)}")
        lines.append(f"{name} {dtype.name} {','.join(str(int(d)) for d in shape)}\n")
    return "".join(lines)


def write_shapes(path: str | Path, shapes: Mapping[str, tuple[Any, Sequence[int]]]) -> None:
    """Write shapes.txt atomically from name -> (dtype, shape)."""
    atomic_write_bytes(path, format_shapes(shapes).encode())


def read_shapes(path: str | Path) -> Shapes:
    """name -> (np.dtype, shape) from a shapes.txt file, or from a dataset directory holding one
    (then checked against dataset.json's `shapes_sha256`: `read_dataset_shapes`)."""
    path = Path(path)
    if path.is_dir():
        return read_dataset_shapes(path)
    return parse_shapes(_shapes_text(_shapes_bytes(path), path), str(path))


def read_dataset_shapes(dataset_dir: str | Path) -> Shapes:
    """A dataset's shapes.txt, refused unless its sha256 is the one dataset.json records.

    A shapes.txt with the same byte count but other dims (``600,128`` for ``128,600``) or
    another dtype of the same size (int32 for float32) decodes every record without error,
    into wrong arrays; the hash catches it. A dataset without dataset.json (a plain reader
    of bare shards), or one written before pvtbuild recorded the hash, is read as it is.
    """
    root = Path(dataset_dir)
    path = root / SHAPES_FILE
    blob = _shapes_bytes(path)
    if (root / DATASET_JSON).is_file():
        want = read_dataset_json(root).get("shapes_sha256")
        if want is not None and hashlib.sha256(blob).hexdigest() != want:
            raise InputError(f"{path}: its sha256 is not the one dataset.json records (shapes_sha256): it was "
                             "edited or swapped, and would misread every array")
    return parse_shapes(_shapes_text(blob, path), str(path))


def _shapes_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"{path}: not found (every pvtbuild dataset has one beside its shards)")
    return path.read_bytes()


def _shapes_text(blob: bytes, path: Path) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def parse_shapes(text: str, where: str = "shapes.txt") -> Shapes:
    out: Shapes = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            name, dtype_name, dims = parts
            dtype = np.dtype(dtype_name)
            shape = tuple(int(d) for d in dims.split(","))
        except (ValueError, TypeError):
            raise InputError(f"{where}:{n}: expected 'name dtype d1,d2,...', got {line.strip()!r}") from None
        if dtype not in SUPPORTED_DTYPES:
            raise InputError(f"{where}:{n}: dtype {dtype_name!r} not supported")
        if any(d < 1 for d in shape):
            raise InputError(f"{where}:{n}: dimensions must be >= 1, got {dims}")
        if name in out:
            raise InputError(f"{where}:{n}: {name!r} listed twice")
        out[name] = (dtype, shape)
    if not out:
        raise InputError(f"{where}: lists no arrays")
    return out


def array_shapes(arrays: Mapping[str, np.ndarray]) -> Shapes:
    """name -> (dtype, shape) of one record's arrays: what `write_shapes` takes."""
    return {name: (np.dtype(a.dtype).newbyteorder("="), tuple(a.shape)) for name, a in sorted(arrays.items())}
