"""What a worker process is given and sets up for itself: thread counts, glibc's malloc setting, and the
facts the pre-flight check compares (installed versions, visible paths, a writable build directory).

Workers need no pvtbuild-specific environment: a stock `dask worker` will do. What a task needs of
its process it arranges itself, once per process, before the first task runs (`prepare_process`):
glibc's mmap threshold (see there). Nothing a stage runs needs a `multiprocessing` child either (the
MIDI parser is started with `subprocess`), so daemonic workers are fine.

Run as `python -m pvtbuild.engine.processes env THREADS` it prints, as shell `export` lines, the
thread counts of pvtbuild's own workers; optional elsewhere (a stock nanny already sets
OMP_NUM_THREADS=1, right for one worker per core).
"""

from __future__ import annotations

import ctypes
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

# Environment of pvtbuild's own workers beyond their thread counts: nothing any more (the malloc
# setting is made at run time, `prepare_process`). bench/bench_dask.py puts MALLOC_FIX_ENV=0 here
# to measure workers without it.
WORKER_ENV: dict[str, str] = {}
MALLOC_FIX_ENV = "PVTBUILD_MALLOC_FIX"  # "0": leave glibc's malloc as the process found it
# The dask nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers; in glibc that also switches
# off the adaptive mmap threshold, so torch's large temporaries are mmapped and unmapped on
# every call (EnCodec ~2x slower). A fixed 32 MiB threshold restores full speed.
MMAP_THRESHOLD = 32 * 2**20
PREFLIGHT_PACKAGES = ("pvtbuild", "torch")  # a worker with other versions would write other bytes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_prepared = False


def cores() -> int:
    """CPU cores this process may use (its affinity mask, which containers and SLURM narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: the malloc fix and its torch / OpenMP thread count."""
    return dict(WORKER_ENV, OMP_NUM_THREADS=str(threads), PVTBUILD_THREADS=str(threads))


def prepare_process() -> bool:
    """Once per process, before its first task: glibc's mmap threshold, whatever the nanny set.

    `mallopt(M_MMAP_THRESHOLD, 32 MiB)` fixes the threshold (undoing the effect of the
    nanny's MALLOC_TRIM_THRESHOLD_, see MMAP_THRESHOLD) and `M_TRIM_THRESHOLD` is set to
    twice that, where glibc's own adaptive rule would put it. A no-op off glibc, when
    `PVTBUILD_MALLOC_FIX=0`, and after the first call. Returns whether the setting was made.
    """
    global _prepared
    if _prepared:
        return False
    _prepared = True
    if os.environ.get(MALLOC_FIX_ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS, Windows: other allocators
            return False
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def run_task(fn: Callable[..., Any], *args: Any) -> Any:
    """What a dask worker runs: the process set up once, then the task."""
    prepare_process()
    return fn(*args)


def package_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions by distribution name (None: not installed), read without importing them."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def worker_facts(paths: dict[str, str], writable: str, packages: tuple[str, ...]) -> dict[str, Any]:
    """Run on each worker by `Executor.preflight`: what it has installed, sees and may write."""
    target = Path(writable)
    while not target.exists() and target.parent != target:  # the build directory may not exist yet
        target = target.parent
    unwritable = ""
    if not target.is_dir():
        unwritable = f"{target} is not a directory"
    elif not os.access(target, os.W_OK | os.X_OK):
        unwritable = f"no write permission in {target}"
    return {"versions": package_versions(packages),
            "visible": {what: os.path.exists(path) for what, path in paths.items()},
            "unwritable": unwritable}


def _print_env(argv: list[str]) -> None:
    """`env THREADS`: the worker environment as shell exports (for `eval` before starting workers)."""
    if len(argv) != 2 or argv[0] != "env" or not argv[1].isdigit():
        sys.exit("usage: python -m pvtbuild.engine.processes env THREADS")
    for key, value in worker_env(int(argv[1])).items():
        print(f"export {key}={value}")


if __name__ == "__main__":
    _print_env(sys.argv[1:])
