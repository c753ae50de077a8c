"""BLAS (OpenBLAS/MKL) on one thread around the analysis's template product (`one_blas_thread`).

Without it, on shared busy cores, OpenBLAS wakes a thread per core for a 0.15 ms product and takes
2-20 ms. threadpoolctl is a dependency; without it (or with a library layout it cannot read) the
context leaves BLAS as it is.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # not installed: `one_blas_thread` leaves BLAS as it is
    ThreadpoolController = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS (OpenBLAS/MKL) limited to one thread inside; re-entrant, a no-op without threadpoolctl.

    The template product (frames x 206 x 61) takes ~0.15 ms on one thread, but 2-20 ms when
    OpenBLAS wakes a thread per core on a machine whose cores are busy (rendering, other workers).
    Callers judging many clips (the qa stage) enter it once around the loop, so `analyse`'s own
    entry costs nothing there.
    """
    global _BLAS_DEPTH
    ctl = _blas_controller()
    if ctl is None or _BLAS_DEPTH:
        _BLAS_DEPTH += 1
        try:
            yield
        finally:
            _BLAS_DEPTH -= 1
        return
    with ctl.limit(limits=1, user_api="blas"):
        _BLAS_DEPTH += 1
        try:
            yield
        finally:
            _BLAS_DEPTH -= 1


_BLAS_DEPTH = 0
_BLAS_CTL: object = None


def _blas_controller():
    """threadpoolctl's controller of this process's BLAS libraries (made once), or None without threadpoolctl."""
    global _BLAS_CTL
    if _BLAS_CTL is None:
        try:
            _BLAS_CTL = ThreadpoolController()  # a TypeError without threadpoolctl (None)
        except Exception:  # not installed, or an unexpected library layout: leave BLAS as it is
            _BLAS_CTL = False
    return _BLAS_CTL or None
