"""PyTorch reader of a pvtbuild dataset, without TensorFlow.

    from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
    ds = TFRecordIterableDataset("build/dataset", "train", names=["encodec", "velocity_75hz"],
                                 shuffle_seed=0, rank=rank, world_size=world_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=4)
    for epoch in range(epochs):
        ds.set_epoch(epoch)     # before creating the epoch's iterator
        for batch in loader:    # {"encodec": [16,128,600] float32, ...}
            ...

Records are read with `pvtbuild.dataset.framing.iter_records` and decoded by
its small Example decoder (`parse_example`); arrays are ``np.frombuffer`` views
of the record's buffer turned into tensors without a copy, except where the
protobuf framing leaves an array's bytes misaligned for its dtype (then one
copy). Each record's length is checked against its CRC and the file's size
before it is read; its data CRC is checked too unless ``verify_crc=False``
(the `crc32c` package's CPU instructions make this cheap: see bench/bench_read.py).
A damaged shard raises `InputError`, one line naming the file and byte offset.

Files are split across ranks, then across DataLoader workers: worker w of
rank r reads files ``order[r + world_size * w :: world_size * num_workers]``,
so every file is read exactly once per epoch. ``order`` is the sorted file
list, shuffled per epoch when a seed is given (the same on every rank).
Examples are then shuffled through a buffer seeded by (seed, epoch, rank,
worker). Ranks get whole files, so their example counts differ by up to one
shard's worth: a DDP trainer should stop every rank at a fixed number of steps.
With ``persistent_workers=True`` the workers keep the epoch they started with;
leave it off for `set_epoch` to reach them.

A DataLoader over an IterableDataset forms each batch inside one worker, from
that worker's files: each worker drops its own partial batch every epoch, and a
batch holds neighbours of one file. The trainer reads `TFRecordMapDataset`
instead: the same rank's files, every record of them in one permutation drawn
from (seed, epoch, rank), fetched by (file, byte offset) and cut into batches
in the main process (`epoch_batches`, a DataLoader's ``batch_sampler``):

    ds = TFRecordMapDataset("build/dataset", "train", names=[...], shuffle_seed=0, rank=rank, world_size=world_size)
    ds.set_epoch(epoch)
    loader = DataLoader(ds, batch_sampler=ds.epoch_batches(16), num_workers=4)

so the batches are the same whatever the number of workers, mix the whole
share, and only the epoch's last partial batch is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pvtbuild.dataset.example import decode_record
from pvtbuild.dataset.framing import iter_records, read_record_at, record_offsets
from pvtbuild.dataset.layout import DATASET_JSON, SHAPES_FILE, list_shards, read_dataset_json
from pvtbuild.dataset.shapes import read_dataset_shapes
from pvtbuild.errors import InputError


class _SplitShare:
    """What both readers share: a split's files, shapes and names, checked once, and this rank's place.

    Stops with one `InputError` line for a rank out of range, fewer files than ranks, or a name
    that is neither an array of shapes.txt nor metadata of dataset.json.
    """

    def __init__(self, dataset_dir: str | Path, split: str, names: Sequence[str] | None = None,
                 shuffle_seed: int | None = None, rank: int = 0, world_size: int = 1, verify_crc: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise InputError(f"rank must be within 0..{world_size - 1}, got {rank}")
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.files = list_shards(dataset_dir, split)
        if world_size > len(self.files):
            raise InputError(
                f"{dataset_dir}/{split}: {len(self.files)} shard files for {world_size} ranks; "
                f"files are split per rank, so write the dataset with more (smaller) shards"
            )
        self.shapes = read_dataset_shapes(self.dataset_dir)
        self.names = list(self.shapes) if names is None else list(names)
        unknown = [n for n in self.names if n not in self.shapes]
        if unknown and (self.dataset_dir / DATASET_JSON).is_file():
            meta = read_dataset_json(self.dataset_dir).get("meta", {})
            if any(n not in meta for n in unknown):
                raise InputError(
                    f"{dataset_dir}: no array or metadata named {[n for n in unknown if n not in meta][0]!r} "
                    f"(arrays in {SHAPES_FILE}: {sorted(self.shapes)}; metadata in {DATASET_JSON}: {sorted(meta)})"
                )
        self.shuffle_seed = shuffle_seed
        self.rank = rank
        self.world_size = world_size
        self.verify_crc = verify_crc
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose file order and example order the next read uses."""
        self.epoch = epoch


