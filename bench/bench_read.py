"""Read throughput of the pvtbuild TFRecord readers against one .npz per example (the old format).

    python bench/bench_read.py                 # synthetic EnCodec-style records (n=2000), then demo-out/dataset
                                               # if built
    python bench/bench_read.py DATASET [N]     # the train split of a built dataset

The torch reader is timed with its data CRC check (the default) and without
(``torch_nocrc``), on the same records in the same run. ``torch_map`` is the
trainer's reader (`TFRecordMapDataset`): a whole epoch permuted from the seed
and fetched record by record at its byte offset, batches cut in the main
process; ``torch_dl{workers}`` against ``torch_map_dl{workers}`` is what that
costs against the sequential, buffer-shuffled iterable (same seed, workers, batch).

Synthetic records are what the EnCodec pipeline stores: ``encodec`` [128,600]
float32, ``disc`` [16,600] int16 and 7 controls on the 75 Hz grid (6 x [600] +
``instrument_75hz`` [3,600]), ~348 kB each. For a given dataset the first `n`
train records are read (a dataset smaller than that is read over and over
until n), and the same records are re-saved as npz for the comparison. Files are read right after
being written, so these are warm page cache numbers: decoding and framework overhead, not disk speed. MB/s counts
array payload bytes.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import torch
from torch.utils.data import DataLoader

from pvtbuild.dataset import (
    array_shapes,
    list_shards,
    num_shards,
    read_dataset_json,
    read_shapes,
    serialize_example,
    shard_name,
    write_dataset_json,
    write_shapes,
    write_shard,
)
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset, TFRecordMapDataset

CONTROLS = ("velocity", "chroma", "pitch", "voiced", "beat", "bpm")
DEMO_DATASET = Path(__file__).resolve().parents[1] / "demo-out" / "dataset"  # what `make demo` builds


def synthetic_record(i: int, frames: int = 600) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One EnCodec-format record with plausible statistics (latents don't compress, controls do)."""
    rng = np.random.default_rng(i)
    arrays = {
        "encodec": rng.standard_normal((128, frames)).astype(np.float32),
        "disc": rng.integers(0, 1024, (16, frames)).astype(np.int16),
    }
    steps = np.sort(rng.integers(0, frames, 12))
    for c in CONTROLS:
        levels = rng.random(13).astype(np.float32)
        arrays[f"{c}_75hz"] = levels[np.searchsorted(steps, np.arange(frames), side="right")]
    inst = np.zeros((3, frames), np.float32)
    inst[i % 3] = 1
    arrays["instrument_75hz"] = inst
    return arrays, {"id": f"clip{i:06d}", "program": [0, 40, 56][i % 3], "mod_freq": float(rng.random())}


def _timed(fn) -> tuple[Any, float]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def build_synthetic(root: Path, n: int, shard_mb: float = 150.0) -> dict[str, float]:
    """Write a synthetic dataset of n records; returns write timings (pvtbuild writer vs TF's)."""
    first, _ = synthetic_record(0)
    rec_bytes = sum(a.nbytes for a in first.values())
    shards = num_shards(n * rec_bytes, shard_mb)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    (ser, t_ser) = _timed(lambda: [serialize_example(*synthetic_record(i)) for i in range(n)])
    infos = []
    t0 = time.perf_counter()
    for k in range(shards):
        path = root / "train" / shard_name("train", k, shards)
        infos.append(write_shard(path, ser[bounds[k] : bounds[k + 1]]))
    t_write = time.perf_counter() - t0
    write_shapes(root / "shapes.txt", array_shapes(first))
    write_dataset_json(root / "dataset.json", {"train": infos}, {"bench": True})
    out = {"serialize_s": t_ser, "write_shard_s": t_write, "shards": shards,
           "file_mb": sum(i.bytes for i in infos) / 1e6}
    import tensorflow as tf  # noqa: PLC0415  (TensorFlow takes seconds to import: `run` times it, see tf_import_s)

    t0 = time.perf_counter()
    with tf.io.TFRecordWriter(str(root / "tf-writer-copy.tfrecord")) as w:
        for r in ser:
            w.write(r)
    out["tf_writer_s"] = time.perf_counter() - t0
    os.unlink(root / "tf-writer-copy.tfrecord")
    return out


def _loader_read(ds: Any, batch: int, num_workers: int, n: int) -> int:
    """Examples a DataLoader with `num_workers` yields until `n`, its workers kept across epochs."""
    loader = DataLoader(ds, batch_size=batch, num_workers=num_workers, persistent_workers=True)
    seen = 0
    for b in _epochs(lambda: loader):
        seen += len(next(iter(b.values())))
        if seen >= n:
            break
    return min(seen, n)


