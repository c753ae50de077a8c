"""Manifest rows, atomic writes and resume checks.

Every stage writes, per output shard, the shard file and a `.jsonl` manifest
part with one `ManifestRow` per item. Both go through `atomic_write`: a
temporary name in the same directory, fsync, rename. The manifest part is
written last and records the shard's sha256, so "this shard is done" means
exactly: its manifest part exists and the shard file still has that checksum.
A killed run therefore leaves either a complete shard or nothing visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pvtbuild.dataclass_dict import shallow_dict
from pvtbuild.errors import InputError, PvtbuildError


@dataclass
class ManifestRow:
    """One item of one stage: what went in, with which parameters, and what came out."""

    id: str
    stage: str
    status: str  # "ok" or "skipped: <reason>"
    inputs: dict[str, Any] = field(default_factory=dict)
    params: str = ""  # config_hash of the stage's config section
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> sha256
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return shallow_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ManifestRow":
        return cls(**d)


def path_within(folder: str | Path, name: Any, where: str) -> Path:
    """`folder / name` for a relative file name read from a record or dataset.json (`where`).

    A name that is not a string, is absolute, or resolves outside `folder` (`..`, a symlink out)
    is an `InputError`: no path built from data may leave its folder, for reading or writing.
    """
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\0" in name:
        raise InputError(f"{where}: file {name!r:.60} is not a relative path")
    root = Path(folder).resolve()
    path = Path(folder) / name
    if not path.resolve().is_relative_to(root):
        raise InputError(f"{where}: file {name!r:.60} lies outside {folder}")
    return path


def check_writable(path: str | Path, what: str) -> None:
    """Raise `PvtbuildError` unless `path` (a folder, or a file's folder) could be created and written,
    so that a command stops before its work rather than after it; leaves nothing behind.

    Its nearest existing ancestor must be a folder in which a file can be created: tried for real
    (a temporary, removed at once), as permission bits say nothing for root and nothing of a
    read-only or special file system.
    """
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PvtbuildError(f"{what} {path}: {existing} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".pvtbuild-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PvtbuildError(f"{what} {path}: cannot write in {existing} ({e.strerror or e})") from None


def skip_reason(status: str) -> str:
    """The reason part of a `skipped: reason` status (empty for ok)."""
    return status.split(":", 1)[1].strip() if status.startswith("skipped") else ""


def _file_mode_from_umask() -> int:
    """The mode a plain open() would give a new file; read once, as os.umask can only be read by setting it."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


PUBLIC_FILE_MODE = _file_mode_from_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", durable: bool = True) -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync and rename it into place.

    A killed process never leaves a visible partial file either way; `durable`
    adds the fsync that also survives a machine crash. A stage's intermediate
    shards may skip it (`durable=False`): their record, written durably after
    them, holds their sha256, and a resume re-hashes the file, so one torn by a
    crash is redone, never trusted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PUBLIC_FILE_MODE)  # mkstemp's 0600 would make datasets private to their writer
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete what `atomic_write`s killed midway left behind in `folder`; returns how many.

    Call it only where no writer can be running (a stage's client, before it
    submits tasks): a temporary is never a finished file, so nothing is lost.
    """
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> str:
    """JSON lines with sorted keys, so equal content is equal bytes."""
    return "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_bytes(path, dumps_jsonl(records).encode())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_rows(path: str | Path, rows: Iterable[ManifestRow]) -> None:
    write_jsonl(path, (r.to_dict() for r in rows))


def read_rows(path: str | Path) -> list[ManifestRow]:
    return [ManifestRow.from_dict(d) for d in read_jsonl(path)]


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks (shards are hundreds of MB)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(*parts: Any, n: int = 16) -> str:
    """A content-derived id: sha256 of the parts' JSON, never Python's salted hash()."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
