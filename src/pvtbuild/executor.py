"""Running a stage's tasks: in-process, on a local dask cluster, or on a dask cluster by address.

The executor knows nothing of MIDI or audio. A stage hands it `Task`s (a
module-level function and picklable arguments; each task writes one output
shard itself and returns a small summary) and gets back `(task, result)` pairs
as tasks finish, where a task that raised yields a `TaskFailure` instead of
stopping the run. Three modes, one interface:

- `scheduler="sync"`: in this process, one task after another (tests, debugging);
- `scheduler=None`: a local dask cluster of `jobs` worker processes (default);
- `scheduler="tcp://host:port"`: an existing `dask scheduler` and its workers.

Workers build their own FluidSynth and torch objects lazily (see synth.py and
encode/); nothing unpicklable crosses the wire.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlparse

from tqdm.auto import tqdm

from .errors import PvtbuildError

log = logging.getLogger(__name__)

# The dask nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which was measured to
# make torch inference about 2x slower; a large mmap threshold restores full speed.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432"}


@dataclass(frozen=True)
class Task:
    key: str  # unique within a run, e.g. "render-00003"
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised (or whose worker kept dying): the stage records its items as skipped."""

    reason: str


class Executor:
    """One interface over in-process and dask execution; use through `open_executor`."""

    def __init__(self, client: Any | None, label: str, dashboard: str | None = None):
        self.client = client
        self.label = label
        self.dashboard = dashboard

    @property
    def n_workers(self) -> int:
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def worker_resources(self) -> dict[str, float]:
        """Total resources advertised by the cluster's workers (e.g. {"GPU": 2})."""
        if self.client is None:
            return {}
        total: dict[str, float] = {}
        for w in self.client.scheduler_info().get("workers", {}).values():
            for k, v in (w.get("resources") or {}).items():
                total[k] = total.get(k, 0) + v
        return total

    def run(self, tasks: Iterable[Task], desc: str, unit: str = "shard") -> Iterator[tuple[Task, Any]]:
        """Yield (task, result or TaskFailure) as tasks complete, with a progress bar."""
        tasks = list(tasks)
        bar = tqdm(total=len(tasks), desc=desc, unit=unit, dynamic_ncols=True, disable=not tasks)
        try:
            results = self._run_sync(tasks) if self.client is None else self._run_dask(tasks)
            for task, result in results:
                bar.update(1)
                yield task, result
        finally:
            bar.close()

    def _run_sync(self, tasks: list[Task]) -> Iterator[tuple[Task, Any]]:
        for task in tasks:
            try:
                yield task, task.fn(*task.args)
            except PvtbuildError:
                raise
            except Exception as e:  # a bug or a poisoned input: record it, go on
                log.debug("task %s failed:\n%s", task.key, traceback.format_exc())
                yield task, TaskFailure(_one_line(e))

    def _run_dask(self, tasks: list[Task]) -> Iterator[tuple[Task, Any]]:
        from distributed import as_completed

        by_key = {}
        futures = []
        for task in tasks:
            fut = self.client.submit(task.fn, *task.args, key=task.key, pure=False,
                                     resources=task.resources or None, retries=1)
            by_key[fut.key] = task
            futures.append(fut)
        for fut in as_completed(futures):
            task = by_key[fut.key]
            if fut.status == "finished":
                yield task, fut.result()
            else:
                exc = fut.exception()
                if isinstance(exc, PvtbuildError):
                    raise exc
                yield task, TaskFailure(_one_line(exc))
            fut.release()


@contextmanager
def open_executor(scheduler: str | None, jobs: int, threads_per_job: int = 0,
                  quiet: bool = False) -> Iterator[Executor]:
    """Start (or connect to) what runs the tasks; close what we started on exit."""
    threads = threads_per_job or max(1, (os.cpu_count() or 1) // max(1, jobs))
    if scheduler == "sync":
        yield Executor(None, "in-process")
        return
    import dask
    from distributed import Client, LocalCluster

    env = dict(WORKER_ENV, OMP_NUM_THREADS=str(threads), PVTBUILD_THREADS=str(threads))
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}
                         | {"distributed.scheduler.allowed-failures": 2,
                            # MIDI parsing runs in a child process (midi.py), which daemons may not have.
                            "distributed.worker.daemon": False}):
        if scheduler is None:
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", host="127.0.0.1",
                                   silence_logs=logging.CRITICAL)
            client = Client(cluster)
            label = f"local dask cluster, {jobs} worker(s) x {threads} thread(s)"
        else:
            _check_reachable(scheduler)
            cluster = None
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise PvtbuildError(f"cannot connect to dask scheduler {scheduler}: {_one_line(e)}") from None
            label = f"dask cluster at {scheduler}"
        try:
            ex = Executor(client, label, client.dashboard_link)
            if not quiet:
                tqdm.write(f"executor: {label}; dashboard {ex.dashboard}")
            yield ex
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with one line, when nothing listens at the scheduler address."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port:
        raise PvtbuildError(f"--scheduler {address!r}: expected tcp://HOST:PORT, 'sync', or nothing for a local cluster")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((url.hostname, url.port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise PvtbuildError(f"no dask scheduler answers at {address}: {e.strerror or e}") from None
            time.sleep(0.2)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:300]