def shuffled_loader_read(dataset_dir: Path, batch: int, num_workers: int, n: int) -> int:
    """Examples the trainer's former reader yields until `n`: the seeded iterable through a DataLoader made
    per epoch (`drop_last`, as the trainer had it), so its shuffle buffer refills every epoch."""
    ds = TFRecordIterableDataset(dataset_dir, "train", shuffle_seed=0)
    seen, epoch = 0, 0
    while seen < n:
        ds.set_epoch(epoch)
        before = seen
        for b in DataLoader(ds, batch_size=batch, num_workers=num_workers, drop_last=True):
            seen += len(next(iter(b.values())))
            if seen >= n:
                break
        if seen == before:
            break  # no whole batch in an epoch (what the trainer stopped on)
        epoch += 1
    return min(seen, n)


def map_read(dataset_dir: Path, batch: int, num_workers: int, n: int) -> int:
    """Examples the trainer's reader yields until `n` (`DatasetSource.batches` without the collate to a Batch):
    each epoch permuted whole, cut into batches here, a DataLoader per epoch fed them as its batch_sampler.
    With no workers: the records of each epoch's permutation fetched in turn, decode only (as ``torch``)."""
    ds = TFRecordMapDataset(dataset_dir, "train", shuffle_seed=0)
    seen, epoch = 0, 0
    while seen < n:
        ds.set_epoch(epoch)
        if num_workers == 0:
            keys = ds.epoch_keys()[: n - seen]
            seen += sum(1 for key in keys if ds[key])
        else:
            batches = ds.epoch_batches(batch)
            if not batches:
                break
            for b in DataLoader(ds, batch_sampler=batches, num_workers=num_workers):
                seen += len(next(iter(b.values())))
                if seen >= n:
                    break
        epoch += 1
    return min(seen, n)


