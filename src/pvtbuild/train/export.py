"""A trained model as a folder anyone can load without running its code (`pvtbuild export`).

`pvtbuild export --checkpoint RUN --out DIR` writes DIR with:

- `model.safetensors`: the EMA weights (what sampling uses), named as the backbone's `state_dict`;
  safetensors is a flat header plus raw tensor bytes, so loading it never unpickles anything;
- `config.yaml`: the run's training config as YAML spells it (`pvtbuild train --config` reads it);
- `export.json`: `format` (`pvtbuild-export`), `format_version`, the step, the checkpoint it came from,
  the data spec (shape, classes, control channels and names), the data statistics (the model works on
  data / `stats.scale`), the training dataset's path as run.json recorded it, the sha256 of
  `model.safetensors` and the EMA's update count (what its warm-up continues from when fine-tuned);
- `dataset.json`: a copy of the training dataset's summary (its pipeline config, encoder weights, control
  grids, ...), so `sample` decodes and reads controls from the export alone; absent for toys.

The folder is written under a temporary name beside DIR and renamed, so DIR is whole or absent.
`pvtbuild sample` and `evaluate` accept DIR wherever they accept a run or a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pvtbuild.dataset.layout import DATASET_JSON
from pvtbuild.errors import InputError, PvtbuildError
from pvtbuild.train.checkpoint import RUN_JSON, ema_weights, load_checkpoint, resolve_checkpoint, restoring
from pvtbuild.train.config import train_config_from_dict

EXPORT_JSON = "export.json"
WEIGHTS = "model.safetensors"
CONFIG_YAML = "config.yaml"
FORMAT = "pvtbuild-export"
FORMAT_VERSION = 1


def is_export(path: Path) -> bool:
    """Whether `path` is an export directory (it holds export.json)."""
    return path.is_dir() and (path / EXPORT_JSON).is_file()


def export_run(checkpoint: str | Path, out: Path, data: Path | None = None) -> Path:
    """Export the EMA weights of `checkpoint` (file or run directory) with what sampling needs into `out`.

    `data`: the training dataset, when the run's run.json records one that moved."""
    out = Path(out)
    if out.exists():
        raise PvtbuildError(f"{out}: already exists; choose another --out (an export is never overwritten)")
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    with restoring(path, "export"):
        cfg = train_config_from_dict(state["config"])
        weights = ema_weights(state["ema"])
    dataset = _dataset_of(path, cfg.is_toy, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": FORMAT, "step": str(int(state["step"]))})
        (tmp / CONFIG_YAML).write_text(yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))
        if dataset is not None:
            shutil.copyfile(dataset / DATASET_JSON, tmp / DATASET_JSON)
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": int(state["step"]),
                  "checkpoint": str(path.resolve()), "spec": _plain(state["spec"]), "stats": _plain(state["stats"]),
                  "dataset": None if dataset is None else str(dataset.resolve()),
                  "weights_sha256": _sha256(tmp / WEIGHTS), "ema_updates": int(state["ema"].get("n_averaged", 0))}
        (tmp / EXPORT_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp (and safetensors) make them private
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_export(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """An export's (export.json record, config as a plain dict, EMA weights), each checked: one line on any fault."""
    record = _read_record(folder)
    try:
        config = yaml.safe_load((folder / CONFIG_YAML).read_text())
        weights = load_file(str(folder / WEIGHTS), device="cpu")
    except (OSError, yaml.YAMLError, SafetensorError) as e:
        raise InputError(f"{folder}: not a readable pvtbuild export ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    if _sha256(folder / WEIGHTS) != record.get("weights_sha256"):
        raise InputError(f"{folder / WEIGHTS}: its sha256 is not the one export.json records "
                         f"(a changed or damaged file)")
    if not isinstance(config, dict):
        raise InputError(f"{folder / CONFIG_YAML}: not a mapping of config sections")
    return record, config, weights


def fine_tune_source(folder: Path) -> dict[str, Any]:
    """An export as the parts of a checkpoint that `--init-from` reads: its EMA weights stand for both the
    model and the EMA (whose update count export.json keeps)."""
    record, config, weights = read_export(folder)
    ema: dict[str, Any] = {f"module.{k}": v for k, v in weights.items()}
    ema["n_averaged"] = torch.tensor(int(record.get("ema_updates", 0)), dtype=torch.long)
    return {"config": config, "step": record["step"], "model": weights, "ema": ema}


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / EXPORT_JSON
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise InputError(f"{path}: not a pvtbuild export (format {found!r}, expected {FORMAT!r})")
    if not isinstance(record.get("format_version"), int) or record["format_version"] > FORMAT_VERSION:
        raise InputError(f"{path}: format_version {record.get('format_version')!r} is not one this pvtbuild reads "
                         f"(<= {FORMAT_VERSION})")
    for key, kind in (("step", int), ("spec", dict), ("stats", dict)):
        if not isinstance(record.get(key), kind):
            raise InputError(f"{path}: its {key} is missing or not a {kind.__name__}")
    return record


def _dataset_of(checkpoint: Path, toy: bool, data: Path | None) -> Path | None:
    """The training dataset whose dataset.json the export copies (None for toys)."""
    if toy:
        return None
    if data is not None:
        if not (Path(data) / DATASET_JSON).is_file():
            raise InputError(f"{data}: no {DATASET_JSON} (not a pvtbuild dataset folder)")
        return Path(data)
    run_json = checkpoint.parent.parent / RUN_JSON
    recorded = json.loads(run_json.read_text()).get("dataset") if run_json.is_file() else None
    if not recorded or not (Path(recorded) / DATASET_JSON).is_file():
        raise InputError(f"{run_json}: records no training dataset on this machine ({recorded}); "
                         f"pass --data DATASET to copy its {DATASET_JSON}")
    return Path(recorded)


def _plain(obj: Any) -> Any:
    """Tuples as lists, for YAML's and JSON's safe dumpers."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
