#!/usr/bin/env python3
"""Check that a change of code left every output byte the same (issue #20's safety net).

Builds the same two datasets with the code of a base commit and with the code of the work
tree, from the same folder and the same configs, and compares the sha256 of every file:

- `pipelines/demo.yaml`, as `make demo` builds it;
- `pipelines/pvt.yaml` on `tests/data/midi/lakh-sample`, with random EnCodec weights (fixed seed).

Both builds run from the repository root because a build records its MIDI input's absolute
path; the base's code is a `git archive` of its `src/` put first on PYTHONPATH. Exit status 0
when every file is byte-identical, 1 otherwise (the differing paths are listed).

    python scripts/compare_outputs.py --base b4bae3a        # ~5 min on 2 cores
    python scripts/compare_outputs.py --base b4bae3a --keep /tmp/cmp   # keep both builds
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDS = {
    "demo": ["run", "pipelines/demo.yaml"],
    "pvt": ["run", "pipelines/pvt.yaml", "--midi", "tests/data/midi/lakh-sample", "--random-weights"],
}
CLI = "import sys; from pvtbuild.cli import cli; sys.argv[0] = 'pvtbuild'; cli()"


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by its path relative to it."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def export_src(rev: str, dest: Path) -> Path:
    """`rev`'s `src/` folder, unpacked under `dest`; returns the folder to put on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
                             check=True, capture_output=True).stdout
    tar = dest / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest / "src"


def build(src: Path, out: Path) -> None:
    """Every build of `BUILDS` into `out/<name>`, with the code in `src`, run from the repository root."""
    # The SoundFont registry is found beside `src/`, which the base's copy lacks: name the repository's.
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0", PVTBUILD_SOUNDFONTS=str(ROOT / "soundfonts"))
    for name, args in BUILDS.items():
        log = out / f"{name}.log"
        out.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            rc = subprocess.run([sys.executable, "-c", CLI, *args, "--out", str(out / name)], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            sys.exit(f"{out / name}: the build failed (exit {rc}); see {log}")


def compare(base: dict[str, str], head: dict[str, str]) -> list[str]:
    """One line per path that is missing on one side or differs."""
    lines = []
    for path in sorted(set(base) | set(head)):
        if path not in head:
            lines.append(f"only in base: {path}")
        elif path not in base:
            lines.append(f"only in head: {path}")
        elif base[path] != head[path]:
            lines.append(f"differs: {path}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit whose outputs are the reference")
    parser.add_argument("--keep", type=Path, default=None, help="build here and keep both builds")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pvt-compare-"))
    try:
        for side in ("base", "head"):
            shutil.rmtree(work / side, ignore_errors=True)
        (work / "base").mkdir(parents=True)
        base_src = export_src(args.base, work / "base")
        print(f"building with {args.base}'s code ...", flush=True)
        build(base_src, work / "base" / "out")
        print("building with the work tree's code ...", flush=True)
        build(ROOT / "src", work / "head" / "out")
        totals, problems = 0, []
        for name in BUILDS:
            base, head = tree_hashes(work / "base" / "out" / name), tree_hashes(work / "head" / "out" / name)
            totals += len(base)
            problems += [f"{name}: {line}" for line in compare(base, head)]
        if problems:
            print("\n".join(problems))
            sys.exit(f"{len(problems)} of {totals} files differ from {args.base}'s outputs")
        print(f"all {totals} files byte-identical to {args.base}'s outputs ({', '.join(BUILDS)})")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
