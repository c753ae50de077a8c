"""What only a CUDA GPU can run: skipped here, run by `bench/gpu_check.py` (section a) on a GPU machine.

Imports only what a bare CUDA image has plus the wheels gpu_check carries, so the GPU machine can
collect this file without FluidSynth, TensorFlow or dask.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pvtbuild.train.build import build_backbone
from pvtbuild.train.config import load_train_config
from pvtbuild.train.guidance import Controls
from pvtbuild.train.loop import TrainOptions, train
from pvtbuild.train.spec import DataSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "train"


def _tiny_unet() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    cfg = load_train_config(CONFIGS / "edm-encodec-tiny.yaml")
    spec = DataSpec((128, 600), 0, 5, 0)
    torch.manual_seed(0)
    net = build_backbone(cfg, spec).eval()
    g = torch.Generator().manual_seed(1)
    x, local = torch.randn(2, 128, 600, generator=g), torch.rand(2, 5, 600, generator=g)
    return net, (x, torch.tensor([0.3, 2.0]), local)


def _forward(net: torch.nn.Module, args: tuple[torch.Tensor, ...], device: str) -> torch.Tensor:
    x, noise, local = (a.to(device) for a in args)
    controls = Controls(local, None, (1, 1, 3), ())
    with torch.no_grad():
        return net.to(device)(x, noise, controls).float().cpu()


def test_unet_forward_on_cuda_matches_the_cpu_in_float32():
    net, args = _tiny_unet()
    cpu = _forward(net, args, "cpu")
    cuda = _forward(net, args, "cuda")
    assert (cuda - cpu).abs().max() <= 1e-3 * cpu.abs().max()  # TF32 is off by default for convolutions' sake


def test_unet_forward_under_bf16_autocast_stays_close_to_float32():
    net, args = _tiny_unet()
    full = _forward(net, args, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = _forward(net, args, "cuda")
    assert torch.isfinite(half).all()
    assert (half - full).norm() <= 0.05 * full.norm()


def test_toy_training_on_cuda_with_bf16_autocast_lowers_the_loss(tmp_path):
    cfg = load_train_config(CONFIGS / "swissroll-edm.yaml", **{"train.amp": "bf16"})
    train(cfg, TrainOptions(tmp_path, None, steps=300, device="cuda"), echo=lambda line: None)
    with open(tmp_path / "log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert all(map(lambda v: v == v, losses))  # no NaN
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
