"""The dataset's directory layout, its shard file names and `dataset.json` (`write_dataset_json`,
`read_dataset_json`): what names each file of a pvtbuild dataset and what it holds.

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
is decided by `pvtbuild.stages.shard`; this package is only the container.

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
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from pvtbuild.dataset.example import META_KINDS
from pvtbuild.dataset.framing import ShardInfo
from pvtbuild.engine.manifest import atomic_write_bytes, path_within
from pvtbuild.errors import InputError, brief

FORMAT = "pvtbuild-tfrecord"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")
SHAPES_FILE = "shapes.txt"
DATASET_JSON = "dataset.json"

_RESERVED_JSON_KEYS = ("format", "format_version", "meta", "splits", "shapes_sha256")
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.tfrecord$")


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
            ok = (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                  and isinstance(entry.get("sha256"), str) and _is_int(entry.get("records"))
                  and _is_int(entry.get("bytes")))
            _expect(ok, path, f"{key}.shards[{i}]", "{file, records, bytes, sha256}", entry)
            path_within(path.parent, entry["file"], f"{path}: {key}.shards[{i}]")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(ok: bool, path: Path, key: str, what: str, value: Any) -> None:
    """Raise `PATH: KEY: must be WHAT, got VALUE` (VALUE cut short) unless `ok`."""
    if not ok:
        raise InputError(f"{path}: {key}: must be {what}, got {brief(value)}")
