"""Run every benchmark of this folder (`bench/bench_*.py`, in name order) and print its output.

    python bench/run_all.py            # what `make bench` runs
    python bench/run_all.py render     # only the benchmarks whose name contains "render"

Each benchmark runs in its own process with default arguments and prints its
own ratios (measured against a baseline in the same run). A benchmark that
fails is reported and the others still run; the exit code is non-zero if any
failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = argv[1:]
    scripts = [p for p in sorted(BENCH.glob("bench_*.py")) if not wanted or any(w in p.stem for w in wanted)]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=BENCH.parent)
        print(f"== {script.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.monotonic() - t0:.0f} s\n",
              flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
