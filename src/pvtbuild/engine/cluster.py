"""The dask side of the executor: start a local cluster (on 127.0.0.1 only) or connect to a scheduler by
address, with the worker settings and failure budget of pvtbuild's runs, and wait for its first worker.

A cluster by address with no worker is waited for `wait_for_workers` seconds (`exec.wait_for_workers`),
then the run stops with one line saying so. An address where nothing listens fails in seconds, with one
line; so does a TLS mismatch (see tls.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlparse

from pvtbuild.engine.processes import worker_env
from pvtbuild.engine.tls import check_client_tls, connect_failure, local_security
from pvtbuild.errors import PvtbuildError

ALLOWED_FAILURES = 2  # worker deaths while running one task before the task is given up


def dask_settings(threads: int) -> dict[str, Any]:
    """dask config for clusters we start: worker thread counts and the failure budget."""
    settings: dict[str, Any] = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in worker_env(threads).items()}
    settings["distributed.scheduler.allowed-failures"] = ALLOWED_FAILURES
    return settings


@contextmanager
def open_cluster(scheduler: str | None, jobs: int, threads: int,
                 wait_for_workers: float) -> Iterator[tuple[Any, str]]:
    """A dask Client and a label saying what it runs on, inside pvtbuild's dask settings; closes what it started.

    `scheduler` None starts a local cluster of `jobs` single-task worker processes with `threads`
    OpenMP/torch threads each; an address connects to that scheduler, which must have a worker
    within `wait_for_workers` seconds (0: at once).
    """
    import dask  # noqa: PLC0415  (dask and distributed take ~1 s to import; in-process runs never need them)
    from distributed import Client, LocalCluster  # noqa: PLC0415  (as above)

    with dask.config.set(dask_settings(threads)), _environ_restored():
        if scheduler is None:
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", host="127.0.0.1",
                                   silence_logs=logging.CRITICAL, security=local_security())
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
            yield client, label
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def dashboard(client: Any) -> str:
    """The dashboard link, or why there is none: distributed serves it only with bokeh installed."""
    if importlib.util.find_spec("bokeh") is None:
        return f"not served ({client.dashboard_link} needs `pip install bokeh`)"
    return client.dashboard_link


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
        raise PvtbuildError(f"--scheduler {address!r}: expected tcp://HOST:PORT, 'sync', or nothing for a local "
                            "cluster (tls://HOST:PORT for a TLS scheduler)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((url.hostname, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise PvtbuildError(f"no dask scheduler answers at {address}: {e.strerror or e}") from None
            time.sleep(0.2)


def _connect(address: str) -> Any:
    """A dask Client of the scheduler at `address` (tls://: with dask config's certificates), or one line why not."""
    from distributed import Client  # noqa: PLC0415  (distributed takes ~0.7 s to import; sync runs skip it)
    from distributed.security import Security  # noqa: PLC0415  (as above)

    security = Security()  # dask config: distributed.comm.tls.*, distributed.comm.require-encryption
    if address.startswith("tls://"):
        check_client_tls(address, security)
    elif security.require_encryption:
        raise PvtbuildError(f"dask scheduler {address}: dask config requires encryption "
                            f"(distributed.comm.require-encryption), so connect with tls://{address.split('://')[-1]}")
    try:
        return Client(address, timeout="10s", security=security)
    except (OSError, TimeoutError, ValueError) as e:  # ValueError: tornado, when a plain server answers a TLS hello
        raise PvtbuildError(connect_failure(address, e)) from None


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
