"""What a model knows of the data it models: the example's shape and classes, its controls' channels, and
the statistics measured once per run.

A leaf module (it imports nothing of `train/`), so the backbones, the formalisms and the data sources
can all name these facts without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass

CODEBOOK_SIZE = 1024  # EnCodec's codes take values 0..1023 (the `disc` format, docs/data-contract.md)


@dataclass(frozen=True)
class DataSpec:
    """What a backbone and a formalism need to know of the data they model.

    `shape` is one example's: (128, 600) for `encodec`, (2, 216, 1921) for `cqt`,
    (16, 600) for `disc`, (2,) for the swiss roll. The last axis is time for the
    real formats; local controls come on that same time grid.
    """

    shape: tuple[int, ...]
    num_classes: int = 0  # > 0: the data are class indices (disc codes: 1024; toy: 40)
    local_channels: int = 0  # channels of the local controls (0: none)
    global_channels: int = 0  # channels of the global controls (0: none)

    @property
    def discrete(self) -> bool:
        return self.num_classes > 0


@dataclass(frozen=True)
class DataStats:
    """Measured once at the start of a run and stored in its checkpoints, so a resume never re-measures."""

    std: float = 1.0  # of the raw data (1.0 for discrete and toy data)
    scale: float = 1.0  # what the data is divided by before the model sees it

    def to_dict(self) -> dict[str, float]:
        return {"std": self.std, "scale": self.scale}
