"""The shard files this process wrote last, kept in memory for the tasks that read them next.

In a streamed build (`pvtbuild run`) the encode and qa tasks of render shard i run right after
the render task that wrote it, in the same process (in-process: list order; on dask: a task
runs where its input, the render task's result, lives). Reading the file back and checking
its sha256 then costs ~0.6 ms per 8 s clip, a third of what judging it costs (qa), for bytes
this process held a moment ago. So `stage.write_shard_file` keeps the bytes it wrote here
(`keep`), and `stage.read_shard_arrays` takes them from here (`lookup`) instead of the file.

Why that is safe: an entry is found only under the recorded sha256 *and* the file's identity
as it was written (device, inode, size, mtime): a file rewritten, replaced or deleted since
(damage a reader must see) no longer matches and is read from disk and checked as before.
The bytes served are exactly those whose sha256 the record holds.

Memory: at most `MAX_BYTES` (the newest shards first; ~4 render shards of 32 clips), so a
worker that goes on rendering holds a bounded amount; entries older than that are dropped.
Thread-safe (dask workers may run tasks in threads).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

MAX_BYTES = 128 * 2**20

_lock = threading.Lock()
_entries: OrderedDict[tuple[str, str], tuple[tuple[int, int, int, int], bytes]] = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def keep(path: str | Path, sha256: str, blob: bytes) -> None:
    """Remember `blob`, just written to `path` with this sha256 (the file must exist now)."""
    if len(blob) > MAX_BYTES:
        return
    key = (os.path.abspath(path), sha256)
    ident = _identity(path)
    if ident is None:
        return
    with _lock:
        _entries.pop(key, None)
        _entries[key] = (ident, blob)
        total = sum(len(b) for _, b in _entries.values())
        while total > MAX_BYTES:
            _, (_, old) = _entries.popitem(last=False)
            total -= len(old)


def lookup(path: str | Path, sha256: str) -> bytes | None:
    """The bytes of `path` if this process wrote them with this sha256 and the file is untouched since; else None."""
    key = (os.path.abspath(path), sha256)
    with _lock:
        entry = _entries.get(key)
    if entry is not None and entry[0] == _identity(path):
        with _lock:
            _stats["hits"] += 1
        return entry[1]
    with _lock:
        _stats["misses"] += 1
    return None


def stats() -> dict[str, int]:
    """Reads served from memory (`hits`) and from disk (`misses`) in this process, and the bytes held now."""
    with _lock:
        return {**_stats, "held_bytes": sum(len(b) for _, b in _entries.values()), "entries": len(_entries)}


def clear() -> None:
    """Forget every entry and reset the counts (benchmarks timing the read from disk, tests)."""
    with _lock:
        _entries.clear()
        _stats.update(hits=0, misses=0)


def _identity(path: str | Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
