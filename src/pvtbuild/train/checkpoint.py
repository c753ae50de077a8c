"""Checkpoints that resume a run exactly: `RUN_DIR/checkpoints/ckpt-STEP.pt`, beside `RUN_DIR/run.json`.

One file holds everything a run's future depends on: the model, its EMA, the
optimiser and LR scheduler, the step, every rank's data position (`positions`,
in rank order; `position` is rank 0's, all a checkpoint before them held), the measured data
statistics, every RNG state (torch CPU and CUDA; the loop also reseeds its own
generators from (seed, rank, step), so nothing else carries randomness), the
count of skipped non-finite steps, and the config as YAML would spell it.
Written to a temporary name and renamed, so a killed write never leaves a
half-file; loaded with ``torch.load(weights_only=True)``: only tensors and
plain containers, never pickled code.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from pvtbuild.engine.manifest import atomic_write
from pvtbuild.errors import ConfigError, InputError

CHECKPOINT_DIR = "checkpoints"
# the run's record (config, dataset path, data shape and statistics): the loop writes it, and export and
# sample read the training dataset's path from it
RUN_JSON = "run.json"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's latest checkpoint (what every `--checkpoint` option takes)."""
    p = Path(path)
    if p.is_dir():
        found = list_checkpoints(p)
        if not found:
            raise InputError(f"{p}: no checkpoints in {p / CHECKPOINT_DIR} (is it a `pvtbuild train --out` folder?)")
        return found[-1]
    if not p.is_file():
        raise InputError(f"{p}: no such checkpoint file or run directory")
    return p


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint of `step` atomically, then delete all but the newest `keep`."""
    path = checkpoint_path(run_dir, step)
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state (file or run directory), refusing anything but tensors and plain containers."""
    p = resolve_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated, foreign or tampered file: say which, in one line
        raise InputError(f"{p}: not a readable pvtbuild checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise InputError(f"{p}: not a pvtbuild checkpoint (no config / model)")
    _check_parts(state, p)
    return state


# What every checkpoint the loop writes holds, and the container each part must be: a file
# missing one, or holding another kind of value, is refused here in one line, not by a
# KeyError or TypeError deep in resuming or sampling.
PARTS: dict[str, type | tuple[type, ...]] = {
    "config": dict, "model": dict, "ema": dict, "optimizer": dict, "scheduler": dict, "rng": dict,
    "position": dict, "stats": dict, "spec": dict, "step": int, "skipped": int,
}


def _check_parts(state: dict[str, Any], path: Path) -> None:
    for name, kind in PARTS.items():
        if name not in state:
            raise InputError(f"{path}: not a whole pvtbuild checkpoint (it has no {name})")
        if not isinstance(state[name], kind) or isinstance(state[name], bool):
            raise InputError(f"{path}: its {name} is a {type(state[name]).__name__}, not a {kind.__name__}"
                             " (a damaged or foreign checkpoint)")
    positions = state.get("positions", [])
    if not isinstance(positions, list) or not all(isinstance(p, dict) for p in positions):
        raise InputError(f"{path}: its positions are not a list of dicts (a damaged or foreign checkpoint)")
    if not isinstance(state["spec"].get("shape"), (list, tuple)):
        raise InputError(f"{path}: its spec has no shape (a damaged or foreign checkpoint)")


@contextlib.contextmanager
def restoring(path: Path, what: str) -> Iterator[None]:
    """Around the few lines that rebuild a run from checkpoint `path` (`what`: "sample", "resume"):
    a checkpoint whose stored config, data facts and weights do not fit together is one `InputError`
    naming it. Keep the block to those lines: it turns their errors into a verdict on the file."""
    try:
        yield
    except ConfigError as e:
        raise InputError(f"{path}: its stored config: {e}") from None
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = " ".join(str(e).split())[:160]
        raise InputError(f"{path}: cannot {what} from it: its weights, config and data facts do not fit "
                         f"together ({type(e).__name__}: {reason})") from None


def ema_weights(ema: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's weights inside a checkpoint's `ema` (an `AveragedModel` state: `module.` keys, and
    `n_averaged` left out), named as the backbone's `state_dict`: what sampling loads and `export` writes
    (contiguous, as safetensors requires)."""
    prefix = "module."
    return {k[len(prefix):]: v.contiguous() for k, v in ema.items() if k.startswith(prefix)}


def rng_state() -> dict[str, Any]:
    """torch's global RNG states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
