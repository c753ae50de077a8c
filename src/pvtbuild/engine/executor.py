"""Running a stage's tasks: in-process, on a local dask cluster, or on a dask cluster by address.

The executor knows nothing of MIDI or audio. A stage hands it `Task`s (a
module-level function and picklable arguments; each task writes one output
shard itself and returns a small summary) and gets back `(task, result)` pairs
as tasks finish, where a task that raised yields a `TaskFailure` instead of
stopping the run. Three modes, one interface:

- `scheduler="sync"`: in this process, one task after another (tests, debugging);
- `scheduler=None`: a local dask cluster of `jobs` worker processes (default);
- `scheduler="tcp://host:port"`: an existing `dask scheduler` and its workers;
- `scheduler="tls://host:port"`: the same over TLS, with this client's certificates from dask's
  config (`distributed.comm.tls.*`, or `DASK_DISTRIBUTED__COMM__TLS__*`; see docs/cluster.md).

A cluster by address with no worker is waited for `wait_for_workers` seconds (`exec.wait_for_workers`),
then the run stops with one line saying so.

Workers build their own FluidSynth and torch objects lazily (see synth.py and
encode/); nothing unpicklable crosses the wire.

Failures: a task that raises is not retried (tasks catch bad inputs themselves,
so what escapes is deterministic) and becomes a `TaskFailure`. A worker that
dies mid-task (kill -9, out of memory, a crash in native code) costs nothing
but time: the scheduler reruns the task elsewhere, and only when workers died
`ALLOWED_FAILURES + 1` times running the same task is it given up as a
`TaskFailure` -- a poisoned input must not take down worker after worker.
Tasks write their shard atomically, so a task run twice writes the same bytes.

Workers need no pvtbuild-specific environment: a stock `dask worker` will do.
What a task needs of its process it arranges itself, once per process, before
the first task runs (`prepare_process`): glibc's mmap threshold (see there).
Nothing a stage runs needs a `multiprocessing` child either (the MIDI parser
is started with `subprocess`), so daemonic workers are fine. Before any work,
`Executor.preflight` checks each worker once (versions, paths, a writable
build directory) and stops with one line naming the worker that differs.

Run as `python -m pvtbuild.engine.executor env THREADS` it prints, as shell `export`
lines, the thread counts of pvtbuild's own workers; optional elsewhere (a
stock nanny already sets OMP_NUM_THREADS=1, right for one worker per core).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlparse

from tqdm.auto import tqdm

from pvtbuild.errors import PvtbuildError

log = logging.getLogger(__name__)

# Environment of pvtbuild's own workers beyond their thread counts: nothing any more (the malloc
# setting is made at run time, `prepare_process`). bench/bench_dask.py puts MALLOC_FIX_ENV=0 here
# to measure workers without it.
WORKER_ENV: dict[str, str] = {}
MALLOC_FIX_ENV = "PVTBUILD_MALLOC_FIX"  # "0": leave glibc's malloc as the process found it
# The dask nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers; in glibc that also switches
# off the adaptive mmap threshold, so torch's large temporaries are mmapped and unmapped on
# every call (EnCodec ~2x slower). A fixed 32 MiB threshold restores full speed.
MMAP_THRESHOLD = 32 * 2**20
ALLOWED_FAILURES = 2  # worker deaths while running one task before the task is given up
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


def dask_settings(threads: int) -> dict[str, Any]:
    """dask config for clusters we start: worker thread counts and the failure budget."""
    settings: dict[str, Any] = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in worker_env(threads).items()}
    settings["distributed.scheduler.allowed-failures"] = ALLOWED_FAILURES
    return settings


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
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS, Windows: other allocators
            return False
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def _package_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions by distribution name (None: not installed), read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _worker_facts(paths: dict[str, str], writable: str, packages: tuple[str, ...]) -> dict[str, Any]:
    """Run on each worker by `Executor.preflight`: what it has installed, sees and may write."""
    target = Path(writable)
    while not target.exists() and target.parent != target:  # the build directory may not exist yet
        target = target.parent
    unwritable = ""
    if not target.is_dir():
        unwritable = f"{target} is not a directory"
    elif not os.access(target, os.W_OK | os.X_OK):
        unwritable = f"no write permission in {target}"
    return {"versions": _package_versions(packages),
            "visible": {what: os.path.exists(path) for what, path in paths.items()},
            "unwritable": unwritable}


def _afters(args: Any) -> Iterator[After]:
    """The `After`s among a task's arguments (top level, or in a list / tuple argument)."""
    for arg in args:
        if isinstance(arg, After):
            yield arg
        elif isinstance(arg, (list, tuple)):
            yield from (a for a in arg if isinstance(a, After))


