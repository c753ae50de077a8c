"""Training speed of the tiny configs on CPU, the torch reader against what training consumes, and model sizes.

    python bench/bench_train.py              # on demo-out/dataset (`make demo` builds it in about a minute)
    python bench/bench_train.py DATASET      # on another built dataset (its train split)

Without the dataset it says how to build it and exits with status 2 (it builds none itself).
Everything is measured in one run, so the machine's load (printed) hits all alike:

1. Training: the real loop (`pvtbuild.train.loop.train`, CPU, a temporary run directory) for each
   tiny config and the swiss-roll toy (`TINY`): a few warm-up steps, then a fixed number of measured
   steps, rounded up to whole epochs when an epoch is short (`EPOCH_ROUND`), so that epoch starts
   (where the reader fills its shuffle buffer) are paid as often as in a long run. Steps/s,
   examples/s and the share of step time spent waiting for data come from the loop's own
   `log.csv` (`examples_per_s`, `data_wait`) of the measured steps. The checkpoint the loop writes
   at its last step is not written (its writer is replaced by a no-op here): it comes after the
   logged step time anyway, and is gigabytes for a full-size model.
2. Reader against training, for `encodec` and `cqt`: the batches the loop consumes
   (`DatasetSource(...).batches(Position())`: same batch size, controls, shuffle and stats as the
   config), timed alone over the same batches as the measured steps (the warm-up batches read
   untimed first), median of `READER_PASSES` passes; at torch's thread count (as the loop reads,
   with data.num_workers 0) and at 1 thread (what a DataLoader worker gets: collating in the main
   process shares the model's threads, which costs much on a busy machine). Also the bare
   `TFRecordIterableDataset` (decode only: no DataLoader, no collate; whole epochs after an
   untimed one). Target: reader >= 5x the loop's examples/s, so data never starves the model.
   The tiny models are far cheaper than the real ones, so the reader is also set against the
   full-size `edm-encodec` (225.8 M parameters) at batch 1, stepped by the loop in a child process
   for at most `FULL_BUDGET_S` seconds (model build included): its first step is warm-up, each
   later one is timed between consecutive `log.csv` rows (the CSV's 2-decimal examples/s is too
   coarse below 0.1 examples/s). Fewer than 2 steps in the budget: skipped with a note.
3. Parameter counts of the report's Table 4.1 configs, built on the meta device (no memory), next
   to the report's; the issue asks for each within 2 %.
4. DiscDPM's loss step at the real `disc` shape (`discdpm-disc.yaml`: batch 16 of [16, 600] codes, K =
   1024, so logits [16, 16, 1024, 600], 629 MB of float32): the reference (`tests/discdpm_reference.py`,
   the math before issue 19) against `DiscDPM.loss`, forward and backward, same draws. The net is left
   out (it is the same for both): a leaf tensor stands for its logits. Each variant runs in its own
   child process, which reports its peak resident set size (`VmHWM` of /proc/self/status, the kernel's
   high-water mark of the whole process: every torch allocation, whatever the allocator) and its RSS
   just before the loss (logits and codes made): their difference is what the loss step adds. Target:
   >= 3x lower. `python bench/bench_train.py --discdpm [BATCH]` runs this section alone (no dataset).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from pvtbuild.dataset.layout import read_dataset_json
from pvtbuild.dataset.torch_reader import TFRecordIterableDataset
from pvtbuild.errors import PvtbuildError
from pvtbuild.train import loop
from pvtbuild.train.backbone import count_parameters
from pvtbuild.train.build import build_backbone
from pvtbuild.train.config import TrainConfig, load_train_config
from pvtbuild.train.data import DatasetSource, Position, ToySource, dataset_layout, measure_stats
from pvtbuild.train.formalisms.discdpm import DiscDPM, DiscDPMConfig
from pvtbuild.train.guidance import Controls
from pvtbuild.train.spec import DataSpec

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "pipelines" / "train"
DEMO_DATASET = REPO / "demo-out" / "dataset"  # what `make demo` builds

# config, warm-up steps, measured steps (at least; dataset configs round up to whole epochs)
TINY = (
    ("swissroll-edm", 10, 100),
    ("edm-encodec-tiny", 3, 16),
    ("edm-cqt-tiny", 2, 6),
    ("discdpm-disc-tiny", 2, 4),
)
EPOCH_ROUND = 2  # round measured steps up to whole epochs when an epoch is at most this many times longer
READER_VS_TRAIN = ("edm-encodec-tiny", "edm-cqt-tiny")  # one config per format: encodec, cqt
READER_PASSES = 3
TARGET = 5.0  # reader examples/s over training examples/s

FULL_SIZE = "edm-encodec"  # the report's best framework, 225.8 M parameters
FULL_BATCH = 1
FULL_STEPS = 4  # 1 warm-up + up to 3 timed
FULL_BUDGET_S = 80.0
CHILD_FLAG = "--full-size-child"  # the time-boxed child process of section 2
DISC_FLAG, DISC_CHILD_FLAG = "--discdpm", "--discdpm-child"  # section 4 alone; its per-variant child
DISC_SHAPE, DISC_BATCH, DISC_CLASSES = (16, 600), 16, 1024  # discdpm-disc.yaml's codes and batch
DISC_MEMORY_TARGET = 3.0
STAMPS = "stamps.txt"

TABLE_4_1 = (  # config, the report's learnable parameters (Table 4.1)
    ("ddpm-cqt", 56.9e6),
    ("edm-cqt", 56.9e6),
    ("ddpm-encodec", 225.8e6),
    ("edm-encodec", 225.8e6),
    ("discdpm-disc", 87.9e6),
)
TABLE_TOLERANCE = 0.02


@dataclass
class TrainSpeed:
    name: str
    params: int
    batch: int
    warmup: int
    steps: int
    seconds: float  # sum of the measured steps' times
    wait_s: float  # of which spent waiting for data
    step_s: list[float]  # each measured step's time

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def examples_per_s(self) -> float:
        return self.steps * self.batch / self.seconds

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.seconds


def main(argv: list[str]) -> int:
    if argv[1:2] == [CHILD_FLAG]:
        _full_size_child(Path(argv[2]), Path(argv[3]))
        return 0
    if argv[1:2] == [DISC_CHILD_FLAG]:
        _discdpm_child(argv[2], int(argv[3]))
        return 0
    if argv[1:2] == [DISC_FLAG]:
        _discdpm_loss_memory(int(argv[2]) if len(argv) > 2 else DISC_BATCH)
        return 0
    dataset = Path(argv[1]) if len(argv) > 1 else DEMO_DATASET
    if not (dataset / "dataset.json").is_file():
        print(f"bench_train: {dataset} is not a built pvtbuild dataset; `make demo` builds {DEMO_DATASET.name} "
              f"in {DEMO_DATASET.parent.name}/ in about a minute, or pass one: python bench/bench_train.py DATASET",
              file=sys.stderr)
        return 2
    try:
        return _run(dataset)
    except PvtbuildError as e:
        print(f"bench_train: {e}", file=sys.stderr)
        return 2


def _run(dataset: Path) -> int:
    records = int(read_dataset_json(dataset)["splits"]["train"]["count"])
    print(f"bench_train: {dataset} ({records} train records), CPU, {torch.get_num_threads()} torch thread(s), "
          f"load average {_load()} at start")

    print("\n1. training speed of the tiny configs (real loop, CPU; measured steps after warm-up)")
    print(f"  {'config':18s} {'params':>9s} {'batch':>5s} {'steps':>8s} {'steps/s':>8s} {'ex/s':>8s} "
          f"{'ms/step median (min-max)':>26s} {'data wait':>9s}")
    speeds: dict[str, TrainSpeed] = {}
    for name, warmup, measured in TINY:
        cfg = load_train_config(CONFIGS / f"{name}.yaml")
        if not cfg.is_toy:
            per_epoch = records // cfg.data.batch_size
            if 0 < per_epoch <= EPOCH_ROUND * measured:  # else the epoch start is rare: leave it out
                measured = -(-measured // per_epoch) * per_epoch
        s = speeds[name] = _train_speed(cfg, None if cfg.is_toy else dataset, warmup, measured)
        ms = sorted(1e3 * t for t in s.step_s)
        print(f"  {name:18s} {_mega(s.params):>9s} {s.batch:5d} {f'{s.warmup}+{s.steps}':>8s} "
              f"{s.steps_per_s:8.3f} {s.examples_per_s:8.2f} "
              f"{f'{statistics.median(ms):.0f} ({ms[0]:.0f}-{ms[-1]:.0f})':>26s} {s.wait_share:9.1%}")

    print(f"\n2. torch reader against training consumption (target: reader >= {TARGET:g}x training's examples/s, "
          "so data never starves the model)")
    readers: dict[str, tuple[float, float]] = {}  # format: (as the loop reads, at 1 thread)
    for name in READER_VS_TRAIN:
        cfg = load_train_config(CONFIGS / f"{name}.yaml")
        s = speeds[name]
        reader, passes = _reader_speed(cfg, dataset, s.warmup, s.steps)
        with _torch_threads(1):
            reader_1, _ = _reader_speed(cfg, dataset, s.warmup, s.steps)
        raw = _raw_reader_speed(cfg, dataset, s.steps * s.batch)
        readers[cfg.data.format] = reader, reader_1
        print(f"  {cfg.data.format} ({name}: batch {s.batch}, controls {', '.join(cfg.data.controls)}, "
              f"data.num_workers {cfg.data.num_workers}; {s.steps} batches after {s.warmup})")
        print(f"    reader, as the loop reads    {reader:9.1f} ex/s  (median of passes "
              f"{', '.join(f'{p:.1f}' for p in passes)})")
        print(f"    reader, 1 torch thread       {reader_1:9.1f} ex/s  (what a DataLoader worker gets)")
        print(f"    bare TFRecordIterableDataset {raw:9.1f} ex/s  (decode only, whole epochs)")
        print(f"    training loop                {s.examples_per_s:9.2f} ex/s  (in the loop, waiting for data is "
              f"{s.wait_share:.1%} of a step)")
        print(f"    reader / train: x{reader / s.examples_per_s:.1f}, at 1 thread x{reader_1 / s.examples_per_s:.1f}  "
              f"(target >= {TARGET:g}: {_verdict(reader / s.examples_per_s)})")
    _full_size(dataset, *readers["encodec"])

    print("\n3. parameters of the Table 4.1 configs (built on the meta device) against the report's")
    print(f"  {'config':14s} {'format':8s} {'this config':>13s} {'report':>8s} {'difference':>10s}")
    for name, report in TABLE_4_1:
        cfg = load_train_config(CONFIGS / f"{name}.yaml")
        n = _meta_parameters(cfg, dataset_layout(cfg.data, dataset, cfg.name).spec)
        diff = n / report - 1
        ok = "ok" if abs(diff) <= TABLE_TOLERANCE else f"OFF (> {TABLE_TOLERANCE:.0%})"
        print(f"  {name:14s} {cfg.data.format:8s} {n:13,d} {_mega(report):>8s} {diff:+10.2%}  {ok}")
    _discdpm_loss_memory(DISC_BATCH)
    print(f"\nload average {_load()} at end")
    return 0


# --- 1. training speed ----------------------------------------------------------------------


def _train_speed(cfg: TrainConfig, dataset: Path | None, warmup: int, measured: int) -> TrainSpeed:
    """`warmup + measured` steps of the real loop; the measured steps' times from its log.csv."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, _no_checkpoints(), \
            contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        run_dir = Path(tmp) / "run"
        loop.train(cfg, run_dir, dataset, steps=warmup + measured, device="cpu", echo=lambda *a, **k: None)
        rows = _log_rows(run_dir)[warmup:]
    batch = cfg.data.batch_size
    step_s = [batch / float(r["examples_per_s"]) for r in rows]
    wait_s = sum(t * float(r["data_wait"]) for t, r in zip(step_s, rows))
    params = _meta_parameters(cfg, _spec(cfg, dataset))
    return TrainSpeed(cfg.name, params, batch, warmup, len(rows), sum(step_s), wait_s, step_s)


