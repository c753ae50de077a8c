"""The pvtbuild dataset format (TFRecord shards of `tf.train.Example`s + shapes.txt + dataset.json,
written without TensorFlow) and its readers.

One module per part of the format:

- `layout`: the directory, shard file names, `dataset.json` (`write_dataset_json`, `read_dataset_json`).
- `framing`: TFRecord files: record framing, CRC-32C, shard files (`write_shard`, `iter_records`).
- `example`: one record, a clip as a `tf.train.Example` (`serialize_example`, `decode_record`).
- `shapes`: shapes.txt, how to decode every stored array.
- `verify`: a written dataset checked against its dataset.json and shapes.txt.
- `tf_reader`, `torch_reader`: the readers.

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

Writing needs only numpy: `serialize_example` per clip, `write_shard` per shard, `write_shapes`
and `write_dataset_json` once. The readers import their frameworks and are
loaded on first use: `make_dataset` (tf.data) and `TFRecordIterableDataset`
(PyTorch, no TensorFlow).
"""

from __future__ import annotations

from typing import Any

from pvtbuild.dataset.example import decode_record, meta_schema, parse_example, serialize_example
from pvtbuild.dataset.framing import ShardInfo, iter_records, shard_info, write_shard
from pvtbuild.dataset.layout import (
    DATASET_JSON,
    SHAPES_FILE,
    list_shards,
    num_shards,
    read_dataset_json,
    shard_name,
    write_dataset_json,
)
from pvtbuild.dataset.shapes import array_shapes, read_shapes, write_shapes
from pvtbuild.dataset.verify import VerifyReport, verify_dataset

__all__ = [
    "DATASET_JSON",
    "SHAPES_FILE",
    "ShardInfo",
    "TFRecordIterableDataset",  # noqa: F822  (provided by __getattr__, on first use: it imports torch)
    "VerifyReport",
    "array_shapes",
    "decode_record",
    "iter_records",
    "list_shards",
    "make_dataset",  # noqa: F822  (provided by __getattr__, on first use: it imports TensorFlow)
    "meta_schema",
    "num_shards",
    "parse_example",
    "read_dataset_json",
    "read_shapes",
    "serialize_example",
    "shard_info",
    "shard_name",
    "verify_dataset",
    "write_dataset_json",
    "write_shapes",
    "write_shard",
]


def __getattr__(name: str) -> Any:
    """The readers, imported on first use: their frameworks cost seconds that writers never need to pay."""
    if name == "make_dataset":
        from pvtbuild.dataset.tf_reader import make_dataset  # noqa: PLC0415  (imports TensorFlow: ~4 s)

        return make_dataset
    if name == "TFRecordIterableDataset":
        from pvtbuild.dataset.torch_reader import TFRecordIterableDataset  # noqa: PLC0415  (imports torch: ~1.3 s)

        return TFRecordIterableDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
