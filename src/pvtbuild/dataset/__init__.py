"""The dataset format (TFRecord shards + shapes.txt + dataset.json) and its readers.

The format is documented in `pvtbuild.dataset.tfrecord`. Writing needs only
numpy: `serialize_example` per clip, `write_shard` per shard, `write_shapes`
and `write_dataset_json` once. The readers import their frameworks and are
loaded on first use: `make_dataset` (tf.data) and `TFRecordIterableDataset`
(PyTorch, no TensorFlow).
"""

from __future__ import annotations

from typing import Any

from pvtbuild.dataset.shapes import array_shapes, read_shapes, write_shapes
from pvtbuild.dataset.tfrecord import (
    DATASET_JSON,
    SHAPES_FILE,
    ShardInfo,
    decode_record,
    iter_records,
    list_shards,
    meta_schema,
    num_shards,
    parse_example,
    read_dataset_json,
    serialize_example,
    shard_info,
    shard_name,
    write_dataset_json,
    write_shard,
)
from pvtbuild.dataset.verify import VerifyReport, verify_dataset

__all__ = [
    "DATASET_JSON",
    "SHAPES_FILE",
    "ShardInfo",
    "TFRecordIterableDataset",
    "VerifyReport",
    "array_shapes",
    "decode_record",
    "iter_records",
    "list_shards",
    "make_dataset",
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
    if name == "make_dataset":
        from pvtbuild.dataset.tf_reader import make_dataset

        return make_dataset
    if name == "TFRecordIterableDataset":
        from pvtbuild.dataset.torch_reader import TFRecordIterableDataset

        return TFRecordIterableDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