@contextlib.contextmanager
def _no_checkpoints() -> Iterator[None]:
    """The loop without its checkpoint writes (gigabytes for a full-size model; not what is measured)."""
    saved = loop.save_checkpoint
    loop.save_checkpoint = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        loop.save_checkpoint = saved  # type: ignore[assignment]


def _log_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --- 2. reader against training -------------------------------------------------------------


def _reader_speed(cfg: TrainConfig, dataset: Path, warmup: int, batches: int) -> tuple[float, list[float]]:
    """Examples/s of the batches the loop consumes (from its start position), warm-up batches untimed."""
    layout = dataset_layout(cfg.data, dataset, cfg.name)
    stats = measure_stats(cfg.data, dataset, layout)
    source = DatasetSource(cfg.data, dataset, layout, stats, cfg.seed)
    passes = []
    for _ in range(READER_PASSES):
        it = source.batches(Position())
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        passes.append(batches * cfg.data.batch_size / (time.perf_counter() - t0))
        it.close()
    return statistics.median(passes), passes


def _raw_reader_speed(cfg: TrainConfig, dataset: Path, n: int) -> float:
    """Examples/s of the bare reader (same arrays and shuffle; no DataLoader, no collate).

    Epoch 0 is read untimed; then whole epochs are timed until at least `n` examples, so each
    epoch's shuffle-buffer fill is paid once per epoch, as in training.
    """
    layout = dataset_layout(cfg.data, dataset, cfg.name)
    ds = TFRecordIterableDataset(dataset, "train", names=[layout.data_name, *layout.local_names,
                                                          *layout.global_names, "id"],
                                 shuffle_seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer)
    seen, epoch, t0 = 0, 0, 0.0
    while seen < n:
        ds.set_epoch(epoch)
        count = sum(1 for _ in ds)
        if count == 0:
            raise PvtbuildError(f"{dataset}/train: no examples")
        if epoch == 0:
            t0 = time.perf_counter()
        else:
            seen += count
        epoch += 1
    return seen / (time.perf_counter() - t0)


