"""Running a stage's tasks: in-process, on a local dask cluster, or on a dask cluster by address.

The executor knows nothing of MIDI or audio. A stage hands it `Task`s (tasks.py: a
module-level function and picklable arguments; each task writes one output shard itself
and returns a small summary) and gets back `(task, result)` pairs as tasks finish, where a
task that raised yields a `TaskFailure` instead of stopping the run. Three modes, one interface:

- `scheduler="sync"`: in this process, one task after another (tests, debugging);
- `scheduler=None`: a local dask cluster of `jobs` worker processes (default);
- `scheduler="tcp://host:port"`: an existing `dask scheduler` and its workers;
- `scheduler="tls://host:port"`: the same over TLS, with this client's certificates from dask's
  config (`distributed.comm.tls.*`, or `DASK_DISTRIBUTED__COMM__TLS__*`; see docs/cluster.md).

Starting or connecting to the cluster is cluster.py's (and tls.py's); what a worker process is
given and sets up for itself is processes.py's.

Workers build their own FluidSynth and torch objects lazily (see music/synth.py and
encoders/); nothing unpicklable crosses the wire.

Failures: a task that raises is not retried (tasks catch bad inputs themselves,
so what escapes is deterministic) and becomes a `TaskFailure`. A worker that
dies mid-task (kill -9, out of memory, a crash in native code) costs nothing
but time: the scheduler reruns the task elsewhere, and only when workers died
`cluster.ALLOWED_FAILURES + 1` times running the same task is it given up as a
`TaskFailure` -- a poisoned input must not take down worker after worker.
Tasks write their shard atomically, so a task run twice writes the same bytes.
Before any work, `Executor.preflight` checks each worker once (versions, paths,
a writable build directory) and stops with one line naming the worker that differs.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from pvtbuild.engine.cluster import dashboard, open_cluster
from pvtbuild.engine.processes import PREFLIGHT_PACKAGES, cores, package_versions, run_task, worker_facts
from pvtbuild.engine.tasks import Task, TaskFailure, afters, one_line, resolve
from pvtbuild.errors import PvtbuildError

log = logging.getLogger(__name__)


class Executor:
    """One interface over in-process and dask execution; use through `open_executor`."""

    def __init__(self, client: Any | None, label: str, dashboard: str | None = None):
        self.client = client
        self.label = label
        self.dashboard = dashboard

    @property
    def n_workers(self) -> int:
        """Workers the cluster has now (1 in-process)."""
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

    def preflight(self, paths: dict[str, str], writable: str, packages: tuple[str, ...] = PREFLIGHT_PACKAGES) -> None:
        """Check every worker once, before any work: same package versions as this process,
        `paths` ({what: absolute path}) visible, `writable` (a directory, or where it will be
        made) writable. Nothing to check in-process.

        Raises:
            PvtbuildError: one line naming the first worker and its problem (and how many more).
        """
        if self.client is None:
            return
        here = package_versions(packages)
        facts = self.client.run(worker_facts, paths, writable, packages)
        problems = []
        for worker, got in sorted(facts.items()):
            for name, version in here.items():
                if got["versions"].get(name) != version:
                    problems.append(f"worker {worker} runs {name} {got['versions'].get(name) or '(not installed)'}, "
                                    f"this process {version or '(not installed)'}")
            problems += [f"worker {worker} cannot see the {what} at {paths[what]}"
                         for what, seen in got["visible"].items() if not seen]
            if got["unwritable"]:
                problems.append(f"worker {worker} cannot write the build directory {writable}: {got['unwritable']}")
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise PvtbuildError(f"pre-flight: {problems[0]}{more}; nothing was run")

    def run(self, tasks: Iterable[Task], desc: str, unit: str = "shard") -> Iterator[tuple[Task, Any]]:
        """Yield (task, result or TaskFailure) as tasks complete, with a progress bar per task group.

        A task may take the results of tasks listed before it (`After`); on a cluster it
        starts as soon as they exist, in-process it runs after them in list order.
        """
        tasks = list(tasks)
        bars = {}
        for task in tasks:
            bars.setdefault(task.group, 0)
            bars[task.group] += 1
        bars = {group: tqdm(total=n, desc=group or desc, unit=unit, dynamic_ncols=True)
                for group, n in bars.items()}
        try:
            results = self._run_sync(tasks) if self.client is None else self._run_dask(tasks)
            for task, result in results:
                bars[task.group].update(1)
                yield task, result
        finally:
            for bar in bars.values():
                bar.close()

    def _run_sync(self, tasks: list[Task]) -> Iterator[tuple[Task, Any]]:
        done: dict[str, Any] = {}
        for task in tasks:
            failed = next((done[a.key] for a in afters(task.args) if isinstance(done[a.key], TaskFailure)), None)
            if failed is not None:
                result = failed
            else:
                try:
                    result = task.fn(*resolve(task.args, done.__getitem__))
                except PvtbuildError:
                    raise
                except Exception as e:  # a bug or a poisoned input: record it, go on
                    log.debug("task %s failed:\n%s", task.key, traceback.format_exc())
                    result = TaskFailure(one_line(e))
            done[task.key] = result
            yield task, result

    def _run_dask(self, tasks: list[Task]) -> Iterator[tuple[Task, Any]]:
        from distributed import as_completed  # noqa: PLC0415  (distributed takes ~0.7 s to import; sync runs skip it)

        self._check_resources(tasks)
        by_key = {}
        futures: dict[str, Any] = {}
        # Submitted in list order: among tasks that are ready, dask runs the earlier submitted
        # first, so a stage's task whose input has just been made goes before the next input.
        for task in tasks:
            fut = self.client.submit(run_task, task.fn, *resolve(task.args, futures.__getitem__), key=task.key,
                                     pure=False, resources=task.resources or None, retries=0)
            by_key[fut.key] = task
            futures[task.key] = fut
        pending = as_completed(list(futures.values()))
        for fut in pending:
            task = by_key[fut.key]
            status = fut.status
            if status == "finished":
                yield task, fut.result()  # waits for a recomputation if its worker died since
            elif status == "cancelled":
                raise PvtbuildError(f"task {task.key} was cancelled: lost the dask scheduler ({self.label})?")
            elif status == "error":
                exc = fut.exception()
                if isinstance(exc, PvtbuildError):
                    raise exc
                yield task, TaskFailure(_failure_reason(exc))
            else:  # finished, then its result died with its worker (another task crashed it): dask recomputes it
                pending.add(fut)
                continue
            fut.release()  # the scheduler keeps it while a task that takes it still waits

    def _check_resources(self, tasks: list[Task]) -> None:
        """Stop with one line instead of waiting forever for a resource no worker has."""
        have = self.worker_resources()
        for task in tasks:
            for name, amount in task.resources.items():
                if have.get(name, 0) < amount:
                    raise PvtbuildError(
                        f"task {task.key} needs {name}={amount:g}, but no worker of {self.label} has it "
                        f"(start such workers with `dask worker ... --resources {name}={amount:g}`)")


@contextmanager
def open_executor(scheduler: str | None, jobs: int, threads_per_job: int = 0,
                  quiet: bool = False, wait_for_workers: float = 60.0) -> Iterator[Executor]:
    """Start (or connect to) what runs the tasks; close what we started on exit.

    A scheduler by address must have a worker within `wait_for_workers` seconds (0: at once)."""
    threads = threads_per_job or max(1, cores() // max(1, jobs))
    if scheduler == "sync":
        yield Executor(None, "in-process")
        return
    with open_cluster(scheduler, jobs, threads, wait_for_workers) as (client, label):
        ex = Executor(client, label, dashboard(client))
        if not quiet:
            tqdm.write(f"executor: {label}; dashboard {ex.dashboard}")
        yield ex


def _failure_reason(exc: BaseException) -> str:
    """A failed task's reason for the manifest; worker deaths say what they likely mean."""
    from distributed import KilledWorker  # noqa: PLC0415  (only dask runs fail this way; see _run_dask)

    if isinstance(exc, KilledWorker):
        return (f"the worker running it died {exc.allowed_failures + 1} times "
                f"(a crash or out of memory on this input?), last {exc.last_worker.address}")
    return one_line(exc)