class TFRecordIterableDataset(_SplitShare, IterableDataset):
    """Examples of one split as dicts name -> tensor (metadata as str/int/float).

    Args:
        dataset_dir: the dataset directory (shapes.txt, train/, valid/).
        split: "train" or "valid".
        names: arrays (shapes.txt) or metadata keys to return; default all arrays.
        shuffle_seed: None reads in file order; an int shuffles files and examples per epoch.
        shuffle_buffer: examples held by the example shuffle.
        rank, world_size: this process's share of the files (distributed training).
        verify_crc: check every record's data CRC while reading (lengths are always checked).
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str,
        names: Sequence[str] | None = None,
        shuffle_seed: int | None = None,
        shuffle_buffer: int = 256,
        rank: int = 0,
        world_size: int = 1,
        verify_crc: bool = True,
    ) -> None:
        super().__init__(dataset_dir, split, names, shuffle_seed, rank, world_size, verify_crc)
        self.shuffle_buffer = max(1, shuffle_buffer)

    def files_for(self, worker: int = 0, num_workers: int = 1) -> list[Path]:
        """The files one DataLoader worker of this rank reads in the current epoch, in order."""
        order = _epoch_file_order(len(self.files), self.shuffle_seed, self.epoch)
        return [self.files[i] for i in order[self.rank + self.world_size * worker :: self.world_size * num_workers]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        records: Iterable[bytearray] = (
            rec for path in self.files_for(worker, num_workers) for rec in iter_records(path, self.verify_crc)
        )
        if self.shuffle_seed is not None:
            rng = np.random.default_rng([self.shuffle_seed, self.epoch, self.rank, worker])
            records = _buffer_shuffle(records, self.shuffle_buffer, rng)
        for rec in records:
            yield _to_torch(decode_record(rec, self.shapes, self.names))


class TFRecordMapDataset(_SplitShare, Dataset):
    """Examples of one split fetched by key, (file index, byte offset): a rank's share read in any order.

    `epoch_keys` is this rank's share for the current epoch (the files `TFRecordIterableDataset`
    gives the rank with one worker), every record once, permuted from (seed, epoch, rank) when a seed is
    given, in file order otherwise. Files are indexed (`record_offsets`: one header read per record)
    the first time an epoch needs them. Arguments as `TFRecordIterableDataset`'s, less the shuffle buffer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # `_SplitShare`'s arguments
        self._offsets: dict[int, list[int]] = {}

    def epoch_keys(self) -> list[tuple[int, int]]:
        """Every record of this rank's share of the current epoch, once, in the epoch's order."""
        order = _epoch_file_order(len(self.files), self.shuffle_seed, self.epoch)[self.rank :: self.world_size]
        keys = [(i, offset) for i in order for offset in self._file_offsets(i)]
        if self.shuffle_seed is None:
            return keys
        perm = np.random.default_rng([self.shuffle_seed, self.epoch, self.rank]).permutation(len(keys))
        return [keys[j] for j in perm]

    def epoch_batches(self, batch_size: int) -> list[list[tuple[int, int]]]:
        """`epoch_keys` cut into whole batches of `batch_size`; only the last, partial one is dropped."""
        keys = self.epoch_keys()
        return [keys[i : i + batch_size] for i in range(0, len(keys) - batch_size + 1, batch_size)]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        file_index, offset = key
        return _to_torch(decode_record(read_record_at(self.files[file_index], offset, self.verify_crc),
                                       self.shapes, self.names))

    def _file_offsets(self, i: int) -> list[int]:
        if i not in self._offsets:
            self._offsets[i] = record_offsets(self.files[i])
        return self._offsets[i]


def _epoch_file_order(n_files: int, seed: int | None, epoch: int) -> list[int]:
    """Indices of the sorted files in the order of `epoch`: shuffled from (seed, epoch), the same on every rank."""
    if seed is None:
        return list(range(n_files))
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_files)]


def _to_torch(decoded: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in decoded.items():
        if isinstance(value, np.ndarray):
            if not value.flags.aligned:
                value = value.copy()
            value = torch.from_numpy(value)
        out[name] = value
    return out


def _buffer_shuffle(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """tf.data-style shuffle: keep `size` items, emit a random one as each new one arrives."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(size))
        yield buf[i]
        buf[i] = item
    for i in rng.permutation(len(buf)):
        yield buf[i]