def _full_size(dataset: Path, reader: float, reader_1: float) -> None:
    """The encodec reader against the full-size model's step on this CPU (a child process, time-boxed)."""
    print(f"  full-size {FULL_SIZE} at batch {FULL_BATCH} on this CPU, against the encodec reader above "
          f"(at most {FULL_BUDGET_S:.0f} s, model build included)")
    with tempfile.TemporaryDirectory(prefix="bench-train-full-") as tmp:
        run_dir, err = Path(tmp) / "run", Path(tmp) / "stderr.txt"
        t0 = time.monotonic()
        with err.open("wb") as fh:
            child = subprocess.Popen([sys.executable, __file__, CHILD_FLAG, str(dataset), str(run_dir)],
                                     stdout=subprocess.DEVNULL, stderr=fh)
            try:
                rc = child.wait(FULL_BUDGET_S)
            except subprocess.TimeoutExpired:
                child.kill()
                rc = child.wait()
        wall = time.monotonic() - t0
        stamps = _stamps(run_dir / STAMPS)
        last = (err.read_text(errors="replace").strip().splitlines() or [""])[-1]
    step_s = [b - a for a, b in zip(stamps, stamps[1:])]  # step k's time: between rows k-1 and k
    if not step_s:
        why = f"exit {rc}: {last}" if rc > 0 else f"{len(stamps)} step(s) in {wall:.0f} s"
        print(f"    skipped: fewer than 2 steps ({why}); the estimate needs a warm-up step and a timed one")
        return
    t = statistics.mean(step_s)
    train = FULL_BATCH / t
    print(f"    training loop {train:.4f} ex/s ({t:.1f} s/step, mean of {len(step_s)} step(s) after 1 warm-up; "
          f"{wall:.0f} s in all)")
    print(f"    reader / train: x{reader / train:,.0f}  (target >= {TARGET:g}: {_verdict(reader / train)})")
    workers = load_train_config(CONFIGS / f"{FULL_SIZE}.yaml").data.num_workers
    print(f"    a GPU runs it far faster than this CPU does: with the {TARGET:g}x margin, one reader process "
          f"feeds up to {reader / TARGET:.0f} ex/s as the loop reads here, {reader_1 / TARGET:.0f} ex/s as a "
          f"1-thread DataLoader worker ({FULL_SIZE} asks data.num_workers {workers})")


