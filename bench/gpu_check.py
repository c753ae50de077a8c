"""Every CUDA path of pvtbuild in one run of at most 8 minutes on one GPU, printed as one table.

    python bench/gpu_check.py --prepare   # here, where FluidSynth is: render the clips, fetch the wheels
    python bench/gpu_check.py             # on the GPU machine (or anywhere: without CUDA the GPU rows say so)
    make gpu-check                        # both, on this machine

GPU time comes in short windows, so the check is prepared ahead and runs in one command from a copy of
the working tree. `--prepare` writes `.gpucheck/` (git-ignored, about 30 MB): the render stage's output
of `bench/gpu_check.yaml` (36 clips of examples/midi; the GPU machine has no FluidSynth) and wheels of
the few pure or small packages a bare CUDA image lacks (crc32c, encodec, nnAudio). Without pvtbuild
importable, the check installs those wheels into a temporary folder and restarts itself on it, so the
command on the GPU machine is `python3 bench/gpu_check.py` with `.gpucheck` carried along. That is why
pvtbuild, torch and bench_sample are imported inside the functions that use them, after the restart.

Sections, each in its own process under its own time limit (a hung section costs its limit, not the run):

  a. the CUDA tests (`tests/encoders/test_cuda.py`, the CQT's CUDA test);
  b. the encode stage on CUDA at batch 32 for cqt, encodec and disc: clips/s against the CPU, and two
     CUDA runs of all formats byte-identical (`deterministic_cuda`);
  c. each Table 4.1 config at the report's per-GPU batch size, bf16 autocast, a few steps of the real
     loop on the dataset sharded from (b): steps/s and peak GPU memory;
  d. sampling: EDM-encodec at full size, 64 x 8 s (report: 12.7 s), and DiscDPM, 8 x 4 s at its
     default steps (report: 112.8 s at 1000 steps);
  e. a `torchrun` run with one process per visible GPU (NCCL), a few steps, then resumed once.

Weights are random (nothing is downloaded); sampling and training cost do not depend on them. Without
CUDA every section runs its CPU part (the CPU encode baseline, tiny configs for two steps, a one-process
gloo torchrun) and marks the GPU rows "no CUDA", so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / ".gpucheck"  # what --prepare writes; carried to the GPU machine
BUILD = PACK / "build"
WHEELS = PACK / "wheels"
PIPELINE = REPO / "bench" / "gpu_check.yaml"
CARRIED = {"crc32c": "crc32c==2.9.post0", "encodec": "encodec==0.1.1", "nnAudio": "nnAudio==0.3.4"}  # module: pip
BINARY = ("crc32c",)  # compiled: a wheel per Python; the others are pure Python (encodec ships only an sdist)
WHEEL_PYTHONS = ("3.11", "3.12")  # this machine's and the CUDA image's
LIMITS = {"a": 70, "b": 140, "c": 150, "d": 60, "e": 60}  # seconds per section on a GPU machine: 8 minutes in all
CPU_SLOWER = 5  # without CUDA the limits are this many times longer (a 2-core laptop encodes on its CPU)
FORMATS = ("cqt", "encodec", "disc")
TABLE_41 = (("ddpm-cqt", 4), ("edm-cqt", 4), ("ddpm-encodec", 16), ("edm-encodec", 16), ("discdpm-disc", 16))
TINY = ("edm-cqt-tiny", "edm-encodec-tiny", "discdpm-disc-tiny")  # the CPU smoke of section c
TRAIN_STEPS = 6  # steps per config in section c; the first two are warm-up
NO_CUDA = "no CUDA"


# ---------------------------------------------------------------- set-up


def prepare() -> None:
    """Render the check's clips and download the wheels into .gpucheck/ (needs FluidSynth and PyPI)."""
    if BUILD.exists():
        shutil.rmtree(BUILD)
    PACK.mkdir(exist_ok=True)
    _run([sys.executable, "-m", "pvtbuild.cli", "render", "--pipeline", str(PIPELINE), "--out", str(BUILD)])
    WHEELS.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    for module, spec in CARRIED.items():
        if module not in BINARY:
            _run([*pip, "wheel", "--no-deps", "--wheel-dir", str(WHEELS), spec])
            continue
        for py in WHEEL_PYTHONS:
            _run([*pip, "download", "--no-deps", "--only-binary=:all:", "--dest", str(WHEELS), "--python-version", py,
                  "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                  "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", spec])
    size = sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    print(f"gpu_check: prepared {PACK} ({size / 2**20:.1f} MiB). On the GPU machine, from a copy of this tree "
          f"with .gpucheck carried: python3 bench/gpu_check.py")


def bootstrap() -> None:
    """Make pvtbuild importable: src/ on the path, and the carried wheels when a package is missing."""
    paths = [str(REPO / "src"), str(REPO / "bench")]
    missing = [m for m in CARRIED if importlib.util.find_spec(m) is None]
    if missing:
        if not WHEELS.is_dir():
            sys.exit(f"gpu_check: {', '.join(missing)} missing and no {WHEELS}; run `python bench/gpu_check.py "
                     "--prepare` where pip works and carry .gpucheck along")
        site = Path(tempfile.gettempdir()) / "gpucheck-site"
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
              "--target", str(site), *map(str, _wheels_for_this_python())])
        paths.insert(0, str(site))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    for p in reversed(paths):
        sys.path.insert(0, p)


