"""Training batches: a pvtbuild dataset's shards through the PyTorch reader, or toy data.

Random crops (`data.crop_seconds`): the loop cuts each example of a batch to `crop_frames`
frames of its format (EnCodec's 75 Hz frames for `encodec` / `disc`, the CQT's hop for `cqt`)
at an offset drawn from the step's generator, *after* the local controls are on the data's
frames, so a crop's controls are the controls of the crop; global controls stay the whole
clip's average. The data spec keeps the full clip, which is what sampling generates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from pvtbuild.config import ENCODEC_HOP
from pvtbuild.dataset.layout import DATASET_JSON, SHAPES_FILE, read_dataset_json
from pvtbuild.dataset.shapes import read_shapes
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset, TFRecordMapDataset
from pvtbuild.errors import InputError
from pvtbuild.train.config import CONTROL_ENCODINGS, TrainDataConfig
from pvtbuild.train.guidance import NULL_VALUE, Controls
from pvtbuild.train.spec import CODEBOOK_SIZE, DataSpec, DataStats
from pvtbuild.train.toy_data import TOYS


@dataclass(frozen=True)
class Position:
    """Where a run is in its data: batches already consumed of epoch `epoch` (toys: epoch 0, forever)."""

    epoch: int = 0
    batch: int = 0


@dataclass(frozen=True)
class Batch:
    x0: Tensor  # [B, *spec.shape]: float32 (normalised if configured) or int64 classes
    controls: Controls
    ids: tuple[str, ...] = ()  # clip ids (datasets only), so a run can say what it read


class BatchSource(Protocol):
    spec: DataSpec
    crop_frames: int  # > 0: the loop trains on random crops this many frames long (`crop_batch`)

    def batches(self, start: Position) -> Iterator[tuple[Position, Batch]]:
        """Batches from `start` on, each with the position after it; the same start gives the same batches."""
        ...

    def valid_batches(self, count: int) -> Iterator[Batch]:
        """At most `count` held-out batches, the same ones at every call (validation while training)."""
        ...


# --- toys ---------------------------------------------------------------------------------


class ToySource:
    """A toy dataset of `toy_size` points drawn once from the seed; batch k of rank r is drawn from (seed, r, k)."""

    crop_frames = 0  # points have no time axis

    def __init__(self, cfg: TrainDataConfig, seed: int, rank: int = 0) -> None:
        draw, self.spec = TOYS[str(cfg.toy)]
        self.points = draw(cfg.toy_size, seed)
        self.batch_size = cfg.batch_size
        self.seed, self.rank = seed, rank

    def batches(self, start: Position) -> Iterator[tuple[Position, Batch]]:
        k = start.batch
        while True:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, k))
            idx = torch.randint(len(self.points), (self.batch_size,), generator=g)
            k += 1
            yield Position(0, k), Batch(self.points[idx], Controls())

    def valid_batches(self, count: int) -> Iterator[Batch]:
        """`count` batches drawn from (seed, "valid", k): toys have no held-out split, only fixed draws."""
        for k in range(count):
            g = torch.Generator().manual_seed(mix_seed(self.seed, "valid", k))
            yield Batch(self.points[torch.randint(len(self.points), (self.batch_size,), generator=g)], Controls())



# --- datasets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetLayout:
    """Which arrays of a dataset a config reads, checked against its shapes.txt before any work."""

    data_name: str
    local_names: tuple[str, ...]
    global_names: tuple[str, ...]
    spec: DataSpec
    local_groups: tuple[int, ...]
    global_groups: tuple[int, ...]
    encodings: dict[str, str] = field(default_factory=dict)  # control -> encoding (`data.encodings`)

    @property
    def aux_names(self) -> tuple[str, ...]:
        """Arrays read only to encode a control (`voiced` for `chroma: onehot`), not fed as such."""
        need = {_with_grid(name, "voiced") for name in self.local_names if _base(name) in self.encodings}
        return tuple(sorted(need - set(self.local_names)))

    @property
    def read_names(self) -> tuple[str, ...]:
        """Every array a training example needs from the dataset, the data first."""
        return (self.data_name, *self.local_names, *self.global_names, *self.aux_names)


def dataset_layout(cfg: TrainDataConfig, dataset: Path, config_name: str = "config") -> DatasetLayout:
    """The arrays `cfg` needs from `dataset`; stops, naming both, when the dataset lacks one."""
    shapes = read_shapes(dataset / SHAPES_FILE)
    if cfg.format not in shapes:
        stored = sorted(n for n in shapes if "_" not in n)
        raise InputError(f"{dataset}: has no {cfg.format!r} array (stored formats: {', '.join(stored)}), "
                         f"but {config_name} asks for data.format: {cfg.format}")
    grid = cfg.control_grid or _dataset_grid(dataset, cfg.format)
    shape = tuple(shapes[cfg.format][1])
    names, groups = {}, {}
    for kind, controls in (("controls", cfg.controls), ("global_controls", cfg.global_controls)):
        names[kind] = tuple(f"{c}_{grid}" for c in controls)
        for c, n in zip(controls, names[kind]):
            if n not in shapes:
                raise InputError(f"{dataset}: has no control {n!r} (grid {grid}), but {config_name} asks for "
                                 f"data.{kind}: [{', '.join(controls)}]")
        groups[kind] = tuple(CONTROL_ENCODINGS[c][cfg.encodings[c]] if c in cfg.encodings
                             else int(np.prod(shapes[n][1][:-1])) for c, n in zip(controls, names[kind]))
    if cfg.encodings and f"voiced_{grid}" not in shapes:
        raise InputError(f"{dataset}: has no control 'voiced_{grid}', which data.encodings needs to tell silence")
    spec = DataSpec(shape=shape, num_classes=CODEBOOK_SIZE if cfg.format == "disc" else 0,
                    local_channels=sum(groups["controls"]), global_channels=sum(groups["global_controls"]))
    return DatasetLayout(cfg.format, names["controls"], names["global_controls"], spec,
                         groups["controls"], groups["global_controls"], dict(cfg.encodings))


def _dataset_grid(dataset: Path, fmt: str) -> str:
    grids = read_dataset_json(dataset).get("control_grids", {}) if (dataset / DATASET_JSON).is_file() else {}
    if fmt not in grids:
        raise InputError(f"{dataset}/{DATASET_JSON}: names no control grid for {fmt!r}; set data.control_grid")
    return str(grids[fmt])


class Collate:
    """Stacks a list of decoded records into a `Batch` (picklable, so DataLoader workers can run it)."""

    def __init__(self, layout: DatasetLayout, scale: float) -> None:
        self.layout, self.scale = layout, scale

    def __call__(self, records: list[dict[str, Any]]) -> Batch:
        lay = self.layout
        x0 = _stack([r[lay.data_name] for r in records])
        x0 = x0.long() if lay.spec.discrete else x0.float() / self.scale
        return Batch(x0, assemble_controls(records, lay), tuple(str(r.get("id", "")) for r in records))


def assemble_controls(records: list[dict[str, Any]], layout: DatasetLayout) -> Controls:
    """The `Controls` of a batch from each example's named control arrays (training and sampling alike).

    Local controls: the arrays of `layout.local_names`, each flattened to [channels, T], concatenated in
    config order and resampled to the data's frames when their grid differs (piecewise constant);
    global controls: those of `layout.global_names`, averaged over time.
    """
    local = _controls(records, layout.local_names, layout.encodings)
    if local is not None and local.shape[-1] != layout.spec.shape[-1]:
        # controls on another frame grid than the data: resample to the data's frames (piecewise constant)
        local = F.interpolate(local, size=layout.spec.shape[-1], mode="nearest-exact")
    glob = _controls(records, layout.global_names)
    glob = None if glob is None else glob.mean(dim=-1)
    return Controls(local, glob, layout.local_groups if local is not None else (),
                    layout.global_groups if glob is not None else ())


def _controls(records: list[dict[str, Any]], names: tuple[str, ...],
              encodings: dict[str, str] | None = None) -> Tensor | None:
    if not names:
        return None
    encodings = encodings or {}
    per_example = [np.concatenate([_channels(r, n, encodings.get(_base(n))) for n in names]) for r in records]
    return _stack(per_example)  # [B, C, T]


def _channels(record: dict[str, Any], name: str, encoding: str | None) -> np.ndarray:
    """One control of one example as [channels, T]: as stored, or through its `data.encodings` entry."""
    arr = np.asarray(record[name], dtype=np.float32)
    if encoding is None:
        return arr.reshape(-1, arr.shape[-1])
    return encode_control(_base(name), encoding, arr, np.asarray(record[_with_grid(name, "voiced")], dtype=np.float32))


def encode_control(control: str, encoding: str, values: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """A stored control [T] as the channels its encoding gives the network.

    `chroma: onehot`: [12, T], 1 on the pitch class round(11 * chroma) where a note sounds and 0
    elsewhere, so silence no longer shares chroma 0 with C (stored chroma is 0 for both:
    docs/data-contract.md) and each pitch class is a channel of its own, not a point on a line the
    network must unfold into a harmonic comb. A frame
    counts as sounding where `voiced` > 0.5; where `voiced` is not given (-1 throughout, as in a
    hand-written request with chroma alone) every frame with a chroma is. Frames whose chroma is
    the unconditional -1 are -1 on all 12 channels, the value control dropout writes.
    """
    if (control, encoding) != ("chroma", "onehot"):
        raise ValueError(f"no encoding {encoding!r} of control {control!r}")  # the config check makes this a bug
    values = values.reshape(-1)
    given = values >= 0
    sounding = given & ((voiced.reshape(-1) > 0.5) | bool((voiced < 0).all()))
    out = np.zeros((CONTROL_ENCODINGS["chroma"]["onehot"], values.shape[0]), dtype=np.float32)
    frames = np.flatnonzero(sounding)
    out[np.clip(np.rint(values[frames] * 11), 0, 11).astype(np.int64), frames] = 1.0
    out[:, ~given] = NULL_VALUE
    return out


def _base(name: str) -> str:
    """`chroma_60hz` -> `chroma` (control names hold no underscore: the grid's name follows the first)."""
    return name.partition("_")[0]


def _with_grid(name: str, control: str) -> str:
    """The array of `control` on the grid of `name` (`chroma_60hz`, voiced -> `voiced_60hz`)."""
    return f"{control}_{name.partition('_')[2]}"


def _stack(arrays: list[Any]) -> Tensor:
    """Examples stacked by numpy on one thread: torch.stack took 19 ms where this takes 0.3 ms (batch of 4,
    2 busy cores; bench_train), which made the training loop wait for data."""
    return torch.from_numpy(np.stack([np.asarray(a) for a in arrays]))


class DatasetSource:
    """Batches of one rank from a dataset's train split through the PyTorch reader (no TensorFlow).

    Each epoch, the rank's share of the files (the same split of files across ranks as ever, so every
    record is read once per epoch across ranks) is drawn in one permutation of all its records, from
    (seed, epoch, rank), and cut into batches here, in the main process (`TFRecordMapDataset`); the
    DataLoader's workers only fetch and collate the batches they are handed. So every example of the
    share is used once per epoch whatever `data.num_workers` is (only the last partial batch is
    dropped), a batch mixes the whole share, and the batches are a function of (seed, epoch, rank):
    a position is reproducible, and resuming skips batches without reading them.
    """

    def __init__(self, cfg: TrainDataConfig, dataset: Path, layout: DatasetLayout, stats: DataStats, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.dataset, self.layout, self.spec = cfg, dataset, layout, layout.spec
        self.names = [*layout.read_names, "id"]
        self.reader = TFRecordMapDataset(dataset, "train", names=self.names, shuffle_seed=seed, rank=rank,
                                         world_size=world_size)
        self.collate = Collate(layout, stats.scale)
        self.rank = rank
        self.crop_frames = crop_frames(cfg, dataset, layout.spec)

    def batches(self, start: Position) -> Iterator[tuple[Position, Batch]]:
        epoch, skip = start.epoch, start.batch
        while True:
            self.reader.set_epoch(epoch)
            keys = self.reader.epoch_batches(self.cfg.batch_size)
            if not keys:
                raise InputError(f"{self.dataset}/train: rank {self.rank} got {len(self.reader.epoch_keys())} "
                                 f"examples in epoch {epoch}, fewer than data.batch_size = {self.cfg.batch_size}; "
                                 f"lower the batch size")
            if skip < len(keys):  # else the start lies past this epoch (an inexact resume): no workers started
                loader = DataLoader(self.reader, batch_sampler=keys[skip:], num_workers=self.cfg.num_workers,
                                    collate_fn=self.collate)
                for n, batch in enumerate(loader, skip + 1):
                    yield Position(epoch, n), batch
            epoch, skip = epoch + 1, 0

    def valid_batches(self, count: int) -> Iterator[Batch]:
        """The first `count` batches of the valid split, every file in file order, unshuffled (the last may be
        short), so every call, rank and resumed run reads the same examples."""
        reader = TFRecordIterableDataset(self.dataset, "valid", names=self.names)
        loader = DataLoader(reader, batch_size=self.cfg.batch_size, num_workers=0, collate_fn=self.collate)
        return itertools.islice(loader, count)


def crop_frames(cfg: TrainDataConfig, dataset: Path, spec: DataSpec) -> int:
    """`data.crop_seconds` in frames of the format (0: whole clips); stops when a crop is longer than a clip."""
    if not cfg.crop_seconds:
        return 0
    frames = max(1, round(cfg.crop_seconds * frame_rate(dataset, cfg.format)))
    if frames > spec.shape[-1]:
        raise InputError(f"data.crop_seconds: {cfg.crop_seconds:g} s is {frames} frames of {cfg.format}, longer "
                         f"than the {spec.shape[-1]} frames of {dataset}'s clips; lower it (0: whole clips)")
    return frames


def frame_rate(dataset: Path, fmt: str) -> float:
    """Frames per second of a stored format: EnCodec's frames of 320 samples (encodec, disc), the CQT's hop."""
    doc = read_dataset_json(dataset)
    rate = float(doc.get("sample_rate") or doc["config"]["render"]["sample_rate"])
    if fmt == "cqt":
        return rate / int((doc.get("encoder") or {}).get("cqt", doc["config"]["encode"]["cqt"])["hop_length"])
    return rate / ENCODEC_HOP


def crop_starts(batch: int, length: int, frames: int, generator: torch.Generator) -> Tensor:
    """The first frame of each example's crop, uniform over the `length - frames + 1` offsets (CPU generator)."""
    return torch.randint(length - frames + 1, (batch,), generator=generator)


def random_crop(batch: Batch, frames: int, generator: torch.Generator) -> Batch:
    """Every example of `batch` cut to `frames` frames at its own offset (`crop_starts`), data and local
    controls alike; a batch no longer than `frames` comes back unchanged."""
    length = batch.x0.shape[-1]
    if frames <= 0 or frames >= length:
        return batch
    starts = crop_starts(batch.x0.shape[0], length, frames, generator).tolist()

    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else torch.stack([t[i, ..., s:s + frames] for i, s in enumerate(starts)])

    return Batch(cut(batch.x0), dataclasses.replace(batch.controls, local=cut(batch.controls.local)), batch.ids)


def seeded_crop(batch: Batch, frames: int, *seed: int | str) -> Batch:
    """`random_crop` (none when `frames` is 0) with offsets from a CPU generator seeded by `seed`: (seed, rank,
    step) in training, so a resumed run cuts the same crops; (seed, "valid", k) for the valid loss."""
    if not frames:
        return batch
    return random_crop(batch, frames, torch.Generator().manual_seed(mix_seed(*seed, "crop")))


def measure_stats(cfg: TrainDataConfig, dataset: Path, layout: DatasetLayout) -> DataStats:
    """The std of the first `stats_examples` train examples (file order, so every rank gets the same value)."""
    if layout.spec.discrete:
        return DataStats()
    reader = TFRecordIterableDataset(dataset, "train", names=[layout.data_name])
    total, total_sq, count = 0.0, 0.0, 0
    for i, rec in enumerate(reader):
        x = rec[layout.data_name].double()
        total, total_sq, count = total + float(x.sum()), total_sq + float((x * x).sum()), count + x.numel()
        if i + 1 >= cfg.stats_examples:
            break
    if count == 0:
        raise InputError(f"{dataset}/train: no examples to train on")
    mean = total / count
    std = max(float(np.sqrt(max(total_sq / count - mean * mean, 0.0))), 1e-8)
    return DataStats(std=std, scale=std if cfg.normalize else 1.0)


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers (seed, rank, step, ...), the same on every machine."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1