def _stamps(path: Path) -> list[float]:
    """The child's row times; a line cut short by the kill is dropped."""
    if not path.is_file():
        return []
    return [float(line) for line in path.read_text().split("\n")[:-1]]  # whole lines only


def _full_size_child(dataset: Path, run_dir: Path) -> None:
    """Run FULL_STEPS steps of the full-size config, stamping the time of each log row (child process)."""
    cfg = load_train_config(CONFIGS / f"{FULL_SIZE}.yaml",
                            **{"data.batch_size": FULL_BATCH, "data.num_workers": 0})
    write = loop._Log.write

    def stamped(self: Any, *args: Any, **kwargs: Any) -> None:
        write(self, *args, **kwargs)
        with (run_dir / STAMPS).open("a") as fh:
            fh.write(f"{time.perf_counter()!r}\n")

    loop._Log.write = stamped  # type: ignore[method-assign]
    with _no_checkpoints():
        loop.train(cfg, run_dir, dataset, steps=FULL_STEPS, device="cpu", echo=lambda *a, **k: None)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# --- 3. parameter counts --------------------------------------------------------------------


def _meta_parameters(cfg: TrainConfig, spec: DataSpec) -> int:
    with torch.device("meta"):
        return count_parameters(build_backbone(cfg, spec))


