"""Importing packages that import torchaudio only for their file I/O (encodec, torchcrepe), without torchaudio.

`encodec` (`encodec/utils.py`) and `torchcrepe` (`torchcrepe/load.py`) import torchaudio at
import time, for audio file helpers pvtbuild never calls: the models themselves are pure
torch. torchaudio's PyPI wheels are CUDA builds that fail on CPU-only machines, so pvtbuild
does not install it (`scripts/setup.sh` installs both packages with `--no-deps`), and
`import_without_torchaudio` imports them with a `TorchaudioStandIn` in its place.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_IMPORT_LOCK = threading.Lock()


class TorchaudioStandIn(types.ModuleType):
    """Placeholder for torchaudio, which is not installed: every attribute raises ImportError.

    `import_without_torchaudio` puts one in `sys.modules["torchaudio"]` only while the package
    is imported, and only when torchaudio is absent, then removes it again: afterwards
    `import torchaudio` fails as usual, and the package's own `torchaudio` name is this object,
    so its audio I/O helpers fail loudly instead of half-working.
    """

    def __init__(self, package: str) -> None:
        super().__init__("torchaudio", f"stand-in installed by pvtbuild while importing {package}: "
                                       f"torchaudio is not installed")
        self._package = package

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # introspection (copy, inspect, pickle) probes these
        raise ImportError(
            f"torchaudio.{name}: torchaudio is not installed; {self._package} was imported by pvtbuild with a "
            f"stand-in module, so only its model works, not its audio I/O helpers (use soundfile/librosa instead)")


def import_without_torchaudio(package: str) -> types.ModuleType:
    """`import package`, with a `TorchaudioStandIn` in place of torchaudio while it loads if torchaudio is absent."""
    if package in sys.modules:
        return sys.modules[package]
    with _IMPORT_LOCK:
        if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
            return importlib.import_module(package)
        stand_in = TorchaudioStandIn(package)
        sys.modules["torchaudio"] = stand_in
        try:
            return importlib.import_module(package)
        finally:
            if sys.modules.get("torchaudio") is stand_in:
                del sys.modules["torchaudio"]


__all__ = ["TorchaudioStandIn", "import_without_torchaudio"]