def _wheels_for_this_python() -> list[Path]:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return [w for w in sorted(WHEELS.glob("*.whl")) if "-none-any" in w.name or f"-{tag}-" in w.name]


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, cwd=REPO, **kw)


# ---------------------------------------------------------------- sections (each runs in a child process)


Row = tuple[str, str, str]  # (section, what, result)


def section_a(cuda: bool) -> list[Row]:
    """The CUDA tests: pytest on tests/test_cuda.py and the CQT's CUDA test."""
    tests = ["tests/encoders/test_cuda.py",
             "tests/encoders/test_cqt.py::test_cuda_runs_the_same_transform_and_matches_nnaudio"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, capture_output=True, text=True)
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
    if proc.returncode not in (0, 5):
        print(proc.stdout[-4000:], proc.stderr[-2000:], file=sys.stderr)
    verdict = tail[0].strip("= ") if cuda else f"{NO_CUDA} ({tail[0].strip('= ')})"
    return [("a", "CUDA tests", verdict)]


def section_b(cuda: bool) -> list[Row]:
    """The encode stage per format on each device, and two CUDA runs of every format compared byte for byte."""
    from pvtbuild.build_dir import build_config  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.pipeline import run_encode  # noqa: PLC0415  (after the restart: docstring)

    work = Path(tempfile.mkdtemp(prefix="gpucheck-b-"))
    _require_build()

    def encode(device: str, formats: tuple[str, ...], name: str) -> tuple[float, Path]:
        out = work / name
        shutil.copytree(BUILD, out)
        cfg = build_config(out, None, **{"encode.device": device, "encode.formats": formats,
                                         "encode.batch_size": 32 if device == "cuda" else 0,
                                         "exec.scheduler": "sync"})
        t0 = time.perf_counter()
        summary = run_encode(cfg, out)[-1]
        seconds = time.perf_counter() - t0
        if summary.failed_shards:
            raise RuntimeError(f"encode on {device} ({','.join(formats)}): shards failed: {summary.failed_shards}")
        return seconds, out

    clips = _clip_count()
    rows = []
    for fmt in FORMATS:
        cpu_s, _ = encode("cpu", (fmt,), f"cpu-{fmt}")
        line = f"CPU {clips / cpu_s:.2f} clips/s"
        if cuda:
            gpu_s, _ = encode("cuda", (fmt,), f"cuda-{fmt}")
            line += f", CUDA {clips / gpu_s:.2f} clips/s ({cpu_s / gpu_s:.1f}x)"
        else:
            line += f", CUDA: {NO_CUDA}"
        rows.append(("b", f"encode {fmt}, batch 32, {clips} clips (stage wall time, model load included)", line))
    if cuda:
        _, one = encode("cuda", FORMATS, "cuda-all-1")
        _, two = encode("cuda", FORMATS, "cuda-all-2")
        differ = _differing_files(one / "encode", two / "encode")
        rows.append(("b", "encode on CUDA twice: byte-identical stage files",
                     "yes" if not differ else f"NO: {len(differ)} differ ({', '.join(differ[:3])})"))
        _shard_for_training(one)
    else:
        rows.append(("b", "encode on CUDA twice: byte-identical stage files", NO_CUDA))
        _, cpu_all = encode("cpu", FORMATS, "cpu-all")
        _shard_for_training(cpu_all)
    return rows


def section_c(cuda: bool) -> list[Row]:
    """A few steps of the real loop per config: steps/s and peak memory (bf16 autocast on CUDA)."""
    dataset = _dataset()
    cases = [(name, batch) for name, batch in TABLE_41] if cuda else [(name, None) for name in TINY]
    rows = []
    for name, batch in cases:
        rows.append(_run_child(["--train-one", name, str(dataset)], _limit("c", cuda) / len(cases),
                               ("c", f"train {name}" + (f", batch {batch}, bf16" if cuda else ", CPU smoke"))))
    if not cuda:
        rows.append(("c", "Table 4.1 configs, per-GPU batch, bf16", NO_CUDA))
    return rows