def _spec(cfg: TrainConfig, dataset: Path | None) -> DataSpec:
    if cfg.is_toy:
        return ToySource(cfg.data, cfg.seed).spec
    assert dataset is not None
    return dataset_layout(cfg.data, dataset, cfg.name).spec


# --- 4. DiscDPM's loss step: peak memory ----------------------------------------------------


def _discdpm_loss_memory(batch: int) -> None:
    """The reference against the fast DiscDPM loss, one child process each (section 4 of the docstring)."""
    shape = (batch, DISC_SHAPE[0], DISC_CLASSES, DISC_SHAPE[1])
    print(f"\n4. DiscDPM loss step (forward + backward) at logits {list(shape)} "
          f"({4 * math.prod(shape) / 2**30:.2f} GiB of float32), CPU, {torch.get_num_threads()} torch thread(s); "
          f"load average {_load()}")
    print(f"  {'variant':30s} {'peak RSS':>9s} {'before loss':>11s} {'added by the loss':>17s} {'seconds':>8s} "
          f"{'loss':>10s}")
    rows = {}
    for variant in ("reference", "fast"):
        out = subprocess.run([sys.executable, __file__, DISC_CHILD_FLAG, variant, str(batch)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"  {variant}: failed (exit {out.returncode}): {(out.stderr.strip().splitlines() or [''])[-1]}")
            return
        peak, before, seconds, loss = (float(v) for v in out.stdout.split())
        rows[variant] = peak - before
        label = "reference (before issue 19)" if variant == "reference" else "fast (DiscDPM.loss)"
        print(f"  {label:30s} {peak / 2**30:8.2f}G {before / 2**30:10.2f}G {(peak - before) / 2**30:16.2f}G "
              f"{seconds:8.1f} {loss:10.6f}")
    ratio = rows["reference"] / rows["fast"]
    verdict = "met" if ratio >= DISC_MEMORY_TARGET else "NOT MET"
    print(f"  memory added by the loss step: reference / fast = x{ratio:.1f}  "
          f"(target >= {DISC_MEMORY_TARGET:g}: {verdict}); the losses agree to float32 rounding")


def _rss_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _discdpm_child(variant: str, batch: int) -> None:
    """One DiscDPM loss step, forward and backward; prints peak RSS, RSS before the loss, seconds, loss."""
    sys.path.insert(0, str(REPO / "tests"))  # the reference lives beside the tests that check against it
    from discdpm_reference import ReferenceDiscDPM  # noqa: PLC0415  (importable once tests/ is on sys.path, above)

    d = DiscDPM(DiscDPMConfig(num_classes=DISC_CLASSES))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(DISC_CLASSES, (batch, *DISC_SHAPE), generator=g)
    logits = torch.empty(batch, DISC_SHAPE[0], DISC_CLASSES, DISC_SHAPE[1])  # filled in place: no temporaries,
    logits.normal_(generator=g).mul_(2).requires_grad_(True)  # so the high-water mark before the loss is the RSS
    loss_of = d.loss if variant == "fast" else ReferenceDiscDPM(d).loss
    before = _rss_bytes("VmRSS")
    t0 = time.perf_counter()
    loss = loss_of(lambda x, level, controls: logits, x0, Controls(), torch.Generator().manual_seed(1))
    loss.backward()
    seconds = time.perf_counter() - t0
    print(_rss_bytes("VmHWM"), before, seconds, float(loss))


# --- printing -------------------------------------------------------------------------------


def _mega(n: float) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _verdict(ratio: float) -> str:
    return "met" if ratio >= TARGET else "NOT MET"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