def _resolve(args: tuple[Any, ...], lookup: Callable[[str], Any]) -> tuple[Any, ...]:
    """The task's arguments with each `After` replaced by `lookup(key)` (a result, or a dask future)."""
    def one(arg: Any) -> Any:
        if isinstance(arg, After):
            return lookup(arg.key)
        if isinstance(arg, (list, tuple)) and any(isinstance(a, After) for a in arg):
            return [lookup(a.key) if isinstance(a, After) else a for a in arg]
        return arg

    return tuple(one(arg) for arg in args)


def _run_task(fn: Callable[..., Any], *args: Any) -> Any:
    """What a dask worker runs: the process set up once, then the task."""
    prepare_process()
    return fn(*args)


@dataclass(frozen=True)
class After:
    """A task argument that stands for the result of another task of the same `Executor.run`.

    This is how stages stream into each other: an encode task takes `After(render task key)`
    in place of the render shard's record, and starts as soon as that render task has
    finished (on a cluster: while other render tasks still run). It may appear as an argument
    or inside a list / tuple argument. When the task it names failed, the task taking it
    fails with the same reason, without running.
    """

    key: str


@dataclass(frozen=True)
class Task:
    key: str  # unique within a run, e.g. "render-00003"
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    resources: dict[str, float] = field(default_factory=dict)
    group: str = ""  # the progress bar it counts in (a stage name); "" for the run's `desc`


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

    def preflight(self, paths: dict[str, str], writable: str, packages: tuple[str, ...] = PREFLIGHT_PACKAGES) -> None:
        """Check every worker once, before any work: same package versions as this process,
        `paths` ({what: absolute path}) visible, `writable` (a directory, or where it will be
        made) writable. Nothing to check in-process.

        Raises:
            PvtbuildError: one line naming the first worker and its problem (and how many more).
        """
        if self.client is None:
            return
        here = _package_versions(packages)
        facts = self.client.run(_worker_facts, paths, writable, packages)
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
            failed = next((done[a.key] for a in _afters(task.args) if isinstance(done[a.key], TaskFailure)), None)
            if failed is not None:
                result = failed
            else:
                try:
                    result = task.fn(*_resolve(task.args, done.__getitem__))
                except PvtbuildError:
                    raise
                except Exception as e:  # a bug or a poisoned input: record it, go on
                    log.debug("task %s failed:\n%s", task.key, traceback.format_exc())
                    result = TaskFailure(_one_line(e))
            done[task.key] = result
            yield task, result

    def _run_dask(self, tasks: list[Task]) -> Iterator[tuple[Task, Any]]:
        from distributed import as_completed

        self._check_resources(tasks)
        by_key = {}
        futures: dict[str, Any] = {}
        # Submitted in list order: among tasks that are ready, dask runs the earlier submitted
        # first, so a stage's task whose input has just been made goes before the next input.
        for task in tasks:
            fut = self.client.submit(_run_task, task.fn, *_resolve(task.args, futures.__getitem__), key=task.key,
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
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(dask_settings(threads)), _environ_restored():
        if scheduler is None:
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", host="127.0.0.1",
                                   silence_logs=logging.CRITICAL, security=_local_security())
            client = Client(cluster)
            label = f"local dask cluster, {jobs} worker(s) of 1 task, {threads} OpenMP/torch thread(s) each"
        else:
            _check_reachable(scheduler)
            cluster = None
            client = _connect(scheduler)
            label = f"dask cluster at {scheduler}"
        try:
            if cluster is None:
                _wait_for_workers(client, scheduler, wait_for_workers)
            ex = Executor(client, label, _dashboard(client))
            if not quiet:
                tqdm.write(f"executor: {label}; dashboard {ex.dashboard}")
            yield ex
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextmanager
def _environ_restored() -> Iterator[None]:
    """Undo what starting a local cluster does to this process's environment.

    A dask nanny copies its `pre-spawn-environ` (the malloc settings, thread counts)
    into `os.environ` of the process it runs in before it spawns a worker, and a
    LocalCluster's nannies run in this process: without this, the client and every
    cluster started after this one (e.g. one meant to run without the malloc fix)
    would inherit the settings.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with one line, when nothing listens at the scheduler address."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = url.port  # raises for a port out of 0..65535 or not a number
    except ValueError:
        port = None
    if url.scheme not in ("tcp", "tls") or not url.hostname or not port:
        raise PvtbuildError(f"--scheduler {address!r}: expected tcp://HOST:PORT, 'sync', or nothing for a local cluster "
                            "(tls://HOST:PORT for a TLS scheduler)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((url.hostname, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise PvtbuildError(f"no dask scheduler answers at {address}: {e.strerror or e}") from None
            time.sleep(0.2)


# dask config keys of this client's TLS settings (and their environment variables, DASK_ + the key in
# capitals with __ for each dot and _ for each dash)
TLS_KEYS = {"ca_file": "distributed.comm.tls.ca-file", "client_cert": "distributed.comm.tls.client.cert",
            "client_key": "distributed.comm.tls.client.key"}
_TLS_HOW = ("set distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and distributed.comm.tls.client.key "
            "in dask config (e.g. ~/.config/dask/distributed.yaml) or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (see docs/cluster.md)")


def _local_security() -> Any:
    """None (dask config as it is) or, where dask config requires encryption but names no scheduler
    certificate, temporary certificates for the local cluster (dask makes them with `cryptography`)."""
    from distributed.security import Security

    security = Security()
    if not security.require_encryption or security.tls_scheduler_cert:
        return None
    try:
        return Security.temporary()
    except ImportError:
        raise PvtbuildError("dask config requires encryption (distributed.comm.require-encryption): a local cluster "
                            "then needs `pip install cryptography` to make its temporary certificates; or require "
                            "it only for runs with --scheduler tls://...") from None


def _connect(address: str) -> Any:
    """A dask Client of the scheduler at `address` (tls://: with dask config's certificates), or one line why not."""
    from distributed import Client
    from distributed.security import Security

    security = Security()  # dask config: distributed.comm.tls.*, distributed.comm.require-encryption
    if address.startswith("tls://"):
        _check_client_tls(address, security)
    elif security.require_encryption:
        raise PvtbuildError(f"dask scheduler {address}: dask config requires encryption "
                            f"(distributed.comm.require-encryption), so connect with tls://{address.split('://')[-1]}")
    try:
        return Client(address, timeout="10s", security=security)
    except (OSError, TimeoutError, ValueError) as e:  # ValueError: tornado, when a plain server answers a TLS hello
        raise PvtbuildError(_connect_failure(address, e)) from None


def _check_client_tls(address: str, security: Any) -> None:
    """One line instead of dask's TypeError or a nameless FileNotFoundError: what of the client's TLS is missing."""
    missing = [TLS_KEYS[name] for name in ("ca_file", "client_cert") if not getattr(security, f"tls_{name}")]
    if missing:
        what = "CA certificate" if missing == [TLS_KEYS["ca_file"]] else "client certificate"
        raise PvtbuildError(f"TLS scheduler {address}: no {what} configured ({' and '.join(missing)} unset); {_TLS_HOW}")
    for name, key in TLS_KEYS.items():
        value = getattr(security, f"tls_{name}")
        if value and "\n" not in value and not os.path.isfile(value):  # a value with newlines is the PEM itself
            raise PvtbuildError(f"TLS scheduler {address}: {key} is {value}, which is not a file")
    try:
        security.get_connection_args("client")
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: a key that does not fit its certificate, ...
        raise PvtbuildError(f"TLS scheduler {address}: cannot use this client's certificates "
                            f"({', '.join(TLS_KEYS.values())}): {_one_line(e)}") from None


def _connect_failure(address: str, exc: BaseException) -> str:
    """Why a connection to a listening scheduler failed, in one line: TLS on one side only, or a certificate."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    reason = _one_line(exc)
    # probed only after a refusal: a ClientHello makes a plain dask scheduler log an error
    if url.scheme == "tcp" and not isinstance(exc, TimeoutError) and _speaks_tls(url.hostname, url.port):
        return (f"dask scheduler {address} speaks TLS: connect with tls://{url.netloc}, "
                f"with this client's certificates in dask config; {_TLS_HOW}")
    if url.scheme == "tls":
        if not _speaks_tls(url.hostname, url.port):  # not by the reason's words: "cannot convert to SSL" is either
            return f"dask scheduler {address} does not speak TLS: connect with tcp://{url.netloc} ({reason})"
        return (f"TLS scheduler {address} and this client do not accept each other's certificates "
                f"(the scheduler's must be signed by {TLS_KEYS['ca_file']}, this client's "
                f"{TLS_KEYS['client_cert']} by the CA the scheduler trusts): {reason}")
    return f"cannot connect to dask scheduler {address}: {reason}"


def _speaks_tls(host: str | None, port: int | None, timeout: float = 3.0) -> bool:
    """Whether a TLS handshake (no certificate checks) gets an answer in TLS from host:port."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw):
            return True
    except ssl.SSLError as e:  # an alert (no client certificate, ...) is TLS too; WRONG_VERSION_NUMBER is not
        return "alert" in str(e).lower()
    except OSError:
        return False


def _wait_for_workers(client: Any, address: str, seconds: float) -> None:
    """Return once the scheduler has a worker; after `seconds` without one, stop with one line."""
    if client.scheduler_info().get("workers"):
        return
    try:
        if seconds <= 0:
            raise TimeoutError
        client.wait_for_workers(1, timeout=seconds)
    except TimeoutError:
        flags = " --tls-ca-file CA --tls-cert CERT --tls-key KEY" if address.startswith("tls://") else ""
        raise PvtbuildError(f"dask scheduler {address}: no worker connected within {seconds:g} s "
                            f"(exec.wait_for_workers); start workers with `dask worker {address}{flags}`") from None


def _dashboard(client: Any) -> str:
    """The dashboard link, or why there is none: distributed serves it only with bokeh installed."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"not served ({client.dashboard_link} needs `pip install bokeh`)"
    return client.dashboard_link


def _failure_reason(exc: BaseException) -> str:
    """A failed task's reason for the manifest; worker deaths say what they likely mean."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (f"the worker running it died {exc.allowed_failures + 1} times "
                f"(a crash or out of memory on this input?), last {exc.last_worker.address}")
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:300]


if __name__ == "__main__":
    # python -m pvtbuild.engine.executor env THREADS: the worker environment as shell exports.
    if len(sys.argv) != 3 or sys.argv[1] != "env" or not sys.argv[2].isdigit():
        sys.exit("usage: python -m pvtbuild.engine.executor env THREADS")
    for key, value in worker_env(int(sys.argv[2])).items():
        print(f"export {key}={value}")
