"""The device a trainer process computes on: `pvtbuild.compute`'s rule, aware of torchrun.

One home for the `--device` option of `train`, `sample` and `evaluate`, so all three read it alike.
"""

from __future__ import annotations

import torch

from pvtbuild.compute import pick_device as compute_device


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The encode stage's device rule (`auto`: CUDA when torch sees it), with plain `cuda` meaning this
    process's GPU under torchrun (LOCAL_RANK), made the current CUDA device."""
    device = compute_device(name, key="--device")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
