"""A capped child process that runs one function on request: the MIDI parser's sandbox.

`Sandbox(target, memory_mb)` starts, on first use, a long-lived child with
`subprocess` (`python -m pvtbuild.engine.sandbox MEMORY_MB OWNER_PID MODULE:FUNCTION`),
not with `multiprocessing`: a dask worker under a stock nanny is a daemonic
process, and daemonic processes may not have `multiprocessing` children. The
child

- caps its address space at `memory_mb` (RLIMIT_AS), so a runaway allocation
  is a MemoryError there, not an exhausted machine;
- exits as soon as its owner is gone, however the owner ended (kill -9, a dask
  worker's `os._exit`), and never holds the owner's stdout: `pvtbuild ... |
  tail` reaches EOF when the run ends;
- answers requests one at a time over a pipe.

Wire format (both directions): an 8-byte big-endian length, then that many
bytes of pickle. A request is the argument tuple; the answer is
`(True, result)` or `(False, "ExcType: message")` when the function raised.

`Sandbox.call(*args, timeout=...)` is thread-safe (one call at a time, so the
timeout measures the call itself, not time queued behind other threads). A call
that outlasts its timeout kills the child (`SandboxTimeout`); a child that dies
mid-call (a crash, the memory cap hit outside Python's reach) is
`SandboxDied`. Either way the next call starts a fresh child.

Measured on the 20 Lakh test files (2 busy cores): a sandboxed parse costs the
same as an in-process one within noise (~120 ms a file either way); starting a
child costs ~0.4-0.7 s once per process (python, numpy, pretty_midi imports).
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, BinaryIO

try:
    import resource
except ImportError:  # not on POSIX: workers run uncapped
    resource = None

_HEADER = struct.Struct(">Q")
# The child runs one request at a time: extra BLAS / OpenMP threads would only cost memory
# (address space counted against the cap) and start-up time.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class SandboxTimeout(Exception):
    """The call outlasted its timeout; the child was killed."""


class SandboxDied(Exception):
    """The child ended mid-call (a crash or the memory cap); it is replaced on the next call."""


class Sandbox:
    """A lazily started, capped child process running `target` ("module:function")."""

    def __init__(self, target: str, memory_mb: int):
        self.target = target
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        _live.add(self)

    def call(self, *args: Any, timeout: float) -> Any:
        """Run target(*args) in the child and return its result.

        Raises:
            SandboxTimeout: no answer within `timeout` seconds (the child is killed).
            SandboxDied: the child died mid-call.
            RuntimeError: the function raised in the child (message: "ExcType: text").
        """
        with self._lock:
            proc = self._started()
            try:
                _send(proc.stdin, pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
                ok, value = pickle.loads(_receive(proc.stdout, time.monotonic() + timeout))
            except SandboxTimeout:
                self._stop()
                raise
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                self._stop()
                raise SandboxDied(str(e)) from None
        if not ok:
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        """Kill the child, if any (it may be stuck); the next call starts a new one."""
        with self._lock:
            self._stop()

    def _started(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pvtbuild.engine.sandbox", str(self.memory_mb), str(os.getpid()), self.target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
            env={**os.environ, **_CHILD_ENV})
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


_live: weakref.WeakSet[Sandbox] = weakref.WeakSet()


def close_all() -> None:
    """Stop every sandbox of this process (at exit: the children would exit by themselves, later)."""
    for sandbox in list(_live):
        sandbox.close()


def _send(pipe: BinaryIO, payload: bytes) -> None:
    pipe.write(_HEADER.pack(len(payload)) + payload)
    pipe.flush()


def _receive(pipe: BinaryIO, deadline: float | None = None) -> bytes:
    """One framed message; raises SandboxTimeout past `deadline`, EOFError if the pipe closes."""
    fd = pipe.fileno()
    header = _read_exactly(fd, _HEADER.size, deadline)
    return _read_exactly(fd, _HEADER.unpack(header)[0], deadline)


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise SandboxTimeout()
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the sandbox process closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the child -------------------------------------------------------------------------


def _child_main(memory_mb: int, owner_pid: int, target: str) -> None:
    """Serve requests on stdin until EOF (the owner closed the pipe or is gone).

    Ctrl-C reaches the whole process group; the owner reports it and stops this child,
    which ignores SIGINT so that it never prints a KeyboardInterrupt of its own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    answers = os.fdopen(os.dup(1), "wb")
    # Nothing the function prints may corrupt the answers, and the child must not hold the
    # owner's stdin / stdout: stdout goes to stderr, stdin to /dev/null.
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _exit_with_owner(owner_pid)
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)  # imports before the cap: they are not the input's fault
    _limit_address_space(memory_mb)
    while True:
        try:
            args = pickle.loads(_receive(requests))
        except EOFError:
            os._exit(0)
        try:
            answer = (True, fn(*args))
        except Exception as e:  # reported, not raised: the child goes on serving
            answer = (False, f"{type(e).__name__}: {e}")
        try:
            payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            os._exit(3)  # the owner sees the child die: "memory cap or crash"
        try:
            _send(answers, payload)
        except OSError:  # the owner closed its end (it stopped, or gave up on this parse): nothing to tell
            os._exit(0)


def _exit_with_owner(owner_pid: int) -> None:
    """Exit this process as soon as its owner is gone, however it ended.

    Between requests EOF on stdin says so, but a parse that hangs or runs long
    would keep the child alive past a killed owner (a dask worker at cluster
    shutdown, a run killed with -9), so a thread watches the owner itself.
    """
    def watch() -> None:
        try:
            fd = os.pidfd_open(owner_pid)  # Linux >= 5.3: readable once the owner has exited
        except (AttributeError, OSError):
            while _pid_alive(owner_pid) and os.getppid() == owner_pid:
                time.sleep(1.0)
        else:
            select.select([fd], [], [])
        os._exit(0)

    if os.getppid() != owner_pid:  # the owner died before we got here
        os._exit(0)
    threading.Thread(target=watch, name="exit-with-owner", daemon=True).start()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _limit_address_space(memory_mb: int) -> None:
    """Cap this process's address space, so a runaway allocation raises MemoryError here
    instead of exhausting the machine (RSS limits are not enforced by Linux; RLIMIT_AS is)."""
    if resource is None:  # not on POSIX: run uncapped
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


if __name__ == "__main__":
    if len(sys.argv) != 4 or not sys.argv[1].isdigit() or not sys.argv[2].isdigit() or ":" not in sys.argv[3]:
        sys.exit("usage: python -m pvtbuild.engine.sandbox MEMORY_MB OWNER_PID MODULE:FUNCTION (started by Sandbox)")
    _child_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