def train_one(name: str, dataset: Path) -> str:
    """One config for TRAIN_STEPS steps on the check's dataset; returns its row's result."""
    import torch  # noqa: PLC0415  (after the restart: docstring)

    from pvtbuild.train.config import load_train_config  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.train.loop import TrainOptions, train  # noqa: PLC0415  (after the restart: docstring)

    cuda = torch.cuda.is_available()
    cfg = load_train_config(REPO / "pipelines" / "train" / f"{name}.yaml", **{"train.amp": "bf16"})
    run = Path(tempfile.mkdtemp(prefix=f"gpucheck-c-{name}-"))
    t0 = time.perf_counter()
    options = TrainOptions(run, dataset, steps=TRAIN_STEPS if cuda else 3, device="cuda" if cuda else "cpu")
    train(cfg, options, echo=lambda line: None)
    wall = time.perf_counter() - t0
    with open(run / "log.csv") as f:
        # the first two are warm-up (on CPU one step is left)
        rates = [float(r["examples_per_s"]) for r in csv.DictReader(f)][2:]
    steps_per_s = statistics.median(rates) / cfg.data.batch_size if rates else float("nan")
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    return f"{steps_per_s:.2f} steps/s{peak} ({wall:.0f} s with model build)"


def section_d(cuda: bool) -> list[Row]:
    """Sampling time of the two cases the report measured."""
    if not cuda:
        return [("d", "sample EDM-encodec full size, 64 x 8 s", NO_CUDA),
                ("d", "sample DiscDPM, 8 x 4 s", NO_CUDA)]
    import torch  # noqa: PLC0415  (after the restart: docstring)

    from bench_sample import GROUPS, melody_controls  # noqa: PLC0415  (after the restart) one melody, as bench_sample's
    from pvtbuild.train.build import build_backbone, build_formalism  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.train.config import load_train_config  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.train.guidance import Controls  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.train.sample import Sampler, generate  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.train.spec import DataSpec, DataStats  # noqa: PLC0415  (after the restart: docstring)

    rows = []
    cases = (("edm-encodec", (128, 600), 64, "12.7 s"), ("discdpm-disc", (16, 300), 8, "112.8 s"))
    for name, shape, n, report in cases:
        cfg = load_train_config(REPO / "pipelines" / "train" / f"{name}.yaml")
        spec = DataSpec(shape, 1024 if cfg.data.format == "disc" else 0, sum(GROUPS), 0)
        torch.manual_seed(0)
        net = build_backbone(cfg, spec).cuda().eval()
        sampler = Sampler(cfg, net, build_formalism(cfg, spec, DataStats()), spec, DataStats(), 0, Path("-"))
        c = melody_controls(shape[-1])
        controls = Controls(c.local.expand(n, -1, -1).contiguous(), None, GROUPS, ())
        generate(sampler, controls, n, 2, 1.0, 0, n)  # warm-up: kernels, allocator
        gen = generate(sampler, controls, n, None, 1.0, 0, n)
        steps = cfg.train.sample_steps or getattr(sampler.formalism, "T", "?")
        rows.append(("d", f"sample {name} full size, {n} x {shape[-1] / 75:.0f} s, {steps} steps ({gen.nfe:g} NFE)",
                     f"{gen.seconds:.1f} s (report: {report}), "
                     f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"))
        del net, sampler
        torch.cuda.empty_cache()
    return rows


def section_e(cuda: bool) -> list[Row]:
    """torchrun, one process per GPU (NCCL), 4 steps, then resumed to 8."""
    import torch  # noqa: PLC0415  (after the restart: docstring)

    dataset = _dataset()
    procs = torch.cuda.device_count() if cuda else 1
    run = Path(tempfile.mkdtemp(prefix="gpucheck-e-"))
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node",
            str(procs), "-m", "pvtbuild.cli", "train", "--config", "pipelines/train/edm-encodec-tiny.yaml",
            "--data", str(dataset), "--out", str(run), "--device", "cuda" if cuda else "cpu"]
    t0 = time.perf_counter()
    first = subprocess.run(base + ["--steps", "4"], cwd=REPO, capture_output=True, text=True)
    second = subprocess.run(base + ["--steps", "8", "--resume"], cwd=REPO, capture_output=True, text=True)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt")) if (run / "checkpoints").is_dir() else []
    ok = first.returncode == 0 and second.returncode == 0 and any("00000008" in c for c in ckpts)
    if not ok:
        print(first.stderr[-3000:], second.stderr[-3000:], file=sys.stderr)
    what = (f"torchrun {procs} process{'es' if procs > 1 else ''}, {'NCCL' if cuda else 'gloo (CPU)'}, "
            "4 steps + resume to 8")
    result = (f"{'ok' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s "
              f"(checkpoints: {', '.join(ckpts) or 'none'})")
    return [("e", what, result if cuda else f"{NO_CUDA}; CPU path {result}")]


SECTIONS: dict[str, Callable[[bool], list[Row]]] = {
    "a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}


def _limit(key: str, cuda: bool) -> float:
    return LIMITS[key] * (1 if cuda else CPU_SLOWER)


def _require_build() -> None:
    if not (BUILD / "render").is_dir():
        raise RuntimeError(f"{BUILD}/render is missing: run `python bench/gpu_check.py --prepare` first")


def _clip_count() -> int:
    return sum(1 for line in (BUILD / "render" / "manifest.jsonl").read_text().splitlines() if line.strip())


def _differing_files(a: Path, b: Path) -> list[str]:
    """Stage files (*.npz) of `a` whose bytes differ from the same path under `b`."""
    return [p.name for p in sorted(a.rglob("*.npz")) if (b / p.relative_to(a)).read_bytes() != p.read_bytes()]


def _dataset_pointer() -> Path:
    return Path(tempfile.gettempdir()) / "gpucheck-dataset.txt"


def _shard_for_training(out: Path) -> None:
    """Shard an encoded build into the dataset sections c and e train on; remember where it is."""
    from pvtbuild.build_dir import build_config  # noqa: PLC0415  (after the restart: docstring)
    from pvtbuild.pipeline import run_shard  # noqa: PLC0415  (after the restart: docstring)

    cfg = build_config(out, None, **{"exec.scheduler": "sync"})
    run_shard(cfg, out)
    _dataset_pointer().write_text(str(out / "dataset"))


def _dataset() -> Path:
    pointer = _dataset_pointer()
    if not pointer.is_file():
        raise RuntimeError("no dataset: section b (encode, then shard) did not finish")
    return Path(pointer.read_text())


def _run_child(args: list[str], limit: float, label: tuple[str, str]) -> Row:
    """Run this script with `args` in a child under `limit` seconds; its last stdout line is the result."""
    try:
        proc = subprocess.run([sys.executable, __file__, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        return (*label, f"TIMED OUT after {limit:.0f} s")
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["?"]
        return (*label, f"FAILED: {last[0][:160]}")
    return (*label, proc.stdout.strip().splitlines()[-1])


def run_section(key: str) -> None:
    """Child process: run one section and print its rows as one JSON line."""
    import torch  # noqa: PLC0415  (after the restart: docstring)

    rows = SECTIONS[key](torch.cuda.is_available())
    print(json.dumps(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="render the clips and download the wheels (here)")
    parser.add_argument("--sections", default="abcde", help="which sections to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--train-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare()
        return 0
    bootstrap()
    if args.section:
        run_section(args.section)
        return 0
    if args.train_one:
        print(train_one(args.train_one[0], Path(args.train_one[1])))
        return 0
    return check(args.sections, args.out)


def check(sections: str, out: Path | None) -> int:
    """Run the sections in order, each in a child process under its limit, and print one table."""
    import torch  # noqa: PLC0415  (after the restart: docstring)

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU only ({os.cpu_count()} cores): GPU rows say {NO_CUDA!r}"
    print(f"gpu_check: torch {torch.__version__}, {device}", flush=True)
    _dataset_pointer().unlink(missing_ok=True)
    rows: list[Row] = []
    t0 = time.perf_counter()
    for key in sections:
        start = time.perf_counter()
        limit = _limit(key, cuda)
        print(f"gpu_check: section {key} (limit {limit:.0f} s)", flush=True)
        try:
            proc = subprocess.run([sys.executable, __file__, "--section", key], cwd=REPO, capture_output=True,
                                  text=True, timeout=limit)
            if proc.returncode == 0:
                rows += [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
            else:
                print(proc.stderr[-4000:], file=sys.stderr)
                last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["?"]
                rows.append((key, "section", f"FAILED: {last[0][:160]}"))
        except subprocess.TimeoutExpired:
            rows.append((key, "section", f"TIMED OUT after {limit:.0f} s"))
        print(f"gpu_check: section {key} done in {time.perf_counter() - start:.0f} s", flush=True)
    table = [f"gpu_check on {device}, torch {torch.__version__}, {time.perf_counter() - t0:.0f} s in all", "",
             "| | check | result |", "|---|---|---|"] + [f"| {s} | {w} | {r} |" for s, w, r in rows]
    text = "\n".join(table)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
    failed = [r for r in rows if r[2].startswith(("FAILED", "TIMED OUT")) or "NO:" in r[2]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
