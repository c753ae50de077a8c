"""tf.data reader of a pvtbuild dataset.

    from pvtbuild.dataset.tf_reader import make_dataset
    ds = make_dataset("build/dataset", "train", names=["encodec", "velocity_75hz"],
                      batch_size=16, shuffle_seed=0, repeat=True,
                      num_shards=world_size, shard_index=rank)
    for batch in ds:            # {"encodec": [16,128,600] float32, "velocity_75hz": [16,600] float32}
        ...

Pipeline: shard files sorted by name -> ``shard(num_shards, shard_index)`` (each
worker reads whole files; it needs at least as many files as workers) ->
seeded file shuffle -> repeat -> parallel ``interleave`` of TFRecordDatasets ->
seeded shuffle of serialized records -> batch -> ``parse_example`` +
``decode_raw`` + reshape, vectorised over the batch -> prefetch. Shuffling the
serialized records before parsing is the same as shuffling parsed examples
and parses a batch in one op instead of one op per example. TFRecordDataset
checks every record's CRC; its length fields are checked first (`check_framing`,
one small read per record), as a hostile one crashed TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import tensorflow as tf

from pvtbuild.dataset.framing import check_framing
from pvtbuild.dataset.layout import DATASET_JSON, SHAPES_FILE, list_shards, read_dataset_json
from pvtbuild.dataset.shapes import read_dataset_shapes
from pvtbuild.errors import InputError

_META_DTYPES = {"string": tf.string, "int": tf.int64, "float": tf.float32}


def make_dataset(
    dataset_dir: str | Path,
    split: str,
    names: Sequence[str] | None = None,
    batch_size: int | None = 16,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 1024,
    num_shards: int = 1,
    shard_index: int = 0,
    repeat: bool = False,
    deterministic: bool = True,
    drop_remainder: bool = False,
    cycle_length: int | None = None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of dicts name -> tensor shaped as in shapes.txt.

    Args:
        dataset_dir: the dataset directory (shapes.txt, dataset.json, train/, valid/).
        split: "train" or "valid" (any split directory present).
        names: arrays (from shapes.txt) and metadata keys (from dataset.json's
            ``meta``) to return; default all arrays.
        batch_size: examples per element (a leading batch dimension); None: single examples.
        shuffle_seed: None reads in file order; an int shuffles files and examples
            reproducibly (a new order each epoch / each iteration of the dataset).
        shuffle_buffer: examples held by the example shuffle.
        num_shards, shard_index: this worker's share of the files (file level).
        repeat: repeat forever (reshuffling each epoch).
        deterministic: keep a reproducible order through the parallel stages;
            False lets tf.data return whatever is ready first.
        drop_remainder: drop a last, smaller batch.
        cycle_length: files read at once; default min(files, 4).
    """
    files = [str(p) for p in list_shards(dataset_dir, split)]
    if not 0 <= shard_index < num_shards:
        raise InputError(f"shard_index must be within 0..{num_shards - 1}, got {shard_index}")
    if num_shards > len(files):
        raise InputError(
            f"{dataset_dir}/{split}: {len(files)} shard files for {num_shards} workers; "
            f"files are split per worker, so write the dataset with more (smaller) shards"
        )
    features, decode = _feature_specs(Path(dataset_dir), names)
    for path in files[shard_index::num_shards]:
        check_framing(path)  # tf.data trusts length fields: a hostile one crashed the process

    ds = tf.data.Dataset.from_tensor_slices(files).shard(num_shards, shard_index)
    n_files = len(files[shard_index::num_shards])
    if shuffle_seed is not None:
        ds = ds.shuffle(n_files, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle_length or min(n_files, 4),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle_seed is not None:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed + 1, reshuffle_each_iteration=True)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)

        def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
            return decode(tf.io.parse_example(serialized, features), batched=True)

    else:

        def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
            return decode(tf.io.parse_single_example(serialized, features), batched=False)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def _feature_specs(dataset_dir: Path, names: Sequence[str] | None):  # type: ignore[no-untyped-def]
    """tf.io feature specs for `names` and a function decoding the parsed features."""
    shapes = read_dataset_shapes(dataset_dir)
    names = list(shapes) if names is None else list(names)
    meta_kinds: dict[str, str] = {}
    if any(n not in shapes for n in names):
        meta_kinds = read_dataset_json(dataset_dir).get("meta", {})
    features = {}
    for name in names:
        if name in shapes:
            features[name] = tf.io.FixedLenFeature([], tf.string)
        elif name in meta_kinds:
            features[name] = tf.io.FixedLenFeature([], _META_DTYPES[meta_kinds[name]])
        else:
            raise InputError(
                f"{dataset_dir}: no array or metadata named {name!r} "
                f"(arrays in {SHAPES_FILE}: {sorted(shapes)}; metadata in {DATASET_JSON}: {sorted(meta_kinds)})"
            )

    def decode(parsed: dict[str, tf.Tensor], batched: bool) -> dict[str, tf.Tensor]:
        out = {}
        for name in names:
            if name in shapes:
                dtype, shape = shapes[name]
                raw = tf.io.decode_raw(parsed[name], tf.as_dtype(dtype), little_endian=True)
                out[name] = tf.reshape(raw, ([-1] if batched else []) + list(shape))
            else:
                out[name] = parsed[name]
        return out

    return features, decode