def _epochs(make: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """The items of `make()`, then of a fresh `make()`, ... forever (a small dataset read for n examples)."""
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            return


def _npz_copy(dataset_dir: Path, n: int, out_dir: Path) -> tuple[list[Path], float]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    t0 = time.perf_counter()
    for i, item in enumerate(TFRecordIterableDataset(dataset_dir, "train")):
        if i == n:
            break
        p = out_dir / f"{i:06d}.npz"
        np.savez_compressed(p, **{k: v.numpy() for k, v in item.items()})
        paths.append(p)
    return paths, time.perf_counter() - t0


class _NpzDataset:
    """The old loader: a map-style dataset, one np.load per example."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with np.load(self.paths[i]) as z:
            return {k: torch.from_numpy(z[k]) for k in z.files}


def _rate(count: int, seconds: float, payload: int) -> dict[str, float]:
    return {"examples": count, "seconds": round(seconds, 3), "examples_per_s": round(count / seconds, 1),
            "mb_per_s": round(count * payload / seconds / 1e6, 1)}


def run(dataset_dir: str | Path | None = None, n: int = 2000, batch_size: int = 16, workers: int = 2) -> dict[str, Any]:
    """Measure tf.data, torch (in-process and DataLoader) and npz reading of n records.

    Returns a dict with one entry per reader (examples, seconds, examples_per_s,
    mb_per_s), `ratios` (examples/s over npz's, same worker count), and the
    write timings when the records are synthetic.
    """
    result: dict[str, Any] = {"n": n, "batch_size": batch_size, "workers": workers}
    t0 = time.perf_counter()
    import tensorflow as tf  # noqa: PLC0415  (timed: tf_import_s)

    from pvtbuild.dataset.tf_reader import make_dataset  # noqa: PLC0415  (imports TensorFlow: timed with it)

    result["tf_import_s"] = round(time.perf_counter() - t0, 2)  # 0 if already imported by the caller
    with tempfile.TemporaryDirectory(prefix="pvtbench-") as tmp:
        tmp_dir = Path(tmp)
        if dataset_dir is None:
            dataset_dir = tmp_dir / "dataset"
            result["write"] = build_synthetic(Path(dataset_dir), n)
        dataset_dir = Path(dataset_dir)
        shapes = read_shapes(dataset_dir / "shapes.txt")
        payload = sum(int(np.prod(s)) * d.itemsize for d, s in shapes.values())
        result["record_kb"] = round(payload / 1e3, 1)
        result["shards"] = len(list_shards(dataset_dir, "train"))
        result["dataset"] = str(dataset_dir) if "write" not in result else "synthetic"
        records = read_dataset_json(dataset_dir)["splits"]["train"]["count"]
        repeat = records < n
        result["records"] = records

        def tf_read(deterministic: bool) -> int:
            seen = 0
            for b in make_dataset(dataset_dir, "train", batch_size=batch_size, deterministic=deterministic,
                                  repeat=repeat):
                seen += int(tf.shape(next(iter(b.values())))[0])
                if seen >= n:
                    break
            return min(seen, n)

        count, secs = _timed(lambda: tf_read(True))
        result["tf"] = _rate(count, secs, payload)
        count, secs = _timed(lambda: tf_read(False))
        result["tf_nondet"] = _rate(count, secs, payload)

        def torch_read(num_workers: int, verify_crc: bool = True) -> int:
            ds = TFRecordIterableDataset(dataset_dir, "train", verify_crc=verify_crc)
            if num_workers == 0:
                return sum(1 for _ in itertools.islice(_epochs(lambda: ds), n))
            return _loader_read(ds, batch_size, num_workers, n)

        # The data CRC's cost: the in-process reader with and without it, alternated, best of two each.
        runs: dict[bool, list[tuple[int, float]]] = {True: [], False: []}
        for verify_crc in (False, True, False, True):
            runs[verify_crc].append(_timed(lambda: torch_read(0, verify_crc)))
        result["torch"] = _rate(*min(runs[True], key=lambda r: r[1]), payload)
        result["torch_nocrc"] = _rate(*min(runs[False], key=lambda r: r[1]), payload)
        count, secs = _timed(lambda: torch_read(workers))
        result[f"torch_dl{workers}"] = _rate(count, secs, payload)
        count, secs = _timed(lambda: shuffled_loader_read(dataset_dir, batch_size, workers, n))
        result[f"torch_dl{workers}_shuffled"] = _rate(count, secs, payload)
        for w in (0, workers):
            count, secs = _timed(lambda: map_read(dataset_dir, batch_size, w, n))
            result["torch_map" if w == 0 else f"torch_map_dl{w}"] = _rate(count, secs, payload)

        paths, t_npz = _npz_copy(dataset_dir, n, tmp_dir / "npz")
        result["npz_write_s"] = round(t_npz, 1)
        result["npz_mb"] = round(sum(p.stat().st_size for p in paths) / 1e6, 1)

        def npz_read(num_workers: int) -> int:
            ds = _NpzDataset(paths)
            if num_workers == 0:
                return sum(1 for i in range(n) if ds[i % len(ds)])
            return _loader_read(ds, batch_size, num_workers, n)

        count, secs = _timed(lambda: npz_read(0))
        result["npz"] = _rate(count, secs, payload)
        count, secs = _timed(lambda: npz_read(workers))
        result[f"npz_dl{workers}"] = _rate(count, secs, payload)

    speed = lambda k: result[k]["examples_per_s"]  # noqa: E731
    result["ratios"] = {
        "tf / npz": round(speed("tf") / speed("npz"), 2),
        "torch / npz": round(speed("torch") / speed("npz"), 2),
        "torch_map / torch": round(speed("torch_map") / speed("torch"), 2),
        # inf: the iterable gave no whole batch (each worker batches its own files; the demo dataset at batch 16)
        f"torch_map_dl{workers} / torch_dl{workers}_shuffled": round(
            speed(f"torch_map_dl{workers}") / speed(f"torch_dl{workers}_shuffled"), 2)
        if speed(f"torch_dl{workers}_shuffled") else float("inf"),
        f"torch_dl{workers} / npz_dl{workers}": round(speed(f"torch_dl{workers}") / speed(f"npz_dl{workers}"), 2),
        "torch / tf": round(speed("torch") / speed("tf"), 2),
        "torch / torch_nocrc": round(speed("torch") / speed("torch_nocrc"), 3),  # 1 - data CRC's cost
    }
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"{result['dataset']}: {result['n']} reads of {result['records']} records of {result['record_kb']} kB "
          f"in {result['shards']} shards, batch {result['batch_size']}")
    for key, val in result.items():
        if isinstance(val, dict) and "examples_per_s" in val:
            print(f"  {key:10s} {val['examples_per_s']:9.1f} ex/s {val['mb_per_s']:8.1f} MB/s  ({val['seconds']} s)")
    for key, val in result["ratios"].items():
        print(f"  {key:22s} x{val}")
    print(f"  tensorflow import {result['tf_import_s']} s; npz files {result['npz_mb']} MB written in "
          f"{result['npz_write_s']} s")
    if "write" in result:
        w = result["write"]
        print(f"  write: serialize {w['serialize_s']:.2f} s, write_shard {w['write_shard_s']:.2f} s, "
              f"tf.io.TFRecordWriter {w['tf_writer_s']:.2f} s for {w['file_mb']:.0f} MB")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args:
        _print(run(args[0], int(args[1]) if len(args) > 1 else 2000))
    else:
        _print(run(None, 2000))
        if (DEMO_DATASET / "dataset.json").is_file():
            _print(run(DEMO_DATASET, 500))
        else:
            print(f"({DEMO_DATASET} not built: run `make demo` to also measure the demo dataset)")
